"""Asset checks on ``chargebacks``.

* ``chargebacks_reconcile_with_billing`` (blocking, error): every billing line's rows
  sum exactly to its cost, the date's rows to the date's bill, and no amount has more
  than four decimals (operations.md §7). A failure stops the sinks of the run.
* ``chargebacks_unallocated_share`` (warning): the ``UNALLOCATED`` share of a
  tenant-day is above the tenant's ``checks.unallocated_share_warning_pct``.
* ``chargebacks_freshness`` (warning, not partitioned, run hourly by its own schedule
  and after every chargebacks step): a tenant whose latest settled date has not been
  calculated. It reads the stores directly (no plugin start-up) and skips a store that
  a run is writing rather than waiting for it.

The partitioned checks record one evaluation *per partition* even in a range run (a
backfill with policy ``single_run``), so the UI's check history stays per tenant-day.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from chargeback_pipeline import clock
from chargeback_pipeline.config import TenantConfig
from chargeback_pipeline.defs.partitions import dates_by_tenant, key_string
from chargeback_pipeline.defs.resources import ChargebackConfig, PluginRuntimes, TenantStorage
from chargeback_pipeline.errors import TenantBusyError
from chargeback_pipeline.models import ZERO, day_start
from chargeback_pipeline.steps import CONSECUTIVE_GATHER_FAILURES, LAST_GATHER_ERROR, TenantSession, money
from chargeback_pipeline.storage import peek

MAX_LISTED_LINES = 20
RECONCILE = "chargebacks_reconcile_with_billing"
UNALLOCATED_SHARE = "chargebacks_unallocated_share"
FRESHNESS = "chargebacks_freshness"
# The freshness check runs inside pipeline runs too (a backfill of chargebacks includes
# it); it must never hold up a run of another tenant, nor wait for one: a busy store is
# tried once and skipped. (Waiting 2 s per busy store cost each run of a 50-tenant
# backfill ~6 s at max_parallel_tenants 4, and logged a lock wait for every busy tenant.)
FRESHNESS_LOCK_TIMEOUT_S = 0.0


@dataclass
class Verdict:
    """One partition's outcome of a check."""

    passed: bool
    metadata: dict[str, Any]
    description: str | None = None
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR


PartitionCheck = Callable[[TenantSession, date], Verdict]


def build_checks(
    partitions_def: dg.PartitionsDefinition, chargebacks: dg.AssetsDefinition
) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset=chargebacks,
        name=RECONCILE,
        partitions_def=partitions_def,
        blocking=True,
        description="For every billing line, its chargeback rows sum exactly to its total cost.",
    )
    def reconcile_check(
        context: dg.AssetCheckExecutionContext, plugin_runtimes: PluginRuntimes, tenant_storage: TenantStorage
    ) -> Any:  # a generator of per-partition evaluations (see evaluate_partitions)
        return evaluate_partitions(
            context, RECONCILE, True, plugin_runtimes, tenant_storage, reconcile_verdict
        )

    @dg.asset_check(
        asset=chargebacks,
        name=UNALLOCATED_SHARE,
        partitions_def=partitions_def,
        blocking=False,
        description="Warns when UNALLOCATED exceeds the tenant's checks.unallocated_share_warning_pct.",
    )
    def unallocated_check(
        context: dg.AssetCheckExecutionContext, plugin_runtimes: PluginRuntimes, tenant_storage: TenantStorage
    ) -> Any:  # a generator of per-partition evaluations (see evaluate_partitions)
        return evaluate_partitions(
            context, UNALLOCATED_SHARE, False, plugin_runtimes, tenant_storage, unallocated_verdict
        )

    @dg.asset_check(
        asset=chargebacks,
        name=FRESHNESS,
        blocking=False,
        description="Warns about tenants whose latest settled billing date has not been calculated.",
    )
    def freshness_check(chargeback_config: ChargebackConfig) -> dg.AssetCheckResult:
        return freshness_report(chargeback_config, clock.utc_now()).as_result()

    return [reconcile_check, unallocated_check, freshness_check]


# --- per-partition evaluation ---------------------------------------------------------------


def evaluate_partitions(
    context: dg.AssetCheckExecutionContext,
    check_name: str,
    blocking: bool,
    runtimes: PluginRuntimes,
    storage: TenantStorage,
    check: PartitionCheck,
) -> Iterator[Any]:
    """Yield one evaluation per partition of the run, then the check's (empty) output.

    Dagster would record a single, partition-less evaluation for a range run; yielding
    ``AssetCheckEvaluation`` events with ``partition=`` keeps per-partition history.
    """
    keys = list(context.partition_keys)
    asset_key = context.check_specs[0].asset_key
    targets = _latest_materializations(context.instance, asset_key, keys)
    for tenant, dates in dates_by_tenant(keys).items():
        with storage.session(tenant, runtimes) as session:
            for d in dates:
                key = key_string(tenant, d)
                verdict = check(session, d)
                yield dg.AssetCheckEvaluation(
                    asset_key=asset_key,
                    check_name=check_name,
                    passed=verdict.passed,
                    metadata=verdict.metadata,
                    target_materialization_data=targets.get(key),
                    severity=verdict.severity,
                    description=verdict.description,
                    blocking=blocking,
                    partition=key,
                )
    yield dg.Output(None, output_name=context.op_execution_context.op_def.output_defs[0].name)


def _latest_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: list[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """The materialisation each partition's evaluation refers to (this run's, normally)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=keys), limit=max(len(keys), 1)
    ).records
    found: dict[str, AssetCheckEvaluationTargetMaterializationData] = {}
    for record in records:  # newest first
        partition = record.partition_key
        if partition is not None and partition not in found:
            found[partition] = AssetCheckEvaluationTargetMaterializationData(
                storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
            )
    return found


# --- reconciliation -------------------------------------------------------------------------


def reconcile(session: TenantSession, d: date) -> dict[str, Any]:
    """Compare billed and allocated totals per line and for the date (operations.md §7 checks)."""
    chargebacks = session.db.chargebacks
    mismatches = [t for t in chargebacks.line_totals(d) if not t.balanced]
    totals = chargebacks.date_totals(d)
    imprecise = chargebacks.precision_violations(d)
    passed = not mismatches and totals.billed == totals.allocated and imprecise == 0
    return {
        "passed": passed,
        "billed_total": money(totals.billed),
        "allocated_total": money(totals.allocated),
        "unallocated_total": money(totals.unallocated),
        "mismatched_lines": len(mismatches),
        "amounts_over_4_decimals": imprecise,
        "first_mismatches": "; ".join(
            f"{t.key}: billed {money(t.billed or ZERO)} allocated {money(t.allocated)}"
            for t in mismatches[:MAX_LISTED_LINES]
        )
        or "none",
    }


def reconcile_verdict(session: TenantSession, d: date) -> Verdict:
    outcome = reconcile(session, d)
    passed = bool(outcome.pop("passed"))
    description = (
        None
        if passed
        else f"tenant '{session.name}' {d}: {outcome['mismatched_lines']} line(s) do not reconcile; "
        f"billed {outcome['billed_total']}, allocated {outcome['allocated_total']}"
    )
    return Verdict(passed, outcome, description)


# --- UNALLOCATED share -------------------------------------------------------------------------


def unallocated_verdict(session: TenantSession, d: date) -> Verdict:
    totals = session.db.chargebacks.date_totals(d)
    threshold = session.config.checks.unallocated_share_warning_pct
    share = (totals.unallocated * 100 / totals.billed) if totals.billed else ZERO
    passed = share <= threshold
    shown = f"{share.quantize(Decimal('0.01'))}%"
    metadata = {
        "unallocated_total": money(totals.unallocated),
        "billed_total": money(totals.billed),
        "unallocated_share": shown,
        "threshold": f"{threshold}%",
    }
    description = (
        None
        if passed
        else f"tenant '{session.name}' {d}: UNALLOCATED is {shown} of {money(totals.billed)} billed "
        f"(warning above {threshold}%)"
    )
    return Verdict(passed, metadata, description, dg.AssetCheckSeverity.WARN)


# --- freshness ---------------------------------------------------------------------------------


@dataclass
class FreshnessReport:
    """Per tenant: the date expected to be calculated by now, and what was found."""

    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def stale(self) -> dict[str, str]:
        return {t: info["problem"] for t, info in self.tenants.items() if info.get("problem")}

    def as_result(self) -> dg.AssetCheckResult:
        stale = self.stale
        description = (
            "all tenants are up to date"
            if not stale
            else "; ".join(f"tenant '{t}': {problem}" for t, problem in sorted(stale.items()))
        )
        return dg.AssetCheckResult(
            passed=not stale,
            severity=dg.AssetCheckSeverity.WARN,
            description=description,
            metadata={
                "stale_tenants": ", ".join(sorted(stale)) or "none",
                "tenants": dg.MetadataValue.json(self.tenants),
            },
        )


def expected_fresh_date(cutoff_days: int, grace_hours: int, now: datetime) -> date:
    """The newest date that has been settled for at least ``grace_hours`` at ``now``.

    Date D settles at midnight UTC of ``D + cutoff_days + 1`` (clock.allowed_dates).
    """
    candidate = now.date() - timedelta(days=cutoff_days + 1)
    settled_at = day_start(candidate + timedelta(days=cutoff_days + 1))
    if now < settled_at + timedelta(hours=grace_hours):
        candidate -= timedelta(days=1)
    return candidate


def freshness_report(config: ChargebackConfig, now: datetime) -> FreshnessReport:
    """Every configured tenant's freshness. A tenant whose store is busy (a run is writing
    it) is reported as such, not as stale, and is not waited for."""
    loaded = config.loaded()
    report = FreshnessReport()
    for name in sorted(loaded.tenant_errors):
        report.tenants[name] = {"problem": "excluded by configuration errors; it is never calculated"}
    for name, tenant in sorted(loaded.tenants.items()):
        expected = expected_fresh_date(tenant.cutoff_days, tenant.checks.freshness_grace_hours, now)
        info: dict[str, Any] = {"expected_date": expected.isoformat()}
        try:
            summary = peek.summarise(tenant.storage_path, tenant.tenant_id, FRESHNESS_LOCK_TIMEOUT_S)
        except TenantBusyError:
            info["note"] = "a run is writing its store; not checked this time"
        except Exception as exc:
            info["problem"] = f"cannot read its store: {type(exc).__name__}: {exc}"
        else:
            info.update(_tenant_freshness(tenant, expected, summary))
        report.tenants[name] = info
    return report


def _tenant_freshness(tenant: TenantConfig, expected: date, summary: peek.StoreSummary) -> dict[str, Any]:
    latest = summary.calculated_dates[-1] if summary.calculated_dates else None
    info: dict[str, Any] = {"latest_calculated": latest.isoformat() if latest else None}
    if expected in summary.calculated_dates:
        return info
    problem = f"{expected} not calculated (latest calculated: {latest or 'none'})"
    failures = int(summary.gather_state.get(CONSECUTIVE_GATHER_FAILURES) or 0)
    if failures >= tenant.gather_failure_threshold:
        error = summary.gather_state.get(LAST_GATHER_ERROR) or "unknown error"
        problem += f"; suspended after {failures} consecutive gather failures: {error}"
    info["problem"] = problem
    return info
