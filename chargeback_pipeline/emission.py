"""Emission: hand committed chargebacks to a tenant's emitter, once per calculation
(spec/emitters.md §3, §6–§7; operations.md §8).

The sink assets call :func:`emit_dates` for the dates of their partitions. Which of
them actually reach the emitter is decided here, from the emission state stored beside
the chargebacks:

* a date is **pending** when it has committed chargebacks and either no emission
  record, a ``failed`` one, or one for an older ``calculation_id`` — so a recalculated
  day is emitted again (and replaces what consumers had), a failed one is retried, and
  re-running a sink for an unchanged day writes nothing;
* dates older than the spec's ``lookback_days`` are skipped, and the metadata says so;
* a ``monthly`` spec emits each month once, and records the outcome for every pending
  date of that month (the month's file holds all of them).

A failing emitter records ``failed`` for its dates, leaves the previous files in place
(emitters write atomically) and fails the sink; chargebacks are never touched.
Outcomes are stored in one transaction per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargeback_pipeline.config import EmitterSpec
from chargeback_pipeline.emitters import aggregation, registry
from chargeback_pipeline.models import ChargebackRow
from chargeback_pipeline.protocols import Emitter
from chargeback_pipeline.storage import TenantDatabase
from chargeback_pipeline.storage.codec import collector_paused
from chargeback_pipeline.storage.state import EmissionRecord, EmissionStatus

if TYPE_CHECKING:
    from chargeback_pipeline.steps import TenantSession

log = logging.getLogger(__name__)

STATUS_EMITTED: EmissionStatus = "emitted"
STATUS_FAILED: EmissionStatus = "failed"


# --- which dates are pending (emitters.md §6) --------------------------------------------


def find_spec(emitters: Iterable[EmitterSpec], emitter_name: str) -> EmitterSpec | None:
    return next((spec for spec in emitters if spec.name == emitter_name), None)


def earliest_date(spec: EmitterSpec, today: date) -> date | None:
    """The oldest date the spec's ``lookback_days`` still emits; ``None`` = every date."""
    return None if spec.lookback_days is None else today - timedelta(days=spec.lookback_days)


def is_pending(record: EmissionRecord | None, calculation_id: str | None) -> bool:
    """Not emitted yet, failed last time, or emitted from an earlier calculation."""
    return record is None or record.status == STATUS_FAILED or record.calculation_id != calculation_id


def pending_dates(db: TenantDatabase, spec: EmitterSpec, today: date) -> list[date]:
    """Every date of the tenant still pending for ``spec``, ascending (the refresh's pending work)."""
    earliest = earliest_date(spec, today)
    records = db.emissions.for_emitter(spec.name)
    return [
        state.billing_date
        for state in db.state.all()
        if state.chargeback_calculated
        and (earliest is None or state.billing_date >= earliest)
        and is_pending(records.get(state.billing_date), state.calculation_id)
    ]


# --- emitting ----------------------------------------------------------------------------


@dataclass
class _Outcome:
    status: EmissionStatus
    rows: int
    bucket: date
    output: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def emitter_context(session: TenantSession, spec: EmitterSpec, today: date) -> registry.EmitterContext:
    """What the core tells an emitter about its tenant and spec (see ``EmitterContext``)."""
    runtime = session.runtime
    return registry.EmitterContext(
        tenant_name=session.name,
        ecosystem=runtime.ecosystem,
        extra_key_fields=runtime.extra_key_fields,
        config_dir=session.config.config_dir,
        tenant_id=runtime.tenant_id,
        aggregation=spec.aggregation,
        earliest_date=earliest_date(spec, today),
        billing_resource_types=runtime.billing_resource_types,
    )


@collector_paused
def emit_dates(
    session: TenantSession, emitter_name: str, dates: Sequence[date], today: date
) -> dict[date, dict[str, Any]]:
    """Emit the pending ones of ``dates`` with the tenant's emitter ``emitter_name``.

    Returns asset metadata per requested date. Raises after recording every outcome
    when a date cannot be emitted (not calculated) or the emitter failed.
    """
    spec = find_spec(session.runtime.settings_base.emitters, emitter_name)
    if spec is None:
        return {d: {"status": "not configured for this tenant"} for d in dates}
    db = session.db
    records = db.emissions.for_emitter(spec.name)
    earliest = earliest_date(spec, today)
    results: dict[date, dict[str, Any]] = {}
    problems: list[str] = []
    todo: list[date] = []
    for d in sorted(set(dates)):
        state = db.state.get(d)
        record = records.get(d)
        if not state.chargeback_calculated:
            problems.append(f"{d} has no committed chargebacks to emit")
        elif earliest is not None and d < earliest:
            results[d] = _skipped(spec, earliest)
            log.info(
                "tenant '%s': %s: emitter '%s' skipped: %s", session.name, d, spec.name, results[d]["reason"]
            )
        elif not is_pending(record, state.calculation_id):
            assert record is not None
            results[d] = _already_emitted(spec, record)
        else:
            todo.append(d)
    if spec.aggregation == "monthly" and todo:
        months = {aggregation.bucket_date(d, "monthly") for d in todo}
        todo += [
            d
            for d in pending_dates(db, spec, today)
            if aggregation.bucket_date(d, "monthly") in months and d not in todo
        ]
    if todo:
        outcomes = _run_emitter(
            session, spec, aggregation.group_dates_by_bucket(todo, spec.aggregation), today
        )
        results.update(_record(session, spec, outcomes, requested=set(dates)))
        problems += [
            f"{d}: {o.error}" for d, o in sorted(outcomes.items()) if o.status == STATUS_FAILED and d in dates
        ]
    if problems:
        raise RuntimeError(f"tenant '{session.name}': emitter '{emitter_name}': " + "; ".join(problems))
    return results


def _run_emitter(
    session: TenantSession, spec: EmitterSpec, groups: Mapping[date, list[date]], today: date
) -> dict[date, _Outcome]:
    """Call the emitter once per bucket (inside its batch, if it has one); never raises."""
    db = session.db
    backend = db.storage_backend()
    outcomes: dict[date, _Outcome] = {}
    try:
        emitter = registry.get(
            spec.type, dict(spec.params), backend, context=emitter_context(session, spec, today)
        )
    except Exception as exc:
        return {
            d: _Outcome(STATUS_FAILED, 0, bucket, error=_describe(exc))
            for bucket, ds in groups.items()
            for d in ds
        }
    batch = getattr(emitter, "batch", None)
    try:
        with batch() if callable(batch) else contextlib.nullcontext():
            for bucket, bucket_dates in groups.items():
                _emit_bucket(session, spec, emitter, bucket, bucket_dates, outcomes)
    except Exception as exc:  # the batch's deferred write failed: nothing of it reached the files
        for outcome in outcomes.values():
            if outcome.status == STATUS_EMITTED:
                outcome.status, outcome.error, outcome.output = STATUS_FAILED, _describe(exc), {}
    else:
        if callable(batch):
            output = output_metadata(getattr(emitter, "last_output", None))
            for outcome in outcomes.values():
                if outcome.status == STATUS_EMITTED:
                    outcome.output = output
    return outcomes


def _emit_bucket(
    session: TenantSession,
    spec: EmitterSpec,
    emitter: Emitter,
    bucket: date,
    bucket_dates: list[date],
    outcomes: dict[date, _Outcome],
) -> None:
    rows: list[ChargebackRow] = []
    try:
        rows = rows_for_emission(session.db, spec.aggregation, bucket, bucket_dates)
        emitter(session.runtime.tenant_id, bucket, rows)
    except Exception as exc:
        for d in bucket_dates:
            outcomes[d] = _Outcome(STATUS_FAILED, len(rows), bucket, error=_describe(exc))
        return
    output = output_metadata(getattr(emitter, "last_output", None))
    for d in bucket_dates:
        outcomes[d] = _Outcome(STATUS_EMITTED, len(rows), bucket, output=output)


def rows_for_emission(
    db: TenantDatabase, spec_aggregation: str | None, bucket: date, bucket_dates: Sequence[date]
) -> list[ChargebackRow]:
    """The rows of one emitter call (emitters.md §3), read from committed storage."""
    backend = db.storage_backend()
    storage_bucket = aggregation.bucket_of(spec_aggregation)
    if storage_bucket is None:
        (d,) = bucket_dates
        return backend.chargebacks_for_date(d)
    start, end = aggregation.bucket_range(bucket, spec_aggregation)
    return backend.chargebacks_aggregated(start, end, storage_bucket)


def _record(
    session: TenantSession, spec: EmitterSpec, outcomes: Mapping[date, _Outcome], requested: set[date]
) -> dict[date, dict[str, Any]]:
    """Store every outcome in one transaction; metadata for the requested dates."""
    db = session.db
    stored: dict[date, EmissionRecord] = {}
    calculation_ids = {d: db.state.get(d).calculation_id for d in outcomes}
    with db.transaction():
        for d, outcome in sorted(outcomes.items()):
            stored[d] = db.emissions.record(spec.name, d, outcome.status, calculation_ids[d], outcome.rows)
    by_bucket: dict[date, list[str]] = {}
    for d, outcome in sorted(outcomes.items()):
        by_bucket.setdefault(outcome.bucket, []).append(d.isoformat())
    metadata: dict[date, dict[str, Any]] = {}
    for d, outcome in sorted(outcomes.items()):
        record = stored[d]
        if outcome.status == STATUS_FAILED:
            log.error(
                "tenant '%s': %s: emitter '%s' failed (attempt %d): %s",
                session.name,
                d,
                spec.name,
                record.attempt_count,
                outcome.error,
            )
        else:
            log.info(
                "tenant '%s': %s: emitter '%s' wrote %d rows (calculation %s)",
                session.name,
                d,
                spec.name,
                outcome.rows,
                record.calculation_id,
            )
        if d in requested and outcome.status == STATUS_EMITTED:
            metadata[d] = {
                "status": "emitted",
                "emitter_type": spec.type,
                "calculation_id": record.calculation_id,
                "rows": outcome.rows,
                "attempt": record.attempt_count,
                **(
                    {"dates_in_output": ", ".join(by_bucket[outcome.bucket])}
                    if spec.aggregation == "monthly"
                    else {}
                ),
                **outcome.output,
            }
    return metadata


def _skipped(spec: EmitterSpec, earliest: date) -> dict[str, Any]:
    return {
        "status": "skipped",
        "reason": (
            f"older than lookback_days={spec.lookback_days}: only dates >= {earliest.isoformat()} are emitted"
        ),
    }


def _already_emitted(spec: EmitterSpec, record: EmissionRecord) -> dict[str, Any]:
    return {
        "status": "already emitted",
        "emitter_type": spec.type,
        "calculation_id": record.calculation_id,
        "rows": record.row_count,
        "emitted_at": record.updated_at.isoformat(),
    }


def output_metadata(output: object) -> dict[str, Any]:
    """What an emitter reports it wrote (``last_output``: paths, rows, bytes) as plain values."""
    if output is None:
        return {}
    fields = (
        dataclasses.asdict(output)
        if dataclasses.is_dataclass(output) and not isinstance(output, type)
        else output
    )
    if not isinstance(fields, dict):
        return {}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items() if v is not None}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
