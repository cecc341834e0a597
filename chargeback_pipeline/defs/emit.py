"""Emitter sink assets: one per emitter name configured on any tenant.

A sink depends on ``chargebacks`` and hands the committed rows of its partition to the
tenant's emitter of that name. Tenants without an emitter of that name materialise a
no-op with metadata saying so, so the asset graph stays the same for every tenant.
"""

import re
from datetime import date
from typing import Any

import dagster as dg

from chargeback_pipeline import steps
from chargeback_pipeline.defs.resources import ChargebackConfig, PluginRuntimes, TenantStorage
from chargeback_pipeline.defs.stepping import is_scheduled_refresh, run_step
from chargeback_pipeline.refresh import emission_is_current
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
        skip_current = is_scheduled_refresh(context)

        def emit(session: TenantSession, dates: list[date]) -> dict[date, dict[str, Any]]:
            # A scheduled refresh does not rewrite a date already emitted from its current
            # calculation (operations.md §10); manual runs always emit.
            return {
                d: (
                    {"status": "already emitted from the current calculation"}
                    if skip_current and emission_is_current(session.db, emitter_name, d)
                    else steps.emit_date(session, emitter_name, d)
                )
                for d in dates
            }

        return run_step(context, chargeback_config, plugin_runtimes, tenant_storage, emit)

    return sink
