"""Settings of the ``self_managed_kafka`` plugin (spec/self-managed-kafka.md §1)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from chargeback_pipeline.config import PluginSettingsBase
from chargeback_pipeline.metrics import MetricsConnection
from chargeback_pipeline.plugin_settings import (
    MAX_COUNT,
    MAX_DURATION_HOURS,
    IdentitySourceSettings,
    Rate,
    StrictSettings,
)


@dataclass(frozen=True)
class Rates:
    """The four rates in force for the cluster after its region's overrides."""

    compute_hourly: Decimal
    storage_per_gib_hourly: Decimal
    network_ingress_per_gib: Decimal
    network_egress_per_gib: Decimal


class RateOverrides(StrictSettings):
    compute_hourly_rate: Rate | None = None
    storage_per_gib_hourly: Rate | None = None
    network_ingress_per_gib: Rate | None = None
    network_egress_per_gib: Rate | None = None


class CostModel(StrictSettings):
    compute_hourly_rate: Rate
    storage_per_gib_hourly: Rate
    network_ingress_per_gib: Rate
    network_egress_per_gib: Rate
    region_overrides: dict[str, RateOverrides] = Field(default_factory=dict)

    def rates_for(self, region: str | None) -> Rates:
        """Base rates, replaced one by one by the region's overrides when the region has any."""
        override = self.region_overrides.get(region) if region else None
        override = override or RateOverrides()
        return Rates(
            compute_hourly=_pick(override.compute_hourly_rate, self.compute_hourly_rate),
            storage_per_gib_hourly=_pick(override.storage_per_gib_hourly, self.storage_per_gib_hourly),
            network_ingress_per_gib=_pick(override.network_ingress_per_gib, self.network_ingress_per_gib),
            network_egress_per_gib=_pick(override.network_egress_per_gib, self.network_egress_per_gib),
        )


def _pick(override: Decimal | None, base: Decimal) -> Decimal:
    return base if override is None else override


class ResourceSource(StrictSettings):
    source: Literal["prometheus", "admin_api"] = "prometheus"
    bootstrap_servers: str | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"

    @model_validator(mode="after")
    def _admin_api_needs_servers(self) -> ResourceSource:
        if self.source == "admin_api" and not self.bootstrap_servers:
            raise ValueError("bootstrap_servers required when source='admin_api'")
        return self


class SelfManagedKafkaSettings(PluginSettingsBase):
    cluster_id: str = Field(min_length=1)
    broker_count: int = Field(gt=0, le=MAX_COUNT)
    region: str | None = None
    cost_model: CostModel
    identity_source: IdentitySourceSettings = Field(default_factory=IdentitySourceSettings)
    resource_source: ResourceSource = Field(default_factory=ResourceSource)
    metrics: MetricsConnection
    discovery_window_hours: int = Field(default=1, gt=0, le=MAX_DURATION_HOURS)

    @property
    def rates(self) -> Rates:
        return self.cost_model.rates_for(self.region)
