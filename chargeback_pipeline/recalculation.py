"""Skipping recalculations whose inputs did not change (operations.md §10).

A scheduled full refresh re-gathers billing for every date of the refresh window.
Recalculating a date whose stored inputs are identical to those of its current
calculation would produce the same rows under a new ``calculation_id`` and force every
emitter to write the date again, so scheduled refreshes compare a digest of the
inputs first. Manual re-materialisations never skip (the operator asked for it).

The digest covers everything the allocation of ``D`` reads: D's billing lines, D's
usage groups and rows, the resources and identities alive during D's billing windows
(without ``last_seen_at``, which every gather bumps), all digested inside DuckDB
(``TenantDatabase.calculation_inputs_digest``), and the tenant's allocation-relevant
settings. Digests live in ``gather_state`` under
``calculation_inputs:<date>``; retention removes them with the date.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import date, timedelta
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
    for part in (db.calculation_inputs_digest(d, start, end), session.config.calculation_fingerprint()):
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
