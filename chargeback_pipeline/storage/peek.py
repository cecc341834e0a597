"""A quick read-only look at a tenant's store without initialising its plugin.

Used by monitoring (the freshness check), which must not depend on a plugin being able
to start and must not keep a tenant's run waiting: it takes the tenant's lock with a
short timeout (``TenantBusyError`` when a run is writing) and reads only core tables.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from chargeback_pipeline.errors import StorageError
from chargeback_pipeline.storage.codec import load_json
from chargeback_pipeline.storage.locking import tenant_lock


@dataclass(frozen=True)
class StoreSummary:
    calculated_dates: list[date] = field(default_factory=list)
    gather_state: dict[str, Any] = field(default_factory=dict)


def summarise(path: Path, tenant_id: str, lock_timeout_s: float) -> StoreSummary:
    """Calculated dates (oldest first) and gather state of a store (empty without a store)."""
    if not path.exists():
        return StoreSummary()
    with tenant_lock(path, tenant_id=tenant_id, timeout_s=lock_timeout_s):
        try:
            conn = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as exc:
            raise StorageError(f"tenant '{tenant_id}' database {path}: cannot open: {exc}") from exc
        try:
            dates = conn.execute(
                "SELECT billing_date FROM pipeline_state WHERE tenant_id = ? AND chargeback_calculated "
                "ORDER BY billing_date",
                [tenant_id],
            ).fetchall()
            state = conn.execute(
                "SELECT counter_name, value FROM gather_state WHERE tenant_id = ?", [tenant_id]
            ).fetchall()
        except duckdb.Error as exc:
            raise StorageError(f"tenant '{tenant_id}' database {path}: cannot read: {exc}") from exc
        finally:
            with contextlib.suppress(duckdb.Error):
                conn.close()
    return StoreSummary([r[0] for r in dates], {name: load_json(value) for name, value in state})
