"""Skipping recalculations whose inputs did not change (operations.md §10).

A scheduled full refresh re-gathers billing for every date of the refresh window.
Recalculating a date whose stored inputs are identical to those of its current
calculation would produce the same rows under a new ``calculation_id`` and force every
emitter to write the date again, so scheduled refreshes compare a digest of the
inputs first. Manual re-materialisations never skip (the operator asked for it).

The digest covers everything the allocation of ``D`` reads: D's billing lines (their
stored fingerprint), D's usage groups and rows, the resources and identities alive
during D's billing windows (without ``last_seen_at``, which every gather bumps), and the
tenant's allocation-relevant settings. Digests live in ``gather_state`` under
``calculation_inputs:<date>``; retention removes them with the date.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import operator
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from chargeback_pipeline import steps
from chargeback_pipeline.models import BillingLineItem, billing_window, day_start
from chargeback_pipeline.steps import TenantSession
from chargeback_pipeline.storage import TenantDatabase

log = logging.getLogger(__name__)

INPUTS_PREFIX = "calculation_inputs:"


def calculate_unless_unchanged(session: TenantSession, d: date, *, skip_unchanged: bool) -> dict[str, Any]:
    """Calculate ``d`` (``steps.calculate_chargebacks``), or keep its current calculation
    when ``skip_unchanged`` and its inputs are exactly those it was calculated from."""
    lines = session.db.billing.find_by_date(d)  # read once: the digest and the calculation use it
    fingerprint = inputs_fingerprint(session, d, lines)
    if skip_unchanged:
        kept = _unchanged_calculation(session, d, fingerprint)
        if kept is not None:
            log.info(
                "tenant '%s': %s: inputs unchanged since calculation %s; not recalculated",
                session.name,
                d,
                kept["calculation_id"],
            )
            return {**kept, "recalculated": False}
    # The digest is stored in the transaction of the rows it describes.
    metadata = steps.calculate_chargebacks(
        session, d, lines, with_commit=lambda m: remember_inputs(session.db, d, fingerprint, m)
    )
    return {**metadata, "recalculated": True}


def inputs_key(d: date) -> str:
    return f"{INPUTS_PREFIX}{d.isoformat()}"


def inputs_fingerprint(session: TenantSession, d: date, lines: list[BillingLineItem] | None = None) -> str:
    """Digest of every stored input the calculation of ``d`` depends on (``lines``: its
    stored billing lines, when the caller has read them already)."""
    db = session.db
    if lines is None:
        lines = db.billing.find_by_date(d)
    durations = session.runtime.granularity_durations
    windows = [billing_window(line, durations) for line in lines]
    start = min((w[0] for w in windows), default=day_start(d))
    end = max((w[1] for w in windows), default=day_start(d + timedelta(days=1)))
    digest = hashlib.sha256()
    for part in (
        db.billing.fingerprint(d),
        _usage_digest(db, d),
        _entities_digest(db.resources.find_by_period(start, end)),
        _entities_digest(db.identities.find_by_period(start, end)),
        session.config.calculation_fingerprint(),
    ):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def _unchanged_calculation(session: TenantSession, d: date, fingerprint: str) -> dict[str, Any] | None:
    """The step metadata of ``d``'s current calculation when it used exactly these inputs."""
    state = session.db.state.get(d)
    if not state.chargeback_calculated or state.calculation_id is None:
        return None
    stored = session.db.gather_state.get(inputs_key(d))
    if not stored or stored.get("fingerprint") != fingerprint:
        return None
    metadata = stored.get("metadata") or {}
    if metadata.get("calculation_id") != state.calculation_id:
        return None
    return dict(metadata)


def remember_inputs(db: TenantDatabase, d: date, fingerprint: str, metadata: dict[str, Any]) -> None:
    """Store the digest with the calculation's metadata (which names its ``calculation_id``)."""
    with db.transaction():
        db.gather_state.set(inputs_key(d), {"fingerprint": fingerprint, "metadata": metadata})


def forget_inputs_before(db: TenantDatabase, first_kept: date) -> int:
    """Drop the digests of dates older than ``first_kept``; joins the caller's transaction."""
    doomed = [
        name
        for name in db.gather_state.names()
        if name.startswith(INPUTS_PREFIX) and date.fromisoformat(name[len(INPUTS_PREFIX) :]) < first_kept
    ]
    with db.transaction():
        for name in doomed:
            db.gather_state.delete(name)
    return len(doomed)


def _usage_digest(db: TenantDatabase, d: date) -> str:
    groups = db.conn.execute(
        "SELECT coalesce(md5(string_agg(concat_ws('|', resource_id, window_start, window_end, "
        "fetch_failed, metric_keys), '\n' ORDER BY resource_id, window_start, window_end)), '') "
        "FROM usage_metric_groups WHERE billing_date = ?",
        [d],
    ).fetchone()
    rows = db.conn.execute(
        "SELECT coalesce(md5(string_agg(concat_ws('|', resource_id, window_start, window_end, metric_key, "
        "row_no, row_metric_key, \"timestamp\", value, labels), '\n' ORDER BY resource_id, window_start, "
        "window_end, metric_key, row_no)), '') FROM usage_metrics WHERE billing_date = ?",
        [d],
    ).fetchone()
    return f"{groups[0] if groups else ''}:{rows[0] if rows else ''}"


def _entities_digest(entities: list[Any]) -> str:
    """Order-independent digest of entities, ignoring ``last_seen_at``.

    Each entity is one sorted-keys JSON object of its fields, ``datetime`` fields in ISO
    form. A calculation digests the few thousand resources and identities alive in its
    windows, so each entity costs one C-level field read, one dict and one encode:
    ``dataclasses.asdict`` (a deep copy of every metadata mapping) and a per-field
    conversion call were the most expensive part of a calculation. The text is the
    same as ``json.dumps({k: _plain(v) ...}, sort_keys=True, default=str)``: stored
    metadata is plain JSON data, and only fields declared as datetimes hold datetimes.
    """
    encode = _DIGEST_ENCODER.encode
    parts: list[str] = []
    for e in entities:
        names, read, stamps = _digest_fields(type(e))
        fields = dict(zip(names, read(e), strict=True))
        for name in stamps:
            value = fields[name]
            if isinstance(value, datetime):
                fields[name] = value.isoformat()
        parts.append(encode(fields))
    parts.sort()
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


# What ``json.dumps(..., sort_keys=True, default=str)`` builds on every call, built once.
_DIGEST_ENCODER = json.JSONEncoder(sort_keys=True, default=str)
_DigestFields = tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]], tuple[str, ...]]
_DIGEST_FIELDS: dict[type, _DigestFields] = {}


def _digest_fields(kind: type) -> _DigestFields:
    """Field names (without ``last_seen_at``), a reader of their values, the datetime fields."""
    found = _DIGEST_FIELDS.get(kind)
    if found is None:
        fields = [f for f in dataclasses.fields(kind) if f.name != "last_seen_at"]
        names = tuple(f.name for f in fields)
        read = operator.attrgetter(*names) if len(names) > 1 else (lambda e: (getattr(e, names[0]),))
        stamps = tuple(f.name for f in fields if "datetime" in str(f.type))
        found = _DIGEST_FIELDS[kind] = (names, read, stamps)
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value
