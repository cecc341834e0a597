"""What every Confluent Cloud handler shares: its allocator table and the protocol defaults."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from chargeback_pipeline.models import Identity, IdentityResolution, MetricQuery, MetricRow, Resource
from chargeback_pipeline.protocols import CostAllocator, ResolveContext, TenantStore


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
