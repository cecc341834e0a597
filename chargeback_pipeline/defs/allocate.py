"""The chargebacks asset: every billing line of a tenant-day split across identities.

Its checks (reconciliation, UNALLOCATED share, freshness) live in ``defs/checks.py``.
"""

from datetime import date
from typing import Any

import dagster as dg

from chargeback_pipeline.defs.resources import ChargebackConfig, PluginRuntimes, TenantStorage
from chargeback_pipeline.defs.stepping import is_scheduled_refresh, run_step
from chargeback_pipeline.recalculation import calculate_unless_unchanged
from chargeback_pipeline.steps import TenantSession

GROUP = "allocate"


def build_allocate_asset(
    partitions_def: dg.PartitionsDefinition, upstream: list[dg.AssetsDefinition]
) -> dg.AssetsDefinition:
    by_name = {a.key.to_user_string(): a for a in upstream}

    @dg.asset(
        partitions_def=partitions_def,
        group_name=GROUP,
        kinds={"duckdb"},
        deps=[by_name["billing_lines"], by_name["resource_deletions"], by_name["usage_metrics"]],
    )
    def chargebacks(
        context: dg.AssetExecutionContext,
        chargeback_config: ChargebackConfig,
        plugin_runtimes: PluginRuntimes,
        tenant_storage: TenantStorage,
    ) -> dg.MaterializeResult:
        """Every billing line of the day split across identities; committed in one transaction.

        Runs of the refresh schedule keep a date's current calculation when its inputs
        did not change (``recalculated: false`` in the metadata); manual runs always
        recalculate.
        """
        skip_unchanged = is_scheduled_refresh(context)

        def calculate(session: TenantSession, dates: list[date]) -> dict[date, dict[str, Any]]:
            return {d: calculate_unless_unchanged(session, d, skip_unchanged=skip_unchanged) for d in dates}

        return run_step(context, chargeback_config, plugin_runtimes, tenant_storage, calculate)

    return chargebacks
