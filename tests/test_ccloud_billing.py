"""Billing API ingestion (spec/confluent-cloud.md §4) over a real stand-in server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from chargeback_pipeline.storage import normalise_lines
from chargeback_plugins.confluent_cloud.billing import CCloudCostInput, row_hash
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation
from chargeback_plugins.confluent_cloud.standin import StandInServer
from chargeback_plugins.confluent_cloud.storage import CCloudBillingLine, CCloudStorageModule
from tests.ccloud_support import (
    API_KEY,
    API_SECRET,
    DAYS,
    SAMPLE_ORG,
    TENANT,
    actual_billing,
    differences,
    expected_billing,
)

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
MARCH_8 = datetime(2026, 3, 8, tzinfo=UTC)
EXTRA = CCloudStorageModule.extra_key_fields


def serve(rows: list[Any], **kwargs: Any) -> StandInServer:
    return StandInServer(RecordedOrganisation({}, rows, **kwargs), credentials=(API_KEY, API_SECRET)).start()


def gather(
    server: StandInServer, start: datetime, end: datetime, days_per_query: int = 15
) -> list[CCloudBillingLine]:
    with CCloudClient(server.url, API_KEY, API_SECRET, request_interval_seconds=0) as client:
        return list(CCloudCostInput(client, days_per_query).gather(TENANT, start, end, store=None))  # type: ignore[arg-type]


def stored(lines: list[CCloudBillingLine]) -> list[Any]:
    """What the core stores: merged per natural key and quantised once (domain-model.md §1)."""
    factory = CCloudStorageModule().make_billing_line
    by_day: dict[date, list[CCloudBillingLine]] = {}
    for line in lines:
        by_day.setdefault(line.timestamp.date(), []).append(line)
    return [x for d, group in sorted(by_day.items()) for x in normalise_lines(d, group, EXTRA, factory)]


def row(day: str = "2026-03-02", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "start_date": day,
        "end_date": day,
        "product": "KAFKA",
        "line_type": "KAFKA_STORAGE",
        "quantity": 1.0,
        "price": 2.0,
        "amount": 2.0,
        "resource": {"id": "lkc-1", "display_name": "one", "environment": {"id": "env-1"}},
    }
    base.update(fields)
    return base


@pytest.fixture(scope="module")
def sample() -> RecordedOrganisation:
    return RecordedOrganisation.from_dir(SAMPLE_ORG)


@pytest.fixture
def sample_server(sample: RecordedOrganisation) -> Iterator[StandInServer]:
    server = serve(sample.billing_rows)
    yield server
    server.stop()


# --- the sample organisation -----------------------------------------------------------------


def test_sample_week_matches_the_expected_billing_lines(sample_server: StandInServer) -> None:
    lines = stored(gather(sample_server, MARCH_1, MARCH_8))
    assert differences(expected_billing(DAYS), actual_billing(lines)) == []
    assert len(lines) == 278
    total = sum((x.total_cost for x in lines), Decimal(0))
    assert total == Decimal("1609.3295")  # the expected file's sum (each line quantised on its own)


def test_chunks_follow_days_per_query(sample_server: StandInServer) -> None:
    lines = gather(sample_server, MARCH_1, MARCH_8, days_per_query=3)
    windows = [(r.params["start_date"], r.params["end_date"]) for r in sample_server.requests]
    assert windows == [
        ("2026-03-01", "2026-03-04"),
        ("2026-03-04", "2026-03-07"),
        ("2026-03-07", "2026-03-08"),
    ]
    assert all(r.params["page_size"] == "2000" for r in sample_server.requests)
    assert actual_billing(stored(lines)) == expected_billing(DAYS)


def test_a_page_boundary_inside_a_day_changes_nothing(sample: RecordedOrganisation) -> None:
    # At most 7 rows per page: 279 rows over 40 pages, so every day is cut by page boundaries.
    server = serve(sample.billing_rows, max_page_size=7)
    try:
        lines = stored(gather(server, MARCH_1, MARCH_8))
    finally:
        server.stop()
    assert len(server.requests) == 40
    assert actual_billing(lines) == expected_billing(DAYS)


def test_tiers_split_across_pages_are_still_merged() -> None:
    tiers = [
        row(line_type="KAFKA_NETWORK_READ", quantity=240, price=0.023, amount=5.52, original_amount=5.52),
        row(line_type="KAFKA_NETWORK_READ", quantity=72, price=0.0345, amount=2.484, original_amount=2.484),
    ]
    server = serve(tiers, max_page_size=1)
    try:
        lines = gather(server, datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC))
    finally:
        server.stop()
    assert len(server.requests) == 2
    (line,) = lines
    assert (line.quantity, line.unit_price, line.total_cost) == (Decimal(312), Decimal(0), Decimal("8.004"))
    assert line.metadata["tiers"] == [
        {"price": "0.023", "quantity": "240", "cost": "5.52"},
        {"price": "0.0345", "quantity": "72", "cost": "2.484"},
    ]
    assert line.metadata["original_amount"] == Decimal("8.004")
    assert line.metadata["resource_name"] == "one"
    (kept,) = stored(lines)
    assert kept.total_cost == Decimal("8.0040")


def test_tier_sum_is_quantised_once_after_merging() -> None:
    rows = [row(amount=0.01005), row(amount=0.227128), row(amount=0.12345)]
    server = serve(rows)
    try:
        (line,) = stored(gather(server, datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC)))
    finally:
        server.stop()
    assert line.total_cost == Decimal("0.3606")  # not 0.0101 + 0.2271 + 0.1235 = 0.3607
    assert line.metadata["raw_total_cost"] == "0.360628"


def test_org_level_rows_get_a_content_hash_resource_id(sample_server: StandInServer) -> None:
    lines = gather(sample_server, MARCH_1, MARCH_1 + timedelta(days=1))
    support = [x for x in lines if x.product_type == "SUPPORT"]
    assert [x.resource_id for x in support] == ["unresolved_billing_ddabff37a13f"]  # spec README example
    assert support[0].env_id == ""
    # The same row in a different chunking gets the same id.
    again = gather(sample_server, MARCH_1 - timedelta(days=3), MARCH_8, days_per_query=2)
    assert "unresolved_billing_ddabff37a13f" in {x.resource_id for x in again}


# --- malformed and odd rows --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason", "timestamp", "category", "ptype", "env"),
    [
        ({"start_date": None}, "start_date is NoneType", "2026-03-01", "KAFKA", "KAFKA_STORAGE", "env-1"),
        ({"start_date": "2026-3-2"}, "not YYYY-MM-DD", "2026-03-01", "KAFKA", "KAFKA_STORAGE", "env-1"),
        ({"start_date": "2026-02-30"}, "not a valid date", "2026-03-01", "KAFKA", "KAFKA_STORAGE", "env-1"),
        ({"resource": "lkc-1"}, "resource is a str", "2026-03-02", "KAFKA", "KAFKA_STORAGE", ""),
        (
            {"resource": {"id": "lkc-1", "environment": ["env-1"]}},
            "resource.environment",
            "2026-03-02",
            "KAFKA",
            "KAFKA_STORAGE",
            "",
        ),
        (
            {"resource": 5, "product": None, "line_type": None},
            "resource is a int",
            "2026-03-02",
            "MALFORMED",
            "MALFORMED",
            "",
        ),
        ({"line_type": 17}, "line_type is int", "2026-03-02", "KAFKA", "17", "env-1"),
    ],
)
def test_malformed_rows_are_kept_as_sentinel_lines(
    bad: dict[str, Any],
    reason: str,
    timestamp: str,
    category: str,
    ptype: str,
    env: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = row(**bad)
    server = serve([raw])
    try:
        (line,) = gather(server, MARCH_1, datetime(2026, 3, 3, tzinfo=UTC))
    finally:
        server.stop()
    assert line.resource_id == f"malformed_billing_{row_hash(raw)}"
    assert line.timestamp.date().isoformat() == timestamp
    assert (line.product_category, line.product_type, line.env_id) == (category, ptype, env)
    assert line.total_cost == Decimal("2.0")
    assert line.metadata["malformed"] is True
    assert reason in line.metadata["parse_error"]
    assert "malformed" in caplog.text


def test_amounts_null_unparsable_and_negative(caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        row(resource={"id": "lkc-a"}, quantity=None, price="x", amount=-3.25),
        row(resource={"id": "lkc-b"}, quantity="12.50", price=True, amount="NaN"),
    ]
    server = serve(rows)
    with caplog.at_level(logging.WARNING):
        try:
            a, b = gather(server, MARCH_1, MARCH_8)
        finally:
            server.stop()
    assert (a.quantity, a.unit_price, a.total_cost) == (Decimal(0), Decimal(0), Decimal("-3.25"))
    assert (b.quantity, b.unit_price, b.total_cost) == (Decimal("12.50"), Decimal(0), Decimal(0))
    assert caplog.text.count("is not a number; using 0") == 3
    assert a.env_id == "" and a.metadata == {}


def test_window_must_be_aware_and_non_empty(sample_server: StandInServer) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        gather(sample_server, datetime(2026, 3, 1), MARCH_8)
    assert gather(sample_server, MARCH_8, MARCH_1) == []
    assert gather(sample_server, MARCH_1 + timedelta(hours=5), MARCH_1 + timedelta(hours=20)) == []
    assert sample_server.requests == []


def test_a_non_midnight_window_is_floored_to_utc_days(sample_server: StandInServer) -> None:
    start = datetime(2026, 3, 2, 1, 0, tzinfo=UTC).astimezone()  # any zone, converted to UTC
    gather(sample_server, start, datetime(2026, 3, 3, 23, 0, tzinfo=UTC))
    assert [(r.params["start_date"], r.params["end_date"]) for r in sample_server.requests] == [
        ("2026-03-02", "2026-03-03")
    ]
