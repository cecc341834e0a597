"""The single ``generic`` service handler (spec/generic-metrics.md §3–§4)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from chargeback_pipeline import clock
from chargeback_pipeline.allocation import generic_even_chain, generic_usage_chain
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
from chargeback_pipeline.protocols import CostAllocator, MetricsSource, ResolveContext, TenantStore
from chargeback_plugins.generic_metrics_only.cost_input import ECOSYSTEM
from chargeback_plugins.generic_metrics_only.settings import CostType, GenericMetricsSettings

CLUSTER_RESOURCE_TYPE = "cluster"
DISCOVERY_KEY = "discovery"
DISCOVERY_WINDOW = timedelta(hours=1)


def usage_key(cost_type_name: str) -> str:
    return f"alloc_{cost_type_name}"


class GenericHandler:
    """Owns every configured cost type; identities are static or discovered from metrics."""

    service_type = "generic"
    gathered_resource_types: Sequence[str] = (CLUSTER_RESOURCE_TYPE,)

    def __init__(self, settings: GenericMetricsSettings, source: MetricsSource | None) -> None:
        self._settings = settings
        self._source = source
        self._cost_types = {c.name: c for c in settings.cost_types}
        self._allocators = {c.name: _chain(c) for c in settings.cost_types}

    @property
    def handles_product_types(self) -> Sequence[str]:
        return tuple(self._cost_types)

    def gather_resources(
        self, tenant_id: str, store: TenantStore, shared_ctx: object | None = None
    ) -> Iterator[Resource]:
        yield Resource(
            ecosystem=ECOSYSTEM,
            tenant_id=tenant_id,
            resource_id=self._settings.cluster_id,
            resource_type=CLUSTER_RESOURCE_TYPE,
            display_name=self._settings.display_name or self._settings.cluster_id,
        )

    def gather_identities(self, tenant_id: str, store: TenantStore) -> Iterator[Identity]:
        source = self._settings.identity_source
        if source.uses_prometheus:
            for principal in self._discover():
                yield self._principal(tenant_id, principal)
        if source.uses_static:
            yield from static_identities(ECOSYSTEM, tenant_id, source)

    def _discover(self) -> list[str]:
        """Label values of the discovery query over the last hour; errors fail the gather."""
        if self._source is None or self._discovery_query is None:
            return []
        now = clock.utc_now()
        step = timedelta(seconds=self._settings.metrics_step_seconds)
        rows = self._source.query([self._discovery_query], now - DISCOVERY_WINDOW, now, step)
        return label_values(rows, self._settings.identity_source.label)

    @property
    def _discovery_query(self) -> MetricQuery | None:
        source = self._settings.identity_source
        if not (source.uses_prometheus and source.discovery_query):
            return None
        return MetricQuery(
            key=DISCOVERY_KEY, query_expression=source.discovery_query, label_keys=(source.label,)
        )

    def _principal(self, tenant_id: str, principal: str) -> Identity:
        return principal_identity(
            ECOSYSTEM, tenant_id, principal, self._settings.identity_source, raw_principal_metadata=False
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
        resolution = IdentityResolution()
        source = self._settings.identity_source
        if source.uses_static:
            resolution.resource_active = IdentitySet(static_identities(ECOSYSTEM, tenant_id, source))
        if metrics_data:
            resolution.metrics_derived = lookup_identities(
                label_values(metrics_data, source.label),
                store,
                context,
                lambda principal: self._principal(tenant_id, principal),
            )
        return resolution

    def get_metrics_for_product_type(self, product_type: str) -> list[MetricQuery]:
        cost_type = self._cost_types.get(product_type)
        if cost_type is None:
            return []
        if cost_type.allocation_strategy == "usage_ratio":
            assert cost_type.allocation_query is not None and cost_type.allocation_label is not None
            return [
                MetricQuery(
                    key=usage_key(cost_type.name),
                    query_expression=cost_type.allocation_query,
                    label_keys=(cost_type.allocation_label,),
                )
            ]
        discovery = self._discovery_query
        return [discovery] if discovery is not None else []

    def get_allocator(self, product_type: str) -> CostAllocator:
        try:
            return self._allocators[product_type]
        except KeyError:
            raise ValueError(f"Unknown product type: {product_type}") from None


def _chain(cost_type: CostType) -> CostAllocator:
    if cost_type.allocation_strategy == "usage_ratio":
        assert cost_type.allocation_label is not None  # enforced by settings validation
        return generic_usage_chain(usage_key(cost_type.name), cost_type.allocation_label)
    return generic_even_chain()
