"""The lifecycle steps as plain functions (spec/operations.md §2–§7; emission, §8, is in ``emission``).

Dagster assets are thin wrappers around these, so the steps can be tested, timed and
reasoned about without an orchestrator. Every step works on one tenant, reads its
inputs from the tenant's database and writes its output in one transaction, so a
failed step leaves the partition exactly as it was.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from chargeback_pipeline.calculation import UsageGroup, calculate_date
from chargeback_pipeline.config import TenantConfig
from chargeback_pipeline.models import (
    BillingLineItem,
    MetricQuery,
    MetricRow,
    billing_window,
    day_start,
    require_utc,
)
from chargeback_pipeline.plugin_guard import plugin_type_name
from chargeback_pipeline.protocols import MetricsSource, ReportsCostGaps, ResourceBatchingMetricsSource
from chargeback_pipeline.runtime import TenantRuntime
from chargeback_pipeline.storage import TenantDatabase
from chargeback_pipeline.storage.codec import collector_paused

log = logging.getLogger(__name__)

LAST_GATHER = "last_gather"
LAST_SUCCESSFUL_GATHER_AT = "last_successful_gather_started_at"
CONSECUTIVE_GATHER_FAILURES = "consecutive_gather_failures"
LAST_GATHER_ERROR = "last_gather_error"


@dataclass
class TenantSession:
    """Everything a step needs for one tenant: its settings, its plugin runtime and its database."""

    name: str
    config: TenantConfig
    runtime: TenantRuntime
    db: TenantDatabase


# --- billing ---------------------------------------------------------------------------


@collector_paused
def gather_billing(session: TenantSession, dates: Sequence[date]) -> dict[date, dict[str, Any]]:
    """Gather and store billing lines for ``dates`` (operations.md §3).

    One cost-input call covers the whole range; if it raises, each date is gathered on
    its own so one bad day does not block the others. Dates whose gather failed raise
    after the others are stored.
    """
    dates = sorted(set(dates))
    by_date, failures = _gather_lines(session, dates)
    results: dict[date, dict[str, Any]] = {}
    for d in dates:
        if d in failures:
            continue
        results[d] = _store_billing_date(session, d, by_date.get(d, []))
        results[d]["cost_types_without_data"] = ", ".join(_cost_gaps(session, d)) or "none"
    if failures:
        details = "; ".join(f"{d}: {err}" for d, err in sorted(failures.items()))
        raise RuntimeError(
            f"tenant '{session.name}': billing gather failed for {len(failures)} date(s): {details}"
        )
    return results


def _gather_lines(
    session: TenantSession, dates: Sequence[date]
) -> tuple[dict[date, list[BillingLineItem]], dict[date, str]]:
    tenant_id = session.runtime.tenant_id
    read_view = session.db.read_view()
    first, last = dates[0], dates[-1]
    contiguous = (last - first).days + 1 == len(dates)
    if contiguous:
        try:
            lines = list(
                session.runtime.cost_input.gather(
                    tenant_id, day_start(first), day_start(last + timedelta(days=1)), read_view
                )
            )
            return _assign_to_dates(session, lines, set(dates)), {}
        except Exception as exc:
            if len(dates) == 1:
                return {}, {first: _describe(exc)}
            log.warning("tenant '%s': range billing gather failed (%s); retrying per date", session.name, exc)
    by_date: dict[date, list[BillingLineItem]] = {}
    failures: dict[date, str] = {}
    for d in dates:
        try:
            lines = list(
                session.runtime.cost_input.gather(
                    tenant_id, day_start(d), day_start(d + timedelta(days=1)), read_view
                )
            )
        except Exception as exc:
            failures[d] = _describe(exc)
            continue
        by_date.update(_assign_to_dates(session, lines, {d}))
    return by_date, failures


def _assign_to_dates(
    session: TenantSession, lines: Iterable[BillingLineItem], wanted: set[date]
) -> dict[date, list[BillingLineItem]]:
    by_date: dict[date, list[BillingLineItem]] = defaultdict(list)
    outside: list[BillingLineItem] = []
    for line in lines:
        d = require_utc(
            line.timestamp, f"billing line {line.resource_id}/{line.product_type} timestamp"
        ).date()
        (by_date[d] if d in wanted else outside).append(line)
    if outside:
        first = ", ".join(f"{x.timestamp.isoformat()} {x.resource_id} {x.product_type}" for x in outside[:3])
        log.warning(
            "tenant '%s': discarded %d billing line(s) dated outside the requested range (first: %s)",
            session.name,
            len(outside),
            first,
        )
    return dict(by_date)


def _cost_gaps(session: TenantSession, d: date) -> list[str]:
    """Cost types the cost input had no data for on ``d`` (metadata only).

    The answer only annotates lines that are already stored, so a cost input that fails
    to give it costs a WARNING and an ``unknown`` in the metadata, not the billing step:
    failing here would stop the remaining dates of a range after their bill was fetched.
    """
    cost_input = session.runtime.cost_input
    if not isinstance(cost_input, ReportsCostGaps):
        return []
    try:
        gaps = sorted(cost_input.cost_types_without_data(d))
    except Exception as exc:
        log.warning("tenant '%s': %s: cost types without data unknown: %s", session.name, d, _describe(exc))
        return ["unknown"]
    if gaps:
        log.warning("tenant '%s': %s: no data for cost type(s) %s", session.name, d, ", ".join(gaps))
    return gaps


def _store_billing_date(session: TenantSession, d: date, lines: list[BillingLineItem]) -> dict[str, Any]:
    db = session.db
    if not lines:
        count, total = db.billing.date_summary(d)
        if count:
            log.warning(
                "tenant '%s': no billing returned for %s; keeping %d stored lines",
                session.name,
                d,
                count,
            )
        with db.transaction():
            db.state.mark_billing_gathered(d, db.billing.fingerprint(d))
        return _billing_metadata(count, total, withdrawn=0, revised=0, kept=True)
    with db.transaction():
        result = db.billing.replace_date(d, lines)
        db.state.mark_billing_gathered(d, db.billing.fingerprint(d))
    for key in result.withdrawn:
        log.info("tenant '%s': %s: billing line withdrawn by the vendor: %s", session.name, d, key)
    for revision in result.revised:
        log.info("tenant '%s': %s: Billing revision detected: %s", session.name, d, revision)
    count, total = db.billing.date_summary(d)
    log.info("tenant '%s': %s: stored %d billing lines", session.name, d, count)
    return _billing_metadata(
        count, total, withdrawn=len(result.withdrawn), revised=len(result.revised), kept=False
    )


def _billing_metadata(
    count: int, total: Decimal, *, withdrawn: int, revised: int, kept: bool
) -> dict[str, Any]:
    """Counted and summed in SQL: reading the lines back only to count them cost more than storing them."""
    return {
        "line_count": count,
        "billed_total": money(total),
        "withdrawn_lines": withdrawn,
        "revised_lines": revised,
        "kept_previous_lines": kept,
    }


# --- inventory -------------------------------------------------------------------------


def gather_inventory(session: TenantSession, run_id: str, now: datetime) -> dict[str, Any]:
    """Gather resources and identities tenant-wide, at most once per run and refresh gap (§4)."""
    state = session.db.gather_state
    last = state.get(LAST_GATHER)
    if last and last.get("run_id") == run_id:
        return {**_inventory_metadata(last), "reused": "earlier partition of this run"}
    gap = timedelta(seconds=session.runtime.settings_base.min_refresh_gap_seconds)
    last_ok = state.get(LAST_SUCCESSFUL_GATHER_AT)
    if last and last_ok and now - datetime.fromisoformat(last_ok) < gap:
        return {
            **_inventory_metadata(last),
            "reused": f"gather at {last_ok} is within min_refresh_gap_seconds",
        }
    try:
        record = _run_gather(session, run_id, now)
    except Exception as exc:
        with session.db.transaction():
            state.increment(CONSECUTIVE_GATHER_FAILURES)
            state.set(LAST_GATHER_ERROR, _describe(exc))
        raise
    with session.db.transaction():
        state.set(LAST_GATHER, record)
        state.set(LAST_SUCCESSFUL_GATHER_AT, now.isoformat())
        state.set(CONSECUTIVE_GATHER_FAILURES, 0)
    return {**_inventory_metadata(record), "reused": "no (gathered now)"}


def _run_gather(session: TenantSession, run_id: str, now: datetime) -> dict[str, Any]:
    runtime, db = session.runtime, session.db
    tenant_id = runtime.tenant_id
    read_view = db.read_view()
    shared_ctx = runtime.build_shared_context()
    observed_resources: dict[str, set[str]] = defaultdict(set)
    observed_identities: set[str] = set()
    failed: list[str] = []
    for service_type, handler in runtime.handlers.items():
        try:
            for resource in _upsert_as_gathered(
                db, handler.gather_resources(tenant_id, read_view, shared_ctx), now, "resources"
            ):
                observed_resources[resource.resource_type].add(resource.resource_id)
            for identity in _upsert_as_gathered(
                db, handler.gather_identities(tenant_id, read_view), now, "identities"
            ):
                observed_identities.add(identity.identity_id)
        except Exception as exc:
            log.warning(
                "tenant '%s': Handler %s gather failed: %s", session.name, service_type, _describe(exc)
            )
            failed.append(service_type)
    counts = {rtype: len(ids) for rtype, ids in sorted(observed_resources.items())}
    log.info(
        "tenant '%s': inventory gathered: %s resources by type, %d identities%s",
        session.name,
        counts,
        len(observed_identities),
        f"; failed handlers: {failed}" if failed else "",
    )
    return {
        "gather_id": uuid.uuid4().hex,
        "run_id": run_id,
        "started_at": now.isoformat(),
        "complete": not failed,
        "failed_handlers": failed,
        "observed_resources": {k: sorted(v) for k, v in observed_resources.items()},
        "observed_identities": sorted(observed_identities),
        "deletions_done": False,
    }


def _upsert_as_gathered(db: TenantDatabase, entities: Iterable[Any], now: datetime, kind: str) -> list[Any]:
    """Upsert what a handler yields; what it yielded before raising stays stored (§4.4)."""
    gathered: list[Any] = []
    repo = db.resources if kind == "resources" else db.identities
    try:
        for entity in entities:
            gathered.append(entity)
    finally:
        if gathered:
            with db.transaction():
                repo.upsert_many(gathered, now)
    return gathered


def _inventory_metadata(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "gathered_at": record["started_at"],
        "complete": record["complete"],
        "failed_handlers": ", ".join(record["failed_handlers"]) or "none",
        "resources_observed": sum(len(v) for v in record["observed_resources"].values()),
        "identities_observed": len(record["observed_identities"]),
    }


# --- deletion detection ----------------------------------------------------------------


def detect_deletions(session: TenantSession) -> dict[str, Any]:
    """Mark what the latest gather no longer returned as deleted (operations.md §5)."""
    state = session.db.gather_state
    record = state.get(LAST_GATHER)
    if not record:
        return {"deleted_resources": 0, "deleted_identities": 0, "note": "no gather has run yet"}
    if record.get("deletions_done"):
        return {**record.get("deletion_summary", {}), "note": "already applied for the latest gather"}
    now = datetime.fromisoformat(record["started_at"])
    threshold = session.config.zero_gather_deletion_threshold
    summary: dict[str, Any] = {"deleted_resources": 0, "deleted_identities": 0, "skipped_types": []}
    with session.db.transaction():
        for rtype in _deletable_resource_types(session, record):
            observed = set(record["observed_resources"].get(rtype, []))
            active = {r.resource_id for r in session.db.resources.find_active_at(now, rtype)}
            doomed = _sweep(session, f"resources:{rtype}", active, observed, threshold)
            session.db.resources.mark_deleted(sorted(doomed), now)
            summary["deleted_resources"] += len(doomed)
        if record["complete"]:
            observed_ids = set(record["observed_identities"])
            active_ids = {
                i.identity_id
                for i in session.db.identities.find_active_at(now)
                if i.identity_type != "system"
            }
            doomed = _sweep(session, "identities", active_ids, observed_ids, threshold)
            session.db.identities.mark_deleted(sorted(doomed), now)
            summary["deleted_identities"] = len(doomed)
        else:
            summary["skipped_types"].append("identities")
        record["deletions_done"] = True
        record["deletion_summary"] = summary
        state.set(LAST_GATHER, record)
    log.info("tenant '%s': deletion detection: %s", session.name, summary)
    return {**summary, "skipped_types": ", ".join(summary["skipped_types"]) or "none"}


def _deletable_resource_types(session: TenantSession, record: dict[str, Any]) -> list[str]:
    failed = set(record["failed_handlers"])
    declared: dict[str, set[str]] = defaultdict(set)
    for service_type, handler in session.runtime.handlers.items():
        for rtype in handler.gathered_resource_types:
            declared[rtype].add(service_type)
    return [rtype for rtype in sorted(declared) if not (declared[rtype] & failed)]


def _sweep(
    session: TenantSession, counter: str, active: set[str], observed: set[str], threshold: int
) -> set[str]:
    state = session.db.gather_state
    key = f"zero_gathers:{counter}"
    if observed or not active:
        state.set(key, 0)
        return active - observed
    count = int(state.get(key) or 0) + 1
    if threshold == -1 or count < threshold:
        state.set(key, count)
        log.warning(
            "tenant '%s': %s: empty gather #%d with %d active entities; nothing deleted",
            session.name,
            counter,
            count,
            len(active),
        )
        return set()
    state.set(key, 0)
    return active


# --- usage -----------------------------------------------------------------------------

UsageKey = tuple[str, datetime, datetime]


@collector_paused
def fetch_usage_dates(session: TenantSession, dates: Sequence[date]) -> dict[date, dict[str, Any]]:
    """Fetch and store the usage of each date's lines, one query batch per (resource,
    window) (§6), the next date's queries in flight while a date's rows are stored.

    Each date's groups, outcomes and stored rows are exactly those of the date fetched
    alone; only the waits overlap (the metrics backend answering, DuckDB committing).
    At most one date is fetched ahead, so memory holds two dates' rows at most. When a
    date fails to store, the step stops there, as it would date by date.
    """
    metadata: dict[date, dict[str, Any]] = {}
    pending: tuple[date, dict[UsageKey, list[MetricQuery]], Future[_Outcomes]] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-prefetch") as prefetch:
        for d in dates:
            groups = _usage_groups(session, session.db.billing.find_by_date(d))
            fetching = prefetch.submit(_fetch_usage_groups, session, groups)
            if pending is not None:
                metadata[pending[0]] = _store_usage(session, pending[0], pending[1], pending[2].result())
            pending = (d, groups, fetching)
        if pending is not None:
            metadata[pending[0]] = _store_usage(session, pending[0], pending[1], pending[2].result())
    return metadata


_Outcomes = dict[UsageKey, dict[str, list[MetricRow]] | Exception]


def _fetch_usage_groups(
    session: TenantSession, groups: Mapping[UsageKey, Sequence[MetricQuery]]
) -> _Outcomes:
    source = session.runtime.metrics_source
    if source is None or not groups:
        return {}
    step = timedelta(seconds=session.runtime.settings_base.metrics_step_seconds)
    workers = max(1, min(session.config.metrics_prefetch_workers, len(groups)))
    return _fetch_groups(source, groups, step, workers)


def _store_usage(
    session: TenantSession, d: date, groups: Mapping[UsageKey, Sequence[MetricQuery]], outcomes: _Outcomes
) -> dict[str, Any]:
    """Store one date's outcomes (a failed group as ``fetch_failed``) and describe them."""
    source = session.runtime.metrics_source
    results: dict[UsageKey, UsageGroup] = {}
    failures: list[str] = []
    for key, outcome in sorted(outcomes.items()):
        if not isinstance(outcome, Exception):
            results[key] = UsageGroup(rows=outcome, fetch_failed=False)
        else:
            exc = outcome
            # A MetricsQueryError names the query key, the expression and the reason,
            # never a credential; the tenant and the group are added here.
            failure = f"{key[0]} [{key[1].isoformat()}, {key[2].isoformat()}): {_describe(exc)}"
            log.warning("tenant '%s': %s: usage fetch failed for %s", session.name, d, failure)
            failures.append(failure)
            results[key] = UsageGroup(rows=None, fetch_failed=True)
    with session.db.transaction():
        session.db.usage.replace_date(d, results)
    failed = sum(1 for g in results.values() if g.fetch_failed)
    rows = sum(len(v) for g in results.values() if g.rows for v in g.rows.values())
    log.info(
        "tenant '%s': %s: usage groups fetched %d, failed %d, rows %d",
        session.name,
        d,
        len(results),
        failed,
        rows,
    )
    return {
        "groups_with_queries": len(groups),
        "groups_fetched": len(results) - failed,
        "groups_failed": failed,
        "failed_groups": _first_of(failures, 5) or "none",
        "metric_rows": rows,
        "metrics_source": plugin_type_name(source) if source is not None else "none",
    }


def _fetch_groups(
    source: MetricsSource,
    groups: Mapping[UsageKey, Sequence[MetricQuery]],
    step: timedelta,
    workers: int,
) -> dict[UsageKey, dict[str, list[MetricRow]] | Exception]:
    """Each group's rows, or the exception its fetch raised.

    A source that answers many resources at once (``ResourceBatchingMetricsSource``) is
    given one call per window, so it can ask each metric once for all the window's
    resources instead of once per resource; any other source one call per group.
    """
    outcomes: dict[UsageKey, dict[str, list[MetricRow]] | Exception] = {}
    if isinstance(source, ResourceBatchingMetricsSource):
        windows: dict[tuple[datetime, datetime], dict[str, Sequence[MetricQuery]]] = {}
        for (rid, start, end), queries in groups.items():
            windows.setdefault((start, end), {})[rid] = queries
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(windows)))) as pool:
            batched = {
                window: pool.submit(source.query_resources, by_resource, window[0], window[1], step)
                for window, by_resource in windows.items()
            }
        for (start, end), window_future in batched.items():
            answers: Mapping[str, dict[str, list[MetricRow]] | Exception]
            try:
                answers = window_future.result()
            except Exception as exc:
                answers = dict.fromkeys(windows[start, end], exc)
            for rid, answer in answers.items():
                outcomes[rid, start, end] = answer
        return outcomes
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            key: pool.submit(source.query, queries, key[1], key[2], step, key[0])
            for key, queries in groups.items()
        }
    for key, future in futures.items():
        try:
            outcomes[key] = future.result()
        except Exception as exc:
            outcomes[key] = exc
    return outcomes


def _usage_groups(
    session: TenantSession, lines: Sequence[BillingLineItem]
) -> dict[UsageKey, list[MetricQuery]]:
    runtime = session.runtime
    groups: dict[UsageKey, dict[str, MetricQuery]] = {}
    for line in lines:
        handler = runtime.handler_for(line.product_type)
        if handler is None:
            continue
        start, end = billing_window(line, runtime.granularity_durations)
        queries = groups.setdefault((line.resource_id, start, end), {})
        for query in handler.get_metrics_for_product_type(line.product_type):
            queries.setdefault(query.key, query)
    return {key: list(queries.values()) for key, queries in groups.items() if queries}


# --- chargebacks -----------------------------------------------------------------------


@collector_paused
def calculate_chargebacks(
    session: TenantSession,
    d: date,
    lines: Sequence[BillingLineItem] | None = None,
    with_commit: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Allocate every billing line of ``d`` and commit the rows atomically (§7).

    ``lines``: the date's stored billing lines when the caller has just read them (the
    recalculation check does), so a day of ~700 lines is not decoded twice.
    ``with_commit``: more writes of the caller, given the step's metadata, made inside
    the same transaction as the rows (one commit per date instead of two).
    """
    db = session.db
    _require_inventory(session, d)
    if lines is None:
        lines = db.billing.find_by_date(d)
    usage = db.usage.load_date(d)
    calculation = calculate_date(session.runtime, db.read_view(), d, lines, usage, db.attempts, log)
    calculation_id = str(uuid.uuid4())
    metadata = {"calculation_id": calculation_id, **calculation.metadata}
    with db.transaction():
        db.chargebacks.replace_date(d, calculation.rows, calculation_id)
        db.attempts.reset(calculation.succeeded_line_keys)
        db.state.mark_calculated(d, calculation_id, datetime.now(UTC).replace(microsecond=0))
        if with_commit is not None:
            with_commit(metadata)
    log.info(
        "tenant '%s': %s: allocated %d lines into %d rows (calculation %s)",
        session.name,
        d,
        len(lines),
        len(calculation.rows),
        calculation_id,
    )
    return metadata


def _require_inventory(session: TenantSession, d: date) -> None:
    record = session.db.gather_state.get(LAST_GATHER)
    if record and record["complete"]:
        with session.db.transaction():
            session.db.state.mark_resources_gathered(d)
        return
    if session.db.state.get(d).resources_gathered:
        log.warning("tenant '%s': %s: recalculating on a partially refreshed inventory", session.name, d)
        return
    reason = (
        f"handler(s) {', '.join(record['failed_handlers'])} failed" if record else "no gather has run yet"
    )
    raise RuntimeError(
        f"inventory incomplete for tenant {session.name}: {reason}; "
        f"{d} cannot be calculated until a complete gather"
    )


# --- helpers ---------------------------------------------------------------------------


def money(value: Decimal) -> str:
    """Money in metadata is shown as an exact 4-dp string, never a float."""
    return f"{value:.4f}"


def _first_of(items: Sequence[str], limit: int) -> str:
    """The first ``limit`` items joined for metadata, with a count of the rest."""
    more = f"; … {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
