"""What every Confluent Cloud handler shares: its allocator table and the protocol defaults."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from chargeback_pipeline.models import Identity, IdentityResolution, MetricQuery, MetricRow, Resource
from chargeback_pipeline.protocols import CostAllocator, ResolveContext, TenantStore
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.inventory import SharedContext, get, text

log = logging.getLogger(__name__)


class HandlerBase:
    """A handler owning ``allocators.keys()``; it gathers, resolves and queries nothing by default."""

    service_type = ""
    gathered_resource_types: Sequence[str] = ()

    def __init__(self, allocators: Mapping[str, CostAllocator]) -> None:
        self._allocators = dict(allocators)

    @property
    def handles_product_types(self) -> Sequence[str]:
        return tuple(self._allocators)

    def get_allocator(self, product_type: str) -> CostAllocator:
        try:
            return self._allocators[product_type]
        except KeyError:
            raise ValueError(f"Unknown product type: {product_type}") from None

    def get_metrics_for_product_type(self, product_type: str) -> list[MetricQuery]:
        return []

    def gather_resources(
        self, tenant_id: str, store: TenantStore, shared_ctx: object | None = None
    ) -> Iterable[Resource]:
        return ()

    def gather_identities(self, tenant_id: str, store: TenantStore) -> Iterable[Identity]:
        return ()

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
        return IdentityResolution()


def shared_context(shared_ctx: object | None, service_type: str) -> SharedContext:
    """The plugin's shared context; handlers that list per environment cannot work without it."""
    if not isinstance(shared_ctx, SharedContext):
        raise TypeError(f"the {service_type} handler needs the plugin's shared context")
    return shared_ctx


def environment_listing(
    client: CCloudClient, path: str, shared: SharedContext, page_size: int, what: str
) -> Iterator[tuple[str, str, Any, Any]]:
    """``(env_id, id, item, spec)`` for each item of a per-environment listing.

    Items without an id cannot be a resource; they are skipped with a warning naming the
    environment, as the API occasionally returns partial rows.
    """
    for env_id in shared.env_ids:
        for item in client.list(path, {"environment": env_id}, page_size=page_size):
            item_id = text(item, "id")
            if item_id is None:
                log.warning("%s without id in %s skipped", what, env_id)
                continue
            yield env_id, item_id, item, get(item, "spec")
