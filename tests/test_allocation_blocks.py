"""Building blocks, chains, composites and the catalogue examples (allocation.md §7, §8, §11, §12).

The Confluent Cloud chains below are built here from the blocks exactly as the §11.3
catalogue describes them, the way the plugin is expected to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal as D
from typing import Any

import pytest

from chargeback_pipeline.allocation import (
    Chain,
    Composite,
    CostType,
    DirectOwner,
    DynamicComposite,
    EvenSplit,
    Terminal,
    UsageRatio,
    after_usage,
    default_fallback_allocator,
    generic_even_chain,
    generic_usage_chain,
    line_resource_id,
    make_row,
    merged_active,
    metrics_derived,
    org_owners,
    owners,
    ratios_from_params,
    resource,
    resource_active,
    usage_by_label,
    usage_from_context,
)
from chargeback_pipeline.errors import AllocationError
from chargeback_pipeline.models import (
    UNALLOCATED,
    AllocationContext,
    AllocationResult,
    BillingLineItem,
    ChargebackRow,
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricRow,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
USAGE = CostType.USAGE
SHARED = CostType.SHARED


def ident(identity_id: str, identity_type: str = "service_account") -> Identity:
    return Identity("confluent_cloud", "acme", identity_id, identity_type)


def idset(ids: Iterable[str | tuple[str, str]]) -> IdentitySet:
    return IdentitySet(ident(*((i,) if isinstance(i, str) else i)) for i in ids)


def metric(key: str, principal: str, value: str | int, label: str = "principal_id") -> MetricRow:
    return MetricRow(T0, key, D(value), {label: principal})


def data(key: str, principal: str, value: int) -> dict[str, list[MetricRow]]:
    return {key: [metric(key, principal, value)]}


NML = "no_metrics_located"
NUA = "no_usage_for_active_identities"


def make_ctx(
    amount: str,
    *,
    product_type: str = "KAFKA_NUM_CKU",
    resource_id: str = "lkc-k1",
    active: Iterable[str] = (),
    derived: Iterable[str] = (),
    tenant: Iterable[str | tuple[str, str]] = (),
    metrics: dict[str, list[MetricRow]] | None = None,
    fetch_failed: bool = False,
    params: Mapping[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    dims: Mapping[str, str] | None = None,
) -> AllocationContext:
    line = BillingLineItem(
        "confluent_cloud", "acme", T0, resource_id, "KAFKA", product_type, D(1), D(amount), D(amount)
    )
    resolution = IdentityResolution(
        resource_active=idset(active),
        metrics_derived=idset(derived),
        tenant_period=idset(tenant),
        context=context or {},
    )
    return AllocationContext(
        timeslice=T0,
        billing_line=line,
        identities=resolution,
        split_amount=D(amount),
        metrics_data=metrics,
        metrics_fetch_failed=fetch_failed,
        params=params or {},
        dimension_metadata=dims or {},
    )


def brief(rows: list[ChargebackRow]) -> list[tuple[str, str, str | None, str | None, str]]:
    return [
        (r.identity_id, r.cost_type.value, r.allocation_method, r.allocation_detail, str(r.amount))
        for r in rows
    ]


def kafka_usage(*keys: str) -> UsageRatio:
    """Usage tier over ``keys`` per ``principal_id``, API keys counted under their owner."""
    return UsageRatio(
        usage_by_label(
            keys, "principal_id", alias=lambda c: c.identities.context.get("api_key_to_owner", {})
        ),
        usage_keys=keys,
    )


def cku_usage_chain() -> Chain:
    usage = kafka_usage("bytes_in", "bytes_out")
    return Chain(
        [
            usage,
            EvenSplit(merged_active, detail=usage.fallback_detail),
            EvenSplit(owners, detail="no_metrics_no_active_identities_located"),
            Terminal(line_resource_id),
        ]
    )


def cku_shared_chain() -> Chain:
    return Chain(
        [
            EvenSplit(merged_active),
            EvenSplit(owners, detail="no_active_identities_located"),
            Terminal(line_resource_id),
        ]
    )


def cku_allocator() -> DynamicComposite:
    return DynamicComposite(
        ratios_from_params(
            [
                ("kafka_cku_usage_ratio", "0.70", cku_usage_chain()),
                ("kafka_cku_shared_ratio", "0.30", cku_shared_chain()),
            ]
        )
    )


def network_chain(key: str) -> Chain:
    usage = kafka_usage(key)
    return Chain(
        [
            usage,
            EvenSplit(merged_active, detail=usage.fallback_detail),
            EvenSplit(owners, detail="no_active_identities_located"),
            Terminal(line_resource_id),
        ]
    )


# --- §12 worked examples -----------------------------------------------------------------


def test_e1_cku_two_service_accounts() -> None:
    metrics = {
        "bytes_in": [metric("bytes_in", "sa-x1", 100)],
        "bytes_out": [metric("bytes_out", "sa-x1", 200)],
    }
    metrics["bytes_in"].append(metric("bytes_in", "sa-x2", 700))
    ctx = make_ctx("100.0000", derived=["sa-x1", "sa-x2"], metrics=metrics)
    result = cku_allocator()(ctx)
    assert brief(result.rows) == [
        ("sa-x1", "usage", "usage_ratio", "usage_ratio_allocation", "21.0000"),
        ("sa-x2", "usage", "usage_ratio", "usage_ratio_allocation", "49.0000"),
        ("sa-x1", "shared", "even_split", "even_split_allocation", "15.0000"),
        ("sa-x2", "shared", "even_split", "even_split_allocation", "15.0000"),
    ]
    assert [r.metadata for r in result.rows] == [
        {"ratio": 0.3, "chain_tier": 0, "composition_index": 0, "composition_ratio": 0.7},
        {"ratio": 0.7, "chain_tier": 0, "composition_index": 0, "composition_ratio": 0.7},
        {"chain_tier": 0, "composition_index": 1, "composition_ratio": 0.3},
        {"chain_tier": 0, "composition_index": 1, "composition_ratio": 0.3},
    ]


def test_e2_cku_nobody_found_both_parts_on_the_resource() -> None:
    result = cku_allocator()(make_ctx("100.0000"))
    assert brief(result.rows) == [
        ("lkc-k1", "shared", "terminal", "no_identities_located", "70.0000"),
        ("lkc-k1", "shared", "terminal", "no_identities_located", "30.0000"),
    ]
    assert [r.metadata["chain_tier"] for r in result.rows] == [3, 2]


def test_e3_cku_with_remainders() -> None:
    metrics = {"bytes_in": [metric("bytes_in", "sa-a", 1), metric("bytes_in", "sa-b", 2)]}
    ctx = make_ctx("33.3333", active=["u-c"], derived=["sa-a", "sa-b"], metrics=metrics)
    result = cku_allocator()(ctx)
    assert [(r.identity_id, str(r.amount)) for r in result.rows] == [
        ("sa-a", "7.7778"),
        ("sa-b", "15.5555"),
        ("sa-a", "3.3334"),
        ("sa-b", "3.3333"),
        ("u-c", "3.3333"),
    ]
    assert sum(r.amount for r in result.rows) == D("33.3333")


def test_e5_network_write_active_half() -> None:
    # The active share (25.0000 of 50.0000) reaches the chain; the rest is the core's business.
    metrics = {"bytes_in": [metric("bytes_in", "sa-x1", 2000), metric("bytes_in", "sa-x2", 1000)]}
    ctx = make_ctx("25.0000", product_type="KAFKA_NETWORK_WRITE", derived=["sa-x1", "sa-x2"], metrics=metrics)
    assert brief(network_chain("bytes_in")(ctx).rows) == [
        ("sa-x1", "usage", "usage_ratio", "usage_ratio_allocation", "16.6667"),
        ("sa-x2", "usage", "usage_ratio", "usage_ratio_allocation", "8.3333"),
    ]


def test_e6_self_managed_kafka_day() -> None:
    infra = Chain(
        [
            EvenSplit(metrics_derived),
            EvenSplit(resource_active, detail="no_active_identities_located"),
            Terminal(UNALLOCATED),
        ]
    )
    ingress = UsageRatio(
        usage_by_label(("bytes_in_per_principal",), "principal"), usage_keys=("bytes_in_per_principal",)
    )
    egress = UsageRatio(
        usage_by_label(("bytes_out_per_principal",), "principal"), usage_keys=("bytes_out_per_principal",)
    )

    def network(usage: UsageRatio) -> Chain:
        return Chain([usage, EvenSplit(resource_active, detail=usage.fallback_detail), Terminal(UNALLOCATED)])

    per_principal = [
        metric("bytes_in_per_principal", "alice", 700, "principal"),
        metric("bytes_in_per_principal", "bob", 300, "principal"),
    ]
    data = {"bytes_in_per_principal": per_principal}
    people = ["alice", "bob"]
    assert brief(infra(make_ctx("36.0000", derived=people, metrics=data)).rows) == [
        ("alice", "shared", "even_split", "even_split_allocation", "18.0000"),
        ("bob", "shared", "even_split", "even_split_allocation", "18.0000"),
    ]
    assert [str(r.amount) for r in infra(make_ctx("0.2440", derived=people, metrics=data)).rows] == [
        "0.1220",
        "0.1220",
    ]
    three = [*people, "carol"]
    assert [str(r.amount) for r in infra(make_ctx("0.2440", derived=three, metrics=data)).rows] == [
        "0.0814",
        "0.0813",
        "0.0813",
    ]
    assert brief(network(ingress)(make_ctx("0.5000", derived=people, metrics=data)).rows) == [
        ("alice", "usage", "usage_ratio", "usage_ratio_allocation", "0.3500"),
        ("bob", "usage", "usage_ratio", "usage_ratio_allocation", "0.1500"),
    ]
    assert brief(network(egress)(make_ctx("0.9000", derived=people, metrics=data)).rows) == [
        ("UNALLOCATED", "shared", "terminal", "no_identities_located", "0.9000"),
    ]


# --- §11 detail codes after a declining usage tier -----------------------------------------


@pytest.mark.parametrize(
    ("metrics", "fetch_failed", "expected"),
    [
        (None, False, "no_metrics_located"),
        ({}, False, "no_metrics_located"),
        ({"bytes_in": []}, False, "no_metrics_located"),
        # Rows of another key (fetched for another line of the resource) do not count.
        (
            {"bytes_out": [MetricRow(T0, "bytes_out", D(5), {"principal_id": "sa-1"})]},
            False,
            "no_metrics_located",
        ),
        (
            {"bytes_in": [MetricRow(T0, "bytes_in", D(5), {"principal_id": "sa-1"})]},
            True,
            "no_metrics_located",
        ),
        (
            {"bytes_in": [MetricRow(T0, "bytes_in", D(0), {"principal_id": "sa-1"})]},
            False,
            "no_usage_for_active_identities",
        ),
        (
            {"bytes_in": [MetricRow(T0, "bytes_in", D(9), {"principal_id": ""})]},
            False,
            "no_usage_for_active_identities",
        ),
        (
            {"bytes_in": [MetricRow(T0, "bytes_in", D(-3), {"principal_id": "sa-1"})]},
            False,
            "no_usage_for_active_identities",
        ),
    ],
)
def test_network_tier1_detail_says_why_usage_declined(
    metrics: dict[str, list[MetricRow]] | None, fetch_failed: bool, expected: str
) -> None:
    ctx = make_ctx("10.0000", active=["sa-1", "sa-2"], metrics=metrics, fetch_failed=fetch_failed)
    result = network_chain("bytes_in")(ctx)
    assert brief(result.rows) == [
        ("sa-1", "shared", "even_split", expected, "5.0000"),
        ("sa-2", "shared", "even_split", expected, "5.0000"),
    ]
    assert result.metadata == {"chain_tier": 1}


def test_partition_chain_always_reports_no_metrics() -> None:
    metrics = {"bytes_in": [metric("bytes_in", "sa-1", 0)], "bytes_out": [metric("bytes_out", "sa-1", 0)]}
    ctx = make_ctx("1.0000", product_type="KAFKA_PARTITION", active=["sa-1"], metrics=metrics)
    assert brief(network_chain("partition_count")(ctx).rows) == [
        ("sa-1", "shared", "even_split", "no_metrics_located", "1.0000")
    ]


def test_cku_usage_part_detail_uses_both_keys() -> None:
    metrics = {"bytes_out": [metric("bytes_out", "sa-1", 0)]}
    ctx = make_ctx("100.0000", active=["sa-1"], metrics=metrics)
    rows = cku_allocator()(ctx).rows
    assert brief(rows)[0] == ("sa-1", "shared", "even_split", "no_usage_for_active_identities", "70.0000")


def test_network_falls_to_owners_then_resource() -> None:
    tenant = [("sa-o", "service_account"), ("u-1", "user"), ("key-1", "api_key"), ("p-1", "principal")]
    result = network_chain("bytes_out")(make_ctx("3.0000", tenant=tenant))
    assert brief(result.rows) == [
        ("p-1", "shared", "even_split", "no_active_identities_located", "1.0000"),
        ("sa-o", "shared", "even_split", "no_active_identities_located", "1.0000"),
        ("u-1", "shared", "even_split", "no_active_identities_located", "1.0000"),
    ]
    assert brief(network_chain("bytes_out")(make_ctx("3.0000")).rows) == [
        ("lkc-k1", "shared", "terminal", "no_identities_located", "3.0000")
    ]


def test_after_usage_without_keys_counts_any_row() -> None:
    detail = after_usage()
    assert (
        detail(make_ctx("1.0000", metrics={"x": [metric("x", "a", 0)]})) == "no_usage_for_active_identities"
    )
    assert detail(make_ctx("1.0000", metrics={"x": []})) == "no_metrics_located"


def test_api_key_usage_counted_under_owner() -> None:
    metrics = {"bytes_in": [metric("bytes_in", "key-1", 300), metric("bytes_in", "sa-o", 100)]}
    ctx = make_ctx(
        "8.0000", derived=["sa-o"], metrics=metrics, context={"api_key_to_owner": {"key-1": "sa-o"}}
    )
    assert brief(network_chain("bytes_in")(ctx).rows) == [
        ("sa-o", "usage", "usage_ratio", "usage_ratio_allocation", "8.0000")
    ]


# --- Standalone behaviour (§7 table) ------------------------------------------------------


def test_even_split_standalone_declines_to_unallocated() -> None:
    rows = EvenSplit(merged_active)(make_ctx("5.0000")).rows
    assert brief(rows) == [("UNALLOCATED", "shared", "even_split", "no_identities_located", "5.0000")]
    assert EvenSplit(merged_active).allocate(make_ctx("5.0000")) is None


def test_even_split_custom_detail_and_cost_type() -> None:
    block = EvenSplit(resource_active, cost_type=USAGE, detail="custom")
    assert brief(block(make_ctx("2.0000", active=["b", "a"])).rows) == [
        ("a", "usage", "even_split", "custom", "1.0000"),
        ("b", "usage", "even_split", "custom", "1.0000"),
    ]


@pytest.mark.parametrize(
    ("metrics", "fetch_failed", "detail"),
    [
        (None, False, "no_metrics_located"),
        (
            {"bytes_in": [MetricRow(T0, "bytes_in", D(4), {"principal_id": "sa-1"})]},
            True,
            "no_metrics_located",
        ),
        (
            {"bytes_in": [MetricRow(T0, "bytes_in", D(0), {"principal_id": "sa-1"})]},
            False,
            "no_usage_for_active_identities",
        ),
    ],
)
def test_usage_ratio_standalone_decline(
    metrics: dict[str, list[MetricRow]] | None, fetch_failed: bool, detail: str
) -> None:
    rows = kafka_usage("bytes_in")(make_ctx("5.0000", metrics=metrics, fetch_failed=fetch_failed)).rows
    assert brief(rows) == [("UNALLOCATED", "shared", "usage_ratio", detail, "5.0000")]


def test_usage_ratio_declines_on_failed_fetch_even_with_weights() -> None:
    block = UsageRatio(usage_from_context("stmt_owner_cfu"))
    ctx = make_ctx("5.0000", fetch_failed=True, context={"stmt_owner_cfu": {"sa-1": D(2)}})
    assert block.allocate(ctx) is None


def test_flink_statement_count_weights_are_shared() -> None:
    """Tier 0 over statement counts labels its rows shared / no_metrics_located (confluent-cloud §7.5)."""

    def by_source(metric_value: Any, count_value: Any) -> Any:
        def pick(ctx: AllocationContext) -> Any:
            source = ctx.identities.context.get("stmt_owner_weights_source")
            return count_value if source == "statement_count" else metric_value

        return pick

    flink = UsageRatio(
        usage_from_context("stmt_owner_cfu"),
        detail=by_source("usage_ratio_allocation", "no_metrics_located"),
        cost_type=by_source(USAGE, SHARED),
        usage_keys=("flink_cfu_primary", "flink_cfu_fallback"),
    )
    counted = {"stmt_owner_cfu": {"u-2": 1, "sa-1": 3}, "stmt_owner_weights_source": "statement_count"}
    assert brief(flink(make_ctx("4.0000", context=counted)).rows) == [
        ("sa-1", "shared", "usage_ratio", "no_metrics_located", "3.0000"),
        ("u-2", "shared", "usage_ratio", "no_metrics_located", "1.0000"),
    ]
    measured = {"stmt_owner_cfu": {"sa-1": D("0.5")}, "stmt_owner_weights_source": "metrics"}
    assert brief(flink(make_ctx("4.0000", context=measured)).rows) == [
        ("sa-1", "usage", "usage_ratio", "usage_ratio_allocation", "4.0000"),
    ]


def test_usage_from_context_rejects_non_numbers() -> None:
    block = UsageRatio(usage_from_context("w"))
    with pytest.raises(AllocationError, match=r"context\['w'\]\['a'\]"):
        block(make_ctx("1.0000", context={"w": {"a": "lots"}}))


def test_terminal_fixed_and_computed_identity() -> None:
    assert brief(Terminal(UNALLOCATED)(make_ctx("1.2345")).rows) == [
        ("UNALLOCATED", "shared", "terminal", "no_identities_located", "1.2345")
    ]
    assert brief(Terminal(line_resource_id, detail="x")(make_ctx("1.0000", resource_id="lkc-9")).rows) == [
        ("lkc-9", "shared", "terminal", "x", "1.0000")
    ]
    with pytest.raises(AllocationError, match="terminal identity is empty"):
        Terminal(lambda c: "")(make_ctx("1.0000"))


def test_direct_owner() -> None:
    block = DirectOwner(lambda c: c.identities.context.get("owner"))
    assert brief(block(make_ctx("7.0000", context={"owner": "sa-9"})).rows) == [
        ("sa-9", "usage", "direct_owner", "direct_owner_allocation", "7.0000")
    ]
    assert block.allocate(make_ctx("7.0000")) is None
    assert brief(block(make_ctx("7.0000")).rows) == [
        ("UNALLOCATED", "shared", "direct_owner", "no_identities_located", "7.0000")
    ]


def test_rows_copy_line_fields_and_dimensions() -> None:
    ctx = make_ctx("2.0000", active=["a"], dims={"env_id": "env-1"})
    (row,) = EvenSplit(resource_active)(ctx).rows
    line = ctx.billing_line
    assert (row.ecosystem, row.tenant_id, row.timestamp, row.resource_id) == (
        line.ecosystem,
        line.tenant_id,
        line.timestamp,
        line.resource_id,
    )
    assert (row.product_category, row.product_type) == ("KAFKA", "KAFKA_NUM_CKU")
    assert row.dimensions == {"env_id": "env-1"}
    assert row.dimensions is not ctx.dimension_metadata
    assert make_row(ctx, "x", D("1.0000"), SHARED, "m", "d").dimensions == {"env_id": "env-1"}


# --- Chain ----------------------------------------------------------------------------


def test_chain_requires_terminal_last() -> None:
    with pytest.raises(ValueError, match="at least one tier"):
        Chain([])
    with pytest.raises(ValueError, match="must end in a Terminal"):
        Chain([EvenSplit(merged_active)])
    with pytest.raises(ValueError, match="must end in a Terminal"):
        Chain([Terminal(UNALLOCATED), EvenSplit(merged_active)])
    with pytest.raises(TypeError, match="tier 0"):
        Chain([object(), Terminal(UNALLOCATED)])  # type: ignore[list-item]


def test_chain_tier_recorded_or_not() -> None:
    ctx = make_ctx("1.0000", tenant=["sa-1"])
    chain = Chain([EvenSplit(merged_active), EvenSplit(owners), Terminal(UNALLOCATED)])
    assert chain(ctx).rows[0].metadata == {"chain_tier": 1}
    plain = Chain([EvenSplit(merged_active), EvenSplit(owners), Terminal(UNALLOCATED)], record_tier=False)
    assert plain(ctx).rows[0].metadata == {}
    assert plain(ctx).metadata == {}


def test_generic_chains() -> None:
    data = {
        "alloc_net": [
            MetricRow(T0, "alloc_net", D(3), {"principal": "app-orders"}),
            MetricRow(T0, "alloc_net", D(1), {"principal": "app-billing"}),
            MetricRow(T0, "alloc_net", D(1), {"principal": "app-audit"}),
            MetricRow(T0, "alloc_net", D(9), {"principal": ""}),
            MetricRow(T0, "alloc_net", D(0), {"principal": "idle"}),
        ]
    }
    usage = generic_usage_chain("alloc_net", "principal")
    assert brief(usage(make_ctx("0.6250", metrics=data)).rows) == [
        ("app-audit", "usage", "usage_ratio", "usage_ratio_allocation", "0.1250"),
        ("app-billing", "usage", "usage_ratio", "usage_ratio_allocation", "0.1250"),
        ("app-orders", "usage", "usage_ratio", "usage_ratio_allocation", "0.3750"),
    ]
    no_usage = {"alloc_net": [MetricRow(T0, "alloc_net", D(0), {"principal": "a"})]}
    assert brief(usage(make_ctx("1.0000", active=["a"], metrics=no_usage)).rows) == [
        ("a", "shared", "even_split", "no_usage_for_active_identities", "1.0000")
    ]
    assert brief(usage(make_ctx("1.0000", active=["a"])).rows) == [
        ("a", "shared", "even_split", "no_metrics_located", "1.0000")
    ]
    assert brief(usage(make_ctx("1.0000")).rows) == [
        ("UNALLOCATED", "shared", "terminal", "no_identities_located", "1.0000")
    ]
    even = generic_even_chain()
    assert brief(even(make_ctx("1.0000", active=["b"], derived=["a"])).rows) == [
        ("a", "shared", "even_split", "even_split_allocation", "0.5000"),
        ("b", "shared", "even_split", "even_split_allocation", "0.5000"),
    ]
    assert brief(even(make_ctx("1.0000")).rows) == [
        ("UNALLOCATED", "shared", "terminal", "no_identities_located", "1.0000")
    ]


def test_negative_amounts_keep_sign() -> None:
    metrics = {
        "bytes_in": [metric("bytes_in", "a", 1), metric("bytes_in", "b", 1), metric("bytes_in", "c", 1)]
    }
    rows = cku_allocator()(make_ctx("-0.0004", derived=["a", "b", "c"], metrics=metrics)).rows
    assert [(r.identity_id, r.cost_type.value, r.amount) for r in rows] == [
        ("a", "usage", D("-0.0001")),
        ("b", "usage", D("-0.0001")),
        ("c", "usage", D("-0.0001")),
        ("a", "shared", D("-0.0001")),
        ("b", "shared", D(0)),
        ("c", "shared", D(0)),
    ]
    assert all(r.amount <= 0 for r in rows)


# --- Identity sources -----------------------------------------------------------------


def test_identity_sources_are_sorted() -> None:
    tenant = [("u-2", "user"), ("sa-1", "service_account"), ("pool-1", "identity_pool"), ("p-1", "principal")]
    tenant += [("key-1", "api_key")]
    ctx = make_ctx("1.0000", active=["z", "m"], derived=["b", "m"], tenant=tenant, resource_id="lkc-r")
    assert metrics_derived(ctx) == ["b", "m"]
    assert resource_active(ctx) == ["m", "z"]
    assert merged_active(ctx) == ["b", "m", "z"]
    assert owners(ctx) == ["p-1", "pool-1", "sa-1", "u-2"]
    assert org_owners(ctx) == ["pool-1", "sa-1", "u-2"]
    assert resource(ctx) == ["lkc-r"]


# --- Composite -----------------------------------------------------------------------


class Exploding:
    """A tier that must never be reached."""

    def allocate(self, ctx: AllocationContext) -> AllocationResult | None:
        raise AssertionError("part with amount 0 must be skipped")


class Declining:
    def allocate(self, ctx: AllocationContext) -> AllocationResult | None:
        return None


@pytest.mark.parametrize(
    "parts",
    [
        [],
        [(0.7, Terminal("a")), (0.3, Terminal("b"))],
        [(D("0.70"), Terminal("a")), (D("0.2998"), Terminal("b"))],
        [(D("1.2"), Terminal("a")), (D("-0.2"), Terminal("b"))],
        [(D("NaN"), Terminal("a"))],
    ],
)
def test_composite_rejects_bad_ratios(parts: list[Any]) -> None:
    with pytest.raises(ValueError, match="Composite"):
        Composite(parts)


def test_composite_accepts_ratios_within_tolerance() -> None:
    composite = Composite([(D("0.70"), Terminal("a")), (D("0.3001"), Terminal("b"))])
    assert brief(composite(make_ctx("10.0000")).rows) == [
        ("a", "shared", "terminal", "no_identities_located", "7.0000"),
        ("b", "shared", "terminal", "no_identities_located", "3.0000"),
    ]


def test_composite_skips_zero_parts_and_rejects_declines() -> None:
    skip = Composite([(D(1), Terminal("a")), (D(0), Exploding())])
    assert brief(skip(make_ctx("10.0000")).rows) == [
        ("a", "shared", "terminal", "no_identities_located", "10.0000")
    ]
    declines = Composite([(D("0.5"), Terminal("a")), (D("0.5"), Declining())])
    with pytest.raises(AllocationError, match="composite part 1"):
        declines(make_ctx("10.0000"))


def test_composite_accepts_plain_cost_allocators() -> None:
    def plain(ctx: AllocationContext) -> AllocationResult:
        return AllocationResult([make_row(ctx, "p", ctx.split_amount, SHARED, "custom", "custom")])

    composite = Composite([(D("0.25"), plain), (D("0.75"), Terminal("t"))])
    result = composite(make_ctx("4.0000"))
    assert [(r.identity_id, str(r.amount), r.metadata) for r in result.rows] == [
        ("p", "1.0000", {"composition_index": 0, "composition_ratio": 0.25}),
        ("t", "3.0000", {"composition_index": 1, "composition_ratio": 0.75}),
    ]


def test_dynamic_composite_reads_params_at_call_time() -> None:
    ctx = make_ctx("100.0000", params={"kafka_cku_usage_ratio": 0.6, "kafka_cku_shared_ratio": 0.4})
    assert [str(r.amount) for r in cku_allocator()(ctx).rows] == ["60.0000", "40.0000"]
    only_usage = make_ctx("100.0000", params={"kafka_cku_usage_ratio": 0.5})
    with pytest.raises(ValueError, match="sum to 1"):
        cku_allocator()(only_usage)
    with pytest.raises(ValueError, match="kafka_cku_usage_ratio must be a number"):
        cku_allocator()(make_ctx("1.0000", params={"kafka_cku_usage_ratio": True}))
    with pytest.raises(ValueError, match="not a number"):
        cku_allocator()(make_ctx("1.0000", params={"kafka_cku_usage_ratio": "seventy"}))


# --- Fallback -------------------------------------------------------------------------


def test_default_fallback_allocator(caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_ctx("12.5000", product_type="PROMO_CREDIT", resource_id="org-1")
    with caplog.at_level(logging.WARNING, logger="chargeback_pipeline.allocation"):
        result = default_fallback_allocator(ctx)
    assert brief(result.rows) == [("UNALLOCATED", "shared", "unknown", "UNKNOWN_PRODUCT_TYPE", "12.5000")]
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    for part in ("acme", "PROMO_CREDIT", "org-1", "2026-03-01"):
        assert part in message
