"""Identities of the organisation and how billing lines are tied to them (§3 E8–E12, §7.1, §7.6).

The kafka handler gathers every identity (service accounts, users, API keys,
identity providers and pools). Kafka and Schema Registry lines are resolved the same
way: the owners of the API keys scoped to the billed resource, plus every principal
seen in the line's telemetry, with API keys replaced by their owners.

An id that is not among the known identities becomes a *sentinel* — an identity built
from the id alone (``sa-…`` → service account) that is never stored — so money still
goes to the id the vendor reported, e.g. a deleted service account that still owns a key.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chargeback_pipeline.models import (
    SYSTEM_IDENTITY_TYPE,
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricRow,
)
from chargeback_pipeline.protocols import ResolveContext, TenantStore
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.inventory import ECOSYSTEM, created_at, get, text

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = "service_account"
USER = "user"
API_KEY = "api_key"
IDENTITY_PROVIDER = "identity_provider"
IDENTITY_POOL = "identity_pool"
UNKNOWN = "unknown"
PRINCIPAL_LABEL = "principal_id"
API_KEY_TO_OWNER = "api_key_to_owner"

_PREFIX_TYPES = {"sa": SERVICE_ACCOUNT, "u": USER, "pool": IDENTITY_POOL}


def sentinel_from_id(tenant_id: str, identity_id: str) -> Identity:
    """An identity known only by its id (§7.6): the prefix before the first ``-`` names its type."""
    prefix = identity_id.split("-", 1)[0] if "-" in identity_id else ""
    identity_type = _PREFIX_TYPES.get(prefix, UNKNOWN)
    return Identity(ECOSYSTEM, tenant_id, identity_id, identity_type, display_name=f"Unknown {identity_type}")


def sentinel(tenant_id: str, identity_id: str, identity_type: str, display_name: str) -> Identity:
    """A named placeholder such as ``connector_credentials_masked`` (never stored)."""
    return Identity(ECOSYSTEM, tenant_id, identity_id, identity_type, display_name=display_name)


# --- gathering (E8–E12) -----------------------------------------------------------------


def gather_identities(client: CCloudClient, tenant_id: str) -> Iterator[Identity]:
    """Service accounts, users, API keys, identity providers and, per provider, its pools."""
    yield from _identities(
        client.list("/iam/v2/service-accounts", page_size=99),
        tenant_id,
        SERVICE_ACCOUNT,
        "service account",
        lambda item: text(item, "display_name"),
        lambda item: {"description": get(item, "description")},
    )
    yield from _identities(
        client.list("/iam/v2/users", page_size=99),
        tenant_id,
        USER,
        "user",
        lambda item: text(item, "full_name"),
        lambda item: {"crn": get(item, "metadata", "resource_name")},
    )
    yield from _identities(
        client.list("/iam/v2/api-keys", page_size=100),
        tenant_id,
        API_KEY,
        "API key",
        lambda item: text(item, "spec", "description") or text(item, "id"),
        lambda item: {
            "owner_id": text(item, "spec", "owner", "id"),
            "resource_id": text(item, "spec", "resource", "id"),
        },
    )
    providers = list(
        _identities(
            client.list("/iam/v2/identity-providers", page_size=99),
            tenant_id,
            IDENTITY_PROVIDER,
            "identity provider",
            lambda item: text(item, "display_name"),
            lambda item: {
                "description": get(item, "description"),
                "crn": get(item, "metadata", "resource_name"),
            },
        )
    )
    yield from providers
    for provider in providers:
        provider_id = provider.identity_id
        yield from _identities(
            client.list(f"/iam/v2/identity-providers/{provider_id}/identity-pools", page_size=99),
            tenant_id,
            IDENTITY_POOL,
            "identity pool",
            lambda item: text(item, "display_name"),
            _pool_metadata(provider_id),
        )


def _pool_metadata(provider_id: str) -> Callable[[Any], dict[str, Any]]:
    return lambda item: {"description": get(item, "description"), "provider_id": provider_id}


def _identities(
    items: Iterable[Any],
    tenant_id: str,
    identity_type: str,
    label: str,
    display_name: Callable[[Any], str | None],
    metadata: Callable[[Any], dict[str, Any]],
) -> Iterator[Identity]:
    """One listing's identities; items without an id are skipped (the API's partial rows)."""
    for item in items:
        identity_id = text(item, "id")
        if identity_id:
            yield Identity(
                ECOSYSTEM,
                tenant_id,
                identity_id,
                identity_type,
                display_name=display_name(item),
                created_at=created_at(item, f"{label} {identity_id}"),
                metadata=metadata(item),
            )


# --- candidates and lookups -------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """The identities of a billing window, with API keys indexed by the resource they are scoped to."""

    tenant_id: str
    identities: IdentitySet
    keys_by_resource: dict[str, list[Identity]]
    # Owners of each resource's API keys, filled on first use: every line of a cluster and
    # window asks the same question (~80 keys a cluster, ~220 Kafka lines a day).
    _owners: dict[str, IdentitySet] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, tenant_id: str, identities: IdentitySet) -> Candidates:
        keys: dict[str, list[Identity]] = {}
        for identity in identities:
            if identity.identity_type == API_KEY:
                resource_id = identity.metadata.get("resource_id")
                if isinstance(resource_id, str) and resource_id:
                    keys.setdefault(resource_id, []).append(identity)
        return cls(tenant_id, identities, keys)

    def lookup(self, identity_id: str) -> Identity:
        """The candidate with this id, else a sentinel built from the id."""
        return self.identities.get(identity_id) or sentinel_from_id(self.tenant_id, identity_id)

    def key_owners(self, resource_id: str) -> IdentitySet:
        """The owners of the API keys scoped to ``resource_id`` (§7.1 step 2), a fresh copy."""
        owners = self._owners.get(resource_id)
        if owners is None:
            owners = IdentitySet()
            for key in self.keys_by_resource.get(resource_id, ()):
                owner_id = key.metadata.get("owner_id")
                if isinstance(owner_id, str) and owner_id:
                    owners.add(self.lookup(owner_id))
            self._owners[resource_id] = owners
        return owners.copy()


class CandidateCache:
    """One :class:`Candidates` per window's identity set, reused by every line of the window."""

    def __init__(self) -> None:
        self._source: IdentitySet | None = None
        self._candidates: Candidates | None = None

    def for_window(
        self,
        tenant_id: str,
        start: datetime,
        end: datetime,
        store: TenantStore,
        context: ResolveContext | None,
    ) -> Candidates:
        if context is None:
            people = store.identities.find_by_period(start, end)
            return Candidates.build(
                tenant_id, IdentitySet(i for i in people if i.identity_type != SYSTEM_IDENTITY_TYPE)
            )
        identities = context["cached_identities"]
        if (
            self._source is not identities
            or self._candidates is None
            or self._candidates.tenant_id != tenant_id
        ):
            self._candidates = Candidates.build(tenant_id, identities)
            self._source = identities
        return self._candidates


def resolve_by_api_keys_and_metrics(
    candidates: Candidates,
    resource_id: str,
    metrics_data: dict[str, list[MetricRow]] | None,
    principals: PrincipalCache | None = None,
) -> IdentityResolution:
    """Kafka / Schema Registry resolution (§7.1 steps 2–4)."""
    resource_active = candidates.key_owners(resource_id)
    if principals is None:
        metrics_derived, api_key_to_owner = metrics_identities(candidates, metrics_data)
    else:
        metrics_derived, api_key_to_owner = principals.get(candidates, metrics_data)
    return IdentityResolution(
        resource_active=resource_active,
        metrics_derived=IdentitySet(metrics_derived),
        context={API_KEY_TO_OWNER: dict(api_key_to_owner)},
    )


def metrics_identities(
    candidates: Candidates, metrics_data: dict[str, list[MetricRow]] | None
) -> tuple[IdentitySet, dict[str, str]]:
    """§7.1 step 3: every principal of the telemetry, API keys replaced by their owners."""
    metrics_derived = IdentitySet()
    api_key_to_owner: dict[str, str] = {}
    if metrics_data:
        for principal in sorted(_principals(metrics_data.values())):
            identity = candidates.lookup(principal)
            if identity.identity_type != API_KEY:
                metrics_derived.add(identity)
                continue
            owner_id = identity.metadata.get("owner_id")
            if isinstance(owner_id, str) and owner_id:
                metrics_derived.add(candidates.lookup(owner_id))
                api_key_to_owner[principal] = owner_id
    return metrics_derived, api_key_to_owner


class PrincipalCache:
    """The metrics part of a resolution for the last (window, usage group) seen.

    Every line of one cluster and day receives the same usage group (operations.md §6)
    and lines arrive in key order, so the principals of a group are looked up once and
    copied into each line's resolution.
    """

    def __init__(self) -> None:
        self._key: tuple[Candidates, dict[str, list[MetricRow]] | None] | None = None
        self._value: tuple[IdentitySet, dict[str, str]] = (IdentitySet(), {})

    def get(
        self, candidates: Candidates, metrics_data: dict[str, list[MetricRow]] | None
    ) -> tuple[IdentitySet, dict[str, str]]:
        if self._key is None or self._key[0] is not candidates or self._key[1] is not metrics_data:
            self._value = metrics_identities(candidates, metrics_data)
            self._key = (candidates, metrics_data)
        return self._value


def _principals(series: Iterable[list[MetricRow]]) -> set[str]:
    """Every non-empty ``principal_id`` over all keys and points, zero values included.

    The rows of one series share one labels mapping, so each distinct mapping object is
    read once (a usage group holds thousands of points but a few hundred series).
    """
    found: set[str] = set()
    for rows in series:
        labels = list(map(_LABELS, rows))
        for mapping in dict(zip(map(id, labels), labels, strict=True)).values():
            principal = mapping.get(PRINCIPAL_LABEL)
            if principal:
                found.add(principal)
    return found


_LABELS = operator.attrgetter("labels")


def lookup_ignoring_lifecycle(
    tenant_id: str, identity_id: str, store: TenantStore, context: ResolveContext | None
) -> Identity:
    """Window candidates first, then any stored identity (deleted too), else a sentinel."""
    if context is not None:
        found = context["cached_identities"].get(identity_id)
        if found is not None:
            return found
    stored = store.identities.get(identity_id)
    return stored if stored is not None else sentinel_from_id(tenant_id, identity_id)


def metadata_text(metadata: dict[str, Any], name: str) -> str | None:
    value = metadata.get(name)
    return value if isinstance(value, str) and value else None
