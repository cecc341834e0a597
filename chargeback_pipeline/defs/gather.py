"""Gather assets: billing lines, inventory, deletion detection and usage metrics."""

from datetime import date
from typing import Any

import dagster as dg

from chargeback_pipeline import clock, steps
from chargeback_pipeline.defs.resources import ChargebackConfig, PluginRuntimes, TenantStorage
from chargeback_pipeline.defs.stepping import run_step
from chargeback_pipeline.steps import TenantSession

GROUP = "gather"


def build_gather_assets(partitions_def: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(partitions_def=partitions_def, group_name=GROUP, kinds={"duckdb"})
    def billing_lines(
        context: dg.AssetExecutionContext,
        chargeback_config: ChargebackConfig,
        plugin_runtimes: PluginRuntimes,
        tenant_storage: TenantStorage,
    ) -> dg.MaterializeResult:
        """Billing lines of the tenant's cost input for the day, merged and quantised once."""
        return run_step(context, chargeback_config, plugin_runtimes, tenant_storage, steps.gather_billing)

    @dg.asset(partitions_def=partitions_def, group_name=GROUP, kinds={"duckdb"})
    def inventory(
        context: dg.AssetExecutionContext,
        chargeback_config: ChargebackConfig,
        plugin_runtimes: PluginRuntimes,
        tenant_storage: TenantStorage,
    ) -> dg.MaterializeResult:
        """Resources and identities, gathered once per run (and per refresh gap) for the tenant."""
        run_id = context.run.run_id

        def gather(session: TenantSession, dates: list[date]) -> dict[date, dict[str, Any]]:
            metadata = steps.gather_inventory(session, run_id, clock.utc_now())
            return dict.fromkeys(dates, metadata)

        return run_step(context, chargeback_config, plugin_runtimes, tenant_storage, gather)

    @dg.asset(partitions_def=partitions_def, group_name=GROUP, kinds={"duckdb"}, deps=[inventory])
    def resource_deletions(
        context: dg.AssetExecutionContext,
        chargeback_config: ChargebackConfig,
        plugin_runtimes: PluginRuntimes,
        tenant_storage: TenantStorage,
    ) -> dg.MaterializeResult:
        """Resources and identities the latest gather no longer returned, marked deleted."""

        def detect(session: TenantSession, dates: list[date]) -> dict[date, dict[str, Any]]:
            return dict.fromkeys(dates, steps.detect_deletions(session))

        return run_step(context, chargeback_config, plugin_runtimes, tenant_storage, detect)

    @dg.asset(
        partitions_def=partitions_def, group_name=GROUP, kinds={"duckdb"}, deps=[billing_lines, inventory]
    )
    def usage_metrics(
        context: dg.AssetExecutionContext,
        chargeback_config: ChargebackConfig,
        plugin_runtimes: PluginRuntimes,
        tenant_storage: TenantStorage,
    ) -> dg.MaterializeResult:
        """Usage per (resource, billing window) from the tenant's metrics source."""
        return run_step(context, chargeback_config, plugin_runtimes, tenant_storage, steps.fetch_usage_dates)

    return [billing_lines, inventory, resource_deletions, usage_metrics]
