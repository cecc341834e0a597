"""The single ``generic`` service handler (spec/generic-metrics.md §3–§4)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from chargeback_pipeline.allocation import generic_even_chain, generic_usage_chain
from chargeback_pipeline.models import (
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricQuery,
    MetricRow,
    Resource,
)
from chargeback_pipeline.protocols import CostAllocator, ResolveContext, TenantStore
from chargeback_plugins.generic_metrics_only.cost_input import ECOSYSTEM
from chargeback_plugins.generic_metrics_only.settings import GenericMetricsSettings

CLUSTER_RESOURCE_TYPE = "cluster"


def usage_key(cost_type_name: str) -> str:
    return f"alloc_{cost_type_name}"


class GenericHandler:
    """Owns every configured cost type; identities are static or discovered from metrics."""

    service_type = "generic"
    gathered_resource_types: Sequence[str] = (CLUSTER_RESOURCE_TYPE,)

    def __init__(self, settings: GenericMetricsSettings, tenant_id: str = "") -> None:
        self._settings = settings
        self._cost_types = {c.name: c for c in settings.cost_types}
        self._allocators: dict[str, CostAllocator] = {}
        for cost_type in settings.cost_types:
            if cost_type.allocation_strategy == "usage_ratio":
                assert cost_type.allocation_label is not None  # enforced by settings validation
                chain = generic_usage_chain(usage_key(cost_type.name), cost_type.allocation_label)
            else:
                chain = generic_even_chain()
            self._allocators[cost_type.name] = chain

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
        if self._settings.identity_source.uses_static:
            yield from self._static_identities(tenant_id)

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
        if self._settings.identity_source.uses_static:
            resolution.resource_active = IdentitySet(self._static_identities(tenant_id))
        if metrics_data:
            resolution.metrics_derived = IdentitySet(self._metric_identities(tenant_id, metrics_data))
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
        source = self._settings.identity_source
        if source.uses_prometheus and source.discovery_query:
            return [
                MetricQuery(
                    key="discovery", query_expression=source.discovery_query, label_keys=(source.label,)
                )
            ]
        return []

    def get_allocator(self, product_type: str) -> CostAllocator:
        try:
            return self._allocators[product_type]
        except KeyError:
            raise ValueError(f"Unknown product type: {product_type}") from None

    def _team(self, identity_id: str, explicit: str | None = None) -> str:
        source = self._settings.identity_source
        return explicit or source.principal_to_team.get(identity_id, source.default_team)

    def _static_identities(self, tenant_id: str) -> Iterator[Identity]:
        for static in self._settings.identity_source.static_identities:
            yield Identity(
                ecosystem=ECOSYSTEM,
                tenant_id=tenant_id,
                identity_id=static.identity_id,
                identity_type=static.identity_type,
                display_name=static.display_name or static.identity_id,
                metadata={"team": self._team(static.identity_id, static.team)},
            )

    def _metric_identities(
        self, tenant_id: str, metrics_data: dict[str, list[MetricRow]]
    ) -> Iterator[Identity]:
        label = self._settings.identity_source.label
        seen = sorted({row.labels.get(label, "") for rows in metrics_data.values() for row in rows} - {""})
        for identity_id in seen:
            yield Identity(
                ecosystem=ECOSYSTEM,
                tenant_id=tenant_id,
                identity_id=identity_id,
                identity_type="principal",
                display_name=identity_id,
                metadata={"team": self._team(identity_id)},
            )
