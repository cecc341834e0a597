from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargeback_pipeline.errors import StorageError
from chargeback_pipeline.models import ChargebackRow, CostType
from chargeback_pipeline.storage import TenantDatabase, chargebacks, open_tenant_db
from tests.test_storage_support import D1, ECO, T1, TENANT, EnvStorageModule, line, row

D2 = date(2026, 3, 2)
T2 = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[TenantDatabase]:
    with open_tenant_db(tmp_path / "acme.duckdb", ecosystem=ECO, tenant_id=TENANT) as opened:
        yield opened


def sample_rows() -> list[ChargebackRow]:
    return [
        row("sa-2", "1.2345"),
        row(
            "sa-1", "-0.0001", cost_type=CostType.SHARED, method="even_split", detail="even_split_allocation"
        ),
        row("UNALLOCATED", "3", resource_id=None, method=None, detail=None, cost_type=CostType.SHARED),
        row("sa-1", "10.5", ts=T1 + timedelta(hours=1)),
    ]


def test_round_trip_orders_by_dimension_key_and_keeps_4dp(db: TenantDatabase) -> None:
    assert db.chargebacks.replace_date(D1, sample_rows(), "calc-1") == 4
    stored = db.chargebacks.find_by_date(D1)
    expected = sorted(sample_rows(), key=lambda r: r.dimension_key())
    assert stored == expected
    assert [str(r.amount) for r in stored] == ["3.0000", "-0.0001", "1.2345", "10.5000"]
    assert stored[0].resource_id is None and stored[0].allocation_method is None
    assert stored[0].allocation_detail is None
    assert all(r.timestamp.tzinfo is UTC for r in stored)
    assert db.chargebacks.calculation_ids(D1) == ["calc-1"]


def test_re_replace_same_date_gives_identical_rows_without_duplicates(db: TenantDatabase) -> None:
    db.chargebacks.replace_date(D1, sample_rows(), "calc-1")
    db.chargebacks.replace_date(D2, [row("sa-9", "7", ts=T2)], "calc-2")
    first = db.chargebacks.find_by_date(D1)
    db.chargebacks.replace_date(D1, sample_rows(), "calc-3")
    assert db.chargebacks.find_by_date(D1) == first
    assert db.chargebacks.count(D1) == 4
    assert db.chargebacks.calculation_ids(D1) == ["calc-3"]
    assert [r.identity_id for r in db.chargebacks.find_by_date(D2)] == ["sa-9"]
    assert db.chargebacks.dates() == [D1, D2]


def test_replace_with_no_rows_empties_the_date(db: TenantDatabase) -> None:
    db.chargebacks.replace_date(D1, sample_rows(), "calc-1")
    assert db.chargebacks.replace_date(D1, [], "calc-2") == 0
    assert db.chargebacks.find_by_date(D1) == []


def test_invalid_rows_are_refused_and_previous_rows_kept(db: TenantDatabase) -> None:
    db.chargebacks.replace_date(D1, sample_rows(), "calc-1")
    cases: list[tuple[list[ChargebackRow], type[Exception], str]] = [
        ([row("a", "0.00001")], ValueError, "more than 4 decimal places"),
        ([row("a", "NaN")], ValueError, "non-finite"),
        ([row("a", "1"), row("a", "2")], ValueError, "more than once; merge them first"),
        ([row("a", "1", ts=T2)], ValueError, "include a row dated 2026-03-02"),
        ([row("", "1")], ValueError, "empty identity_id"),
        ([row("a", "1", dimensions={"env_id": "e"})], ValueError, "not extra key fields"),
        ([row("a", "1", ts=datetime(2026, 3, 1))], ValueError, "timezone-aware"),
    ]
    float_row = row("a", "1")
    float_row.amount = 1.5  # type: ignore[assignment]
    cases.append(([float_row], TypeError, "amount must be a Decimal, got float"))
    for rows, error, message in cases:
        with pytest.raises(error, match=message):
            db.chargebacks.replace_date(D1, rows, "bad")
        assert db.chargebacks.calculation_ids(D1) == ["calc-1"]
    assert db.chargebacks.count(D1) == 4


def test_failure_mid_replace_rolls_back_to_previous_content(
    db: TenantDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.chargebacks.replace_date(D1, sample_rows(), "calc-1")
    before = db.chargebacks.find_by_date(D1)
    original = chargebacks.insert_frame

    def insert_then_fail(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)  # the old rows are deleted and the new ones inserted...
        raise RuntimeError("disk on fire")  # ...then the write fails

    monkeypatch.setattr(chargebacks, "insert_frame", insert_then_fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        db.chargebacks.replace_date(D1, [row("new", "1")], "calc-2")
    assert db.chargebacks.find_by_date(D1) == before


def test_outer_transaction_rolls_back_every_write(db: TenantDatabase) -> None:
    db.chargebacks.replace_date(D1, sample_rows(), "calc-1")
    db.state.mark_calculated(D1, "calc-1", T1)
    with pytest.raises(RuntimeError, match="after the replace"), db.transaction():
        db.chargebacks.replace_date(D1, [row("new", "1")], "calc-2")
        db.state.mark_calculated(D1, "calc-2", T2)
        raise RuntimeError("after the replace")
    assert db.chargebacks.calculation_ids(D1) == ["calc-1"]
    assert db.state.get(D1).calculation_id == "calc-1"


def test_swallowed_inner_failure_poisons_the_outer_transaction(db: TenantDatabase) -> None:
    db.chargebacks.replace_date(D1, sample_rows(), "calc-1")
    with pytest.raises(StorageError, match="rolled back"), db.transaction():
        db.state.mark_calculated(D1, "calc-2", T2)
        with pytest.raises(ValueError):
            db.chargebacks.replace_date(D1, [row("a", "1"), row("a", "1")], "calc-2")
    assert db.state.get(D1).calculation_id is None
    assert db.chargebacks.calculation_ids(D1) == ["calc-1"]


def test_line_totals_full_outer_join(db: TenantDatabase) -> None:
    db.billing.replace_date(D1, [line("1.5", resource_id="a"), line("2", resource_id="b"), line("0")])
    db.chargebacks.replace_date(
        D1,
        [
            row("x", "1", resource_id="a"),
            row("y", "0.4", resource_id="a"),
            row("x", "1.9999", resource_id="b"),
            row("x", "4", resource_id="orphan"),
        ],
        "c",
    )
    totals = {t.key[3]: t for t in db.chargebacks.line_totals(D1)}
    assert [t.key[3] for t in db.chargebacks.line_totals(D1)] == ["a", "b", "lkc-1", "orphan"]
    assert (totals["a"].billed, totals["a"].allocated, totals["a"].row_count) == (
        Decimal("1.5"),
        Decimal("1.4"),
        2,
    )
    assert not totals["a"].balanced
    assert (totals["b"].billed, totals["b"].allocated) == (Decimal("2.0000"), Decimal("1.9999"))
    assert (totals["lkc-1"].billed, totals["lkc-1"].allocated, totals["lkc-1"].row_count) == (0, 0, 0)
    assert totals["lkc-1"].balanced
    assert (totals["orphan"].billed, totals["orphan"].allocated) == (None, Decimal("4.0000"))
    assert not totals["orphan"].balanced


def test_date_totals_and_precision(db: TenantDatabase) -> None:
    db.billing.replace_date(D1, [line("1.5", resource_id="a"), line("2.25", resource_id="b")])
    db.chargebacks.replace_date(
        D1,
        [
            row("x", "1.5", resource_id="a"),
            row("UNALLOCATED", "2.2", resource_id="b"),
            row("y", "0.05", resource_id="b"),
        ],
        "c",
    )
    totals = db.chargebacks.date_totals(D1)
    assert (totals.billed, totals.allocated, totals.unallocated) == (
        Decimal("3.7500"),
        Decimal("3.7500"),
        Decimal("2.2000"),
    )
    assert (totals.line_count, totals.row_count) == (2, 3)
    empty = db.chargebacks.date_totals(D2)
    assert (str(empty.billed), str(empty.allocated), empty.line_count) == ("0.0000", "0.0000", 0)
    assert db.chargebacks.precision_violations(D1) == 0
    assert db.chargebacks.precision_violations() == 0


def test_aggregate_day_and_month(db: TenantDatabase) -> None:
    db.chargebacks.replace_date(
        D1,
        [
            row("sa-1", "1.0001", method="usage_ratio", detail="usage_ratio_allocation"),
            row("sa-1", "2", ts=T1 + timedelta(hours=1), method="even_split", detail="no_metrics_located"),
            row("sa-1", "0.5", product_type="KAFKA_BASE", method=None, detail=None),
        ],
        "c1",
    )
    db.chargebacks.replace_date(D2, [row("sa-1", "4", ts=T2, method=None, detail="x")], "c2")
    db.chargebacks.replace_date(
        date(2026, 4, 1), [row("sa-1", "100", ts=datetime(2026, 4, 1, tzinfo=UTC))], "c3"
    )

    daily = db.chargebacks.aggregate(D1, D2 + timedelta(days=1), "day")
    assert [(r.timestamp, r.product_type, r.amount, r.allocation_method) for r in daily] == [
        (T1, "KAFKA_BASE", Decimal("0.5000"), None),
        (T1, "KAFKA_NUM_CKU", Decimal("3.0001"), "usage_ratio"),
        (T2, "KAFKA_NUM_CKU", Decimal("4.0000"), None),
    ]
    assert all(r.allocation_detail is None and r.metadata == {} for r in daily)

    monthly = db.chargebacks.aggregate(date(2026, 3, 1), date(2026, 4, 1), "month")
    assert [(r.timestamp, r.product_type, r.amount, r.allocation_method) for r in monthly] == [
        (T1, "KAFKA_BASE", Decimal("0.5000"), None),
        (T1, "KAFKA_NUM_CKU", Decimal("7.0001"), "usage_ratio"),
    ]
    with pytest.raises(ValueError, match="bucket"):
        db.chargebacks.aggregate(D1, D2, "week")  # type: ignore[arg-type]


def test_extra_dimensions_are_stored_keyed_and_aggregated(tmp_path: Path) -> None:
    with open_tenant_db(
        tmp_path / "cc.duckdb", ecosystem=ECO, tenant_id=TENANT, storage_module=EnvStorageModule()
    ) as db:
        rows = [
            row("sa-1", "1", dimensions={"env_id": "env-b"}),
            row("sa-1", "2", dimensions={"env_id": "env-a"}),
            row("sa-1", "3", ts=T1 + timedelta(hours=2), dimensions={"env_id": "env-a"}),
        ]
        db.chargebacks.replace_date(D1, rows, "c")
        stored = db.chargebacks.find_by_date(D1)
        assert [(r.dimensions, r.amount) for r in stored] == [
            ({"env_id": "env-a"}, Decimal("2.0000")),
            ({"env_id": "env-b"}, Decimal("1.0000")),
            ({"env_id": "env-a"}, Decimal("3.0000")),
        ]
        daily = db.chargebacks.aggregate(D1, D2, "day")
        assert [(r.dimensions, r.amount) for r in daily] == [
            ({"env_id": "env-a"}, Decimal("5.0000")),
            ({"env_id": "env-b"}, Decimal("1.0000")),
        ]
        keys = [(t.key[2].hour, t.key[-1], t.billed, t.allocated) for t in db.chargebacks.line_totals(D1)]
        assert keys == [
            (0, "env-a", None, Decimal("2.0000")),
            (0, "env-b", None, Decimal("1.0000")),
            (2, "env-a", None, Decimal("3.0000")),
        ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1).map(lambda u: Decimal(u).scaleb(-4)),
        min_size=1,
        max_size=20,
    )
)
def test_amounts_round_trip_exactly(db: TenantDatabase, amounts: list[Decimal]) -> None:
    rows = [row(f"id-{i:02d}", str(a)) for i, a in enumerate(amounts)]
    db.chargebacks.replace_date(D1, rows, "c")
    stored = db.chargebacks.find_by_date(D1)
    assert [r.amount for r in stored] == amounts
    assert all(r.amount.as_tuple().exponent == -4 for r in stored)
    assert db.chargebacks.date_totals(D1).allocated == sum(amounts, Decimal(0))


def test_large_date_is_replaced_exactly(db: TenantDatabase) -> None:
    """A date of 100k rows replaced twice holds exactly the second set (timings: benchmarks/)."""
    n = 100_000
    identities = [f"sa-{i:03d}" for i in range(200)]
    rows = [
        ChargebackRow(
            ecosystem=ECO,
            tenant_id=TENANT,
            timestamp=T1,
            resource_id=f"lkc-{i // 200}",
            product_category="KAFKA",
            product_type="KAFKA_NUM_CKU",
            identity_id=identities[i % 200],
            cost_type=CostType.USAGE,
            amount=Decimal(i % 1_000_003 - 50_000).scaleb(-4),
            allocation_method="usage_ratio",
            allocation_detail="usage_ratio_allocation",
        )
        for i in range(n)
    ]
    expected_total = sum((r.amount for r in rows), Decimal(0))
    db.chargebacks.replace_date(D1, rows, "first")
    db.chargebacks.replace_date(D1, rows, "second")
    read = db.chargebacks.find_by_date(D1)
    assert len(read) == n
    assert db.chargebacks.date_totals(D1).allocated == expected_total
    assert read[0].identity_id == "sa-000" and read[0].resource_id == "lkc-0"
