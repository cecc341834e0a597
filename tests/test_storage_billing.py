from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chargeback_pipeline.storage import TenantDatabase, billing, open_tenant_db
from tests.test_storage_support import D1, ECO, T1, TENANT, EnvLine, EnvStorageModule, env_line, line


@pytest.fixture
def db(tmp_path: Path) -> Iterator[TenantDatabase]:
    with open_tenant_db(tmp_path / "acme.duckdb", ecosystem=ECO, tenant_id=TENANT) as opened:
        yield opened


def test_merge_sums_raw_amounts_then_quantises_once(db: TenantDatabase) -> None:
    result = db.billing.replace_date(
        D1, [line("0.01005", quantity="1"), line("0.227128", quantity="2.5"), line("0.12345", quantity="0.5")]
    )
    assert result.stored == 1
    [stored] = db.billing.find_by_date(D1)
    assert stored.total_cost == Decimal("0.3606")
    assert str(stored.total_cost) == "0.3606"
    assert stored.quantity == Decimal("4.0")
    assert stored.unit_price == Decimal("0.5")
    assert stored.metadata == {"merged_lines": 3, "raw_total_cost": "0.360628"}


def test_merge_with_different_unit_prices_sets_price_zero_and_keeps_first_metadata(
    db: TenantDatabase,
) -> None:
    db.billing.replace_date(
        D1,
        [
            line("5.520", quantity="240", unit_price="0.023", metadata={"tier": "a"}),
            line("2.4840", quantity="72", unit_price="0.0345", metadata={"tier": "b"}),
        ],
    )
    [stored] = db.billing.find_by_date(D1)
    assert stored.total_cost == Decimal("8.0040")
    assert stored.quantity == Decimal("312")
    assert stored.unit_price == Decimal(0)
    # Q4 does not change 8.004, so no raw_total_cost is recorded.
    assert stored.metadata == {"tier": "a", "merged_lines": 2}


def test_single_line_quantised_keeps_raw_total_and_exact_strings(db: TenantDatabase) -> None:
    db.billing.replace_date(
        D1, [line("0.2440000000000000074505805969", quantity="0.000001", unit_price="1E-7")]
    )
    [stored] = db.billing.find_by_date(D1)
    assert stored.total_cost == Decimal("0.2440")
    assert stored.metadata == {"raw_total_cost": "0.2440000000000000074505805969"}
    assert str(stored.quantity) == "0.000001"
    assert str(stored.unit_price) == "1E-7"


def test_negative_credit_rounds_half_away_from_zero(db: TenantDatabase) -> None:
    db.billing.replace_date(D1, [line("-1.00005")])
    assert db.billing.find_by_date(D1)[0].total_cost == Decimal("-1.0001")


def test_timestamp_normalised_to_utc_whole_seconds(db: TenantDatabase) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 3, 1, 2, 0, 5, 999_999, tzinfo=plus_two)  # = 00:00:05.999999 UTC
    db.billing.replace_date(D1, [line("1", ts=local)])
    [stored] = db.billing.find_by_date(D1)
    assert stored.timestamp == datetime(2026, 3, 1, 0, 0, 5, tzinfo=UTC)
    assert stored.timestamp.tzinfo is UTC


def test_lines_differing_below_a_second_are_merged(db: TenantDatabase) -> None:
    db.billing.replace_date(D1, [line("1", ts=T1), line("2", ts=T1 + timedelta(microseconds=10))])
    [stored] = db.billing.find_by_date(D1)
    assert stored.total_cost == Decimal("3.0000")
    assert stored.metadata == {"merged_lines": 2}


def test_naive_timestamp_is_refused(db: TenantDatabase) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        db.billing.replace_date(D1, [line("1", ts=datetime(2026, 3, 1))])


def test_line_of_another_date_is_refused_and_nothing_written(db: TenantDatabase) -> None:
    db.billing.replace_date(D1, [line("1")])
    with pytest.raises(ValueError, match=r"lkc-9.*dated 2026-03-02, not the stored date 2026-03-01"):
        db.billing.replace_date(D1, [line("5"), line("1", resource_id="lkc-9", ts=T1 + timedelta(days=1))])
    assert [x.total_cost for x in db.billing.find_by_date(D1)] == [Decimal("1.0000")]


def test_float_money_is_refused(db: TenantDatabase) -> None:
    bad = line("1")
    object.__setattr__(bad, "total_cost", 0.1)
    with pytest.raises(TypeError, match=r"total_cost must be a Decimal, got float"):
        db.billing.replace_date(D1, [bad])


def test_replace_is_exact_and_reports_withdrawn_and_revised(db: TenantDatabase) -> None:
    first = db.billing.replace_date(D1, [line("1", resource_id="a"), line("2", resource_id="b")])
    assert (first.withdrawn, first.revised) == ([], [])
    again = db.billing.replace_date(D1, [line("1", resource_id="a"), line("2.5", resource_id="c")])
    assert [k[3] for k in again.withdrawn] == ["b"]
    assert again.revised == []
    third = db.billing.replace_date(D1, [line("1.25", resource_id="a"), line("2.5", resource_id="c")])
    [revision] = third.revised
    assert revision.key == (ECO, TENANT, T1, "a", "KAFKA_NUM_CKU", "KAFKA")
    assert (revision.old_total, revision.new_total) == (Decimal("1.0000"), Decimal("1.2500"))
    assert str(revision) == "eco/acme/2026-03-01T00:00:00+00:00/a/KAFKA_NUM_CKU/KAFKA: 1.0000 -> 1.2500"
    assert [(x.resource_id, x.total_cost) for x in db.billing.find_by_date(D1)] == [
        ("a", Decimal("1.2500")),
        ("c", Decimal("2.5000")),
    ]


def test_re_replace_with_same_lines_is_identical(db: TenantDatabase) -> None:
    lines = [line("1", resource_id="b"), line("2", resource_id="a", metadata={"x": [1, 2]})]
    db.billing.replace_date(D1, lines)
    before = db.billing.find_by_date(D1)
    fingerprint = db.billing.fingerprint(D1)
    db.billing.replace_date(D1, lines)
    assert db.billing.find_by_date(D1) == before
    assert db.billing.count(D1) == 2
    assert db.billing.fingerprint(D1) == fingerprint


def test_failure_mid_replace_keeps_previous_lines(
    db: TenantDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.billing.replace_date(D1, [line("1", resource_id="a"), line("2", resource_id="b")])
    before = db.billing.find_by_date(D1)
    original = billing.insert_frame

    def insert_then_fail(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(billing, "insert_frame", insert_then_fail)
    with pytest.raises(OSError, match="disk full"):
        db.billing.replace_date(D1, [line("9", resource_id="c")])
    assert db.billing.find_by_date(D1) == before


def test_empty_replace_keeps_stored_lines(db: TenantDatabase) -> None:
    db.billing.replace_date(D1, [line("1"), line("2", resource_id="x")])
    result = db.billing.replace_date(D1, [])
    assert (result.stored, result.kept_existing) == (0, 2)
    assert db.billing.count(D1) == 2


def test_find_by_date_orders_by_natural_key(db: TenantDatabase) -> None:
    db.billing.replace_date(
        D1,
        [
            line("1", resource_id="b", ts=T1 + timedelta(hours=1)),
            line("1", resource_id="z", product_type="B"),
            line("1", resource_id="z", product_type="A", product_category="y"),
            line("1", resource_id="z", product_type="A", product_category="x"),
            line("1", resource_id="Z"),
        ],
    )
    keys = [
        (x.timestamp.hour, x.resource_id, x.product_type, x.product_category)
        for x in db.billing.find_by_date(D1)
    ]
    assert keys == [
        (0, "Z", "KAFKA_NUM_CKU", "KAFKA"),
        (0, "z", "A", "x"),
        (0, "z", "A", "y"),
        (0, "z", "B", "KAFKA"),
        (1, "b", "KAFKA_NUM_CKU", "KAFKA"),
    ]


def test_fingerprint_changes_with_quantity_price_total_and_key(db: TenantDatabase) -> None:
    seen = set()
    for variant in (
        line("1"),
        line("1", quantity="2"),
        line("1", unit_price="0.6"),
        line("1.0001"),
        line("1", resource_id="other"),
    ):
        db.billing.replace_date(D1, [variant])
        seen.add(db.billing.fingerprint(D1))
    assert len(seen) == 5
    # Metadata is not part of the fingerprint.
    db.billing.replace_date(D1, [line("1", resource_id="other", metadata={"a": 1})])
    assert db.billing.fingerprint(D1) in seen


def test_dates_lists_stored_dates(db: TenantDatabase) -> None:
    d2 = date(2026, 3, 5)
    db.billing.replace_date(d2, [line("1", ts=datetime(2026, 3, 5, tzinfo=UTC))])
    db.billing.replace_date(D1, [line("1")])
    assert db.billing.dates() == [D1, d2]


def test_datetime_instead_of_date_is_refused(db: TenantDatabase) -> None:
    with pytest.raises(TypeError, match=r"must be a datetime\.date"):
        db.billing.find_by_date(T1)


def test_extra_key_field_separates_lines_and_reads_back_plugin_class(tmp_path: Path) -> None:
    with open_tenant_db(
        tmp_path / "cc.duckdb", ecosystem=ECO, tenant_id=TENANT, storage_module=EnvStorageModule()
    ) as db:
        db.billing.replace_date(
            D1, [env_line("1", "env-b"), env_line("2", "env-a"), env_line("0.00005", "env-a")]
        )
        stored = db.billing.find_by_date(D1)
        assert all(isinstance(x, EnvLine) for x in stored)
        assert [(x.env_id, x.total_cost) for x in stored] == [  # type: ignore[attr-defined]
            ("env-a", Decimal("2.0001")),
            ("env-b", Decimal("1.0000")),
        ]
        assert stored[0].metadata == {"merged_lines": 2, "raw_total_cost": "2.00005"}
        assert db.line_key(stored[0])[-1] == "env-a"
