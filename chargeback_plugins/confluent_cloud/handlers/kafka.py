"""The ``kafka`` handler: clusters, every identity, and Kafka line resolution (§6, §7.1)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from chargeback_pipeline.models import Identity, IdentityResolution, MetricQuery, MetricRow, Resource
from chargeback_pipeline.protocols import ResolveContext, TenantStore
from chargeback_plugins.confluent_cloud import chains, telemetry
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.handlers.base import HandlerBase, shared_context
from chargeback_plugins.confluent_cloud.identities import (
    CandidateCache,
    PrincipalCache,
    gather_identities,
    resolve_by_api_keys_and_metrics,
)
from chargeback_plugins.confluent_cloud.inventory import ENVIRONMENT, KAFKA_CLUSTER


class KafkaHandler(HandlerBase):
    """Owns the Kafka product types; the authority for environments and clusters."""

    service_type = "kafka"
    gathered_resource_types: Sequence[str] = (ENVIRONMENT, KAFKA_CLUSTER)

    def __init__(self, client: CCloudClient) -> None:
        super().__init__(
            {
                "KAFKA_NUM_CKU": chains.cku_allocator(),
                "KAFKA_NUM_CKUS": chains.cku_allocator(),
                "KAFKA_NETWORK_READ": chains.network_chain(chains.BYTES_OUT),
                "KAFKA_NETWORK_WRITE": chains.network_chain(chains.BYTES_IN),
                "KAFKA_PARTITION": chains.network_chain(chains.PARTITION_COUNT),
                "KAFKA_BASE": chains.kafka_base_allocator(),
                "KAFKA_STORAGE": chains.kafka_base_allocator(),
            }
        )
        self._client = client
        self._candidates = CandidateCache()
        self._principals = PrincipalCache()

    def gather_resources(
        self, tenant_id: str, store: TenantStore, shared_ctx: object | None = None
    ) -> Iterator[Resource]:
        shared = shared_context(shared_ctx, self.service_type)
        yield from shared.environments
        yield from shared.clusters

    def gather_identities(self, tenant_id: str, store: TenantStore) -> Iterator[Identity]:
        return gather_identities(self._client, tenant_id)

    def get_metrics_for_product_type(self, product_type: str) -> list[MetricQuery]:
        return telemetry.queries_for(product_type)

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
        candidates = self._candidates.for_window(
            tenant_id, billing_timestamp, billing_timestamp + billing_duration, store, context
        )
        return resolve_by_api_keys_and_metrics(candidates, resource_id, metrics_data, self._principals)
