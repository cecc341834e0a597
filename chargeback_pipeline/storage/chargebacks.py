"""Chargeback rows: bulk replace by date, ordered reads, SQL aggregation and reconciliation.

A busy tenant produces hundreds of thousands of rows per day, so rows are written
through one registered DataFrame and amounts travel as int64 ten-thousandths that SQL
turns into DECIMAL(38,4) exactly. A float never touches an amount.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from itertools import repeat
from operator import attrgetter, ne
from typing import Any, Literal

import duckdb
import numpy as np

from chargeback_pipeline.models import UNALLOCATED, ChargebackRow, CostType, day_start, require_utc
from chargeback_pipeline.storage.codec import (
    EPOCH_US_TO_TIMESTAMPTZ_SQL,
    UNITS_TO_DECIMAL_SQL,
    epoch_us,
    frame,
    from_epoch_us,
    gc_paused,
    insert_frame,
    key_in,
    quoted,
    require_date,
    ts_in,
)
from chargeback_pipeline.storage.schema import BILLING_KEY, CHARGEBACK_KEY
from chargeback_pipeline.storage.transactions import atomic

Bucket = Literal["day", "month"]
COST_TYPES = frozenset(str(c) for c in CostType)
_STRING_KEY = tuple(name for name in CHARGEBACK_KEY if name != "timestamp")
_COST_TYPE_TEXT: dict[object, str] = {c: str(c) for c in CostType}
MONEY_ZERO = "CAST(0 AS DECIMAL(38,4))"


def _units(d: date, rows: Sequence[ChargebackRow]) -> np.ndarray[Any, Any]:
    """Amounts as exact int64 ten-thousandths; the per-row work is kept to bare Decimal ops
    because this runs for every row of every calculated date."""
    try:
        scaled = [a.scaleb(4) for a in map(attrgetter("amount"), rows)]
    except AttributeError:
        bad = next(r for r in rows if not isinstance(r.amount, Decimal))
        raise TypeError(
            f"chargeback row {bad.resource_id}/{bad.identity_id} of {d}: amount must be a Decimal, "
            f"got {type(bad.amount).__name__}"
        ) from None
    try:
        units = list(map(int, scaled))
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"chargeback amounts of {d} include a non-finite value: {exc}") from exc
    if any(map(ne, scaled, units)):
        bad = next(r for r, s, u in zip(rows, scaled, units, strict=True) if s != u)
        raise ValueError(
            f"chargeback row {bad.resource_id}/{bad.identity_id} of {d}: amount {bad.amount} "
            "has more than 4 decimal places"
        )
    try:
        return np.array(units, dtype=np.int64)
    except OverflowError as exc:
        raise ValueError(f"a chargeback amount of {d} exceeds the storable range") from exc


def _one(cursor: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("an aggregate query returned no row")
    return row


@dataclass(frozen=True, slots=True)
class LineTotal:
    """One billing line against the rows allocated from it (line conservation check)."""

    key: tuple[Any, ...]
    billed: Decimal | None  # None: rows exist for a key with no billing line
    allocated: Decimal
    row_count: int

    @property
    def balanced(self) -> bool:
        return self.billed is not None and self.billed == self.allocated


@dataclass(frozen=True, slots=True)
class DateTotals:
    billed: Decimal
    allocated: Decimal
    unallocated: Decimal
    line_count: int
    row_count: int


class ChargebackRepository:
    """Rows keyed by the dimension key (plus extra key fields); one replace per date."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, extra_key_fields: Sequence[str]) -> None:
        self._conn = conn
        self.extra_key_fields = tuple(extra_key_fields)
        self._order = quoted((*CHARGEBACK_KEY, *self.extra_key_fields))

    # --- writes ---------------------------------------------------------------------

    def replace_date(self, d: date, rows: Sequence[ChargebackRow], calculation_id: str) -> int:
        """Delete the date's rows and insert ``rows`` in one transaction; returns the count.

        Rows must be merged already: two rows with one dimension key are refused,
        since storing both (or keeping one) would misstate the amount.
        """
        require_date(d, "billing date")
        if not calculation_id:
            raise ValueError("calculation_id must be a non-empty string")
        with gc_paused():
            df = self._frame(d, rows) if rows else None
        with atomic(self._conn):
            self._conn.execute("DELETE FROM chargebacks WHERE billing_date = ?", [d])
            if df is not None:
                insert_frame(self._conn, "_chargeback_stage", df, self._insert_sql(), [d, calculation_id])
                self._check_unique(d)
        return len(rows)

    def _frame(self, d: date, rows: Sequence[ChargebackRow]) -> Any:
        def column(name: str) -> list[Any]:
            return list(map(attrgetter(name), rows))

        def key_column(name: str) -> list[str]:
            return [value or "" for value in map(attrgetter(name), rows)]

        columns: dict[str, Any] = {
            "ecosystem": column("ecosystem"),
            "tenant_id": column("tenant_id"),
            "ts_us": self._timestamps(d, rows),
            "resource_id": key_column("resource_id"),
            "product_category": column("product_category"),
            "product_type": column("product_type"),
            "identity_id": column("identity_id"),
            "cost_type": [_COST_TYPE_TEXT.get(c) or str(c) for c in column("cost_type")],
            "allocation_method": key_column("allocation_method"),
            "allocation_detail": key_column("allocation_detail"),
        }
        self._check_values(d, columns)
        columns.update(self._dimensions(rows))
        columns["units"] = _units(d, rows)
        return frame(columns)

    @staticmethod
    def _timestamps(d: date, rows: Sequence[ChargebackRow]) -> np.ndarray[Any, Any]:
        """Epoch microseconds; a date's rows share few timestamps, so each is checked once."""
        stamps = list(map(attrgetter("timestamp"), rows))
        lookup: dict[datetime, int] = {}
        for stamp in set(stamps):
            ts = require_utc(stamp, f"a chargeback row timestamp of {d}")
            if ts.date() != d:
                raise ValueError(f"chargeback rows of {d} include a row dated {ts.isoformat()}")
            lookup[stamp] = epoch_us(ts)
        return np.array([lookup[stamp] for stamp in stamps], dtype=np.int64)

    @staticmethod
    def _check_values(d: date, columns: dict[str, Any]) -> None:
        bad_cost = set(columns["cost_type"]) - COST_TYPES
        if bad_cost:
            raise ValueError(f"chargeback rows of {d} have unknown cost_type(s) {sorted(bad_cost)}")
        if "" in set(columns["identity_id"]):
            raise ValueError(f"chargeback rows of {d} include a row with an empty identity_id")

    def _dimensions(self, rows: Sequence[ChargebackRow]) -> dict[str, list[str]]:
        allowed = set(self.extra_key_fields)
        undeclared = {name for r in rows if r.dimensions for name in r.dimensions} - allowed
        if undeclared:
            raise ValueError(
                f"chargeback rows carry dimension(s) {sorted(undeclared)} that are not extra key fields "
                f"{self.extra_key_fields}; they would not be stored"
            )
        return {name: [r.dimensions.get(name) or "" for r in rows] for name in self.extra_key_fields}

    def _insert_sql(self) -> str:
        names = (*_STRING_KEY, *self.extra_key_fields)
        return (
            f'INSERT INTO chargebacks (billing_date, "timestamp", {quoted(names)}, amount, calculation_id) '
            f"SELECT ?::DATE, {EPOCH_US_TO_TIMESTAMPTZ_SQL.format(col='ts_us')}, {quoted(names)}, "
            f"{UNITS_TO_DECIMAL_SQL.format(col='units')}, ? FROM _chargeback_stage"
        )

    def _check_unique(self, d: date) -> None:
        row = self._conn.execute(
            f"SELECT {self._order} FROM chargebacks WHERE billing_date = ? "
            f"GROUP BY ALL HAVING count(*) > 1 LIMIT 1",
            [d],
        ).fetchone()
        if row is not None:
            raise ValueError(
                f"chargeback rows of {d} contain the dimension key {row} more than once; merge them first"
            )

    # --- reads ----------------------------------------------------------------------

    def find_by_date(self, d: date) -> list[ChargebackRow]:
        """The date's rows ordered by dimension key; amounts have exactly 4 decimal places."""
        require_date(d, "billing date")
        names = (*_STRING_KEY, *self.extra_key_fields)
        with gc_paused():
            columns = self._conn.execute(
                f'SELECT epoch_us("timestamp") AS ts_us, {quoted(names)}, CAST(amount AS VARCHAR) AS amount '
                f"FROM chargebacks WHERE billing_date = ? ORDER BY {self._order}",
                [d],
            ).fetchnumpy()
            return self._rows({name: values.tolist() for name, values in columns.items()})

    def _rows(self, columns: dict[str, list[Any]]) -> list[ChargebackRow]:
        """``ChargebackRow``s built column-wise: each distinct timestamp and cost type is
        converted once, and the per-row work is left to ``map`` (a day is ~10^4–10^6 rows)."""
        count = len(columns["ts_us"])
        instants = {us: from_epoch_us(us) for us in set(columns["ts_us"])}
        cost_types = {str(c): c for c in CostType}
        extra = self.extra_key_fields
        dimensions: Any = (
            [
                dict(zip(extra, values, strict=True))
                for values in zip(*(columns[name] for name in extra), strict=True)
            ]
            if extra
            else map(dict, repeat((), count))
        )
        return list(
            map(
                ChargebackRow,
                columns["ecosystem"],
                columns["tenant_id"],
                map(instants.__getitem__, columns["ts_us"]),
                [value or None for value in columns["resource_id"]],
                columns["product_category"],
                columns["product_type"],
                columns["identity_id"],
                map(cost_types.__getitem__, columns["cost_type"]),
                # The exact text of DECIMAL(38,4): always 4 decimal places.
                map(Decimal, columns["amount"]),
                [value or None for value in columns["allocation_method"]],
                [value or None for value in columns["allocation_detail"]],
                dimensions,
                map(dict, repeat((), count)),
            )
        )

    def dates(self) -> list[date]:
        rows = self._conn.execute("SELECT DISTINCT billing_date FROM chargebacks ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    def count(self, d: date) -> int:
        row = self._conn.execute("SELECT count(*) FROM chargebacks WHERE billing_date = ?", [d]).fetchone()
        return int(row[0]) if row else 0

    def calculation_ids(self, d: date) -> list[str]:
        rows = self._conn.execute(
            "SELECT DISTINCT calculation_id FROM chargebacks WHERE billing_date = ? ORDER BY 1", [d]
        ).fetchall()
        return [r[0] for r in rows]

    def aggregate(self, start: date, end: date, bucket: Bucket) -> list[ChargebackRow]:
        """Rows of billing dates ``[start, end)`` summed per bucket (emitters.md §3).

        Grouped by ecosystem, tenant, bucket, resource, category, product type,
        identity, cost type and extra key fields; ``allocation_method`` is the greatest
        non-empty method of the group, ``allocation_detail`` is ``None``, the timestamp
        is the bucket's first day at 00:00 UTC. Exact sums; zero sums are kept.
        """
        require_date(start, "aggregation start")
        require_date(end, "aggregation end")
        if bucket not in ("day", "month"):
            raise ValueError(f"bucket must be 'day' or 'month', got {bucket!r}")
        bucket_sql = "billing_date" if bucket == "day" else "CAST(date_trunc('month', billing_date) AS DATE)"
        names = ("ecosystem", "tenant_id", "bucket", "resource_id", "product_category", "product_type")
        group = quoted((*names, "identity_id", "cost_type", *self.extra_key_fields))
        rows = self._conn.execute(
            f"SELECT {group}, sum(amount), max(nullif(allocation_method, '')) "
            f"FROM (SELECT *, {bucket_sql} AS bucket FROM chargebacks "
            "WHERE billing_date >= ? AND billing_date < ?) "
            f"GROUP BY {group} ORDER BY {group}",
            [start, end],
        ).fetchall()
        n = len(self.extra_key_fields)
        return [
            ChargebackRow(
                ecosystem=r[0],
                tenant_id=r[1],
                timestamp=day_start(r[2]),
                resource_id=key_in(r[3]),
                product_category=r[4],
                product_type=r[5],
                identity_id=r[6],
                cost_type=CostType(r[7]),
                amount=r[8 + n],
                allocation_method=r[9 + n],
                allocation_detail=None,
                dimensions=dict(zip(self.extra_key_fields, r[8 : 8 + n], strict=True)),
            )
            for r in rows
        ]

    # --- reconciliation (operations.md §7 checks) -------------------------------------

    def line_totals(self, d: date) -> list[LineTotal]:
        """Σ rows per billing natural key, full-outer-joined with the date's billing lines.

        Lines without rows show ``allocated = 0``; rows whose key matches no line
        show ``billed = None``. Ordered by natural key.
        """
        require_date(d, "billing date")
        key = quoted((*BILLING_KEY, *self.extra_key_fields))
        rows = self._conn.execute(
            f"WITH r AS (SELECT {key}, sum(amount) AS allocated, count(*) AS n FROM chargebacks "
            f"WHERE billing_date = $1 GROUP BY {key}), "
            f"b AS (SELECT {key}, total_cost FROM billing_lines WHERE billing_date = $1) "
            f"SELECT {key}, b.total_cost, coalesce(r.allocated, {MONEY_ZERO}), coalesce(r.n, 0) "
            f"FROM b FULL OUTER JOIN r USING ({key}) ORDER BY {key}",
            [d],
        ).fetchall()
        k = len(BILLING_KEY) + len(self.extra_key_fields)
        return [LineTotal((*r[:2], ts_in(r[2]), *r[3:k]), r[k], r[k + 1], int(r[k + 2])) for r in rows]

    def date_totals(self, d: date) -> DateTotals:
        """Billed, allocated and ``UNALLOCATED`` totals of one date (date conservation check)."""
        require_date(d, "billing date")
        billed = _one(
            self._conn.execute(
                f"SELECT coalesce(sum(total_cost), {MONEY_ZERO}), count(*) "
                "FROM billing_lines WHERE billing_date = ?",
                [d],
            )
        )
        allocated = _one(
            self._conn.execute(
                f"SELECT coalesce(sum(amount), {MONEY_ZERO}), "
                f"coalesce(sum(amount) FILTER (WHERE identity_id = ?), {MONEY_ZERO}), count(*) "
                "FROM chargebacks WHERE billing_date = ?",
                [UNALLOCATED, d],
            )
        )
        return DateTotals(
            billed=billed[0],
            allocated=allocated[0],
            unallocated=allocated[1],
            line_count=int(billed[1]),
            row_count=int(allocated[2]),
        )

    def precision_violations(self, d: date | None = None) -> int:
        """Stored amounts with more than 4 decimal places (0 by construction of DECIMAL(38,4))."""
        where, params = ("billing_date = ? AND", [d]) if d is not None else ("", [])
        row = self._conn.execute(
            f"SELECT count(*) FROM chargebacks WHERE {where} amount <> round(amount, 4)", params
        ).fetchone()
        return int(row[0]) if row else 0
