"""The single ``kafka`` service handler (spec/self-managed-kafka.md §5–§6)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chargeback_pipeline.models import (
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricQuery,
    MetricRow,
    Resource,
)
from chargeback_pipeline.principals import (
    label_values,
    lookup_identities,
    principal_identity,
    static_identities,
)
from chargeback_pipeline.protocols import CostAllocator, ResolveContext, TenantStore
from chargeback_plugins.self_managed_kafka.admin import AdminInventory
from chargeback_plugins.self_managed_kafka.allocators import smk_infra_chain, smk_network_chain
from chargeback_plugins.self_managed_kafka.cost_input import (
    COMPUTE,
    ECOSYSTEM,
    NETWORK_EGRESS,
    NETWORK_INGRESS,
    PRODUCT_TYPES,
    STORAGE,
)
from chargeback_plugins.self_managed_kafka.discovery import Discovery, DiscoveryState
from chargeback_plugins.self_managed_kafka.queries import (
    BYTES_IN_PER_PRINCIPAL,
    BYTES_OUT_PER_PRINCIPAL,
    USAGE_QUERIES,
)
from chargeback_plugins.self_managed_kafka.settings import SelfManagedKafkaSettings

CLUSTER, BROKER, TOPIC = "cluster", "broker", "topic"


@dataclass(frozen=True)
class SharedContext:
    """What one inventory gather shares between calls: the cluster and the discovered sets."""

    cluster: Resource
    discovery: Discovery | None


class SelfManagedKafkaHandler:
    service_type = "kafka"
    handles_product_types: Sequence[str] = PRODUCT_TYPES
    gathered_resource_types: Sequence[str] = (CLUSTER, BROKER, TOPIC)

    def __init__(
        self, settings: SelfManagedKafkaSettings, discovery: DiscoveryState, admin: AdminInventory | None
    ) -> None:
        self._settings = settings
        self._discovery = discovery
        self._admin = admin
        self._allocators: dict[str, CostAllocator] = {
            COMPUTE: smk_infra_chain(),
            STORAGE: smk_infra_chain(),
            NETWORK_INGRESS: smk_network_chain(BYTES_IN_PER_PRINCIPAL.key),
            NETWORK_EGRESS: smk_network_chain(BYTES_OUT_PER_PRINCIPAL.key),
        }

    # --- inventory ------------------------------------------------------------------------

    def cluster_resource(self, tenant_id: str) -> Resource:
        cluster_id = self._settings.cluster_id
        return Resource(
            ecosystem=ECOSYSTEM,
            tenant_id=tenant_id,
            resource_id=cluster_id,
            resource_type=CLUSTER,
            display_name=cluster_id,
            metadata={"broker_count": self._settings.broker_count, "region": self._settings.region},
        )

    def gather_resources(
        self, tenant_id: str, store: TenantStore, shared_ctx: object | None = None
    ) -> Iterator[Resource]:
        context = shared_ctx if isinstance(shared_ctx, SharedContext) else None
        yield context.cluster if context else self.cluster_resource(tenant_id)
        if self._admin is not None:
            yield from self._admin.resources(tenant_id)
        elif context is not None and context.discovery is not None:
            yield from self._discovered_resources(tenant_id, context.discovery)

    def _discovered_resources(self, tenant_id: str, found: Discovery) -> Iterator[Resource]:
        cluster_id = self._settings.cluster_id
        for kind, names in ((BROKER, found.brokers), (TOPIC, found.topics)):
            for name in names:
                yield Resource(
                    ecosystem=ECOSYSTEM,
                    tenant_id=tenant_id,
                    resource_id=f"{cluster_id}:{kind}:{name}",
                    resource_type=kind,
                    display_name=name,
                    parent_id=cluster_id,
                    metadata={"cluster_id": cluster_id},
                )

    def gather_identities(self, tenant_id: str, store: TenantStore) -> Iterator[Identity]:
        source = self._settings.identity_source
        found = self._discovery.latest
        if self._use_principals and found is not None:
            for principal in found.principals:
                yield principal_identity(ECOSYSTEM, tenant_id, principal, source)
        if self._use_static:
            yield from static_identities(ECOSYSTEM, tenant_id, source)

    @property
    def _use_principals(self) -> bool:
        return self._settings.identity_source.uses_prometheus and self._discovery.principals_available

    @property
    def _use_static(self) -> bool:
        source = self._settings.identity_source
        return source.uses_static or (
            not self._discovery.principals_available and bool(source.static_identities)
        )

    # --- allocation -----------------------------------------------------------------------

    def resolve_identities(
        self,
        tenant_id: str,
        resource_id: str,
        billing_timestamp: datetime,
        billing_duration: timedelta,
        metrics_data: dict[str, list[MetricRow]] | None,
        store: TenantStore,
        context: ResolveContext | None = None,
    ) -> IdentityResolution:
        resolution = IdentityResolution()
        source = self._settings.identity_source
        if self._use_principals and metrics_data:
            resolution.metrics_derived = lookup_identities(
                label_values(metrics_data, "principal"),
                store,
                context,
                lambda principal: principal_identity(ECOSYSTEM, tenant_id, principal, source),
            )
        if self._use_static:
            resolution.resource_active = IdentitySet(static_identities(ECOSYSTEM, tenant_id, source))
        return resolution

    def get_metrics_for_product_type(self, product_type: str) -> list[MetricQuery]:
        if product_type in PRODUCT_TYPES and self._settings.identity_source.uses_prometheus:
            return list(USAGE_QUERIES)
        return []

    def get_allocator(self, product_type: str) -> CostAllocator:
        try:
            return self._allocators[product_type]
        except KeyError:
            raise ValueError(f"Unknown product type: {product_type}") from None
