"""The pipeline's notion of "now" and the date windows derived from it (operations.md §1).

Every date decision (refresh window, allowed dates, emitter lookback) goes through
:func:`utc_now`, so tests and replays can pin time with ``CHARGEBACK_NOW`` instead of
patching ``datetime`` in every module.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from chargeback_pipeline.errors import DateOutOfRangeError

NOW_ENV = "CHARGEBACK_NOW"


class DateLimits(Protocol):
    """The tenant fields the windows depend on (satisfied by ``config.TenantConfig``)."""

    @property
    def lookback_days(self) -> int: ...
    @property
    def cutoff_days(self) -> int: ...
    @property
    def retention_days(self) -> int: ...


def utc_now() -> datetime:
    """Current UTC time, or the pinned ``CHARGEBACK_NOW`` instant when that is set."""
    pinned = os.environ.get(NOW_ENV, "").strip()
    if not pinned:
        return datetime.now(UTC)
    return parse_instant(pinned, NOW_ENV)


def is_pinned() -> bool:
    """True when ``CHARGEBACK_NOW`` fixes the clock (tests, replays): partitions then stop moving."""
    return bool(os.environ.get(NOW_ENV, "").strip())


def parse_instant(text: str, what: str) -> datetime:
    """Parse an ISO-8601 instant; a bare date means its midnight UTC.

    A datetime without an offset is refused: guessing a zone silently shifts whole
    billing days.
    """
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what}={text!r} is not an ISO-8601 date or datetime") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"{what}={text!r} has no timezone; use e.g. 2026-03-09T00:00:00Z")
    return parsed.astimezone(UTC)


def utc_today() -> date:
    return utc_now().date()


def allowed_dates(tenant: DateLimits, today: date) -> tuple[date, date]:
    """Inclusive ``(first, last)`` billing dates a run may touch: retention to cutoff."""
    first = today - timedelta(days=tenant.retention_days)
    last = today - timedelta(days=tenant.cutoff_days + 1)
    return first, last


def refresh_window(tenant: DateLimits, today: date) -> list[date]:
    """Dates a scheduled full refresh re-gathers, oldest first (``lookback - cutoff`` dates)."""
    first = today - timedelta(days=tenant.lookback_days)
    count = tenant.lookback_days - tenant.cutoff_days
    return [first + timedelta(days=offset) for offset in range(max(count, 0))]


def check_date_allowed(tenant_name: str, tenant: DateLimits, d: date, today: date) -> None:
    """Refuse a billing date outside the allowed window, naming the limit that excludes it."""
    first, last = allowed_dates(tenant, today)
    if d > last:
        raise DateOutOfRangeError(
            f"tenant '{tenant_name}': date {d.isoformat()} is not allowed: cutoff_days="
            f"{tenant.cutoff_days} (today {today.isoformat()}; latest allowed date {last.isoformat()})"
        )
    if d < first:
        raise DateOutOfRangeError(
            f"tenant '{tenant_name}': date {d.isoformat()} is not allowed: retention_days="
            f"{tenant.retention_days} (today {today.isoformat()}; earliest allowed date {first.isoformat()})"
        )
