"""Example external plugin: a flat daily fee per service, split evenly across its users.

Drop the ``flat_fee`` directory into the directory named by ``plugins_path`` and use
``ecosystem: flat_fee`` in a tenant. It shows every member of the plugin contract in
the smallest form that does real work, plus a custom emitter registered at import.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from chargeback_pipeline.allocation import generic_even_chain
from chargeback_pipeline.config import PluginSettingsBase
from chargeback_pipeline.emitters import registry
from chargeback_pipeline.emitters.files import atomic_write, render_path
from chargeback_pipeline.models import (
    BillingLineItem,
    ChargebackRow,
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricQuery,
    MetricRow,
    Resource,
)
from chargeback_pipeline.plugin_settings import parse_plugin_settings
from chargeback_pipeline.protocols import CostAllocator, ResolveContext, TenantStore
from chargeback_pipeline.storage import CoreStorageModule

ECOSYSTEM = "flat_fee"


class FlatFeeSettings(PluginSettingsBase):
    service_id: str = Field(min_length=1)
    daily_fee: Decimal = Field(ge=0)
    users: list[str] = Field(default_factory=list)
    # A credential for the service the fee comes from (unused by this example). Declaring
    # it SecretStr is what keeps it masked in show-config and out of logs and errors;
    # write it as `${VAR}` in the YAML so it lives only in the environment.
    api_token: SecretStr | None = None


class FlatFeeHandler:
    service_type = "flat"
    handles_product_types: Sequence[str] = ("FLAT_FEE",)
    gathered_resource_types: Sequence[str] = ("service",)

    def __init__(self, settings: FlatFeeSettings) -> None:
        self._settings = settings
        self._allocator = generic_even_chain()

    def gather_resources(
        self, tenant_id: str, store: TenantStore, shared_ctx: object | None = None
    ) -> Iterator[Resource]:
        yield Resource(ECOSYSTEM, tenant_id, self._settings.service_id, "service")

    def gather_identities(self, tenant_id: str, store: TenantStore) -> Iterator[Identity]:
        for user in self._settings.users:
            yield Identity(ECOSYSTEM, tenant_id, user, "user", display_name=user)

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
        # Users that existed during the billing window; the context caches them per window.
        if context is not None:
            users = [i for i in context["cached_identities"] if i.identity_type == "user"]
        else:
            end = billing_timestamp + billing_duration
            users = store.identities.find_by_period(billing_timestamp, end, ["user"])
        return IdentityResolution(resource_active=IdentitySet(users))

    def get_metrics_for_product_type(self, product_type: str) -> list[MetricQuery]:
        return []

    def get_allocator(self, product_type: str) -> CostAllocator:
        if product_type not in self.handles_product_types:
            raise ValueError(f"Unknown product type: {product_type}")
        return self._allocator


class FlatFeeCostInput:
    def __init__(self, settings: FlatFeeSettings) -> None:
        self._settings = settings

    def gather(
        self, tenant_id: str, start: datetime, end: datetime, store: TenantStore
    ) -> Iterator[BillingLineItem]:
        day = start
        while day < end:
            yield BillingLineItem(
                ecosystem=ECOSYSTEM,
                tenant_id=tenant_id,
                timestamp=day,
                resource_id=self._settings.service_id,
                product_category="service",
                product_type="FLAT_FEE",
                quantity=Decimal(1),
                unit_price=self._settings.daily_fee,
                total_cost=self._settings.daily_fee,
            )
            day += timedelta(days=1)


class FlatFeePlugin:
    ecosystem = ECOSYSTEM
    settings_model = FlatFeeSettings

    def __init__(self) -> None:
        self._settings: FlatFeeSettings | None = None

    @property
    def settings(self) -> FlatFeeSettings:
        if self._settings is None:
            raise RuntimeError("flat_fee plugin used before initialize()")
        return self._settings

    def validate_settings(self, config: dict[str, Any]) -> None:
        parse_plugin_settings(FlatFeeSettings, config)

    def initialize(self, config: dict[str, Any]) -> None:
        self._settings = parse_plugin_settings(FlatFeeSettings, config)

    def get_service_handlers(self) -> dict[str, FlatFeeHandler]:
        return {FlatFeeHandler.service_type: FlatFeeHandler(self.settings)}

    def get_cost_input(self) -> FlatFeeCostInput:
        return FlatFeeCostInput(self.settings)

    def get_metrics_source(self) -> None:
        return None

    def get_storage_module(self) -> CoreStorageModule:
        return CoreStorageModule()

    def get_fallback_allocator(self) -> None:
        return None

    def build_shared_context(self, tenant_id: str) -> None:
        return None

    def close(self) -> None:
        self._settings = None


# --- a custom emitter: per-identity totals of each day as JSON -------------------------


@dataclass(frozen=True)
class TeamTotalsOutput:
    """What the last call wrote; the sink asset shows these fields as its metadata."""

    path: Path
    row_count: int
    bytes_written: int


class TeamTotalsEmitter:
    """Writes ``<output_dir>/<tenant_id>-<date>.json`` with the day's total per identity.

    It reads the billed total through the injected storage backend, to show what
    ``needs_storage_backend`` gives an emitter. The file name goes through
    ``render_path`` (a tenant id such as ``../x`` cannot leave ``output_dir``) and the
    file through ``atomic_write`` (readers never see half a file).
    """

    def __init__(self, output_dir: str, storage_backend: Any) -> None:
        self._output_dir = Path(output_dir)
        self._backend = storage_backend
        self.last_output: TeamTotalsOutput | None = None

    def __call__(self, tenant_id: str, date: date, rows: Sequence[ChargebackRow]) -> None:
        totals: dict[str, Decimal] = {}
        for row in rows:
            totals[row.identity_id] = totals.get(row.identity_id, Decimal(0)) + row.amount
        billed = sum((line.total_cost for line in self._backend.billing_for_date(date)), Decimal(0))
        document = {
            "tenant_id": tenant_id,
            "date": date.isoformat(),
            "billed": f"{billed:.4f}",
            "per_identity": {k: f"{v:.4f}" for k, v in sorted(totals.items())},
        }
        path = render_path(
            self._output_dir, "{tenant_id}-{date}.json", {"tenant_id": tenant_id, "date": date.isoformat()}
        )
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        with atomic_write(path) as handle:
            handle.write(text)
        self.last_output = TeamTotalsOutput(path, len(rows), len(text.encode("utf-8")))


def make_team_totals(output_dir: str, storage_backend: Any) -> TeamTotalsEmitter:
    return TeamTotalsEmitter(output_dir, storage_backend)


make_team_totals.needs_storage_backend = True  # type: ignore[attr-defined]


def register() -> tuple[str, type[FlatFeePlugin]]:
    registry.register("team_totals", make_team_totals)
    return ECOSYSTEM, FlatFeePlugin
