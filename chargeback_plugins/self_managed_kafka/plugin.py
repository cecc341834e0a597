"""The ``self_managed_kafka`` ecosystem plugin object (spec/self-managed-kafka.md §2)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from chargeback_pipeline import clock
from chargeback_pipeline.metrics import PrometheusSource
from chargeback_pipeline.plugin_settings import parse_plugin_settings
from chargeback_pipeline.protocols import (
    CostAllocator,
    CostInput,
    MetricsSource,
    ServiceHandler,
    StorageModule,
)
from chargeback_pipeline.storage import CoreStorageModule
from chargeback_plugins.self_managed_kafka.admin import AdminInventory, create_admin_client
from chargeback_plugins.self_managed_kafka.cost_input import ECOSYSTEM, SelfManagedKafkaCostInput
from chargeback_plugins.self_managed_kafka.discovery import DiscoveryState
from chargeback_plugins.self_managed_kafka.handler import SelfManagedKafkaHandler, SharedContext
from chargeback_plugins.self_managed_kafka.settings import SelfManagedKafkaSettings

T = TypeVar("T")


class SelfManagedKafkaPlugin:
    """Prices a self-run Kafka cluster from a cost model and its JMX metrics in Prometheus."""

    ecosystem = ECOSYSTEM
    settings_model = SelfManagedKafkaSettings

    def __init__(self) -> None:
        self._settings: SelfManagedKafkaSettings | None = None
        self._source: PrometheusSource | None = None
        self._admin: AdminInventory | None = None
        self._discovery = DiscoveryState()
        self._handler: SelfManagedKafkaHandler | None = None
        self._cost_input: SelfManagedKafkaCostInput | None = None

    def validate_settings(self, config: dict[str, Any]) -> None:
        parse_plugin_settings(SelfManagedKafkaSettings, config)

    def initialize(self, config: dict[str, Any]) -> None:
        settings = parse_plugin_settings(SelfManagedKafkaSettings, config)
        self._settings = settings
        self._source = PrometheusSource(settings.metrics)
        if settings.resource_source.source == "admin_api":
            self._admin = AdminInventory(create_admin_client(settings.resource_source), settings.cluster_id)
        if settings.identity_source.uses_prometheus:
            self._discovery.initial(self._source, clock.utc_now(), *self._discovery_window())
        self._handler = SelfManagedKafkaHandler(settings, self._discovery, self._admin)
        self._cost_input = SelfManagedKafkaCostInput(settings, self._source)

    def get_service_handlers(self) -> dict[str, ServiceHandler]:
        handler = _require(self._handler)
        return {handler.service_type: handler}

    def get_cost_input(self) -> CostInput:
        return _require(self._cost_input)

    def get_metrics_source(self) -> MetricsSource | None:
        return self._source

    def get_storage_module(self) -> StorageModule:
        return CoreStorageModule()

    def get_fallback_allocator(self) -> CostAllocator | None:
        return None

    def build_shared_context(self, tenant_id: str) -> object | None:
        settings = _require(self._settings)
        discovers = settings.resource_source.source == "prometheus" or (
            settings.identity_source.uses_prometheus and self._discovery.principals_available
        )
        found = None
        if discovers:
            found = self._discovery.refresh(
                _require(self._source), clock.utc_now(), *self._discovery_window()
            )
        return SharedContext(cluster=_require(self._handler).cluster_resource(tenant_id), discovery=found)

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self._source is not None:
            self._source.close()
            self._source = None

    def _discovery_window(self) -> tuple[int, timedelta]:
        settings = _require(self._settings)
        return settings.discovery_window_hours, timedelta(seconds=settings.metrics_step_seconds)


def _require(component: T | None) -> T:
    if component is None:
        raise RuntimeError("self_managed_kafka plugin used before initialize()")
    return component
