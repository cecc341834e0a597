"""The self-managed Kafka plugin's cost model and allocation (spec/self-managed-kafka.md).

The worked example of §6 is fed through the plugin's own cost input, handler and
chains with hand-picked samples; the sample organisation against a real Prometheus is
in tests/test_plugins_sample_org.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from chargeback_pipeline.errors import PluginConfigError
from chargeback_pipeline.metered_costs import GIB
from chargeback_pipeline.models import (
    AllocationContext,
    BillingLineItem,
    ChargebackRow,
    Identity,
    MetricRow,
    q4,
)
from chargeback_pipeline.plugin_settings import parse_plugin_settings
from chargeback_plugins.self_managed_kafka.admin import AdminInventory, create_admin_client
from chargeback_plugins.self_managed_kafka.cost_input import SelfManagedKafkaCostInput
from chargeback_plugins.self_managed_kafka.discovery import Discovery, DiscoveryState
from chargeback_plugins.self_managed_kafka.handler import SelfManagedKafkaHandler, SharedContext
from chargeback_plugins.self_managed_kafka.settings import SelfManagedKafkaSettings
from tests.metrics_fixtures import RecordedMetrics

DAY = datetime(2026, 1, 1, tzinfo=UTC)
HOURS = [DAY + timedelta(hours=h) for h in range(24)]


def settings(**overrides: Any) -> SelfManagedKafkaSettings:
    raw: dict[str, Any] = {
        "cluster_id": "kafka-1",
        "broker_count": 3,
        "cost_model": {
            "compute_hourly_rate": "0.50",
            "storage_per_gib_hourly": "0.0001",
            "network_ingress_per_gib": "0.01",
            "network_egress_per_gib": "0.09",
        },
        "metrics": {"url": "http://127.0.0.1:9/prom"},
    }
    raw.update(overrides)
    return parse_plugin_settings(SelfManagedKafkaSettings, raw)


def hourly_parts(total: int) -> list[Decimal]:
    """24 whole-byte increases summing exactly to ``total``."""
    part = total // 24
    return [Decimal(part)] * 23 + [Decimal(total - 23 * part)]


def worked_example_metrics(principals: dict[str, int]) -> RecordedMetrics:
    storage = [100] * 8 + [105] * 8 + [100] * 8
    bytes_in = hourly_parts(53_687_091_200)
    bytes_out = hourly_parts(10 * 2**30)
    per_principal = [
        MetricRow(HOURS[0], "bytes_in_per_principal", Decimal(v), {"principal": p})
        for p, v in principals.items()
    ]
    return RecordedMetrics(
        {
            "cluster_storage_bytes": [
                MetricRow(t, "cluster_storage_bytes", Decimal(g) * GIB)
                for t, g in zip(HOURS, storage, strict=True)
            ],
            "cluster_bytes_in": [
                MetricRow(t, "cluster_bytes_in", v) for t, v in zip(HOURS, bytes_in, strict=True)
            ],
            "cluster_bytes_out": [
                MetricRow(t, "cluster_bytes_out", v) for t, v in zip(HOURS, bytes_out, strict=True)
            ],
            "bytes_in_per_principal": per_principal,
            # The next midnight belongs to the next day and must not be counted.
            "bytes_out_per_principal": [],
        }
    )


def allocate_day(
    plugin_settings: SelfManagedKafkaSettings, metrics: RecordedMetrics
) -> dict[str, list[ChargebackRow]]:
    state = DiscoveryState(principals_available=True)
    handler = SelfManagedKafkaHandler(plugin_settings, state, None)
    lines = list(
        SelfManagedKafkaCostInput(plugin_settings, metrics).gather("t", DAY, DAY + timedelta(days=1), None)
    )  # type: ignore[arg-type]
    usage = metrics.query(
        handler.get_metrics_for_product_type("SELF_KAFKA_COMPUTE"),
        DAY,
        DAY + timedelta(days=1),
        timedelta(hours=1),
    )
    store = EmptyStore()
    by_type: dict[str, list[ChargebackRow]] = {}
    for line in lines:
        resolution = handler.resolve_identities("t", line.resource_id, DAY, timedelta(days=1), usage, store)  # type: ignore[arg-type]
        ctx = AllocationContext(
            timeslice=DAY,
            billing_line=line,
            identities=resolution,
            split_amount=q4(line.total_cost),
            metrics_data=usage,
        )
        by_type[line.product_type] = handler.get_allocator(line.product_type)(ctx).rows
    return by_type


class _NoIdentities:
    def get(self, identity_id: str) -> Identity | None:
        return None


class EmptyStore:
    identities = _NoIdentities()


def amounts(rows: list[ChargebackRow]) -> list[tuple[str, Decimal, str, str]]:
    return [(r.identity_id, r.amount, str(r.cost_type), r.allocation_detail or "") for r in rows]


def test_worked_example_cost_lines() -> None:
    lines = list(
        SelfManagedKafkaCostInput(settings(), worked_example_metrics({})).gather(
            "t",
            DAY,
            DAY + timedelta(days=1),
            None,  # type: ignore[arg-type]
        )
    )
    got = {line.product_type: (line.quantity, q4(line.total_cost)) for line in lines}
    assert got == {
        "SELF_KAFKA_COMPUTE": (Decimal(72), Decimal("36.0000")),
        "SELF_KAFKA_STORAGE": (Decimal(2440), Decimal("0.2440")),
        "SELF_KAFKA_NETWORK_INGRESS": (Decimal(50), Decimal("0.5000")),
        "SELF_KAFKA_NETWORK_EGRESS": (Decimal(10), Decimal("0.9000")),
    }
    assert all(line.timestamp == DAY and line.resource_id == "kafka-1" for line in lines)


def test_worked_example_allocation() -> None:
    rows = allocate_day(settings(), worked_example_metrics({"alice": 700, "bob": 300}))
    assert amounts(rows["SELF_KAFKA_COMPUTE"]) == [
        ("alice", Decimal("18.0000"), "shared", "even_split_allocation"),
        ("bob", Decimal("18.0000"), "shared", "even_split_allocation"),
    ]
    assert amounts(rows["SELF_KAFKA_STORAGE"]) == [
        ("alice", Decimal("0.1220"), "shared", "even_split_allocation"),
        ("bob", Decimal("0.1220"), "shared", "even_split_allocation"),
    ]
    assert amounts(rows["SELF_KAFKA_NETWORK_INGRESS"]) == [
        ("alice", Decimal("0.3500"), "usage", "usage_ratio_allocation"),
        ("bob", Decimal("0.1500"), "usage", "usage_ratio_allocation"),
    ]
    assert amounts(rows["SELF_KAFKA_NETWORK_EGRESS"]) == [
        ("UNALLOCATED", Decimal("0.9000"), "shared", "no_identities_located"),
    ]
    assert rows["SELF_KAFKA_NETWORK_EGRESS"][0].allocation_method == "terminal"


def test_third_principal_gets_the_smaller_remainder() -> None:
    rows = allocate_day(settings(), worked_example_metrics({"alice": 700, "bob": 300, "carol": 1}))
    assert [r.amount for r in rows["SELF_KAFKA_STORAGE"]] == [
        Decimal("0.0814"),
        Decimal("0.0813"),
        Decimal("0.0813"),
    ]


def test_region_override_replaces_only_the_given_rate() -> None:
    regional = settings(
        region="eu-west-1",
        cost_model={
            "compute_hourly_rate": "0.50",
            "storage_per_gib_hourly": "0.0001",
            "network_ingress_per_gib": "0.01",
            "network_egress_per_gib": "0.09",
            "region_overrides": {"eu-west-1": {"compute_hourly_rate": "0.60"}},
        },
    )
    lines = list(
        SelfManagedKafkaCostInput(regional, worked_example_metrics({})).gather(
            "t",
            DAY,
            DAY + timedelta(days=1),
            None,  # type: ignore[arg-type]
        )
    )
    totals = {line.product_type: q4(line.total_cost) for line in lines}
    assert totals["SELF_KAFKA_COMPUTE"] == Decimal("43.2000")
    assert totals["SELF_KAFKA_NETWORK_EGRESS"] == Decimal("0.9000")


def test_day_without_samples_bills_compute_only_and_reports_the_gap() -> None:
    cost_input = SelfManagedKafkaCostInput(settings(), worked_example_metrics({}))
    next_day = DAY + timedelta(days=1)
    lines = list(cost_input.gather("t", DAY, next_day + timedelta(days=1), None))  # type: ignore[arg-type]
    second = [line.product_type for line in lines if line.timestamp == next_day]
    assert second == ["SELF_KAFKA_COMPUTE"]
    assert cost_input.cost_types_without_data(next_day.date()) == [
        "SELF_KAFKA_STORAGE",
        "SELF_KAFKA_NETWORK_INGRESS",
        "SELF_KAFKA_NETWORK_EGRESS",
    ]
    assert cost_input.cost_types_without_data(DAY.date()) == []


def test_static_identities_without_principals_get_the_infrastructure() -> None:
    static = settings(
        identity_source={
            "source": "prometheus",
            "static_identities": [{"identity_id": "team-a", "identity_type": "team", "team": "a"}],
        }
    )
    handler = SelfManagedKafkaHandler(static, DiscoveryState(principals_available=False), None)
    identities = list(handler.gather_identities("t", None))  # type: ignore[arg-type]
    assert [(i.identity_id, i.identity_type, i.metadata) for i in identities] == [
        ("team-a", "team", {"team": "a"})
    ]
    resolution = handler.resolve_identities("t", "kafka-1", DAY, timedelta(days=1), {}, EmptyStore())  # type: ignore[arg-type]
    assert resolution.resource_active.ids() == {"team-a"}
    assert not resolution.metrics_derived.ids()


def test_discovered_inventory_and_team_names() -> None:
    mapped = settings(
        identity_source={
            "source": "both",
            "principal_to_team": {"User:alice": "payments"},
            "default_team": "ops",
        }
    )
    state = DiscoveryState(principals_available=True)
    state.latest = Discovery(brokers=("0", "1"), topics=("orders",), principals=("User:alice", "User:bob"))
    handler = SelfManagedKafkaHandler(mapped, state, None)
    shared = SharedContext(cluster=handler.cluster_resource("t"), discovery=state.latest)
    resources = list(handler.gather_resources("t", None, shared))  # type: ignore[arg-type]
    assert [(r.resource_id, r.resource_type, r.parent_id) for r in resources] == [
        ("kafka-1", "cluster", None),
        ("kafka-1:broker:0", "broker", "kafka-1"),
        ("kafka-1:broker:1", "broker", "kafka-1"),
        ("kafka-1:topic:orders", "topic", "kafka-1"),
    ]
    assert resources[0].metadata == {"broker_count": 3, "region": None}
    identities = {i.identity_id: i for i in handler.gather_identities("t", None)}  # type: ignore[arg-type]
    assert identities["User:alice"].display_name == "payments"
    assert identities["User:alice"].metadata == {"raw_principal": "User:alice", "team": "payments"}
    assert identities["User:bob"].display_name == "User:bob"
    assert identities["User:bob"].metadata == {"raw_principal": "User:bob", "team": "ops"}


class FakeAdminClient:
    """Stands in for kafka-python's KafkaAdminClient (no Kafka broker in the test machine)."""

    def __init__(self) -> None:
        self.closed = False

    def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": 1, "host": "b1", "port": 9092}, {"id": 2}, {}]}

    def list_topics(self) -> list[str]:
        return ["payments", "orders"]

    def close(self) -> None:
        self.closed = True


def test_admin_api_inventory_maps_brokers_and_topics() -> None:
    resources = list(AdminInventory(FakeAdminClient(), "kafka-1").resources("t"))
    assert [(r.resource_id, r.display_name, r.metadata) for r in resources] == [
        ("kafka-1:broker:1", "b1:9092", {"cluster_id": "kafka-1", "broker_id": "1"}),
        ("kafka-1:broker:2", "2", {"cluster_id": "kafka-1", "broker_id": "2"}),
        ("kafka-1:broker:unknown", "unknown", {"cluster_id": "kafka-1", "broker_id": "unknown"}),
        ("kafka-1:topic:orders", "orders", {"cluster_id": "kafka-1"}),
        ("kafka-1:topic:payments", "payments", {"cluster_id": "kafka-1"}),
    ]


def test_admin_api_without_kafka_python_names_the_extra() -> None:
    admin_settings = settings(resource_source={"source": "admin_api", "bootstrap_servers": "k:9092"})
    with pytest.raises(ImportError, match=r"chargeback-pipeline\[kafka\]"):
        create_admin_client(admin_settings.resource_source)


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"broker_count": 0}, "broker_count", "greater than 0"),
        ({"resource_source": {"source": "admin_api"}}, "resource_source", "bootstrap_servers required"),
        ({"discovery_window_hours": 0}, "discovery_window_hours", "greater than 0"),
        ({"cost_model": {"compute_hourly_rate": "x"}}, "cost_model.compute_hourly_rate", "decimal"),
        ({"metrics": {"url": "http://p", "auth_type": "basic"}}, "metrics", "username"),
        ({"identity_source": {"source": "ldap"}}, "identity_source.source", "prometheus"),
    ],
)
def test_settings_errors_name_the_field(overrides: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(PluginConfigError) as info:
        settings(**overrides)
    assert info.value.field.startswith(field)
    assert message in str(info.value)


def test_billing_line_dates_are_utc_midnights() -> None:
    lines: list[BillingLineItem] = list(
        SelfManagedKafkaCostInput(settings(), worked_example_metrics({})).gather(
            "t",
            DAY,
            DAY + timedelta(days=2),
            None,  # type: ignore[arg-type]
        )
    )
    assert sorted({line.timestamp.date() for line in lines}) == [date(2026, 1, 1), date(2026, 1, 2)]
