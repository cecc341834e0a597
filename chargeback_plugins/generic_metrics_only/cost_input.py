"""Billing lines constructed from configured rates and metrics (spec/generic-metrics.md §2).

There is no vendor bill for a self-run service: each cost type is a rate times a
quantity. Fixed quantities are billed every day whether or not metrics exist; a
metered cost type yields no line on a day its series are empty, and says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal

from chargeback_pipeline.metered_costs import (
    HOURS_PER_DAY,
    average_gib_hours,
    days_between,
    samples_by_day,
    total_gib,
)
from chargeback_pipeline.models import BillingLineItem, MetricQuery, MetricRow
from chargeback_pipeline.protocols import MetricsSource, TenantStore
from chargeback_plugins.generic_metrics_only.settings import CostType, GenericMetricsSettings

ECOSYSTEM = "generic_metrics_only"


def cost_query(cost_type: CostType) -> MetricQuery | None:
    """``cost_<name>`` for a metered cost type: its query, no labels kept, no resource filter."""
    quantity = cost_type.cost_quantity
    if quantity.type == "fixed":
        return None
    return MetricQuery(key=f"cost_{cost_type.name}", query_expression=quantity.query)


class GenericCostInput:
    def __init__(self, settings: GenericMetricsSettings, source: MetricsSource | None) -> None:
        self._settings = settings
        self._source = source
        self._queries = {c.name: q for c in settings.cost_types if (q := cost_query(c)) is not None}
        self._gaps: dict[date, list[str]] = {}

    def gather(
        self, tenant_id: str, start: datetime, end: datetime, store: TenantStore
    ) -> Iterator[BillingLineItem]:
        samples = self._metered_samples(start, end)
        for day in days_between(start, end):
            self._gaps[day.date()] = []
            for cost_type in self._settings.cost_types:
                quantity = self._quantity(cost_type, samples.get(cost_type.name, {}).get(day.date()))
                if quantity is None:
                    self._gaps[day.date()].append(cost_type.name)
                    continue
                yield self._line(tenant_id, day, cost_type, quantity)

    def cost_types_without_data(self, d: date) -> list[str]:
        return list(self._gaps.get(d, []))

    def _metered_samples(self, start: datetime, end: datetime) -> dict[str, dict[date, list[Decimal]]]:
        """One range query for every metered cost type; a query error propagates (per-date retry)."""
        if not self._queries:
            return {}
        if self._source is None:
            raise RuntimeError("metered cost types need the metrics source")
        step = timedelta(seconds=self._settings.metrics_step_seconds)
        rows: dict[str, list[MetricRow]] = self._source.query(list(self._queries.values()), start, end, step)
        return {name: samples_by_day(rows.get(query.key, [])) for name, query in self._queries.items()}

    @staticmethod
    def _quantity(cost_type: CostType, samples: list[Decimal] | None) -> Decimal | None:
        quantity = cost_type.cost_quantity
        if quantity.type == "fixed":
            return Decimal(quantity.count * HOURS_PER_DAY)
        if not samples:
            return None
        if quantity.type == "storage_gib":
            return average_gib_hours(samples)
        return total_gib(samples)

    def _line(self, tenant_id: str, day: datetime, cost_type: CostType, quantity: Decimal) -> BillingLineItem:
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
