"""Identities of metric-driven plugins: discovered principals and configured static ones.

The self-managed Kafka and generic plugins name and tag identities the same way
(spec/self-managed-kafka.md §5), so the rule lives here once: a principal mapped to a
real team is displayed as that team, allocation stays per principal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from chargeback_pipeline.models import Identity, IdentitySet, MetricRow
from chargeback_pipeline.plugin_settings import IdentitySourceSettings
from chargeback_pipeline.protocols import ResolveContext, TenantStore

PRINCIPAL = "principal"


def principal_identity(
    ecosystem: str,
    tenant_id: str,
    principal: str,
    source: IdentitySourceSettings,
    *,
    raw_principal_metadata: bool = True,
) -> Identity:
    team = source.team_of(principal)
    mapped = principal in source.principal_to_team and team != source.default_team
    metadata = {"raw_principal": principal, "team": team} if raw_principal_metadata else {"team": team}
    return Identity(
        ecosystem=ecosystem,
        tenant_id=tenant_id,
        identity_id=principal,
        identity_type=PRINCIPAL,
        display_name=team if mapped else principal,
        metadata=metadata,
    )


def static_identities(ecosystem: str, tenant_id: str, source: IdentitySourceSettings) -> Iterator[Identity]:
    for static in source.static_identities:
        yield Identity(
            ecosystem=ecosystem,
            tenant_id=tenant_id,
            identity_id=static.identity_id,
            identity_type=static.identity_type,
            display_name=static.display_name or static.identity_id,
            metadata={"team": static.team} if static.team else {},
        )


def label_values(rows_by_key: dict[str, list[MetricRow]] | None, label: str) -> list[str]:
    """Distinct non-empty values of ``label`` over every row (zero values count), sorted."""
    if not rows_by_key:
        return []
    values = {row.labels.get(label, "") for rows in rows_by_key.values() for row in rows}
    values.discard("")
    return sorted(values)


def lookup_identities(
    identity_ids: Iterable[str],
    store: TenantStore,
    context: ResolveContext | None,
    build: Callable[[str], Identity],
) -> IdentitySet:
    """Identities by id from the window's cache, else the store, else built from the label.

    A principal seen in metrics but never gathered still gets charged: it is built on
    the fly rather than dropped (its traffic is real).
    """
    cached = context["cached_identities"] if context else None
    found = IdentitySet()
    for identity_id in identity_ids:
        identity = (cached.get(identity_id) if cached is not None else None) or store.identities.get(
            identity_id
        )
        found.add(identity or build(identity_id))
    return found
