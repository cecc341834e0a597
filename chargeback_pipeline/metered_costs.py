"""Bills constructed from metrics: day buckets and GiB quantities (spec/self-managed-kafka.md §4).

Self-run services have no vendor bill. Their plugins price metric samples, and the
rules for turning samples into a day's quantity are shared: samples belong to the
UTC day ``D`` when ``D 00:00 <= ts < D+1 00:00`` (so the next midnight is never
counted twice), sizes are averaged over the day, transfers are summed. All maths is
``Decimal``, so the same samples always give the same bill.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal

from chargeback_pipeline.models import ZERO, MetricRow, require_utc

GIB = Decimal(2**30)
HOURS_PER_DAY = 24


def days_between(start: datetime, end: datetime) -> Iterator[datetime]:
    """Midnights of the whole UTC days in ``[start, end)``."""
    day = require_utc(start, "start")
    end = require_utc(end, "end")
    while day < end:
        yield day
        day += timedelta(days=1)


def samples_by_day(rows: Iterable[MetricRow]) -> dict[date, list[Decimal]]:
    """Sample values bucketed by the UTC day of their timestamp."""
    buckets: dict[date, list[Decimal]] = defaultdict(list)
    for row in rows:
        buckets[row.timestamp.date()].append(row.value)
    return dict(buckets)


def average_gib_hours(samples: Sequence[Decimal], hours: int = HOURS_PER_DAY) -> Decimal:
    """GiB-hours of a size gauge: ``(Σ samples × hours) / (n × 2^30)``; 0 without samples."""
    if not samples:
        return ZERO
    return (sum(samples, ZERO) * hours) / (len(samples) * GIB)


def total_gib(samples: Sequence[Decimal]) -> Decimal:
    """GiB transferred: ``Σ samples / 2^30`` of per-interval byte increases."""
    return sum(samples, ZERO) / GIB
