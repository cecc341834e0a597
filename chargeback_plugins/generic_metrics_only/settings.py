"""Settings of the ``generic_metrics_only`` plugin (spec/generic-metrics.md §1)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from chargeback_pipeline.config import PluginSettingsBase
from chargeback_pipeline.metrics import MetricsConnection
from chargeback_pipeline.plugin_settings import MAX_COUNT, IdentitySourceSettings, Rate, StrictSettings


class FixedQuantity(StrictSettings):
    type: Literal["fixed"]
    count: int = Field(gt=0, le=MAX_COUNT)


class StorageGibQuantity(StrictSettings):
    """A size gauge in bytes, averaged over the day (GiB-hours)."""

    type: Literal["storage_gib"]
    query: str = Field(min_length=1)


class NetworkGibQuantity(StrictSettings):
    """Per-interval byte increases, summed over the day (GiB)."""

    type: Literal["network_gib"]
    query: str = Field(min_length=1)


CostQuantity = Annotated[FixedQuantity | StorageGibQuantity | NetworkGibQuantity, Field(discriminator="type")]


class CostType(StrictSettings):
    name: str = Field(min_length=1)
    product_category: str = Field(min_length=1)
    rate: Rate
    cost_quantity: CostQuantity
    allocation_strategy: Literal["even_split", "usage_ratio"]
    allocation_query: str | None = None
    allocation_label: str | None = None

    @model_validator(mode="after")
    def _usage_ratio_needs_query(self) -> CostType:
        if self.allocation_strategy == "usage_ratio":
            if not self.allocation_query:
                raise ValueError("allocation_query required when allocation_strategy is 'usage_ratio'")
            if not self.allocation_label:
                raise ValueError("allocation_label required when allocation_strategy is 'usage_ratio'")
        return self

    @property
    def is_metered(self) -> bool:
        return self.cost_quantity.type != "fixed"

    @property
    def needs_metrics(self) -> bool:
        return self.is_metered or self.allocation_strategy == "usage_ratio"


class GenericIdentitySource(IdentitySourceSettings):
    label: str = "principal"
    discovery_query: str | None = None

    @model_validator(mode="after")
    def _discovery_needed(self) -> GenericIdentitySource:
        if self.uses_prometheus and not self.discovery_query:
            raise ValueError("discovery_query required when source includes 'prometheus'")
        return self


class GenericMetricsSettings(PluginSettingsBase):
    cluster_id: str = Field(min_length=1)
    display_name: str | None = None
    metrics: MetricsConnection | None = None
    identity_source: GenericIdentitySource = Field(
        default_factory=GenericIdentitySource, validate_default=True
    )
    cost_types: list[CostType] = Field(min_length=1)

    @field_validator("cost_types")
    @classmethod
    def _unique_names(cls, cost_types: list[CostType]) -> list[CostType]:
        seen: set[str] = set()
        for cost_type in cost_types:
            if cost_type.name in seen:
                raise ValueError(f"duplicate cost type name '{cost_type.name}'")
            seen.add(cost_type.name)
        return cost_types

    @model_validator(mode="after")
    def _metrics_when_needed(self) -> GenericMetricsSettings:
        if self.metrics is None and self.needs_metrics:
            raise ValueError(
                "metrics is required: a cost type or the identity source reads Prometheus "
                "(only 'fixed' cost types with a 'static' identity source work without it)"
            )
        return self

    @property
    def needs_metrics(self) -> bool:
        return self.identity_source.uses_prometheus or any(c.needs_metrics for c in self.cost_types)
