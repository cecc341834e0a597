"""The ``generic_metrics_only`` ecosystem plugin object."""

from __future__ import annotations

from typing import Any, TypeVar

from chargeback_pipeline.errors import PluginConfigError
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

    def __init__(self) -> None:
        self._settings: GenericMetricsSettings | None = None
        self._handler: GenericHandler | None = None
        self._cost_input: GenericCostInput | None = None

    def validate_settings(self, config: dict[str, Any]) -> None:
        self._parse(config)

    def initialize(self, config: dict[str, Any]) -> None:
        self._settings = self._parse(config)
        self._handler = GenericHandler(self._settings)
        self._cost_input = GenericCostInput(self._settings)

    def get_service_handlers(self) -> dict[str, ServiceHandler]:
        return {GenericHandler.service_type: self._require(self._handler)}

    def get_cost_input(self) -> CostInput:
        return self._require(self._cost_input)

    def get_metrics_source(self) -> MetricsSource | None:
        return None

    def get_storage_module(self) -> StorageModule:
        return CoreStorageModule()

    def get_fallback_allocator(self) -> CostAllocator | None:
        return None

    def build_shared_context(self, tenant_id: str) -> object | None:
        return None

    def close(self) -> None:
        self._handler = None
        self._cost_input = None

    @staticmethod
    def _parse(config: dict[str, Any]) -> GenericMetricsSettings:
        settings = parse_plugin_settings(GenericMetricsSettings, config)
        if settings.needs_metrics:
            # The Prometheus metrics source lands with issue #3; refuse loudly rather
            # than silently billing nothing for metric-derived cost types.
            raise PluginConfigError(
                "metrics",
                "metric-derived cost types, usage_ratio allocation and Prometheus identity "
                "discovery need the Prometheus metrics source, which this version does not "
                "ship yet; use 'fixed' cost types with identity_source.source: static",
            )
        return settings

    @staticmethod
    def _require(component: T | None) -> T:
        if component is None:
            raise RuntimeError("generic_metrics_only plugin used before initialize()")
        return component
