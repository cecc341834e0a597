"""Emitter aggregation (spec/emitters.md §2-§3) as pure functions over chargeback rows.

Independent of storage on purpose: ``StorageBackend.chargebacks_aggregated`` and the
sink step can share one definition of "a daily/monthly row", and it can be tested with
plain lists. Amounts are summed exactly (sums of 4-dp ``Decimal`` values stay 4-dp);
nothing here rounds money.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from chargeback_pipeline.models import ChargebackRow, CostType, day_start, require_utc

Aggregation = Literal["hourly", "daily", "monthly"] | None
Bucket = Literal["day", "month"]

AGGREGATIONS: tuple[str, ...] = ("hourly", "daily", "monthly")
GRANULARITY_LEVELS: dict[str, int] = {"hourly": 0, "daily": 1, "monthly": 2}


def check_aggregation(aggregation: str | None, chargeback_granularity: str = "daily") -> None:
    """Refuse an aggregation finer than the tenant's chargeback granularity.

    Emitting hourly rows from daily chargebacks would suggest a precision that the
    calculation never had.
    """
    if chargeback_granularity not in GRANULARITY_LEVELS:
        raise ValueError(
            f"chargeback_granularity {chargeback_granularity!r} is not one of {', '.join(AGGREGATIONS)}"
        )
    if aggregation is None:
        return
    if aggregation not in GRANULARITY_LEVELS:
        raise ValueError(f"aggregation {aggregation!r} is not one of null, {', '.join(AGGREGATIONS)}")
    if GRANULARITY_LEVELS[aggregation] < GRANULARITY_LEVELS[chargeback_granularity]:
        raise ValueError(
            f"aggregation {aggregation!r} is finer than chargeback_granularity {chargeback_granularity!r}"
        )


def bucket_of(aggregation: str | None) -> Bucket | None:
    """The storage bucket (``chargebacks_aggregated``) an aggregation reads, if any."""
    if aggregation == "daily":
        return "day"
    if aggregation == "monthly":
        return "month"
    return None


def bucket_date(d: date, aggregation: str | None) -> date:
    """The ``date`` an emitter is called with for billing date ``d`` (monthly → the 1st)."""
    return d.replace(day=1) if aggregation == "monthly" else d


def bucket_range(d: date, aggregation: str | None) -> tuple[date, date]:
    """Half-open ``[start, end)`` of billing dates that one emission of ``d`` covers."""
    if aggregation != "monthly":
        return d, d + timedelta(days=1)
    start = d.replace(day=1)
    return start, _next_month(start)


def group_dates_by_bucket(dates: Iterable[date], aggregation: str | None) -> dict[date, list[date]]:
    """Pending dates grouped per emission, both levels ascending (emitters.md §6).

    A monthly spec emits each month once, then records the outcome on every pending
    date of that month; other specs emit every date on its own.
    """
    groups: dict[date, list[date]] = {}
    for d in sorted(set(dates)):
        groups.setdefault(bucket_date(d, aggregation), []).append(d)
    return groups


def aggregate_rows(
    rows: Iterable[ChargebackRow],
    aggregation: str | None,
    extra_key_fields: Sequence[str] | None = None,
) -> list[ChargebackRow]:
    """The rows handed to an emitter for one call (emitters.md §3).

    ``null``/``hourly`` return the rows unchanged. ``daily``/``monthly`` group by
    ``(ecosystem, tenant_id, bucket, resource_id, product_category, product_type,
    identity_id, cost_type, *extra dimensions)`` and order by that key (``None`` as
    ``""``). ``extra_key_fields`` is the plugin's declared order; ``None`` means the
    sorted names found on the rows. A row carrying a dimension outside the declared
    fields is an error, because merging it away would make rows that differ only by,
    say, environment look like one.
    """
    if aggregation is None or aggregation == "hourly":
        return list(rows)
    if aggregation not in ("daily", "monthly"):
        raise ValueError(f"aggregation {aggregation!r} is not one of null, {', '.join(AGGREGATIONS)}")
    materialised = list(rows)
    fields = _dimension_fields(materialised, extra_key_fields)
    groups: dict[tuple[Any, ...], _Group] = {}
    for row in materialised:
        key = _group_key(row, aggregation, fields)
        group = groups.get(key)
        if group is None:
            # key = (eco, tenant, bucket start, 5 row fields, *dimension values)
            groups[key] = _Group.start(row, key[2], dict(zip(fields, key[8:], strict=True)))
        else:
            group.add(row)
    result = [group.to_row() for group in groups.values()]
    result.sort(key=lambda r: aggregated_sort_key(r, fields))
    return result


def aggregated_sort_key(row: ChargebackRow, extra_key_fields: Sequence[str] = ()) -> tuple[Any, ...]:
    """The grouping key as an ordering key, with ``None`` as ``""``."""
    return (
        row.ecosystem,
        row.tenant_id,
        row.timestamp,
        row.resource_id or "",
        row.product_category,
        row.product_type,
        row.identity_id,
        str(row.cost_type),
        *(row.dimensions.get(name) or "" for name in extra_key_fields),
    )


@dataclass(slots=True)
class _Group:
    """Running total of one aggregated row; exact ``Decimal`` addition only."""

    template: ChargebackRow
    bucket_start: datetime
    dimensions: dict[str, str | None]
    amount: Decimal
    method: str | None

    @classmethod
    def start(cls, row: ChargebackRow, bucket_start: datetime, dimensions: dict[str, str | None]) -> _Group:
        return cls(row, bucket_start, dimensions, row.amount, row.allocation_method)

    def add(self, row: ChargebackRow) -> None:
        self.amount += row.amount
        if row.allocation_method is not None and (self.method is None or row.allocation_method > self.method):
            self.method = row.allocation_method

    def to_row(self) -> ChargebackRow:
        base = self.template
        return ChargebackRow(
            ecosystem=base.ecosystem,
            tenant_id=base.tenant_id,
            timestamp=self.bucket_start,
            resource_id=base.resource_id,
            product_category=base.product_category,
            product_type=base.product_type,
            identity_id=base.identity_id,
            cost_type=CostType(base.cost_type),
            amount=self.amount,
            allocation_method=self.method,
            allocation_detail=None,
            dimensions={name: value for name, value in self.dimensions.items() if value is not None},
            metadata={},
        )


def _group_key(row: ChargebackRow, aggregation: str, fields: Sequence[str]) -> tuple[Any, ...]:
    return (
        row.ecosystem,
        row.tenant_id,
        _bucket_start(row.timestamp, aggregation),
        row.resource_id,
        row.product_category,
        row.product_type,
        row.identity_id,
        str(row.cost_type),
        *(row.dimensions.get(name) for name in fields),
    )


def _bucket_start(timestamp: datetime, aggregation: str) -> datetime:
    day = require_utc(timestamp, "chargeback row timestamp").date()
    return day_start(day.replace(day=1) if aggregation == "monthly" else day)


def _dimension_fields(rows: Sequence[ChargebackRow], declared: Sequence[str] | None) -> tuple[str, ...]:
    found = {name for row in rows for name in row.dimensions}
    if declared is None:
        return tuple(sorted(found))
    undeclared = sorted(found.difference(declared))
    if undeclared:
        raise ValueError(
            f"chargeback rows carry dimension(s) {', '.join(undeclared)} not declared in "
            f"extra_key_fields ({', '.join(declared) or 'none'})"
        )
    return tuple(declared)


def _next_month(first: date) -> date:
    return (
        first.replace(year=first.year + 1, month=1)
        if first.month == 12
        else first.replace(month=first.month + 1)
    )
