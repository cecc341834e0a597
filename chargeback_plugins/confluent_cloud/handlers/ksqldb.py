"""The ``ksqldb`` handler: ksqlDB clusters per environment, charged to their credential (§3 E5, §7.4)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from chargeback_pipeline.models import Identity, IdentityResolution, IdentitySet, MetricRow, Resource
from chargeback_pipeline.protocols import ResolveContext, TenantStore
from chargeback_plugins.confluent_cloud import chains
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.handlers.base import HandlerBase, environment_listing, shared_context
from chargeback_plugins.confluent_cloud.identities import lookup_ignoring_lifecycle, sentinel
from chargeback_plugins.confluent_cloud.inventory import ECOSYSTEM, created_at, get, text

KSQLDB_CLUSTER = "ksqldb_cluster"
PATH = "/ksqldbcm/v2/clusters"
OWNER_UNKNOWN = "ksqldb_owner_unknown"
CREDENTIALS = "ksqldb_credentials"


class KsqldbHandler(HandlerBase):
    service_type = "ksqldb"
    gathered_resource_types: Sequence[str] = (KSQLDB_CLUSTER,)

    def __init__(self, client: CCloudClient) -> None:
        chain = chains.even_owners_chain()
        super().__init__({"KSQL_NUM_CSU": chain, "KSQL_NUM_CSUS": chain})
        self._client = client

    def gather_resources(
        self, tenant_id: str, store: TenantStore, shared_ctx: object | None = None
    ) -> Iterator[Resource]:
        listing = environment_listing(
            self._client, PATH, shared_context(shared_ctx, self.service_type), 100, "ksqlDB cluster"
        )
        for env_id, cluster_id, item, spec in listing:
            yield Resource(
                ecosystem=ECOSYSTEM,
                tenant_id=tenant_id,
                resource_id=cluster_id,
                resource_type=KSQLDB_CLUSTER,
                display_name=text(spec, "display_name"),
                parent_id=text(spec, "environment", "id") or env_id,
                owner_id=text(spec, "credential_identity", "id") or OWNER_UNKNOWN,
                created_at=created_at(item, f"ksqlDB cluster {cluster_id}"),
                metadata={
                    "kafka_cluster_id": text(spec, "kafka_cluster", "id"),
                    "csu_count": get(spec, "csu"),
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
        return IdentityResolution(
            resource_active=IdentitySet([self._owner(tenant_id, resource_id, store, context)])
        )

    def _owner(
        self, tenant_id: str, resource_id: str, store: TenantStore, context: ResolveContext | None
    ) -> Identity:
        cluster = (context["cached_resources"].get(resource_id) if context is not None else None) or (
            store.resources.get(resource_id)
        )
        if cluster is None:
            return sentinel(
                tenant_id,
                "ksqldb_deleted_when_calc_started",
                CREDENTIALS,
                "ksqlDB Deleted When Calculation Started",
            )
        if not cluster.owner_id:
            return sentinel(tenant_id, OWNER_UNKNOWN, CREDENTIALS, "ksqlDB Owner Unknown")
        return lookup_ignoring_lifecycle(tenant_id, cluster.owner_id, store, context)
