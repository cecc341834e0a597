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
  tenants running at once follows ``config.yaml`` instead of a second copy here;
* it sets Dagster's ``dagster/max_runtime`` tag from the tenant's
  ``tenant_execution_timeout_seconds`` (the sum over the tenants of a multi-tenant run,
  which processes them one after the other), so the daemon's run monitoring
  (``run_monitoring`` in ``dagster.yaml``) fails a run that hangs past it.

A run whose range spans several tenants (a backfill of fewer dates than tenants) is
tagged ``chargeback/tenants=<first>..<last>``; it processes its tenants one after the
other, and the per-tenant file lock keeps it from writing a tenant's database at the
same time as another run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster._core.run_coordinator.base import SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator, RunQueueConfig
from dagster._core.storage.dagster_run import DagsterRun

from chargeback_pipeline.defs.tags import (
    MAX_RUNTIME_TAG,
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


def run_tenants(tags: Mapping[str, str], tenants: list[str]) -> list[str]:
    """The configured tenants a tagged run processes (``tenants`` is the configured, sorted list)."""
    if TENANT_TAG in tags:
        return [tags[TENANT_TAG]]
    first, _, last = tags.get(TENANTS_TAG, "").partition("..")
    return [t for t in tenants if first <= t <= last] if first and last else []


def max_runtime_tag(tags: Mapping[str, str], timeouts: Mapping[str, int]) -> dict[str, str]:
    """``dagster/max_runtime`` for a run, from the timeouts of the tenants it processes.

    Nothing when the launcher set one already, when the run is not a tenant run, or when
    any of its tenants has no limit (0) or is unknown to the configuration.
    """
    if MAX_RUNTIME_TAG in tags:
        return {}
    tenants = run_tenants(tags, sorted(timeouts))
    seconds = [timeouts.get(t, 0) for t in tenants]
    if not seconds or 0 in seconds:
        return {}
    return {MAX_RUNTIME_TAG: str(sum(seconds))}


@dataclass(frozen=True)
class QueueSettings:
    """What the coordinator reads from the chargeback configuration."""

    max_parallel_tenants: int | None
    timeouts: Mapping[str, int]


def queue_settings(config_path: Path) -> QueueSettings:
    """The configuration's parallel-tenant limit and tenant timeouts (nothing if unreadable)."""
    from chargeback_pipeline.config import load_config

    try:
        loaded = load_config(config_path)
    except Exception as exc:
        log.warning("cannot read the run queue settings from %s: %s", config_path, exc)
        return QueueSettings(None, {})
    timeouts = {t: s.tenant_execution_timeout_seconds for t, s in loaded.tenants.items()}
    return QueueSettings(loaded.settings.features.max_parallel_tenants, timeouts)


class TenantQueuedRunCoordinator(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` that tags runs with their tenant and limits parallel tenants."""

    _cached: tuple[str, float, QueueSettings] | None = None

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        extra = derived_tenant_tags(run.tags, run.job_name)
        if extra:
            extra.update(max_runtime_tag({**run.tags, **extra}, self._settings().timeouts))
            self._instance.add_run_tags(run.run_id, extra)
            context = SubmitRunContext(run.with_tags({**run.tags, **extra}), context.workspace)
        return super().submit_run(context)

    def get_run_queue_config(self) -> RunQueueConfig:
        config = super().get_run_queue_config()
        limit = self._settings().max_parallel_tenants
        if limit is None:
            return config
        limits: list[Mapping[str, Any]] = [
            *[x for x in config.tag_concurrency_limits if x.get("key") != TENANT_RUN_TAG],
            {"key": TENANT_RUN_TAG, "limit": limit},
        ]
        return config._replace(tag_concurrency_limits=limits)

    def _settings(self) -> QueueSettings:
        """Re-read only when the configuration file changed (the daemon asks every few seconds)."""
        from chargeback_pipeline.definitions import resolve_config_path

        path = resolve_config_path(quiet=True)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return QueueSettings(None, {})
        if self._cached is None or self._cached[:2] != (str(path), mtime):
            self._cached = (str(path), mtime, queue_settings(path))
        return self._cached[2]
