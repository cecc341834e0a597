"""Settings of the ``generic_metrics_only`` plugin (spec/generic-metrics.md §1)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chargeback_pipeline.config import PluginSettingsBase


def _exact_decimal(value: Any) -> Decimal:
    """Rates are parsed with ``Decimal(str(value))`` so ``0.1`` in YAML stays exactly 0.1."""
    if isinstance(value, bool):
        raise ValueError("must be a decimal number")
    try:
        parsed = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValueError("must be a decimal number") from None
    if not parsed.is_finite():
        raise ValueError("must be a finite decimal number")
    return parsed


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FixedQuantity(_Strict):
    type: Literal["fixed"]
    count: int = Field(gt=0)


class StorageGibQuantity(_Strict):
    type: Literal["storage_gib"]
    query: str = Field(min_length=1)


class NetworkGibQuantity(_Strict):
    type: Literal["network_gib"]
    query: str = Field(min_length=1)


CostQuantity = Annotated[FixedQuantity | StorageGibQuantity | NetworkGibQuantity, Field(discriminator="type")]


class CostType(_Strict):
    name: str = Field(min_length=1)
    product_category: str = Field(min_length=1)
    rate: Decimal
    cost_quantity: CostQuantity
    allocation_strategy: Literal["even_split", "usage_ratio"]
    allocation_query: str | None = None
    allocation_label: str | None = None

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Decimal:
        rate = _exact_decimal(value)
        if rate < 0:
            raise ValueError("must be >= 0")
        return rate

    @model_validator(mode="after")
    def _usage_ratio_needs_query(self) -> CostType:
        if self.allocation_strategy == "usage_ratio":
            if not self.allocation_query:
                raise ValueError("allocation_query required when allocation_strategy is 'usage_ratio'")
            if not self.allocation_label:
                raise ValueError("allocation_label required when allocation_strategy is 'usage_ratio'")
        return self

    @property
    def needs_metrics(self) -> bool:
        return self.cost_quantity.type != "fixed" or self.allocation_strategy == "usage_ratio"


class StaticIdentity(_Strict):
    identity_id: str = Field(min_length=1)
    identity_type: str = "principal"
    display_name: str | None = None
    team: str | None = None


class IdentitySource(_Strict):
    source: Literal["prometheus", "static", "both"] = "prometheus"
    label: str = "principal"
    discovery_query: str | None = None
    principal_to_team: dict[str, str] = Field(default_factory=dict)
    default_team: str = "UNASSIGNED"
    static_identities: list[StaticIdentity] = Field(default_factory=list)

    @model_validator(mode="after")
    def _discovery_needed(self) -> IdentitySource:
        if self.source in ("prometheus", "both") and not self.discovery_query:
            raise ValueError("discovery_query required when source includes 'prometheus'")
        return self

    @property
    def uses_prometheus(self) -> bool:
        return self.source in ("prometheus", "both")

    @property
    def uses_static(self) -> bool:
        return self.source in ("static", "both")


class GenericMetricsSettings(PluginSettingsBase):
    cluster_id: str = Field(min_length=1)
    display_name: str | None = None
    metrics: dict[str, Any] | None = None
    identity_source: IdentitySource = Field(default_factory=dict, validate_default=True)
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
