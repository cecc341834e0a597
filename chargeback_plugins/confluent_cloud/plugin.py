"""The ``confluent_cloud`` ecosystem plugin object (spec/confluent-cloud.md).

Wires settings → HTTP clients → handlers, cost input, metrics source and storage
module. Clients are created in ``initialize`` (Flink clients on demand) and all of them
are closed in ``close``, which the core calls exactly once per run, also after failures.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

import httpx

from chargeback_pipeline.allocation import DefaultFallbackAllocator
from chargeback_pipeline.clock import utc_now
from chargeback_pipeline.errors import PluginConfigError
from chargeback_pipeline.metrics import PrometheusSource
from chargeback_pipeline.plugin_settings import parse_plugin_settings
from chargeback_pipeline.protocols import (
    CostAllocator,
    CostInput,
    MetricsSource,
    ServiceHandler,
    StorageModule,
)
from chargeback_plugins.confluent_cloud.billing import ECOSYSTEM, CCloudCostInput
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.handlers.connector import ConnectorHandler
from chargeback_plugins.confluent_cloud.handlers.flink import FlinkHandler
from chargeback_plugins.confluent_cloud.handlers.kafka import KafkaHandler
from chargeback_plugins.confluent_cloud.handlers.ksqldb import KsqldbHandler
from chargeback_plugins.confluent_cloud.handlers.org_wide import DefaultHandler, OrgWideHandler
from chargeback_plugins.confluent_cloud.handlers.schema_registry import SchemaRegistryHandler
from chargeback_plugins.confluent_cloud.inventory import SharedContext, build_shared_context
from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation, ReplayTransport
from chargeback_plugins.confluent_cloud.settings import CCloudApiSettings, CCloudSettings, FlinkRegion
from chargeback_plugins.confluent_cloud.storage import CCloudStorageModule

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfluentCloudPlugin:
    """Splits a Confluent Cloud bill across service accounts, users and identity pools."""

    ecosystem = ECOSYSTEM
    settings_model = CCloudSettings
    # Settings holding paths: the config loader resolves them against the config file's directory.
    config_relative_paths: tuple[tuple[str, ...], ...] = (("ccloud_api", "replay", "dir"),)

    def __init__(self) -> None:
        self._settings: CCloudSettings | None = None
        self._client: CCloudClient | None = None
        self._flink_clients: dict[tuple[str, str, str], CCloudClient] = {}
        self._transport: httpx.BaseTransport | None = None
        self._handlers: dict[str, ServiceHandler] = {}
        self._cost_input: CCloudCostInput | None = None
        self._metrics: PrometheusSource | None = None

    def __repr__(self) -> str:
        return "ConfluentCloudPlugin()"

    # --- lifecycle -----------------------------------------------------------------------

    def validate_settings(self, config: dict[str, Any]) -> None:
        self._parse(config)

    def initialize(self, config: dict[str, Any]) -> None:
        settings = self._parse(config)
        for path in settings.unknown_key_paths(config):
            log.warning("plugin_settings.%s is not a confluent_cloud setting; ignored", path)
        self._settings = settings
        api = settings.ccloud_api
        self._transport = self._replay_transport(api)
        self._client = self._new_client(api, api.base_url, api.key, api.secret.get_secret_value())
        client = self._client
        handlers: list[ServiceHandler] = [
            KafkaHandler(client),
            SchemaRegistryHandler(client),
            ConnectorHandler(client),
            KsqldbHandler(client),
            FlinkHandler(client, settings, self._flink_client),
            OrgWideHandler(),
            DefaultHandler(),
        ]
        self._handlers = {h.service_type: h for h in handlers}
        self._cost_input = CCloudCostInput(client, settings.billing_api.days_per_query)
        self._metrics = PrometheusSource(settings.metrics) if settings.metrics is not None else None

    def get_service_handlers(self) -> dict[str, ServiceHandler]:
        return dict(self._handlers)

    def get_cost_input(self) -> CostInput:
        return self._require(self._cost_input)

    def get_metrics_source(self) -> MetricsSource | None:
        return self._metrics

    def get_storage_module(self) -> StorageModule:
        return CCloudStorageModule()

    def get_fallback_allocator(self) -> CostAllocator | None:
        """Unknown product types → ``UNALLOCATED`` / ``UNKNOWN_PRODUCT_TYPE`` with a WARNING (§8)."""
        return DefaultFallbackAllocator(log)

    def build_shared_context(self, tenant_id: str) -> SharedContext:
        return build_shared_context(self._require(self._client), tenant_id)

    def close(self) -> None:
        clients = [self._client, *self._flink_clients.values()]
        self._client, self._flink_clients = None, {}
        for client in clients:
            if client is not None:
                client.close()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        self._handlers = {}
        self._cost_input = None

    # --- clients -------------------------------------------------------------------------

    def _flink_client(self, cloud: str, region: str, credentials: FlinkRegion) -> CCloudClient:
        """One client per (region, cloud, key) of the regional Flink API, created on first use."""
        settings = self._require(self._settings)
        cache_key = (region, cloud, credentials.key)
        client = self._flink_clients.get(cache_key)
        if client is None:
            template = settings.ccloud_api.flink_base_url
            base_url = template.replace("{region}", region.lower()).replace("{cloud}", cloud.lower())
            client = self._new_client(
                settings.ccloud_api, base_url, credentials.key, credentials.secret.get_secret_value()
            )
            self._flink_clients[cache_key] = client
        return client

    def _new_client(self, api: CCloudApiSettings, base_url: str, key: str, secret: str) -> CCloudClient:
        # A replayed recording has no vendor rate limit to respect: no spacing between calls.
        interval = 0.0 if self._transport is not None else api.request_interval_seconds
        return CCloudClient(
            base_url,
            key,
            secret,
            timeout_seconds=api.timeout_seconds,
            request_interval_seconds=interval,
            max_attempts=api.max_attempts,
            wait_scale=api.retry_wait_scale,
            transport=self._transport,
        )

    @staticmethod
    def _replay_transport(api: CCloudApiSettings) -> httpx.BaseTransport | None:
        """Answer from a recording (offline demo) instead of the network, through the same client."""
        if api.replay is None:
            return None
        shift = 0
        if api.replay.recorded_now is not None:
            shift = (utc_now().date() - api.replay.recorded_now.date()).days
        directory = Path(api.replay.dir)
        try:
            organisation = RecordedOrganisation.from_dir(directory, shift_days=shift)
        except (OSError, ValueError) as exc:
            raise PluginConfigError(
                "ccloud_api.replay.dir",
                f"cannot read a recording (responses.json and billing_costs.json, optionally .gz) "
                f"in {directory}: {type(exc).__name__}",
            ) from None
        log.info("Confluent Cloud API replayed from %s (dates moved by %d days)", directory, shift)
        return ReplayTransport(organisation)

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _parse(config: dict[str, Any]) -> CCloudSettings:
        return parse_plugin_settings(CCloudSettings, config)

    @staticmethod
    def _require(component: T | None) -> T:
        if component is None:
            raise RuntimeError("confluent_cloud plugin used before initialize() or after close()")
        return component
