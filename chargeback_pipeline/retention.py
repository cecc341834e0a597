"""Retention (operations.md §13): drop a tenant's data older than ``retention_days``.

One transaction per tenant: dated tables lose every billing date before
``today - retention_days``; resources and identities only when they were deleted
before ``now - retention_days`` (live entities are never purged). Files already written
by emitters are not touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from chargeback_pipeline.recalculation import forget_inputs_before
from chargeback_pipeline.steps import TenantSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionResult:
    tenant: str
    first_kept_date: date
    entities_deleted_before: datetime
    removed: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    def describe(self) -> str:
        removed = ", ".join(f"{table} {count}" for table, count in sorted(self.removed.items()) if count)
        return (
            f"tenant '{self.tenant}': retention kept billing dates >= {self.first_kept_date} and entities "
            f"deleted after {self.entities_deleted_before.isoformat()}; removed {self.total} row(s)"
            + (f" ({removed})" if removed else "")
        )


def purge_tenant(session: TenantSession, now: datetime) -> RetentionResult:
    """Remove what fell out of the tenant's retention window, in one transaction."""
    days = timedelta(days=session.config.retention_days)
    first_kept = now.date() - days
    deleted_before = now - days
    db = session.db
    with db.transaction():
        removed = db.purge_before(first_kept, deleted_before)
        removed["calculation_inputs"] = forget_inputs_before(db, first_kept)
    result = RetentionResult(session.name, first_kept, deleted_before, removed)
    log.info("%s", result.describe())
    return result
