"""The ``connector`` handler: managed connectors per cluster and their credentials (§3 E4, §7.3).

A connector authenticates to Kafka either as a service account or with an API key;
that credential's owner pays for it. Whatever cannot be determined (a deleted
connector, a masked key, a key nobody owns) is charged to a named sentinel so the
reason is visible in the output.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from chargeback_pipeline.models import Identity, IdentityResolution, IdentitySet, MetricRow, Resource
from chargeback_pipeline.protocols import ResolveContext, TenantStore
from chargeback_plugins.confluent_cloud import chains
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.handlers.base import HandlerBase, shared_context
from chargeback_plugins.confluent_cloud.identities import (
    lookup_ignoring_lifecycle,
    metadata_text,
    sentinel,
)
from chargeback_plugins.confluent_cloud.inventory import ECOSYSTEM, get, text

log = logging.getLogger(__name__)

CONNECTOR = "connector"
SERVICE_ACCOUNT_MODE = "SERVICE_ACCOUNT"
API_KEY_MODE = "KAFKA_API_KEY"
UNKNOWN_MODE = "UNKNOWN"
CREDENTIALS = "connector_credentials"
MASKED = "Connector Credentials Masked"
UNKNOWN = "Connector Credentials Unknown"


def connectors_path(env_id: str, cluster_id: str) -> str:
    return f"/connect/v1/environments/{env_id}/clusters/{cluster_id}/connectors"


def connector_resource(tenant_id: str, name: str, entry: Any, env_id: str, cluster_id: str) -> Resource:
    """One entry of the E4 map (keyed by connector name) → a ``connector`` resource."""
    config = get(entry, "info", "config")
    api_key = get(config, "kafka.api.key")
    account = get(config, "kafka.service.account.id")
    mode = get(config, "kafka.auth.mode")
    if not isinstance(mode, str) or not mode:
        if api_key is not None:
            mode = API_KEY_MODE
        elif account is not None:
            mode = SERVICE_ACCOUNT_MODE
        else:
            mode = UNKNOWN_MODE
            log.warning(
                "connector %s on %s: no kafka.auth.mode and no credential; mode UNKNOWN", name, cluster_id
            )
    metadata: dict[str, Any] = {
        "kafka_auth_mode": mode,
        "connector_class": get(config, "connector.class"),
        "env_id": env_id,
    }
    if mode == SERVICE_ACCOUNT_MODE:
        metadata["kafka_service_account_id"] = account
    elif mode == API_KEY_MODE:
        metadata["kafka_api_key"] = api_key
    return Resource(
        ecosystem=ECOSYSTEM,
        tenant_id=tenant_id,
        resource_id=text(entry, "id", "id") or name,
        resource_type=CONNECTOR,
        display_name=text(config, "name") or name,
        parent_id=cluster_id,
        created_at=None,
        metadata=metadata,
    )


class ConnectorHandler(HandlerBase):
    service_type = "connector"
    gathered_resource_types: Sequence[str] = (CONNECTOR,)

    def __init__(self, client: CCloudClient) -> None:
        tasks, capacity = chains.connector_chain(), chains.connector_chain()
        super().__init__(
            {
                "CONNECT_NUM_TASKS": tasks,
                "CONNECT_THROUGHPUT": tasks,
                "CUSTOM_CONNECT_NUM_TASKS": tasks,
                "CUSTOM_CONNECT_THROUGHPUT": tasks,
                "CONNECT_CAPACITY": capacity,
                "CUSTOM_CONNECT_PLUGIN": capacity,
            }
        )
        self._client = client

    def gather_resources(
        self, tenant_id: str, store: TenantStore, shared_ctx: object | None = None
    ) -> Iterator[Resource]:
        shared = shared_context(shared_ctx, self.service_type)
        for env_id, cluster_id in shared.env_cluster_pairs:
            body = self._client.get_raw(connectors_path(env_id, cluster_id), {"expand": "info,status,id"})
            if not isinstance(body, dict):
                raise TypeError(f"connectors of {cluster_id}: expected an object keyed by name")
            for name, entry in body.items():
                yield connector_resource(tenant_id, str(name), entry, env_id, cluster_id)

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
        identity = self._credential(tenant_id, resource_id, store, context)
        return IdentityResolution(resource_active=IdentitySet([identity]))

    def _credential(
        self, tenant_id: str, resource_id: str, store: TenantStore, context: ResolveContext | None
    ) -> Identity:
        """Exactly one identity per connector line (§7.3 table); lookups ignore lifecycle."""
        connector = (context["cached_resources"].get(resource_id) if context is not None else None) or (
            store.resources.get(resource_id)
        )
        if connector is None:
            return sentinel(tenant_id, "connector_credentials_masked", CREDENTIALS, MASKED)
        mode = connector.metadata.get("kafka_auth_mode")
        if mode == SERVICE_ACCOUNT_MODE:
            account = metadata_text(connector.metadata, "kafka_service_account_id")
            if account is None:
                return sentinel(tenant_id, "connector_credentials_unknown", CREDENTIALS, UNKNOWN)
            return lookup_ignoring_lifecycle(tenant_id, account, store, context)
        if mode == API_KEY_MODE:
            key_id = metadata_text(connector.metadata, "kafka_api_key")
            if key_id is None:
                return sentinel(tenant_id, "connector_credentials_unknown", CREDENTIALS, UNKNOWN)
            if set(key_id) == {"*"}:
                return sentinel(tenant_id, "connector_api_key_masked", CREDENTIALS, MASKED)
            key = (context["cached_identities"].get(key_id) if context is not None else None) or (
                store.identities.get(key_id)
            )
            if key is None:
                return sentinel(tenant_id, "connector_api_key_not_found", CREDENTIALS, UNKNOWN)
            owner = metadata_text(key.metadata, "owner_id")
            if owner is None:
                return sentinel(tenant_id, "connector_credentials_unknown", CREDENTIALS, UNKNOWN)
            return lookup_ignoring_lifecycle(tenant_id, owner, store, context)
        return sentinel(tenant_id, connector.resource_id, CREDENTIALS, UNKNOWN)
