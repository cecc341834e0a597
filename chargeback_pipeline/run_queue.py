"""The Dagster run coordinator of the chargeback instance (configured in ``dagster.yaml``).

Dagster's queue limits runs by tag, but a run launched from the UI or by a backfill
over a range of dates carries only ``dagster/asset_partition_range_start/_end`` tags,
not the tenant (spec/dagster-notes.md §4). This coordinator is the standard queued
coordinator plus two things:

* on submission it derives the ``tenant`` tag from the run's partition tags when the
  launcher did not set it, so *every* single-tenant run is serialised per tenant by the
  ``tenant`` limit however it was launched (schedule, backfill, UI, GraphQL);
* it adds a queue limit on ``chargeback/tenant_run`` equal to
  ``features.max_parallel_tenants`` of the chargeback configuration, so the number of
  tenants running at once follows ``config.yaml`` instead of a second copy here.

A run whose range spans several tenants (a backfill of fewer dates than tenants) is
tagged ``chargeback/tenants=<first>..<last>``; it processes its tenants one after the
other, and the per-tenant file lock keeps it from writing a tenant's database at the
same time as another run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster._core.run_coordinator.base import SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator, RunQueueConfig
from dagster._core.storage.dagster_run import DagsterRun

from chargeback_pipeline.defs.tags import (
    PARTITION_TAG,
    PARTITION_TENANT_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    TENANT_TAG,
    TENANTS_TAG,
)

log = logging.getLogger(__name__)

TENANT_RUN_TAG = "chargeback/tenant_run"
RETENTION_JOB = "chargeback_retention"


def derived_tenant_tags(tags: Mapping[str, str], job_name: str | None) -> dict[str, str]:
    """Tags to add to a run so the queue can limit it per tenant (empty for other runs)."""
    tenant = tags.get(TENANT_TAG) or tags.get(PARTITION_TENANT_TAG)
    if not tenant and job_name == RETENTION_JOB:
        tenant = tags.get(PARTITION_TAG)
    if tenant:
        extra = {TENANT_RUN_TAG: "1"}
        if TENANT_TAG not in tags:
            extra[TENANT_TAG] = tenant
        return extra
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if not start or not end or "|" not in start or "|" not in end:
        return {}
    first, last = start.split("|", 1)[1], end.split("|", 1)[1]
    if first == last:
        return {TENANT_TAG: first, TENANT_RUN_TAG: "1"}
    return {TENANTS_TAG: f"{first}..{last}", TENANT_RUN_TAG: "1"}


def max_parallel_tenants(config_path: Path) -> int | None:
    """``features.max_parallel_tenants`` of the configuration, ``None`` if it cannot be read."""
    from chargeback_pipeline.config import load_config

    try:
        return load_config(config_path).settings.features.max_parallel_tenants
    except Exception as exc:
        log.warning("cannot read max_parallel_tenants from %s: %s", config_path, exc)
        return None


class TenantQueuedRunCoordinator(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` that tags runs with their tenant and limits parallel tenants."""

    _cached_limit: tuple[str, float, int | None] | None = None

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        extra = derived_tenant_tags(run.tags, run.job_name)
        if extra:
            self._instance.add_run_tags(run.run_id, extra)
            context = SubmitRunContext(run.with_tags({**run.tags, **extra}), context.workspace)
        return super().submit_run(context)

    def get_run_queue_config(self) -> RunQueueConfig:
        config = super().get_run_queue_config()
        limit = self._parallel_tenant_limit()
        if limit is None:
            return config
        limits: list[Mapping[str, Any]] = [
            *[x for x in config.tag_concurrency_limits if x.get("key") != TENANT_RUN_TAG],
            {"key": TENANT_RUN_TAG, "limit": limit},
        ]
        return config._replace(tag_concurrency_limits=limits)

    def _parallel_tenant_limit(self) -> int | None:
        """Re-read only when the configuration file changed (the daemon asks every few seconds)."""
        from chargeback_pipeline.definitions import resolve_config_path

        path = resolve_config_path(quiet=True)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        key = (str(path), mtime)
        if self._cached_limit is None or self._cached_limit[:2] != key:
            self._cached_limit = (*key, max_parallel_tenants(path))
        return self._cached_limit[2]
