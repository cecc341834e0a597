"""Glue between a Dagster asset invocation and the plain step functions in ``steps``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import dagster as dg

from chargeback_pipeline.defs.partitions import dates_by_tenant
from chargeback_pipeline.defs.resources import ChargebackConfig, PluginRuntimes, TenantStorage
from chargeback_pipeline.steps import TenantSession

# A step gets the tenant's session and the run's dates of that tenant, and returns
# metadata per date.
TenantStep = Callable[[TenantSession, list[date]], dict[date, dict[str, Any]]]


def run_step(
    context: dg.AssetExecutionContext,
    config: ChargebackConfig,
    runtimes: PluginRuntimes,
    storage: TenantStorage,
    step: TenantStep,
) -> dg.MaterializeResult:
    """Run ``step`` for every tenant of the run's partitions, refusing dates outside the window."""
    per_date: dict[str, dict[str, Any]] = {}
    for tenant, dates in dates_by_tenant(list(context.partition_keys)).items():
        for d in dates:
            config.check_date(tenant, d)
        with storage.session(tenant, runtimes) as session:
            for d, metadata in step(session, dates).items():
                per_date[f"{d.isoformat()}|{tenant}"] = metadata
    return dg.MaterializeResult(metadata=_as_metadata(per_date))


def per_date(fn: Callable[[TenantSession, date], dict[str, Any]]) -> TenantStep:
    """Adapt a one-date step to the many-dates signature, oldest date first."""

    def step(session: TenantSession, dates: list[date]) -> dict[date, dict[str, Any]]:
        return {d: fn(session, d) for d in dates}

    return step


def _as_metadata(per_key: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if len(per_key) == 1:
        return next(iter(per_key.values()))
    return {"partitions": len(per_key), "per_partition": dg.MetadataValue.json(per_key)}
