"""The ``schema_registry`` handler: registries per environment (§3 E3, §7.2).

Lines are resolved like Kafka lines — owners of the API keys scoped to the registry —
and never request metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from chargeback_pipeline.models import IdentityResolution, MetricRow, Resource
from chargeback_pipeline.protocols import ResolveContext, TenantStore
from chargeback_plugins.confluent_cloud import chains
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.handlers.base import HandlerBase, environment_listing, shared_context
from chargeback_plugins.confluent_cloud.identities import (
    CandidateCache,
    PrincipalCache,
    resolve_by_api_keys_and_metrics,
)
from chargeback_plugins.confluent_cloud.inventory import (
    ECOSYSTEM,
    created_at,
    get,
    lower_trim,
    text,
)

SCHEMA_REGISTRY = "schema_registry"
PATH = "/srcm/v3/clusters"


class SchemaRegistryHandler(HandlerBase):
    service_type = "schema_registry"
    gathered_resource_types: Sequence[str] = (SCHEMA_REGISTRY,)

    def __init__(self, client: CCloudClient) -> None:
        chain = chains.even_owners_chain()
        super().__init__({"SCHEMA_REGISTRY": chain, "GOVERNANCE_BASE": chain, "NUM_RULES": chain})
        self._client = client
        self._candidates = CandidateCache()
        self._principals = PrincipalCache()

    def gather_resources(
        self, tenant_id: str, store: TenantStore, shared_ctx: object | None = None
    ) -> Iterator[Resource]:
        listing = environment_listing(
            self._client, PATH, shared_context(shared_ctx, self.service_type), 50, "schema registry"
        )
        for env_id, registry_id, item, spec in listing:
            yield Resource(
                ecosystem=ECOSYSTEM,
                tenant_id=tenant_id,
                resource_id=registry_id,
                resource_type=SCHEMA_REGISTRY,
                display_name=text(spec, "display_name"),
                parent_id=text(spec, "environment", "id") or env_id,
                created_at=created_at(item, f"schema registry {registry_id}"),
                metadata={
                    "http_endpoint": get(spec, "http_endpoint"),
                    "cloud": lower_trim(get(spec, "cloud")),
                    "region": lower_trim(get(spec, "region")),
                    "provider_cloud": get(spec, "cloud"),
                    "provider_region": get(spec, "region"),
                    "crn": get(item, "metadata", "resource_name"),
                },
            )

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
