"""The Confluent Cloud allocators (spec/allocation.md §8, §11.3, §12 worked examples)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from chargeback_pipeline.models import (
    AllocationContext,
    CostType,
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricRow,
)
from chargeback_plugins.confluent_cloud import chains
from chargeback_plugins.confluent_cloud.billing import ECOSYSTEM
from chargeback_plugins.confluent_cloud.storage import CCloudBillingLine

DAY = datetime(2026, 3, 1, tzinfo=UTC)
Row = tuple[str, str, str, str, str]


def person(identity_id: str, kind: str = "service_account") -> Identity:
    return Identity(ECOSYSTEM, "t", identity_id, kind)


def context(
    product_type: str,
    amount: str,
    *,
    active: Sequence[str] = (),
    derived: Sequence[str] = (),
    period: Sequence[Identity] = (),
    metrics: dict[str, list[MetricRow]] | None = None,
    params: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    fetch_failed: bool = False,
) -> AllocationContext:
    line = CCloudBillingLine(
        ECOSYSTEM,
        "t",
        DAY,
        "lkc-k1",
        "KAFKA",
        product_type,
        Decimal(1),
        Decimal(1),
        Decimal(amount),
        env_id="env-1",
    )
    resolution = IdentityResolution(
        resource_active=IdentitySet(person(i) for i in active),
        metrics_derived=IdentitySet(person(i) for i in derived),
        tenant_period=IdentitySet(period),
        context=extra or {},
    )
    return AllocationContext(
        DAY,
        line,
        resolution,
        Decimal(amount),
        metrics,
        fetch_failed,
        params or {},
        {"env_id": "env-1"},
    )


def usage(key: str, **by_principal: str) -> list[MetricRow]:
    return [
        MetricRow(DAY, key, Decimal(v), {"kafka_id": "lkc-k1", "principal_id": p})
        for p, v in by_principal.items()
    ]


def rows(allocator: Any, ctx: AllocationContext) -> list[Row]:
    result = allocator(ctx)
    assert sum(r.amount for r in result.rows) == ctx.split_amount
    assert all(r.dimensions == {"env_id": "env-1"} for r in result.rows)
    return [
        (r.identity_id, str(r.amount), str(r.cost_type), r.allocation_method, r.allocation_detail)
        for r in result.rows
    ]


def test_e1_cku_two_service_accounts() -> None:
    ctx = context(
        "KAFKA_NUM_CKU",
        "100.0000",
        derived=["sa-x1", "sa-x2"],
        metrics={
            "bytes_in": usage("bytes_in", **{"sa-x1": "100"}),
            "bytes_out": usage("bytes_out", **{"sa-x1": "200", "sa-x2": "700"}),
        },
    )
    assert rows(chains.cku_allocator(), ctx) == [
        ("sa-x1", "21.0000", "usage", "usage_ratio", "usage_ratio_allocation"),
        ("sa-x2", "49.0000", "usage", "usage_ratio", "usage_ratio_allocation"),
        ("sa-x1", "15.0000", "shared", "even_split", "even_split_allocation"),
        ("sa-x2", "15.0000", "shared", "even_split", "even_split_allocation"),
    ]


def test_e2_cku_nobody_found_ends_on_the_cluster_twice() -> None:
    result = chains.cku_allocator()(context("KAFKA_NUM_CKU", "100.0000"))
    assert [
        (r.identity_id, r.amount, r.allocation_method, r.allocation_detail, r.cost_type) for r in result.rows
    ] == [
        ("lkc-k1", Decimal("70.0000"), "terminal", "no_identities_located", CostType.SHARED),
        ("lkc-k1", Decimal("30.0000"), "terminal", "no_identities_located", CostType.SHARED),
    ]
    assert [r.metadata["composition_index"] for r in result.rows] == [0, 1]
    assert [r.metadata["chain_tier"] for r in result.rows] == [3, 2]


def test_e3_cku_with_remainders() -> None:
    ctx = context(
        "KAFKA_NUM_CKU",
        "33.3333",
        active=["u-c"],
        derived=["sa-a", "sa-b"],
        metrics={"bytes_in": usage("bytes_in", **{"sa-a": "1", "sa-b": "2"}), "bytes_out": []},
    )
    assert rows(chains.cku_allocator(), ctx) == [
        ("sa-a", "7.7778", "usage", "usage_ratio", "usage_ratio_allocation"),
        ("sa-b", "15.5555", "usage", "usage_ratio", "usage_ratio_allocation"),
        ("sa-a", "3.3334", "shared", "even_split", "even_split_allocation"),
        ("sa-b", "3.3333", "shared", "even_split", "even_split_allocation"),
        ("u-c", "3.3333", "shared", "even_split", "even_split_allocation"),
    ]


def test_cku_ratios_come_from_allocator_params_at_call_time() -> None:
    ctx = context(
        "KAFKA_NUM_CKU",
        "100.0050",
        active=["sa-a"],
        params={"kafka_cku_usage_ratio": Decimal("0.8"), "kafka_cku_shared_ratio": Decimal("0.2")},
    )
    assert rows(chains.cku_allocator(), ctx) == [
        ("sa-a", "80.0040", "shared", "even_split", "no_metrics_located"),
        ("sa-a", "20.0010", "shared", "even_split", "even_split_allocation"),
    ]
    bad = context("KAFKA_NUM_CKU", "1.0000", params={"kafka_cku_usage_ratio": Decimal("0.5")})
    with pytest.raises(ValueError, match="sum to 1"):
        chains.cku_allocator()(bad)


def test_cku_usage_falls_back_through_owners_to_the_cluster() -> None:
    owners = [
        person("sa-o1"),
        person("u-o2", "user"),
        person("KEY1", "api_key"),
        person("op-1", "identity_provider"),
    ]
    ctx = context(
        "KAFKA_NUM_CKU", "10.0000", period=owners, metrics={"bytes_in": usage("bytes_in", **{"sa-z": "0"})}
    )
    assert rows(chains.cku_allocator(), ctx) == [
        ("sa-o1", "3.5000", "shared", "even_split", "no_metrics_no_active_identities_located"),
        ("u-o2", "3.5000", "shared", "even_split", "no_metrics_no_active_identities_located"),
        ("sa-o1", "1.5000", "shared", "even_split", "no_active_identities_located"),
        ("u-o2", "1.5000", "shared", "even_split", "no_active_identities_located"),
    ]


@pytest.mark.parametrize(
    ("product_type", "key", "metrics", "detail"),
    [
        ("KAFKA_NETWORK_READ", "bytes_out", None, "no_metrics_located"),
        (
            "KAFKA_NETWORK_READ",
            "bytes_out",
            {"bytes_in": usage("bytes_in", **{"sa-a": "5"})},
            "no_metrics_located",
        ),
        (
            "KAFKA_NETWORK_READ",
            "bytes_out",
            {"bytes_out": usage("bytes_out", **{"sa-a": "0"})},
            "no_usage_for_active_identities",
        ),
        (
            "KAFKA_PARTITION",
            "partition_count",
            {"bytes_out": usage("bytes_out", **{"sa-a": "7"})},
            "no_metrics_located",
        ),
    ],
)
def test_network_tier_one_says_why_usage_declined(
    product_type: str, key: str, metrics: dict[str, list[MetricRow]] | None, detail: str
) -> None:
    ctx = context(product_type, "1.0000", active=["sa-a", "sa-b"], metrics=metrics)
    assert rows(chains.network_chain(key), ctx) == [
        ("sa-a", "0.5000", "shared", "even_split", detail),
        ("sa-b", "0.5000", "shared", "even_split", detail),
    ]


def test_network_usage_counts_api_keys_under_their_owner() -> None:
    ctx = context(
        "KAFKA_NETWORK_WRITE",
        "50.0000",
        derived=["sa-x1", "sa-x2"],
        metrics={
            "bytes_in": usage("bytes_in", **{"KEY-A": "1500", "sa-x1": "500", "sa-x2": "1000", "": "9"})
        },
        extra={"api_key_to_owner": {"KEY-A": "sa-x1"}},
    )
    assert rows(chains.network_chain("bytes_in"), ctx) == [
        ("sa-x1", "33.3333", "usage", "usage_ratio", "usage_ratio_allocation"),
        ("sa-x2", "16.6667", "usage", "usage_ratio", "usage_ratio_allocation"),
    ]


def test_network_fetch_failure_declines_usage() -> None:
    ctx = context(
        "KAFKA_NETWORK_READ",
        "2.0000",
        active=["sa-a"],
        metrics={"bytes_out": usage("bytes_out", **{"sa-a": "1"})},
        fetch_failed=True,
    )
    assert rows(chains.network_chain("bytes_out"), ctx) == [
        ("sa-a", "2.0000", "shared", "even_split", "no_metrics_located")
    ]


def test_kafka_base_steps_carry_no_chain_tier() -> None:
    allocator = chains.kafka_base_allocator()
    step_a = allocator(context("KAFKA_BASE", "3.0000", active=["sa-b"], derived=["sa-a", "u-c"]))
    assert [(r.identity_id, str(r.amount), r.allocation_detail) for r in step_a.rows] == [
        ("sa-a", "1.0000", "even_split_allocation"),
        ("sa-b", "1.0000", "even_split_allocation"),
        ("u-c", "1.0000", "even_split_allocation"),
    ]
    assert all("chain_tier" not in r.metadata for r in step_a.rows)
    step_b = context("KAFKA_STORAGE", "1.0000", period=[person("sa-p")])
    assert rows(allocator, step_b) == [
        ("sa-p", "1.0000", "shared", "even_split", "no_metrics_no_active_identities_located")
    ]
    assert rows(allocator, context("KAFKA_STORAGE", "1.0000")) == [
        ("lkc-k1", "1.0000", "shared", "to_resource", "no_identities_located")
    ]


def test_org_wide_splits_over_org_owners_only() -> None:
    period = [
        person("sa-1"),
        person("u-2", "user"),
        person("pool-3", "identity_pool"),
        person("KEY", "api_key"),
        person("op-4", "identity_provider"),
    ]
    assert rows(chains.org_wide_chain(), context("SUPPORT", "33.3333", period=period)) == [
        ("pool-3", "11.1111", "shared", "even_split", "even_split_allocation"),
        ("sa-1", "11.1111", "shared", "even_split", "even_split_allocation"),
        ("u-2", "11.1111", "shared", "even_split", "even_split_allocation"),
    ]
    assert rows(chains.org_wide_chain(), context("SUPPORT", "1.0000")) == [
        ("UNALLOCATED", "1.0000", "shared", "terminal", "no_identities_located")
    ]


def test_default_and_cluster_linking_charge_the_resource() -> None:
    assert rows(chains.default_allocator(), context("TABLEFLOW_STORAGE", "2.5000", active=["sa-a"])) == [
        ("lkc-k1", "2.5000", "shared", "default", "using_default_allocator")
    ]
    assert rows(chains.cluster_linking_allocator(), context("CLUSTER_LINKING_READ", "-1.2500")) == [
        ("lkc-k1", "-1.2500", "shared", "cluster_linking", "cluster_linking_cost")
    ]


def test_flink_metrics_weights_are_usage() -> None:
    ctx = context(
        "FLINK_NUM_CFU",
        "25.0000",
        active=["u-carol", "sa-etl", "sa-api"],
        extra={
            "stmt_owner_cfu": {"u-carol": Decimal(1), "sa-etl": Decimal(2), "sa-api": Decimal(3)},
            "stmt_owner_weights_source": "metrics",
        },
        metrics={"flink_cfu_primary": []},
    )
    assert rows(chains.flink_chain(), ctx) == [
        ("sa-api", "12.5000", "usage", "usage_ratio", "usage_ratio_allocation"),
        ("sa-etl", "8.3333", "usage", "usage_ratio", "usage_ratio_allocation"),
        ("u-carol", "4.1667", "usage", "usage_ratio", "usage_ratio_allocation"),
    ]


def test_cku_shared_part_is_never_usage() -> None:
    ctx = context("KAFKA_NUM_CKU", "10.0000", active=["sa-a"])
    result = chains.cku_shared_chain()(ctx)
    assert {r.cost_type for r in result.rows} == {CostType.SHARED}
