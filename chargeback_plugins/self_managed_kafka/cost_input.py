"""The cluster's bill, constructed from the cost model and JMX metrics (spec §4).

Compute is billed every day because brokers cost money whether or not metrics
arrived; storage and network follow the samples of the UTC day they belong to.
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
from chargeback_pipeline.models import BillingLineItem
from chargeback_pipeline.protocols import MetricsSource, TenantStore
from chargeback_plugins.self_managed_kafka.queries import (
    CLUSTER_BYTES_IN,
    CLUSTER_BYTES_OUT,
    CLUSTER_STORAGE_BYTES,
    COST_QUERIES,
)
from chargeback_plugins.self_managed_kafka.settings import SelfManagedKafkaSettings

ECOSYSTEM = "self_managed_kafka"
PRODUCT_CATEGORY = "kafka"
COMPUTE = "SELF_KAFKA_COMPUTE"
STORAGE = "SELF_KAFKA_STORAGE"
NETWORK_INGRESS = "SELF_KAFKA_NETWORK_INGRESS"
NETWORK_EGRESS = "SELF_KAFKA_NETWORK_EGRESS"
PRODUCT_TYPES = (COMPUTE, STORAGE, NETWORK_INGRESS, NETWORK_EGRESS)
# Metered product type -> the cost query whose samples price it.
_METERED = {
    STORAGE: CLUSTER_STORAGE_BYTES.key,
    NETWORK_INGRESS: CLUSTER_BYTES_IN.key,
    NETWORK_EGRESS: CLUSTER_BYTES_OUT.key,
}


class SelfManagedKafkaCostInput:
    def __init__(self, settings: SelfManagedKafkaSettings, source: MetricsSource) -> None:
        self._settings = settings
        self._source = source
        self._gaps: dict[date, list[str]] = {}

    def gather(
        self, tenant_id: str, start: datetime, end: datetime, store: TenantStore
    ) -> Iterator[BillingLineItem]:
        step = timedelta(seconds=self._settings.metrics_step_seconds)
        rows = self._source.query(COST_QUERIES, start, end, step)
        by_key = {key: samples_by_day(rows.get(key, [])) for key in _METERED.values()}
        for day in days_between(start, end):
            samples = {pt: by_key[key].get(day.date(), []) for pt, key in _METERED.items()}
            self._gaps[day.date()] = [pt for pt, values in samples.items() if not values]
            yield from self._day_lines(tenant_id, day, samples)

    def cost_types_without_data(self, d: date) -> list[str]:
        return list(self._gaps.get(d, []))

    def _day_lines(
        self, tenant_id: str, day: datetime, samples: dict[str, list[Decimal]]
    ) -> Iterator[BillingLineItem]:
        rates = self._settings.rates
        yield self._line(
            tenant_id,
            day,
            COMPUTE,
            Decimal(self._settings.broker_count * HOURS_PER_DAY),
            rates.compute_hourly,
        )
        if not any(samples.values()):
            return
        yield self._line(
            tenant_id, day, STORAGE, average_gib_hours(samples[STORAGE]), rates.storage_per_gib_hourly
        )
        yield self._line(
            tenant_id,
            day,
            NETWORK_INGRESS,
            total_gib(samples[NETWORK_INGRESS]),
            rates.network_ingress_per_gib,
        )
        yield self._line(
            tenant_id, day, NETWORK_EGRESS, total_gib(samples[NETWORK_EGRESS]), rates.network_egress_per_gib
        )

    def _line(
        self, tenant_id: str, day: datetime, product_type: str, quantity: Decimal, unit_price: Decimal
    ) -> BillingLineItem:
        return BillingLineItem(
            ecosystem=ECOSYSTEM,
            tenant_id=tenant_id,
            timestamp=day,
            resource_id=self._settings.cluster_id,
            product_category=PRODUCT_CATEGORY,
            product_type=product_type,
            quantity=quantity,
            unit_price=unit_price,
            total_cost=quantity * unit_price,
        )
