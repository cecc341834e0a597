"""The ``generic_metrics_only`` ecosystem plugin object."""

from __future__ import annotations

from typing import Any, TypeVar

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
from chargeback_plugins.generic_metrics_only.cost_input import ECOSYSTEM, GenericCostInput
from chargeback_plugins.generic_metrics_only.handler import GenericHandler
from chargeback_plugins.generic_metrics_only.settings import GenericMetricsSettings

T = TypeVar("T")


class GenericMetricsPlugin:
    """Prices any service from user-defined cost types (spec/generic-metrics.md)."""

    ecosystem = ECOSYSTEM
    settings_model = GenericMetricsSettings

    def __init__(self) -> None:
        self._source: PrometheusSource | None = None
        self._handler: GenericHandler | None = None
        self._cost_input: GenericCostInput | None = None

    def validate_settings(self, config: dict[str, Any]) -> None:
        parse_plugin_settings(GenericMetricsSettings, config)

    def initialize(self, config: dict[str, Any]) -> None:
        settings = parse_plugin_settings(GenericMetricsSettings, config)
        # Without metrics settings (fixed costs, static identities) no source exists and
        # the usage step has nothing to fetch; the bill still comes from the rates.
        self._source = PrometheusSource(settings.metrics) if settings.metrics is not None else None
        self._handler = GenericHandler(settings, self._source)
        self._cost_input = GenericCostInput(settings, self._source)

    def get_service_handlers(self) -> dict[str, ServiceHandler]:
        return {GenericHandler.service_type: _require(self._handler)}

    def get_cost_input(self) -> CostInput:
        return _require(self._cost_input)

    def get_metrics_source(self) -> MetricsSource | None:
        return self._source

    def get_storage_module(self) -> StorageModule:
        return CoreStorageModule()

    def get_fallback_allocator(self) -> CostAllocator | None:
        return None

    def build_shared_context(self, tenant_id: str) -> object | None:
        return None

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
        self._handler = None
        self._cost_input = None


def _require(component: T | None) -> T:
    if component is None:
        raise RuntimeError("generic_metrics_only plugin used before initialize()")
    return component
