"""``chargeback run``: materialise tenant × date partitions through the Dagster assets, in process.

One run per tenant over its dates (a range run, as a ``single_run`` backfill makes);
when it fails, the dates it did not complete are run one at a time so every failure is
named against its date.

Runs go to the persistent Dagster instance (``$DAGSTER_HOME``, or the current directory
when it holds ``dagster.yaml``), so ``dagster dev`` shows them afterwards with their
lineage, metadata and check results.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg

from chargeback_pipeline import clock
from chargeback_pipeline.config import LoadedConfig, TenantConfig, configure_logging, load_config
from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions, resolve_config_path
from chargeback_pipeline.defs.partitions import key_string, partition_key
from chargeback_pipeline.defs.tags import RANGE_END_TAG, RANGE_START_TAG
from chargeback_pipeline.errors import ChargebackError, DateOutOfRangeError

# The run's events go to the instance (and the UI); the terminal gets our one-line progress.
# Dagster logs a step failure at ERROR with the whole stack trace; the progress line
# already names the step and the error, so the console shows those only with -v.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
VERBOSE_CONSOLE = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@dataclass
class TenantTotals:
    billed: Decimal = Decimal(0)
    allocated: Decimal = Decimal(0)
    unallocated: Decimal = Decimal(0)
    dates_ok: int = 0
    dates_failed: int = 0
    failed_dates: list[date] = field(default_factory=list)
    # Failures of a run whose every date completed (a step not tied to a date).
    run_errors: list[str] = field(default_factory=list)
    files: set[str] = field(default_factory=set)

    @property
    def unallocated_pct(self) -> str:
        if self.billed == 0:
            return "0.00%"
        return f"{(self.unallocated * 100 / self.billed).quantize(Decimal('0.01'))}%"


def run(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    verbose = bool(getattr(args, "verbose", False))
    try:
        config_path = Path(args.config).resolve() if args.config else resolve_config_path()
        loaded = load_config(config_path)
        _configure_logging(loaded, verbose=verbose)
        plan = _plan(loaded, args)
    except (ChargebackError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    instance = _instance()
    job = build_definitions(config_path).resolve_job_def(PIPELINE_JOB)
    print(f"config: {config_path}\ndagster instance: {instance.root_directory or 'ephemeral'}")
    if loaded.tenant_errors and not args.tenant:
        print(_excluded(loaded, sorted(loaded.tenant_errors)), file=sys.stderr)
    totals = {tenant: TenantTotals() for tenant in plan}
    for tenant, dates in plan.items():
        print(f"tenant {tenant}: {len(dates)} date(s) {dates[0]} .. {dates[-1]}")
        _run_tenant(job, instance, tenant, dates, totals[tenant], verbose=verbose)
    _print_summary(totals)
    failed_dates = any(t.dates_failed or t.run_errors for t in totals.values())
    if failed_dates and not verbose:
        print(
            "hint: re-run with -v for the failing steps' stack traces (also in the Dagster UI)",
            file=sys.stderr,
        )
    failed = failed_dates or (loaded.tenant_errors and not args.tenant)
    return 1 if failed else 0


def _configure_logging(loaded: LoadedConfig, *, verbose: bool) -> None:
    """Apply the file's ``logging:`` section; the terminal shows warnings, plus the
    engine's own INFO progress with ``--verbose`` (never the libraries' chatter)."""
    configure_logging(loaded.settings.logging)

    def keep(record: logging.LogRecord) -> bool:
        ours = record.name.startswith(("chargeback_pipeline", "chargeback_plugins"))
        return record.levelno >= logging.WARNING or (verbose and ours)

    for handler in logging.getLogger().handlers:
        handler.addFilter(keep)


def _plan(loaded: LoadedConfig, args: argparse.Namespace) -> dict[str, list[date]]:
    tenants = list(args.tenant or sorted(loaded.tenants))
    for tenant in tenants:
        if tenant in loaded.tenant_errors:
            raise ChargebackError(_excluded(loaded, [tenant]))
        if tenant not in loaded.tenants:
            message = f"unknown tenant '{tenant}'; configured: {', '.join(sorted(loaded.tenants)) or 'none'}"
            if loaded.tenant_errors:
                message += "\n" + _excluded(loaded, sorted(loaded.tenant_errors))
            raise ChargebackError(message)
    if not tenants:
        raise ChargebackError(
            f"no valid tenant in {loaded.path}"
            + ("\n" + _excluded(loaded, sorted(loaded.tenant_errors)) if loaded.tenant_errors else "")
        )
    today = clock.utc_now().date()
    plan: dict[str, list[date]] = {}
    for tenant in tenants:
        settings = loaded.tenants[tenant]
        dates = _requested_dates(args, clock.refresh_window(settings, today), tenant, settings, today)
        for d in dates:
            clock.check_date_allowed(tenant, settings, d, today)
        plan[tenant] = dates
    return plan


def _excluded(loaded: LoadedConfig, tenants: list[str]) -> str:
    """Configuration errors of tenants that cannot run, one per line."""
    lines = [f"tenant '{t}' is excluded by configuration errors:" for t in tenants]
    return "\n".join(
        line + "".join(f"\n  {error}" for error in loaded.tenant_errors[t])
        for line, t in zip(lines, tenants, strict=True)
    )


def _requested_dates(
    args: argparse.Namespace, window: list[date], tenant: str, settings: TenantConfig, today: date
) -> list[date]:
    if not args.start and not args.end:
        return window
    start = _option_date("--start", args.start) if args.start else window[0]
    end = _option_date("--end", args.end) if args.end else window[-1]
    if end < start:
        raise DateOutOfRangeError(f"--end {end} is before --start {start}")
    # The allowed dates are one contiguous range: checking both ends first refuses
    # ``--start 0001-01-01 --end 9999-12-31`` at once instead of listing 3.6 million days.
    clock.check_date_allowed(tenant, settings, start, today)
    clock.check_date_allowed(tenant, settings, end, today)
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def _option_date(option: str, value: str) -> date:
    """A ``YYYY-MM-DD`` option value; the error names the option (``fromisoformat`` does not)."""
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ChargebackError(f"{option} {value!r} is not a date (YYYY-MM-DD): {exc}") from None


def _instance() -> dg.DagsterInstance:
    if not os.environ.get("DAGSTER_HOME") and Path("dagster.yaml").exists():
        os.environ["DAGSTER_HOME"] = str(Path.cwd())
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    print("note: DAGSTER_HOME is not set; runs go to an ephemeral instance and will not show in the UI")
    return dg.DagsterInstance.ephemeral()


def _run_tenant(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    tenant: str,
    dates: list[date],
    totals: TenantTotals,
    *,
    verbose: bool = False,
) -> None:
    """One Dagster run per contiguous stretch of the tenant's dates; isolate failures per date.

    A run over a range pays process-level costs once (plugin start-up, inventory gather,
    one store session per step) instead of once per date. Its steps go date by date,
    each date committed in its own transaction, but a step that fails for one date
    skips every later step for *all* dates of the run. So when the range run fails, the
    dates it did not take through every asset and blocking check are run again one
    partition at a time: every date that can succeed does, and each failure is
    reported against its own date, exactly as with one run per date.
    """
    for first, last in _contiguous_stretches(dates):
        stretch = [d for d in dates if first <= d <= last]
        started = time.monotonic()
        result = _execute(job, instance, tenant, first, last, verbose=verbose)
        elapsed = time.monotonic() - started
        done = _completed_dates(job, result, tenant, stretch)
        if result.success:
            print(f"  one run over {len(stretch)} date(s): ok in {elapsed:.1f}s")
        else:
            retry = [d for d in stretch if d not in done]
            failure = _first_failure(result)
            print(f"  one run over {len(stretch)} date(s): FAILED after {elapsed:.1f}s: {failure}")
            if retry:
                print(f"  running the {len(retry)} date(s) it did not complete one at a time")
            else:
                # Every date went through every asset; what failed was not tied to a date.
                totals.run_errors.append(failure)
        for d in stretch:
            if d in done:
                _record_ok(d, done[d], totals, elapsed=None)
        for d in stretch:
            if d not in done:
                _run_partition(job, instance, tenant, d, totals, verbose=verbose)


def _contiguous_stretches(dates: list[date]) -> list[tuple[date, date]]:
    """``[1, 2, 3, 5]`` → ``[(1, 3), (5, 5)]``: a range run covers consecutive dates only."""
    stretches: list[tuple[date, date]] = []
    for d in sorted(dates):
        if stretches and d == stretches[-1][1] + timedelta(days=1):
            stretches[-1] = (stretches[-1][0], d)
        else:
            stretches.append((d, d))
    return stretches


def _execute(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    tenant: str,
    first: date,
    last: date,
    *,
    verbose: bool = False,
) -> dg.ExecuteInProcessResult:
    """A run over ``first`` .. ``last`` of one tenant, as a backfill with policy ``single_run`` makes.

    ``execute_in_process`` takes a single ``partition_key`` only; a range is given with
    the same run tags the backfill daemon sets.
    """
    tags = {"tenant": tenant}
    run_config = VERBOSE_CONSOLE if verbose else QUIET_CONSOLE
    if first == last:
        return job.execute_in_process(
            partition_key=partition_key(tenant, first),
            instance=instance,
            raise_on_error=False,
            tags=tags,
            run_config=run_config,
        )
    tags[RANGE_START_TAG] = key_string(tenant, first)
    tags[RANGE_END_TAG] = key_string(tenant, last)
    return job.execute_in_process(instance=instance, raise_on_error=False, tags=tags, run_config=run_config)


def _completed_dates(
    job: dg.JobDefinition, result: dg.ExecuteInProcessResult, tenant: str, dates: list[date]
) -> dict[date, dict[str, dict[str, Any]]]:
    """Dates the run took through every asset of the job with no failed blocking check.

    Value: the materialisation metadata of that date, per asset name. A date missing an
    asset's materialisation (its step failed or was skipped) or with a failed ERROR check
    is not complete, whatever its other steps committed.
    """
    wanted = {key_string(tenant, d): d for d in dates}
    required = {key.to_user_string() for key in job.asset_layer.selected_asset_keys}
    metadata: dict[date, dict[str, dict[str, Any]]] = {d: {} for d in dates}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        d = wanted.get(str(mat.partition)) if mat.partition is not None else None
        if d is not None:
            metadata[d][mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    blocked = {
        wanted[str(evaluation.partition)]
        for evaluation in result.get_asset_check_evaluations()
        if not evaluation.passed
        and evaluation.severity == dg.AssetCheckSeverity.ERROR
        and str(evaluation.partition) in wanted
    }
    return {d: m for d, m in metadata.items() if d not in blocked and required <= m.keys()}


def _run_partition(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    tenant: str,
    d: date,
    totals: TenantTotals,
    *,
    verbose: bool = False,
) -> None:
    started = time.monotonic()
    result = _execute(job, instance, tenant, d, d, verbose=verbose)
    elapsed = time.monotonic() - started
    if not result.success:
        totals.dates_failed += 1
        totals.failed_dates.append(d)
        print(f"  {d}  FAILED after {elapsed:.1f}s: {_first_failure(result)}")
        return
    _record_ok(d, _materialization_metadata(result), totals, elapsed=elapsed)


def _record_ok(
    d: date, metadata: dict[str, dict[str, Any]], totals: TenantTotals, *, elapsed: float | None
) -> None:
    """Add a completed date to the totals and print its line (time only for a one-date run)."""
    cb = metadata.get("chargebacks", {})
    billed, allocated = Decimal(cb.get("billed_total", "0")), Decimal(cb.get("allocated_total", "0"))
    unallocated = Decimal(cb.get("unallocated_total", "0"))
    totals.billed += billed
    totals.allocated += allocated
    totals.unallocated += unallocated
    totals.dates_ok += 1
    files = [
        str(m[key])
        for name, m in metadata.items()
        if name.startswith("emit_")
        for key in ("path", "current_state_path")
        if m.get(key)
    ]
    totals.files.update(files)
    took = f" {elapsed:.1f}s" if elapsed is not None else ""
    print(
        f"  {d}  ok{took}  lines {cb.get('line_count', 0)}  rows {cb.get('row_count', 0)}  "
        f"billed {billed:.4f}  allocated {allocated:.4f}  UNALLOCATED {unallocated:.4f}"
    )


def _materialization_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        out[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    return out


def _first_failure(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
                error = error.cause
            first_line = error.message.strip().splitlines()[0]
            # Dagster spells errors of non-builtin classes with their module path.
            module, _, rest = first_line.partition(f"{error.cls_name}: ")
            if rest and module.endswith(".") and " " not in module:
                first_line = f"{error.cls_name}: {rest}"
            return f"{event.step_key}: {first_line}"
    return "run failed (see the Dagster UI for the event log)"


def _print_summary(totals: dict[str, TenantTotals]) -> None:
    print("\nsummary")
    for tenant, t in totals.items():
        print(
            f"  {tenant}: dates ok {t.dates_ok}, failed {t.dates_failed}; billed {t.billed:.4f}, "
            f"allocated {t.allocated:.4f}, UNALLOCATED {t.unallocated:.4f} ({t.unallocated_pct})"
        )
        if t.failed_dates:
            print(f"    failed dates: {', '.join(str(d) for d in t.failed_dates)}")
        for error in t.run_errors:
            print(f"    run failed after every date completed: {error}")
        for path in sorted(t.files):
            print(f"    wrote {path}")
