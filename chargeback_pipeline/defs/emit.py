"""Emitter sink assets: one per emitter name configured on any tenant.

A sink depends on ``chargebacks`` and hands the committed rows of its partition to the
tenant's emitter of that name, once per calculation (``emission.emit_dates``). Tenants
without an emitter of that name materialise a no-op with metadata saying so, so the
asset graph stays the same for every tenant.
"""

import re
from datetime import date
from typing import Any

import dagster as dg

from chargeback_pipeline import clock, emission
from chargeback_pipeline.defs.resources import ChargebackConfig, PluginRuntimes, TenantStorage
from chargeback_pipeline.defs.stepping import run_step
from chargeback_pipeline.steps import TenantSession

GROUP = "emit"


def sink_asset_name(emitter_name: str) -> str:
    return "emit_" + re.sub(r"[^A-Za-z0-9_]", "_", emitter_name)


def build_sink_asset(
    emitter_name: str, partitions_def: dg.PartitionsDefinition, chargebacks: dg.AssetsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        name=sink_asset_name(emitter_name),
        partitions_def=partitions_def,
        group_name=GROUP,
        deps=[chargebacks],
        kinds={"file"},
        description=f"Chargebacks written out by each tenant's emitter named '{emitter_name}'.",
    )
    def sink(
        context: dg.AssetExecutionContext,
        chargeback_config: ChargebackConfig,
        plugin_runtimes: PluginRuntimes,
        tenant_storage: TenantStorage,
    ) -> dg.MaterializeResult:
        def emit(session: TenantSession, dates: list[date]) -> dict[date, dict[str, Any]]:
            return emission.emit_dates(session, emitter_name, dates, clock.utc_today())

        return run_step(context, chargeback_config, plugin_runtimes, tenant_storage, emit)

    return sink
