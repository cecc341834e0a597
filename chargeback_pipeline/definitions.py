"""The one ``Definitions`` object: assets per lifecycle step, checks, jobs, schedules, resources.

Everything is built from the configuration file named by ``CHARGEBACK_CONFIG`` (or
``./config.yaml``); with neither, the bundled demo configuration is used so that
``dagster dev`` works on a fresh clone.
"""

from __future__ import annotations

import logging
import os
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from chargeback_pipeline import clock
from chargeback_pipeline.config import LoadedConfig, load_config
from chargeback_pipeline.defs.allocate import build_allocate_asset
from chargeback_pipeline.defs.checks import FRESHNESS, build_checks
from chargeback_pipeline.defs.emit import build_sink_asset
from chargeback_pipeline.defs.gather import build_gather_assets
from chargeback_pipeline.defs.partitions import build_partitions
from chargeback_pipeline.defs.policies import as_sink, with_backfill_policy
from chargeback_pipeline.defs.resources import build_resources
from chargeback_pipeline.defs.retention import build_retention_job
from chargeback_pipeline.defs.schedules import FRESHNESS_JOB, build_schedules, build_sink_automation

log = logging.getLogger(__name__)

PIPELINE_JOB = "chargeback_pipeline"
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "demo" / "config.yaml"


def resolve_config_path(*, quiet: bool = False) -> Path:
    """``$CHARGEBACK_CONFIG``, else ``./config.yaml``, else the bundled demo (with a warning)."""
    if env := os.environ.get("CHARGEBACK_CONFIG"):
        return Path(env).resolve()
    local = Path("config.yaml")
    if local.exists():
        return local.resolve()
    if not quiet:
        log.warning(
            "CHARGEBACK_CONFIG is not set and ./config.yaml does not exist; using the demo config %s",
            DEMO_CONFIG,
        )
    return DEMO_CONFIG


def partition_dates(loaded: LoadedConfig, today: date) -> tuple[date, date]:
    """Oldest retained date and newest settled date over all valid tenants."""
    tenants = list(loaded.tenants.values())
    retention = max((t.retention_days for t in tenants), default=250)
    cutoff = min((t.cutoff_days for t in tenants), default=5)
    return today - timedelta(days=retention), today - timedelta(days=cutoff + 1)


def build_definitions(config_path: Path) -> dg.Definitions:
    loaded = load_config(config_path)
    tenant_names = sorted(set(loaded.tenants) | set(loaded.tenant_errors))
    if not tenant_names:
        log.warning("%s defines no tenants; the asset graph is empty", config_path)
        return dg.Definitions(resources=build_resources(config_path))
    today = clock.utc_now().date()
    first, last = partition_dates(loaded, today)
    partitions_def = build_partitions(tenant_names, first, last, today=today, moving=not clock.is_pinned())
    gather_assets = [with_backfill_policy(a) for a in build_gather_assets(partitions_def)]
    chargebacks = with_backfill_policy(build_allocate_asset(partitions_def, gather_assets))
    checks = build_checks(partitions_def, chargebacks)
    freshness = dg.AssetSelection.checks(*[c for c in checks if FRESHNESS in {k.name for k in c.check_keys}])
    emitter_names = sorted(
        {spec.name for tenant in loaded.tenants.values() for spec in tenant.plugin_settings.emitters}
    )
    sinks = [as_sink(build_sink_asset(name, partitions_def, chargebacks)) for name in emitter_names]
    pipeline_job = dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.all() - freshness,
        description="Every lifecycle step for a tenant and billing date: gather → allocate → emit.",
    )
    freshness_job = dg.define_asset_job(
        FRESHNESS_JOB,
        selection=freshness,
        description="Flags tenants whose latest settled date has not been calculated.",
    )
    retention_job = build_retention_job(tenant_names)
    return dg.Definitions(
        assets=[*gather_assets, chargebacks, *sinks],
        asset_checks=checks,
        jobs=[pipeline_job, freshness_job, retention_job],
        schedules=build_schedules(loaded, pipeline_job, retention_job, freshness_job),
        sensors=build_sink_automation(sinks),
        resources=build_resources(config_path),
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(resolve_config_path())
