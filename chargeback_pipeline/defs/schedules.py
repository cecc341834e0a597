"""Schedules and sensors: the refresh, daily retention, hourly freshness, sink automation.

* ``chargeback_refresh`` (operations.md §9): every ``features.refresh_interval``; on by
  default when ``features.enable_periodic_refresh`` is true. Per valid, non-suspended
  tenant without a run in progress it requests a full refresh of the refresh window
  (one range run) or, when throttled, only the pending work: uncalculated dates and
  pending emissions, one range run per consecutive block of dates.
* ``chargeback_retention_daily``: one retention run per tenant every day at 02:30 UTC.
* ``chargeback_freshness_hourly``: runs the freshness check at minute 15.
* ``chargeback_sink_automation``: the declarative-automation sensor that re-emits a
  sink partition whenever its ``chargebacks`` partition changed (defs/policies.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime

import dagster as dg

from chargeback_pipeline import clock
from chargeback_pipeline.config import LoadedConfig
from chargeback_pipeline.defs.emit import sink_asset_name
from chargeback_pipeline.defs.partitions import key_string
from chargeback_pipeline.defs.tags import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    REFRESH_TAG,
    TENANT_TAG,
)
from chargeback_pipeline.errors import TenantBusyError
from chargeback_pipeline.refresh import (
    TenantRefresh,
    date_ranges,
    open_store_for_planning,
    plan_tenant_refresh,
    refresh_cron,
    suspension_reason,
)

log = logging.getLogger(__name__)

REFRESH_SCHEDULE = "chargeback_refresh"
RETENTION_SCHEDULE = "chargeback_retention_daily"
FRESHNESS_SCHEDULE = "chargeback_freshness_hourly"
FRESHNESS_JOB = "chargeback_freshness"
SINK_AUTOMATION_SENSOR = "chargeback_sink_automation"
RETENTION_CRON = "30 2 * * *"
FRESHNESS_CRON = "15 * * * *"
# A held lock at tick time means a run of the tenant is writing: skip, do not wait.
PLANNING_LOCK_TIMEOUT_S = 5.0
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def build_schedules(
    loaded: LoadedConfig,
    pipeline_job: dg.UnresolvedAssetJobDefinition,
    retention_job: dg.JobDefinition,
    freshness_job: dg.UnresolvedAssetJobDefinition,
) -> list[dg.ScheduleDefinition]:
    features = loaded.settings.features
    crons = refresh_cron(features.refresh_interval)

    @dg.schedule(
        name=REFRESH_SCHEDULE,
        job=pipeline_job,
        cron_schedule=crons[0] if len(crons) == 1 else crons,
        execution_timezone="UTC",
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if features.enable_periodic_refresh
            else dg.DefaultScheduleStatus.STOPPED
        ),
        description=(
            f"Every {features.refresh_interval}s: re-gather and recalculate each tenant's refresh window, "
            "or only its pending work when throttled by min_refresh_gap_seconds."
        ),
    )
    def chargeback_refresh(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        return refresh_requests(context, loaded)

    @dg.schedule(
        name=RETENTION_SCHEDULE,
        job=retention_job,
        cron_schedule=RETENTION_CRON,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Daily: remove each tenant's data older than its retention_days.",
    )
    def chargeback_retention_daily(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        tick = _tick_id(context)
        return [
            dg.RunRequest(
                run_key=f"{tenant}:retention:{tick}", partition_key=tenant, tags={TENANT_TAG: tenant}
            )
            for tenant in sorted(loaded.tenants)
        ]

    freshness = dg.ScheduleDefinition(
        name=FRESHNESS_SCHEDULE,
        job=freshness_job,
        cron_schedule=FRESHNESS_CRON,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Hourly: flag tenants whose latest settled date has not been calculated.",
    )
    return [chargeback_refresh, chargeback_retention_daily, freshness]


def build_sink_automation(
    sinks: Sequence[dg.AssetsDefinition],
) -> list[dg.AutomationConditionSensorDefinition]:
    if not sinks:
        return []
    return [
        dg.AutomationConditionSensorDefinition(
            SINK_AUTOMATION_SENSOR,
            target=dg.AssetSelection.assets(*sinks),
            default_status=dg.DefaultSensorStatus.RUNNING,
            description="Re-emits a tenant-day whenever its chargebacks were materialised again.",
        )
    ]


# --- the refresh tick --------------------------------------------------------------------------


def refresh_requests(
    context: dg.ScheduleEvaluationContext, loaded: LoadedConfig
) -> list[dg.RunRequest] | dg.SkipReason:
    now = clock.utc_now()
    tick = _tick_id(context)
    requests: list[dg.RunRequest] = []
    suspended: list[str] = []
    for name in sorted(loaded.tenant_errors):
        _log(context, logging.WARNING, f"tenant '{name}' is excluded by configuration errors; not refreshed")
    for name, tenant in sorted(loaded.tenants.items()):
        if _run_in_progress(context.instance, name):
            _log(context, logging.INFO, f"tenant '{name}': already running; skipped this tick")
            continue
        try:
            with open_store_for_planning(tenant, loaded.settings.plugins_path, PLANNING_LOCK_TIMEOUT_S) as db:
                reason = suspension_reason(db, tenant) if db is not None else None
                plan = None if reason else plan_tenant_refresh(db, tenant, now)
        except TenantBusyError:
            _log(context, logging.INFO, f"tenant '{name}': already running (store locked); skipped this tick")
            continue
        except Exception as exc:
            # The tenant's own run will fail with the full message; others are unaffected.
            _log(context, logging.WARNING, f"tenant '{name}': cannot read its store ({exc}); full refresh")
            reason, plan = None, plan_tenant_refresh(None, tenant, now)
        if reason:
            suspended.append(name)
            _log(context, logging.ERROR, f"tenant {name} {reason}")
            continue
        assert plan is not None
        _log(context, logging.INFO, plan.describe())
        requests.extend(plan_requests(plan, _sink_names(loaded, name), tick))
    if loaded.tenants and len(suspended) == len(loaded.tenants):
        _log(context, logging.CRITICAL, f"every valid tenant is suspended: {', '.join(suspended)}")
    return requests or dg.SkipReason("no tenant has work to request at this tick")


def plan_requests(plan: TenantRefresh, sink_names: list[str], tick: str) -> list[dg.RunRequest]:
    """One range run for the window, then one per consecutive block of pending dates."""
    tenant = plan.tenant
    requests = []
    if plan.window:
        requests.append(_range_request(tenant, plan.window[0], plan.window[-1], None, "full", tick))
    sinks = [dg.AssetKey(name) for name in sink_names]
    for first, last in date_ranges(plan.recalculate):
        requests.append(
            _range_request(tenant, first, last, [dg.AssetKey("chargebacks"), *sinks], "recalculate", tick)
        )
    pending_emit = sorted({d for dates in plan.emit.values() for d in dates})
    for first, last in date_ranges(pending_emit):
        requests.append(_range_request(tenant, first, last, sinks, "emit", tick))
    return requests


def _range_request(
    tenant: str, first: date, last: date, assets: list[dg.AssetKey] | None, kind: str, tick: str
) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"{tenant}:{kind}:{first}:{last}:{tick}",
        asset_selection=assets,
        tags={
            TENANT_TAG: tenant,
            REFRESH_TAG: kind,
            RANGE_START_TAG: key_string(tenant, first),
            RANGE_END_TAG: key_string(tenant, last),
        },
    )


def _sink_names(loaded: LoadedConfig, tenant: str) -> list[str]:
    return [sink_asset_name(spec.name) for spec in loaded.tenants[tenant].plugin_settings.emitters]


def _run_in_progress(instance: dg.DagsterInstance, tenant: str) -> bool:
    runs = instance.get_run_records(
        filters=dg.RunsFilter(tags={TENANT_TAG: tenant}, statuses=IN_PROGRESS), limit=1
    )
    return bool(runs)


def _tick_id(context: dg.ScheduleEvaluationContext) -> str:
    scheduled = context.scheduled_execution_time
    return (scheduled or datetime.now().astimezone()).isoformat()


def _log(context: dg.ScheduleEvaluationContext, level: int, message: str) -> None:
    """To the tick's log in the UI and to the process log (so tests and operators see both)."""
    log.log(level, message)
    getattr(context.log, logging.getLevelName(level).lower())(message)
