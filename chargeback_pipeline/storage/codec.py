"""Conversions between domain values and stored columns.

Kept in one place so every table agrees on how ``None`` keys, datetimes, money and
metadata are represented; a mismatch between writer and reader here would silently
split or merge keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import gc
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

import duckdb
import pandas as pd

from chargeback_pipeline.models import require_utc

P = ParamSpec("P")
R = TypeVar("R")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")

# Converts stored int64 ten-thousandths into DECIMAL(38,4) without passing through a float.
UNITS_TO_DECIMAL_SQL = "CAST(CAST({col} AS DECIMAL(38,0)) * CAST(0.0001 AS DECIMAL(38,4)) AS DECIMAL(38,4))"
# The instant ``{col}`` microseconds after the epoch. (``make_timestamp(x) AT TIME ZONE
# 'UTC'`` gives the same values through a time-zone conversion per row, 7x slower.)
EPOCH_US_TO_TIMESTAMPTZ_SQL = "make_timestamptz(CAST({col} AS BIGINT))"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building hundreds of thousands of objects.

    Each generation-2 pass rescans every live object, so bulk conversion of a day's
    rows otherwise spends most of its time in the collector. None of these objects
    form cycles; the previous collector state is restored on exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def collector_paused(step: Callable[P, R]) -> Callable[P, R]:
    """Run ``step`` with the cyclic collector paused (see ``gc_paused``).

    For the lifecycle steps: each builds and drops tens of thousands of acyclic objects
    per date (metric rows, chargeback rows, CSV cells), and in a process that also holds
    Dagster's definitions every full collection rescans about a million live objects —
    6 s of the 30-day benchmark went to collections triggered inside the steps.
    """

    @functools.wraps(step)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        with gc_paused():
            return step(*args, **kwargs)

    return paused


def key_in(value: str | None) -> str | None:
    """Optional key columns are stored as ``''`` so keys can be enforced; read back as ``None``."""
    return value or None


def utc_seconds(value: datetime, what: str) -> datetime:
    """UTC, truncated to whole seconds: the stored form of billing timestamps."""
    return require_utc(value, what).replace(microsecond=0)


def optional_utc(value: datetime | None, what: str) -> datetime | None:
    return None if value is None else require_utc(value, what)


def ts_in(value: datetime | None) -> datetime | None:
    """DuckDB returns zone-aware values; normalise to ``datetime.UTC`` for stable equality and repr."""
    return None if value is None else value.astimezone(UTC)


def epoch_us(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def require_date(value: date, what: str = "date") -> date:
    """Reject datetimes where a billing date is expected: their time part would be dropped silently."""
    if isinstance(value, datetime) or not isinstance(value, date):
        raise TypeError(f"{what} must be a datetime.date, got {type(value).__name__} {value!r}")
    return value


def money_in(value: Any, what: str) -> Decimal:
    """Money must be ``Decimal`` (ints are exact and accepted); a float has already lost digits."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    raise TypeError(f"{what} must be a Decimal, got {type(value).__name__} {value!r}")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


# One encoder for every call: ``json.dumps`` with non-default options builds a new
# encoder each time, which costs more than encoding a small metadata object.
_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False)


def dump_json(value: Any, what: str | Callable[[], str]) -> str:
    """JSON text for metadata columns; ``Decimal`` becomes a string so no digit is lost.

    ``what`` names the value in the error; pass a callable when building the name costs
    something and most values encode fine.
    """
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        name = what() if callable(what) else what
        raise ValueError(f"{name} cannot be stored as JSON: {exc}") from exc


def load_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def check_identifier(name: str, what: str) -> str:
    if not IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not a valid column name (lowercase letters, digits, '_')")
    return name


def quoted(names: Iterable[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def frame(columns: Mapping[str, Sequence[Any] | Any]) -> pd.DataFrame:
    """A DataFrame for bulk inserts; plain lists become ``object`` columns so pandas infers nothing."""
    data = {
        name: pd.Series(values, dtype=object) if isinstance(values, list) else values
        for name, values in columns.items()
    }
    return pd.DataFrame(data)


def insert_frame(
    conn: duckdb.DuckDBPyConnection, view_name: str, df: pd.DataFrame, sql: str, params: Sequence[Any] = ()
) -> None:
    """Run ``sql`` (which reads ``view_name``) with ``df`` registered only for that statement."""
    conn.register(view_name, df)
    try:
        conn.execute(sql, list(params))
    finally:
        conn.unregister(view_name)


def rows_digest(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    where: str,
    params: Sequence[Any],
    exclude: Sequence[str] = (),
) -> str:
    """Order-independent digest of the rows of ``table`` matching ``where``, over every
    column but ``exclude``, computed inside DuckDB.

    It tells whether stored inputs changed, not an adversary's forgery: the row count
    plus the sum and the xor of two differently seeded 64-bit row hashes. Reading tens
    of thousands of rows into Python (or sorting them into one text for a cryptographic
    hash) cost more than the calculation it guards. DuckDB's ``hash`` may change
    between DuckDB releases; a changed digest only costs one recalculation.
    """
    columns = f"*COLUMNS(* EXCLUDE ({quoted(exclude)}))" if exclude else "*COLUMNS(*)"
    row = conn.execute(
        f"SELECT count(*), coalesce(sum(hash({columns})::HUGEINT), 0), "
        f"coalesce(bit_xor(hash({columns}, 'digest')), 0) FROM {table} WHERE {where}",
        list(params),
    ).fetchone()
    return ":".join(map(str, row or ()))


def type_filter(column: str, value: str | Sequence[str] | None) -> tuple[str, list[Any]] | None:
    """SQL for an optional type filter; ``None`` means the filter matches nothing (empty list)."""
    if value is None:
        return "", []
    if isinstance(value, str):
        return f" AND {column} = ?", [value]
    values = list(value)
    if not values:
        return None
    return f" AND {column} IN (SELECT unnest(?::VARCHAR[]))", [values]
