"""Billing lines of one tenant: normalisation, replace-by-date and revision detection.

Normalisation (spec/domain-model.md §1) happens here, at the storage boundary, so
that every cost input gets the same treatment: UTC whole seconds, equal natural keys
merged on raw amounts, then quantised once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

import duckdb

from chargeback_pipeline.models import ZERO, BillingLineItem, q4
from chargeback_pipeline.storage.codec import (
    dump_json,
    frame,
    from_epoch_us,
    insert_frame,
    load_json,
    money_in,
    quoted,
    require_date,
    ts_in,
    utc_seconds,
)
from chargeback_pipeline.storage.schema import BILLING_KEY
from chargeback_pipeline.storage.transactions import atomic

BillingKey = tuple[Any, ...]
LineFactory = Callable[[Mapping[str, Any]], BillingLineItem]


@dataclass(frozen=True, slots=True)
class BillingRevision:
    """A stored line whose ``total_cost`` changed when its date was re-gathered."""

    key: BillingKey
    old_total: Decimal
    new_total: Decimal

    def __str__(self) -> str:
        return f"{format_key(self.key)}: {self.old_total} -> {self.new_total}"


@dataclass(frozen=True, slots=True)
class BillingReplaceResult:
    """What a replace changed, so the step can log withdrawals and revisions (operations.md §3)."""

    billing_date: date
    stored: int
    withdrawn: list[BillingKey] = field(default_factory=list)
    revised: list[BillingRevision] = field(default_factory=list)
    kept_existing: int = 0


def format_key(key: BillingKey) -> str:
    return "/".join(v.isoformat() if isinstance(v, datetime) else str(v) for v in key)


def line_key(
    line: BillingLineItem, extra: Sequence[str], stamps: dict[datetime, datetime] | None = None
) -> BillingKey:
    """Natural key of a line in stored form (UTC whole seconds, extra fields as strings).

    ``stamps`` caches normalised timestamps across the lines of one call (equal instants
    normalise identically).
    """
    stamp = None if stamps is None else stamps.get(line.timestamp)
    if stamp is None:
        stamp = utc_seconds(line.timestamp, f"billing line {line.resource_id}/{line.product_type} timestamp")
        if stamps is not None:
            stamps[line.timestamp] = stamp
    return (
        line.ecosystem,
        line.tenant_id,
        stamp,
        line.resource_id,
        line.product_type,
        line.product_category,
        *(str(getattr(line, name, "") or "") for name in extra),
    )


def normalise_lines(
    d: date, lines: Iterable[BillingLineItem], extra: Sequence[str], factory: LineFactory
) -> list[BillingLineItem]:
    """Apply domain-model §1 to one date's lines; the result is in natural-key order."""
    return [line for _, line in _normalise(d, lines, extra, factory)]


def _normalise(
    d: date, lines: Iterable[BillingLineItem], extra: Sequence[str], factory: LineFactory
) -> list[tuple[BillingKey, BillingLineItem]]:
    """``normalise_lines`` with each merged line's stored key (computed once, reused by the insert)."""
    groups: dict[BillingKey, list[BillingLineItem]] = {}
    # A date's lines share a timestamp or a few: each distinct one is normalised once.
    stamps: dict[datetime, datetime] = {}
    for line in lines:
        key = line_key(line, extra, stamps)
        if key[2].date() != d:
            raise ValueError(
                f"billing line {format_key(key)} is dated {key[2].date()}, not the stored date {d}"
            )
        groups.setdefault(key, []).append(line)
    return [(key, _merge(key, group, extra, factory)) for key, group in sorted(groups.items())]


def _metadata_name(key: BillingKey) -> str:
    return f"metadata of billing line {format_key(key)}"


def _money(value: Any, key: BillingKey, name: str) -> Decimal:
    """``money_in`` naming the line, with the name built only when the value is refused."""
    return value if type(value) is Decimal else money_in(value, f"billing line {format_key(key)} {name}")


def _merge(
    key: BillingKey, group: list[BillingLineItem], extra: Sequence[str], factory: LineFactory
) -> BillingLineItem:
    first = group[0]
    raw_total = sum((_money(x.total_cost, key, "total_cost") for x in group), ZERO)
    quantity = sum((_money(x.quantity, key, "quantity") for x in group), ZERO)
    prices = [_money(x.unit_price, key, "unit_price") for x in group]
    unit_price = prices[0] if all(p == prices[0] for p in prices) else Decimal(0)
    metadata = dict(first.metadata)
    if len(group) > 1:
        metadata["merged_lines"] = len(group)
    total = _stored_total(key, raw_total)
    if total != raw_total:
        metadata["raw_total_cost"] = str(raw_total)
    fields: dict[str, Any] = {
        "ecosystem": first.ecosystem,
        "tenant_id": first.tenant_id,
        "timestamp": key[2],
        "resource_id": first.resource_id,
        "product_category": first.product_category,
        "product_type": first.product_type,
        "quantity": quantity,
        "unit_price": unit_price,
        "total_cost": total,
        "currency": first.currency,
        "granularity": first.granularity,
        "metadata": metadata,
    }
    fields.update(zip(extra, key[len(BILLING_KEY) :], strict=True))
    return factory(fields)


def _stored_total(key: BillingKey, raw_total: Decimal) -> Decimal:
    """``Q4(raw_total)``, or a ``ValueError`` naming the line when it cannot be stored.

    Money is a 28-digit ``Decimal``; with four decimals that leaves 24 integer digits.
    Beyond that ``quantize`` raises a bare ``InvalidOperation`` with no message, which
    would fail the date without saying which line or why. Such an amount is a vendor
    bug, so it is refused (never silently rounded or dropped).
    """
    if not raw_total.is_finite():
        raise ValueError(f"billing line {format_key(key)} total_cost {raw_total} is not a finite number")
    try:
        return q4(raw_total)
    except InvalidOperation:
        raise ValueError(
            f"billing line {format_key(key)} total_cost {raw_total} is too large to store "
            "with four decimals (at most 24 integer digits)"
        ) from None


class BillingRepository:
    """Billing lines keyed by natural key plus the module's extra key fields."""

    def __init__(
        self, conn: duckdb.DuckDBPyConnection, extra_key_fields: Sequence[str], line_factory: LineFactory
    ) -> None:
        self._conn = conn
        self.extra_key_fields = tuple(extra_key_fields)
        self._factory = line_factory
        self._key_cols = quoted((*BILLING_KEY, *self.extra_key_fields))

    def replace_date(self, d: date, lines: Iterable[BillingLineItem]) -> BillingReplaceResult:
        """Replace the date's stored lines by exactly ``lines``, in one transaction.

        An empty ``lines`` keeps what is stored (an outage or expired vendor retention
        must never erase billing); ``kept_existing`` then says how many lines were kept.
        """
        require_date(d, "billing date")
        normalised = _normalise(d, lines, self.extra_key_fields, self._factory)
        if not normalised:
            return BillingReplaceResult(d, stored=0, kept_existing=self.count(d))
        with atomic(self._conn):
            old = self._totals(d)
            self._conn.execute("DELETE FROM billing_lines WHERE billing_date = ?", [d])
            self._insert(d, normalised)
        new = {key: x.total_cost for key, x in normalised}
        common = sorted(old.keys() & new.keys())
        revised = [BillingRevision(k, old[k], new[k]) for k in common if old[k] != new[k]]
        return BillingReplaceResult(d, len(normalised), sorted(old.keys() - new.keys()), revised)

    def _insert(self, d: date, keyed: Sequence[tuple[BillingKey, BillingLineItem]]) -> None:
        extra = self.extra_key_fields
        keys = [key for key, _ in keyed]
        lines = [line for _, line in keyed]
        columns: dict[str, Any] = {name: [k[i] for k in keys] for i, name in enumerate(BILLING_KEY)}
        columns["timestamp"] = [k[2].isoformat() for k in keys]
        columns.update({name: [k[len(BILLING_KEY) + i] for k in keys] for i, name in enumerate(extra)})
        columns["quantity"] = [str(x.quantity) for x in lines]
        columns["unit_price"] = [str(x.unit_price) for x in lines]
        columns["total_cost"] = [str(x.total_cost) for x in lines]
        columns["currency"] = [x.currency for x in lines]
        columns["granularity"] = [x.granularity for x in lines]
        columns["metadata"] = [dump_json(x.metadata, partial(_metadata_name, k)) for k, x in keyed]
        casts = {
            "timestamp": 'CAST("timestamp" AS TIMESTAMPTZ)',
            "total_cost": "CAST(total_cost AS DECIMAL(38,4))",
        }
        select = ", ".join(casts.get(name, f'"{name}"') for name in columns)
        insert_frame(
            self._conn,
            "_billing_stage",
            frame(columns),
            f"INSERT INTO billing_lines ({quoted(columns)}, billing_date) "
            f"SELECT {select}, ?::DATE FROM _billing_stage",
            [d],
        )

    def _totals(self, d: date) -> dict[BillingKey, Decimal]:
        rows = self._conn.execute(
            f"SELECT {self._key_cols}, total_cost FROM billing_lines WHERE billing_date = ?", [d]
        ).fetchall()
        return {(*r[:2], ts_in(r[2]), *r[3:-1]): r[-1] for r in rows}

    def find_by_date(self, d: date) -> list[BillingLineItem]:
        """The date's lines in natural-key order, built with the module's line class."""
        require_date(d, "billing date")
        rows = self._conn.execute(
            f"SELECT {self._key_cols}, quantity, unit_price, total_cost, currency, granularity, metadata "
            f"FROM billing_lines WHERE billing_date = ? ORDER BY {self._key_cols}",
            [d],
        ).fetchall()
        return [self._line(row) for row in rows]

    def _line(self, row: tuple[Any, ...]) -> BillingLineItem:
        n = len(BILLING_KEY)
        fields: dict[str, Any] = dict(zip(BILLING_KEY, row[:n], strict=True))
        fields["timestamp"] = ts_in(row[2])
        fields.update(zip(self.extra_key_fields, row[n : n + len(self.extra_key_fields)], strict=True))
        quantity, unit_price, total, currency, granularity, metadata = row[n + len(self.extra_key_fields) :]
        fields.update(
            quantity=Decimal(quantity),
            unit_price=Decimal(unit_price),
            total_cost=total,
            currency=currency,
            granularity=granularity,
            metadata=load_json(metadata) or {},
        )
        return self._factory(fields)

    def dates(self) -> list[date]:
        rows = self._conn.execute("SELECT DISTINCT billing_date FROM billing_lines ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    def count(self, d: date) -> int:
        row = self._conn.execute("SELECT count(*) FROM billing_lines WHERE billing_date = ?", [d]).fetchone()
        return int(row[0]) if row else 0

    def fingerprint(self, d: date) -> str:
        """SHA-256 over the stored lines (key, quantity, unit price, total) to detect revisions."""
        key_cols = quoted(name for name in (*BILLING_KEY, *self.extra_key_fields) if name != "timestamp")
        rows = self._conn.execute(
            f'SELECT epoch_us("timestamp"), {key_cols}, quantity, unit_price, CAST(total_cost AS VARCHAR) '
            f"FROM billing_lines WHERE billing_date = ? ORDER BY {self._key_cols}",
            [d],
        ).fetchall()
        digest = hashlib.sha256()
        encode = _FINGERPRINT_ENCODER.encode
        instants: dict[int, str] = {}
        for us, *rest in rows:
            stamp = instants.get(us)
            if stamp is None:
                stamp = instants[us] = from_epoch_us(us).isoformat()
            # The key in stored column order, the timestamp as UTC ISO text.
            digest.update(encode([*rest[:2], stamp, *rest[2:]]).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def date_summary(self, d: date) -> tuple[int, Decimal]:
        """Number of stored lines of ``d`` and their total (exact)."""
        require_date(d, "billing date")
        row = self._conn.execute(
            "SELECT count(*), coalesce(sum(total_cost), CAST(0 AS DECIMAL(38,4))) "
            "FROM billing_lines WHERE billing_date = ?",
            [d],
        ).fetchone()
        assert row is not None
        return int(row[0]), row[1]


_FINGERPRINT_ENCODER = json.JSONEncoder(ensure_ascii=False)
