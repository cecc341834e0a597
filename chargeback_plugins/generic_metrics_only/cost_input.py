"""Billing lines constructed from configured rates (spec/generic-metrics.md §2).

There is no vendor bill for a self-run service: each cost type is a rate times a
quantity, and fixed quantities are billed every day whether or not metrics exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

from chargeback_pipeline.models import BillingLineItem, require_utc
from chargeback_pipeline.protocols import TenantStore
from chargeback_plugins.generic_metrics_only.settings import CostType, GenericMetricsSettings

ECOSYSTEM = "generic_metrics_only"
HOURS_PER_DAY = 24


class GenericCostInput:
    """Yields one line per cost type and day; metric-derived types arrive with issue #3."""

    def __init__(self, settings: GenericMetricsSettings) -> None:
        self._settings = settings

    def gather(
        self, tenant_id: str, start: datetime, end: datetime, store: TenantStore
    ) -> Iterator[BillingLineItem]:
        start, end = require_utc(start, "start"), require_utc(end, "end")
        day = start
        while day < end:
            for cost_type in self._settings.cost_types:
                line = self._line(tenant_id, day, cost_type)
                if line is not None:
                    yield line
            day += timedelta(days=1)

    def _line(self, tenant_id: str, day: datetime, cost_type: CostType) -> BillingLineItem | None:
        quantity = self._quantity(cost_type)
        if quantity is None:
            return None
        return BillingLineItem(
            ecosystem=ECOSYSTEM,
            tenant_id=tenant_id,
            timestamp=day,
            resource_id=self._settings.cluster_id,
            product_category=cost_type.product_category,
            product_type=cost_type.name,
            quantity=quantity,
            unit_price=cost_type.rate,
            total_cost=quantity * cost_type.rate,
        )

    @staticmethod
    def _quantity(cost_type: CostType) -> Decimal | None:
        quantity = cost_type.cost_quantity
        if quantity.type == "fixed":
            return Decimal(quantity.count * HOURS_PER_DAY)
        # storage_gib / network_gib need the Prometheus metrics source (issue #3);
        # settings validation refuses them until then, so this is unreachable.
        return None
