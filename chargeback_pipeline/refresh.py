"""What a scheduled refresh must do for one tenant (operations.md §9–§11), without Dagster.

The refresh schedule turns a :class:`TenantRefresh` into run requests; everything that
decides *which* dates need work lives here so it can be tested against a real tenant
database and reused by other launchers.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Literal

from chargeback_pipeline import clock, emission
from chargeback_pipeline.config import TenantConfig
from chargeback_pipeline.loader import discover_plugins
from chargeback_pipeline.runtime import open_runtime
from chargeback_pipeline.steps import (
    CONSECUTIVE_GATHER_FAILURES,
    LAST_GATHER_ERROR,
    LAST_SUCCESSFUL_GATHER_AT,
)
from chargeback_pipeline.storage import TenantDatabase, open_tenant_db

log = logging.getLogger(__name__)

SUSPENSION = "suspension"
RefreshMode = Literal["full", "throttled"]
MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class TenantRefresh:
    """The work one tick requests for one tenant.

    ``window``: dates re-gathered and recalculated (empty when throttled).
    ``recalculate``: dates whose billing is stored but not calculated, outside ``window``.
    ``emit``: emitter name → dates whose emission is pending and not covered above.
    """

    tenant: str
    mode: RefreshMode
    window: list[date] = field(default_factory=list)
    recalculate: list[date] = field(default_factory=list)
    emit: dict[str, list[date]] = field(default_factory=dict)

    @property
    def has_work(self) -> bool:
        return bool(self.window or self.recalculate or any(self.emit.values()))

    def describe(self) -> str:
        parts = [f"tenant '{self.tenant}': {self.mode} refresh"]
        if self.window:
            parts.append(f"window {self.window[0]} .. {self.window[-1]} ({len(self.window)} dates)")
        if self.recalculate:
            parts.append(f"recalculate {len(self.recalculate)} pending date(s)")
        pending = {name: len(dates) for name, dates in self.emit.items() if dates}
        if pending:
            parts.append(f"pending emissions {pending}")
        if len(parts) == 1:
            parts.append("nothing to do")
        return "; ".join(parts)


# --- schedule cadence ----------------------------------------------------------------------


def refresh_cron(interval_seconds: int) -> list[str]:
    """Cron strings firing every ``interval_seconds`` (rounded up to whole minutes).

    Cron cannot say "every 90 minutes", so the minutes of one UTC day are listed
    explicitly (one string per distinct minute-of-hour). Intervals that do not divide
    a day restart at midnight; intervals of a day or more fire at 00:00 every N days.
    """
    if interval_seconds <= 0:
        raise ValueError(f"refresh_interval must be > 0 seconds, got {interval_seconds}")
    minutes = math.ceil(interval_seconds / 60)
    if minutes >= MINUTES_PER_DAY:
        days = math.ceil(minutes / MINUTES_PER_DAY)
        return ["0 0 * * *" if days == 1 else f"0 0 */{days} * *"]
    if minutes < 60 and 60 % minutes == 0:
        return ["* * * * *" if minutes == 1 else f"*/{minutes} * * * *"]
    if minutes % 60 == 0 and MINUTES_PER_DAY % minutes == 0:
        hours = minutes // 60
        return ["0 * * * *" if hours == 1 else f"0 */{hours} * * *"]
    hours_by_minute: dict[int, list[int]] = {}
    for offset in range(0, MINUTES_PER_DAY, minutes):
        hours_by_minute.setdefault(offset % 60, []).append(offset // 60)
    return [
        f"{minute} {','.join(str(h) for h in hours)} * * *"
        for minute, hours in sorted(hours_by_minute.items())
    ]


def date_ranges(dates: Iterable[date]) -> list[tuple[date, date]]:
    """Consecutive runs of ``dates`` as inclusive ``(first, last)`` pairs, oldest first."""
    ranges: list[tuple[date, date]] = []
    for d in sorted(set(dates)):
        if ranges and d - ranges[-1][1] == timedelta(days=1):
            ranges[-1] = (ranges[-1][0], d)
        else:
            ranges.append((d, d))
    return ranges


# --- suspension (operations.md §11) ----------------------------------------------------------


def suspension_reason(db: TenantDatabase, tenant: TenantConfig) -> str | None:
    """Why scheduled refreshes skip this tenant, or ``None`` when it may run.

    A tenant is suspended once ``consecutive_gather_failures`` reaches
    ``gather_failure_threshold``. The suspension is persisted with the settings it
    happened under: a changed configuration lifts it (and resets the counter), and so
    does a manual run whose gather succeeds (the gather resets the counter).
    """
    state = db.gather_state
    failures = int(state.get(CONSECUTIVE_GATHER_FAILURES, 0) or 0)
    record = state.get(SUSPENSION)
    if failures < tenant.gather_failure_threshold:
        if record and not db.read_only:
            with db.transaction():
                state.delete(SUSPENSION)
        return None
    fingerprint = tenant.fingerprint()
    if record and record.get("settings") != fingerprint:
        if not db.read_only:
            with db.transaction():
                state.delete(SUSPENSION)
                state.set(CONSECUTIVE_GATHER_FAILURES, 0)
        log.info("tenant '%s': settings changed; suspension lifted", tenant.name)
        return None
    error = state.get(LAST_GATHER_ERROR) or "unknown error"
    if record is None and not db.read_only:
        with db.transaction():
            state.set(SUSPENSION, {"settings": fingerprint, "error": error, "failures": failures})
    return f"suspended after {failures} consecutive gather failures: {error}"


# --- planning ----------------------------------------------------------------------------------


@contextlib.contextmanager
def open_store_for_planning(
    tenant: TenantConfig, plugins_path: Path | None, lock_timeout_s: float
) -> Iterator[TenantDatabase | None]:
    """The tenant's store for a short look (``None`` before its first run).

    The plugin is initialised for its storage module (extra key fields); the lock wait is
    short because a held lock means a run of this tenant is in progress.
    """
    if not tenant.storage_path.exists():
        yield None
        return
    registry = discover_plugins(plugins_path)
    with (
        open_runtime(tenant.name, tenant, registry) as runtime,
        open_tenant_db(
            tenant.storage_path,
            ecosystem=runtime.ecosystem,
            tenant_id=runtime.tenant_id,
            storage_module=runtime.storage_module,
            lock_timeout_s=lock_timeout_s,
        ) as db,
    ):
        yield db


def plan_tenant_refresh(db: TenantDatabase | None, tenant: TenantConfig, now: datetime) -> TenantRefresh:
    """The work of one scheduled tick for ``tenant`` (``db`` is ``None`` before its first run)."""
    today = now.date()
    window = clock.refresh_window(tenant, today)
    if db is None:
        return TenantRefresh(tenant.name, "full", window=window)
    mode = _mode(db, tenant, now)
    first_allowed, last_allowed = clock.allowed_dates(tenant, today)
    pending_calc = [d for d in db.state.pending_calculation() if first_allowed <= d <= last_allowed]
    covered = set(window) if mode == "full" else set()
    recalculate = [d for d in pending_calc if d not in covered]
    covered |= set(recalculate)
    emit = {
        spec.name: [
            d for d in emission.pending_dates(db, spec, today) if d not in covered and d >= first_allowed
        ]
        for spec in tenant.plugin_settings.emitters
    }
    return TenantRefresh(
        tenant.name,
        mode,
        window=window if mode == "full" else [],
        recalculate=recalculate,
        emit={name: dates for name, dates in emit.items() if dates},
    )


def _mode(db: TenantDatabase, tenant: TenantConfig, now: datetime) -> RefreshMode:
    last_ok = db.gather_state.get(LAST_SUCCESSFUL_GATHER_AT)
    if not last_ok:
        return "full"
    gap = timedelta(seconds=tenant.plugin_settings.min_refresh_gap_seconds)
    return "full" if now - datetime.fromisoformat(last_ok) >= gap else "throttled"
