"""Emitter aggregation (spec/emitters.md §3) and emission buckets."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargeback_pipeline.emitters.aggregation import (
    aggregate_rows,
    bucket_date,
    bucket_of,
    bucket_range,
    check_aggregation,
    group_dates_by_bucket,
)
from chargeback_pipeline.models import ChargebackRow, CostType


def row(
    amount: str,
    *,
    ts: datetime = datetime(2026, 2, 1, 0, tzinfo=UTC),
    identity: str = "alice",
    product_type: str = "KAFKA_NUM_CKU",
    resource_id: str | None = "lkc-1",
    cost_type: CostType = CostType.SHARED,
    method: str | None = "even_split",
    detail: str | None = "even_split_allocation",
    dimensions: dict[str, str] | None = None,
) -> ChargebackRow:
    return ChargebackRow(
        ecosystem="confluent_cloud",
        tenant_id="acme",
        timestamp=ts,
        resource_id=resource_id,
        product_category="kafka",
        product_type=product_type,
        identity_id=identity,
        cost_type=cost_type,
        amount=Decimal(amount),
        allocation_method=method,
        allocation_detail=detail,
        dimensions=dimensions if dimensions is not None else {"env_id": "env-1"},
        metadata={"chain_tier": 0},
    )


def hour(day: int, h: int, month: int = 2) -> datetime:
    return datetime(2026, month, day, h, tzinfo=UTC)


@pytest.mark.parametrize("aggregation", [None, "hourly"])
def test_null_and_hourly_return_rows_unchanged(aggregation: str | None) -> None:
    rows = [row("1.0000", ts=hour(1, 5)), row("2.0000", ts=hour(1, 1))]
    result = aggregate_rows(rows, aggregation, ("env_id",))
    assert result == rows
    assert all(a is b for a, b in zip(result, rows, strict=True))


def test_daily_sums_exactly_and_takes_greatest_method() -> None:
    rows = [
        row("0.1000", ts=hour(1, 0), method="even_split", detail="even_split_allocation"),
        row("0.2000", ts=hour(1, 13), method="usage_ratio", detail="usage_ratio_allocation"),
        row("0.0001", ts=hour(1, 23), method=None, detail=None),
        row("5.0000", ts=hour(2, 0), method=None, detail="x"),
    ]
    result = aggregate_rows(rows, "daily", ("env_id",))
    assert [(r.timestamp, r.amount, r.allocation_method, r.allocation_detail) for r in result] == [
        (datetime(2026, 2, 1, tzinfo=UTC), Decimal("0.3001"), "usage_ratio", None),
        (datetime(2026, 2, 2, tzinfo=UTC), Decimal("5.0000"), None, None),
    ]
    assert str(result[0].amount) == "0.3001"
    assert all(r.metadata == {} for r in result)
    assert all(r.dimensions == {"env_id": "env-1"} for r in result)
    assert result[0].cost_type is CostType.SHARED
    assert rows[0].amount == Decimal("0.1000"), "input rows must not be mutated"


def test_daily_keeps_groups_apart_by_every_key_field() -> None:
    rows = [
        row("1.0000", identity="bob"),
        row("1.0000", identity="alice"),
        row("1.0000", identity="alice", cost_type=CostType.USAGE),
        row("1.0000", identity="alice", dimensions={"env_id": "env-2"}),
        row("1.0000", identity="alice", resource_id=None),
        row("1.0000", identity="alice", product_type="KAFKA_STORAGE"),
        row("2.5000", identity="alice", ts=hour(1, 7)),
    ]
    result = aggregate_rows(rows, "daily", ("env_id",))
    assert [
        (r.resource_id, r.product_type, r.identity_id, str(r.cost_type), r.dimensions, r.amount)
        for r in result
    ] == [
        (None, "KAFKA_NUM_CKU", "alice", "shared", {"env_id": "env-1"}, Decimal("1.0000")),
        ("lkc-1", "KAFKA_NUM_CKU", "alice", "shared", {"env_id": "env-1"}, Decimal("3.5000")),
        ("lkc-1", "KAFKA_NUM_CKU", "alice", "shared", {"env_id": "env-2"}, Decimal("1.0000")),
        ("lkc-1", "KAFKA_NUM_CKU", "alice", "usage", {"env_id": "env-1"}, Decimal("1.0000")),
        ("lkc-1", "KAFKA_NUM_CKU", "bob", "shared", {"env_id": "env-1"}, Decimal("1.0000")),
        ("lkc-1", "KAFKA_STORAGE", "alice", "shared", {"env_id": "env-1"}, Decimal("1.0000")),
    ]


def test_monthly_buckets_to_first_of_month() -> None:
    rows = [
        row("10.0000", ts=hour(1, 0)),
        row("0.0300", ts=hour(14, 0), method="terminal"),
        row("-1.2500", ts=hour(28, 23)),
        row("7.0000", ts=hour(1, 0, month=3)),
    ]
    result = aggregate_rows(rows, "monthly", ("env_id",))
    assert [(r.timestamp, r.amount, r.allocation_method) for r in result] == [
        (datetime(2026, 2, 1, tzinfo=UTC), Decimal("8.7800"), "terminal"),
        (datetime(2026, 3, 1, tzinfo=UTC), Decimal("7.0000"), "even_split"),
    ]


def test_all_methods_none_stays_none() -> None:
    result = aggregate_rows([row("1.0000", method=None), row("2.0000", method=None)], "daily", ("env_id",))
    assert [(r.amount, r.allocation_method) for r in result] == [(Decimal("3.0000"), None)]


def test_many_small_amounts_sum_without_drift() -> None:
    rows = [row("0.0001", ts=hour(1, i % 24)) for i in range(10_000)]
    [result] = aggregate_rows(rows, "daily", ("env_id",))
    assert result.amount == Decimal("1.0000")
    assert str(result.amount) == "1.0000"


def test_undeclared_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match=r"dimension\(s\) env_id not declared in extra_key_fields \(none\)"):
        aggregate_rows([row("1.0000")], "daily", ())


def test_dimension_fields_default_to_sorted_names_found() -> None:
    rows = [row("1.0000", dimensions={"z": "1", "a": "2"}), row("1.0000", dimensions={"z": "1", "a": "2"})]
    [result] = aggregate_rows(rows, "daily")
    assert result.dimensions == {"a": "2", "z": "1"}
    assert result.amount == Decimal("2.0000")


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        aggregate_rows([row("1.0000", ts=datetime(2026, 2, 1))], "daily", ("env_id",))


def test_unknown_aggregation_is_refused() -> None:
    with pytest.raises(ValueError, match="aggregation 'weekly' is not one of"):
        aggregate_rows([], "weekly")


amounts = st.decimals(min_value=Decimal("-1000"), max_value=Decimal("1000"), places=4, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(amounts, st.integers(0, 27 * 24 + 23), st.sampled_from(["alice", "bob"])), max_size=40
    ),
    aggregation=st.sampled_from(["daily", "monthly"]),
)
def test_aggregation_conserves_money(data: list[tuple[Decimal, int, str]], aggregation: str) -> None:
    start = datetime(2026, 2, 1, tzinfo=UTC)
    rows = [row(str(a), ts=start + timedelta(hours=h), identity=who) for a, h, who in data]
    result = aggregate_rows(rows, aggregation, ("env_id",))
    assert sum((r.amount for r in result), Decimal(0)) == sum((r.amount for r in rows), Decimal(0))
    keys = [(r.timestamp, r.identity_id) for r in result]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_bucket_helpers() -> None:
    assert bucket_date(date(2026, 2, 17), "monthly") == date(2026, 2, 1)
    assert bucket_date(date(2026, 2, 17), "daily") == date(2026, 2, 17)
    assert bucket_date(date(2026, 2, 17), None) == date(2026, 2, 17)
    assert bucket_range(date(2026, 2, 17), None) == (date(2026, 2, 17), date(2026, 2, 18))
    assert bucket_range(date(2028, 2, 29), "monthly") == (date(2028, 2, 1), date(2028, 3, 1))
    assert bucket_range(date(2026, 12, 31), "monthly") == (date(2026, 12, 1), date(2027, 1, 1))
    assert (bucket_of(None), bucket_of("hourly"), bucket_of("daily"), bucket_of("monthly")) == (
        None,
        None,
        "day",
        "month",
    )


def test_group_dates_by_bucket() -> None:
    dates = [date(2026, 3, 2), date(2026, 2, 28), date(2026, 2, 3), date(2026, 2, 3)]
    assert group_dates_by_bucket(dates, "monthly") == {
        date(2026, 2, 1): [date(2026, 2, 3), date(2026, 2, 28)],
        date(2026, 3, 1): [date(2026, 3, 2)],
    }
    assert list(group_dates_by_bucket(dates, None)) == [date(2026, 2, 3), date(2026, 2, 28), date(2026, 3, 2)]


@pytest.mark.parametrize(
    ("aggregation", "granularity", "ok"),
    [
        (None, "hourly", True),
        (None, "monthly", True),
        ("hourly", "hourly", True),
        ("hourly", "daily", False),
        ("daily", "daily", True),
        ("daily", "monthly", False),
        ("monthly", "daily", True),
        ("monthly", "hourly", True),
    ],
)
def test_check_aggregation(aggregation: str | None, granularity: str, ok: bool) -> None:
    if ok:
        check_aggregation(aggregation, granularity)
    else:
        with pytest.raises(
            ValueError, match=f"aggregation '{aggregation}' is finer than chargeback_granularity"
        ):
            check_aggregation(aggregation, granularity)


def test_check_aggregation_unknown_values() -> None:
    with pytest.raises(ValueError, match="aggregation 'weekly' is not one of"):
        check_aggregation("weekly", "daily")
    with pytest.raises(ValueError, match="chargeback_granularity 'yearly'"):
        check_aggregation(None, "yearly")
