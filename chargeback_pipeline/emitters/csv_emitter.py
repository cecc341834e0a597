"""The built-in ``csv`` emitter (spec/emitters.md §4).

One file per tenant and emitted date (or month), rewritten completely and atomically on
every emission so that re-emitting a recalculated date never leaves stale numbers.

Design notes:

* The user-facing params are exactly ``output_dir`` and ``filename_template``. The
  tenant name, ecosystem and the plugin's extra key fields (``env_id`` …) are not in
  the ``(tenant_id, date, rows)`` call, so the core injects them once as
  ``emitter_context=EmitterContext(...)`` (the factory sets ``needs_emitter_context``;
  see :mod:`chargeback_pipeline.emitters.registry`). Built directly without a context,
  the emitter writes no extra columns, refuses rows that carry dimensions, and refuses
  templates that use ``{tenant_name}`` or ``{ecosystem}``.
* Spreadsheet formula injection: identifiers come from vendors and configuration, and
  finance opens these files in spreadsheet tools. Following OWASP's CSV-injection
  guidance, a TEXT cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return
  is written with a leading ``'`` so it is shown as text, not evaluated. ``timestamp``
  and ``amount`` are never altered: amounts (including negative ones such as
  ``-1.2500``) stay plain numbers that tools can sum.
* Amounts are written with exactly four decimals. An amount with more precision is an
  upstream bug and raises instead of being rounded here, because rounding in an output
  would make the file disagree with stored money.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date
from decimal import Decimal
from operator import attrgetter
from pathlib import Path
from typing import IO, Any

from chargeback_pipeline.emitters.files import (
    atomic_write,
    check_output_location,
    context_path_values,
    remove_file,
    render_path,
    resolve_output_dir,
    template_placeholders,
    template_problem,
)
from chargeback_pipeline.emitters.formatting import format_amount
from chargeback_pipeline.emitters.registry import EmitterContext, check_param_types, emitter_factory
from chargeback_pipeline.models import ChargebackRow, require_utc

CSV_EMITTER_NAME = "csv"
DEFAULT_FILENAME_TEMPLATE = "{tenant_id}_{date}.csv"
PLACEHOLDERS = ("date", "ecosystem", "tenant_id", "tenant_name")
CONTEXT_PLACEHOLDERS = ("ecosystem", "tenant_name")
CSV_PARAMS: dict[str, tuple[type, ...]] = {"output_dir": (str,), "filename_template": (str,)}
REQUIRED_PARAMS = ("output_dir",)
BASE_COLUMNS = (
    "ecosystem",
    "tenant_id",
    "timestamp",
    "resource_id",
    "product_category",
    "product_type",
    "identity_id",
    "cost_type",
    "amount",
    "allocation_method",
    "allocation_detail",
)
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


# --- formatting ------------------------------------------------------------------------


def neutralise_formula(text: str) -> str:
    """Prefix ``'`` to a text cell a spreadsheet would otherwise evaluate (OWASP)."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def csv_header(extra_key_fields: Sequence[str] = ()) -> list[str]:
    return [*BASE_COLUMNS, *extra_key_fields]


def csv_sort_key(row: ChargebackRow, extra_key_fields: Sequence[str] = ()) -> tuple[Any, ...]:
    """Row order of emitters.md §4, ``None`` as ``""``."""
    return (
        require_utc(row.timestamp, "chargeback row timestamp"),
        row.resource_id or "",
        row.product_category,
        row.product_type,
        row.identity_id,
        str(row.cost_type),
        row.allocation_method or "",
        row.allocation_detail or "",
        *(row.dimensions.get(name) or "" for name in extra_key_fields),
    )


def csv_record(row: ChargebackRow, extra_key_fields: Sequence[str] = ()) -> list[str]:
    """One row's cells in column order; text cells are formula-neutralised."""
    text = neutralise_formula
    timestamp = require_utc(row.timestamp, "chargeback row timestamp")
    return [
        text(row.ecosystem),
        text(row.tenant_id),
        timestamp.astimezone(UTC).isoformat(timespec="seconds"),
        text(row.resource_id or ""),
        text(row.product_category),
        text(row.product_type),
        text(row.identity_id),
        text(str(row.cost_type)),
        format_amount(row.amount),
        text(row.allocation_method or ""),
        text(row.allocation_detail or ""),
        *(text(row.dimensions.get(name) or "") for name in extra_key_fields),
    ]


def write_csv(stream: IO[str], rows: Iterable[ChargebackRow], extra_key_fields: Sequence[str] = ()) -> int:
    """Write header and sorted rows to ``stream``; return the number of data rows."""
    writer = csv.writer(stream, **_DIALECT)
    writer.writerow(csv_header(extra_key_fields))
    ordered = _csv_order(list(rows), extra_key_fields)
    stream.writelines(map(_Cells(ordered, extra_key_fields).line, ordered))
    return len(ordered)


_DIALECT: dict[str, Any] = {"delimiter": ",", "quoting": csv.QUOTE_MINIMAL, "lineterminator": "\r\n"}


def _csv_order(rows: list[ChargebackRow], extra_key_fields: Sequence[str]) -> list[ChargebackRow]:
    """``rows`` in ``csv_sort_key`` order, with a cheaper key when every timestamp is valid.

    Aware timestamps order by instant whatever their zone, so the key can use them as
    they are once each distinct one has passed ``require_utc``. Anything unexpected
    falls back to ``csv_sort_key`` itself, which raises its own error.
    """
    extra = tuple(extra_key_fields)
    try:
        for stamp in dict.fromkeys(map(_TIMESTAMP, rows)):
            require_utc(stamp, "chargeback row timestamp")

        def key(row: ChargebackRow) -> tuple[Any, ...]:
            dims = row.dimensions
            return (
                row.timestamp,
                row.resource_id or "",
                row.product_category,
                row.product_type,
                row.identity_id,
                str(row.cost_type),
                row.allocation_method or "",
                row.allocation_detail or "",
                *[dims.get(name) or "" for name in extra],
            )

        return sorted(rows, key=key)
    except Exception:
        return sorted(rows, key=lambda row: csv_sort_key(row, extra_key_fields))


_TIMESTAMP = attrgetter("timestamp")


class _Encoded(dict[str, str]):
    """Each distinct cell as ``csv.writer`` writes it (quoted and escaped if needed).

    With minimal quoting a field's encoding does not depend on the other fields of its
    row (except a row of one empty field, which never occurs here), so a line is the
    join of its encoded cells; ``csv.writer`` itself encodes each distinct value once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buffer = io.StringIO(newline="")
        self._writer = csv.writer(self._buffer, **_DIALECT)

    def __missing__(self, cell: str) -> str:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow([cell, ""])
        encoded = self[cell] = self._buffer.getvalue()[: -len(",\r\n")]
        return encoded


class _TextCells(dict[str, str]):
    """Formula-neutralised, encoded text per distinct value: a day's cells repeat a few
    thousand strings."""

    def __init__(self, encoded: _Encoded) -> None:
        super().__init__()
        self._encoded = encoded

    def __missing__(self, text: str) -> str:
        cell = self[text] = self._encoded[neutralise_formula(text)]
        return cell


class _Amounts(dict[Decimal, str]):
    """``format_amount`` per distinct value (equal amounts are written identically)."""

    def __init__(self, encoded: _Encoded) -> None:
        super().__init__()
        self._encoded = encoded

    def __missing__(self, amount: Decimal) -> str:
        cell = self[amount] = self._encoded[format_amount(amount)]
        return cell


class _Cells:
    """The CSV line of a row: ``csv_record`` with each distinct text, timestamp and amount
    formatted and encoded once.

    A row that does not take the fast path (a value of an unexpected type, say) is
    formatted by ``csv_record`` itself, so the cells and any error are exactly its.
    """

    def __init__(self, rows: Sequence[ChargebackRow], extra_key_fields: Sequence[str]) -> None:
        self.extra = tuple(extra_key_fields)
        self.encoded = _Encoded()
        self.text = _TextCells(self.encoded)
        # Amounts are cached only when all are Decimal: a float equal to a cached
        # Decimal must still be refused by format_amount.
        amounts = _Amounts(self.encoded)
        self.amounts: Callable[[Decimal], str] = (
            amounts.__getitem__
            if {type(r.amount) for r in rows} <= {Decimal}
            else lambda amount: self.encoded[format_amount(amount)]
        )
        self.stamps = {
            stamp: self.encoded[
                require_utc(stamp, "chargeback row timestamp").astimezone(UTC).isoformat(timespec="seconds")
            ]
            for stamp in dict.fromkeys(map(_TIMESTAMP, rows))
        }

    def line(self, row: ChargebackRow) -> str:
        text = self.text
        try:
            dims = row.dimensions
            cells = [
                text[row.ecosystem],
                text[row.tenant_id],
                self.stamps[row.timestamp],
                text[row.resource_id or ""],
                text[row.product_category],
                text[row.product_type],
                text[row.identity_id],
                text[str(row.cost_type)],
                self.amounts(row.amount),
                text[row.allocation_method or ""],
                text[row.allocation_detail or ""],
                *[text[dims.get(name) or ""] for name in self.extra],
            ]
        except Exception:
            cells = [self.encoded[cell] for cell in _record_or_explain(row, self.extra)]
        return ",".join(cells) + "\r\n"


def _record_or_explain(row: ChargebackRow, extra_key_fields: Sequence[str]) -> list[str]:
    try:
        return csv_record(row, extra_key_fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot write chargeback row {_describe_row(row)}: {exc}") from exc


def _describe_row(row: ChargebackRow) -> str:
    return (
        f"(tenant {row.tenant_id!r}, resource {row.resource_id!r}, product_type {row.product_type!r}, "
        f"identity {row.identity_id!r}, timestamp {row.timestamp!r})"
    )


# --- parameter and template validation -------------------------------------------------


def validate_csv_params(params: Mapping[str, Any]) -> None:
    """Reject unknown, missing or wrong-typed ``csv`` params and unsafe templates."""
    check_param_types(CSV_EMITTER_NAME, params, CSV_PARAMS, REQUIRED_PARAMS)
    if not params["output_dir"].strip():
        raise ValueError("params.output_dir: must not be empty")
    template = params.get("filename_template", DEFAULT_FILENAME_TEMPLATE)
    problem = template_problem(template, PLACEHOLDERS)
    if problem is not None:
        raise ValueError(f"params.filename_template: {template!r} {problem}")


def validate_csv_context(params: Mapping[str, Any], context: EmitterContext) -> None:
    """Refuse, at validation, a tenant whose files could not be written where configured."""
    check_output_location(
        params["output_dir"], [params.get("filename_template", DEFAULT_FILENAME_TEMPLATE)], context
    )


# --- the emitter -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CsvOutput:
    """What the last call did, for the sink step's asset metadata."""

    path: Path
    row_count: int
    bytes_written: int
    removed: bool = False


class CsvEmitter:
    """Writes one CSV per ``(tenant, date)``; calling it again rewrites the file."""

    def __init__(self, output_dir: Path, filename_template: str, context: EmitterContext | None) -> None:
        self.output_dir = output_dir
        self.filename_template = filename_template
        self.context = context
        self.extra_key_fields: tuple[str, ...] = context.extra_key_fields if context else ()
        self.last_output: CsvOutput | None = None

    def __call__(self, tenant_id: str, date: date, rows: Sequence[ChargebackRow]) -> None:
        path = self.path_for(tenant_id, date)
        self._check_rows(tenant_id, rows)
        if not rows:
            removed = remove_file(path)
            self.last_output = CsvOutput(path=path, row_count=0, bytes_written=0, removed=removed)
            return
        with atomic_write(path, encoding="utf-8", newline="") as stream:
            count = write_csv(stream, rows, self.extra_key_fields)
        self.last_output = CsvOutput(path=path, row_count=count, bytes_written=path.stat().st_size)

    def path_for(self, tenant_id: str, day: date) -> Path:
        """The file for a tenant and emitted date, proven to lie inside ``output_dir``."""
        values = {"tenant_id": tenant_id, "date": day.isoformat(), **context_path_values(self.context)}
        return render_path(self.output_dir, self.filename_template, values)

    def _check_rows(self, tenant_id: str, rows: Sequence[ChargebackRow]) -> None:
        """Refuse rows that would put one tenant's money into another's file or drop a key."""
        declared = set(self.extra_key_fields)
        for row in rows:
            if row.tenant_id != tenant_id:
                raise ValueError(
                    f"row of tenant_id {row.tenant_id!r} handed to the CSV emitter for {tenant_id!r}"
                )
            if self.context is not None and row.ecosystem != self.context.ecosystem:
                raise ValueError(
                    f"row of ecosystem {row.ecosystem!r} handed to the CSV emitter of tenant "
                    f"{self.context.tenant_name!r} ({self.context.ecosystem!r})"
                )
            if row.dimensions.keys() <= declared:
                continue
            undeclared = set(row.dimensions) - declared
            if undeclared:
                raise ValueError(
                    f"row {_describe_row(row)} has dimension(s) {', '.join(sorted(undeclared))} that are not "
                    f"among the extra key fields ({', '.join(self.extra_key_fields) or 'none'})"
                )


@emitter_factory(
    needs_emitter_context=True, validate_params=validate_csv_params, validate_context=validate_csv_context
)
def make_csv_emitter(
    output_dir: str,
    filename_template: str = DEFAULT_FILENAME_TEMPLATE,
    *,
    emitter_context: EmitterContext | None = None,
) -> CsvEmitter:
    """Build the ``csv`` emitter; ``emitter_context`` is injected by the registry."""
    validate_csv_params({"output_dir": os.fspath(output_dir), "filename_template": filename_template})
    if emitter_context is None:
        needs_context = sorted(template_placeholders(filename_template) & set(CONTEXT_PLACEHOLDERS))
        if needs_context:
            raise ValueError(
                f"params.filename_template: {{{needs_context[0]}}} needs an EmitterContext "
                "(build the emitter through registry.get with context=...)"
            )
    config_dir = emitter_context.config_dir if emitter_context else None
    return CsvEmitter(resolve_output_dir(output_dir, config_dir), filename_template, emitter_context)


def render_csv(rows: Iterable[ChargebackRow], extra_key_fields: Sequence[str] = ()) -> str:
    """The exact file content without touching the disk (previews, tests)."""
    buffer = io.StringIO(newline="")
    write_csv(buffer, rows, extra_key_fields)
    return buffer.getvalue()
