"""The chargebacks asset and the reconciliation check that guards it."""

from typing import Any

import dagster as dg

from chargeback_pipeline import steps
from chargeback_pipeline.defs.partitions import dates_by_tenant
from chargeback_pipeline.defs.resources import ChargebackConfig, PluginRuntimes, TenantStorage
from chargeback_pipeline.defs.stepping import per_date, run_step
from chargeback_pipeline.models import ZERO
from chargeback_pipeline.steps import TenantSession, money

GROUP = "allocate"
MAX_LISTED_LINES = 20


def build_allocate_assets(
    partitions_def: dg.PartitionsDefinition, upstream: list[dg.AssetsDefinition]
) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
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
        """Every billing line of the day split across identities; committed in one transaction."""
        return run_step(
            context, chargeback_config, plugin_runtimes, tenant_storage, per_date(steps.calculate_chargebacks)
        )

    @dg.asset_check(asset=chargebacks, partitions_def=partitions_def, blocking=True)
    def chargebacks_reconcile_with_billing(
        context: dg.AssetCheckExecutionContext,
        plugin_runtimes: PluginRuntimes,
        tenant_storage: TenantStorage,
    ) -> dg.AssetCheckResult:
        """For every billing line, its chargeback rows sum exactly to its total cost."""
        results: dict[str, dict[str, Any]] = {}
        for tenant, dates in dates_by_tenant(list(context.partition_keys)).items():
            with tenant_storage.session(tenant, plugin_runtimes) as session:
                for d in dates:
                    results[f"{d.isoformat()}|{tenant}"] = reconcile(session, d)
        passed = all(r["passed"] for r in results.values())
        metadata = (
            next(iter(results.values()))
            if len(results) == 1
            else {"per_partition": dg.MetadataValue.json(results)}
        )
        return dg.AssetCheckResult(passed=passed, metadata=metadata)

    return chargebacks, chargebacks_reconcile_with_billing


def reconcile(session: TenantSession, d: Any) -> dict[str, Any]:
    """Compare billed and allocated totals per line and for the date (operations.md §7 checks)."""
    chargebacks = session.db.chargebacks
    mismatches = [t for t in chargebacks.line_totals(d) if not t.balanced]
    totals = chargebacks.date_totals(d)
    passed = not mismatches and totals.billed == totals.allocated
    return {
        "passed": passed,
        "billed_total": money(totals.billed),
        "allocated_total": money(totals.allocated),
        "unallocated_total": money(totals.unallocated),
        "mismatched_lines": len(mismatches),
        "first_mismatches": "; ".join(
            f"{t.key}: billed {money(t.billed or ZERO)} allocated {money(t.allocated)}"
            for t in mismatches[:MAX_LISTED_LINES]
        )
        or "none",
    }
