"""Bad billing rows through Dagster (issue #7): the stand-in Confluent Cloud API serves the
sample organisation plus hostile cost rows, and one tenant-day is materialised.

Each bad row gets the handling of spec/confluent-cloud.md §4.2–§4.4 (or a clear error),
and whatever is stored still reconciles: every billing line's chargeback rows sum to its
``total_cost`` and the blocking reconciliation check passes.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.partitions import partition_key
from chargeback_pipeline.loader import clear_discovery_cache
from chargeback_pipeline.models import BillingLineItem, ChargebackRow
from chargeback_pipeline.storage import normalise_lines, open_tenant_db
from chargeback_plugins.confluent_cloud.billing import ECOSYSTEM, CCloudCostInput, row_hash
from chargeback_plugins.confluent_cloud.client import CCloudClient, without_lone_surrogates
from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation
from chargeback_plugins.confluent_cloud.standin import StandInServer
from chargeback_plugins.confluent_cloud.storage import CCloudStorageModule
from tests.ccloud_support import CREDENTIALS, FROZEN_NOW, SAMPLE_ORG, TENANT, credentials_env, tenant_yaml

DAY = date(2026, 3, 5)
SAMPLE = RecordedOrganisation.from_dir(SAMPLE_ORG)


def bad_row(resource_id: str, day: str = DAY.isoformat(), **fields: Any) -> dict[str, Any]:
    """A Kafka storage cost row on a cluster the inventory does not know."""
    row: dict[str, Any] = {
        "start_date": day,
        "end_date": day,
        "product": "KAFKA",
        "line_type": "KAFKA_STORAGE",
        "quantity": 1,
        "price": 2.5,
        "amount": 2.5,
        "resource": {"id": resource_id, "display_name": resource_id, "environment": {"id": "env-bad"}},
    }
    row.update(fields)
    return row


MISSING_AMOUNT = {k: v for k, v in bad_row("lkc-missing-amount").items() if k != "amount"}
DUPLICATE = bad_row("lkc-duplicate", id="c-dup-1", amount="1.25")
BAD_ROWS: list[Any] = [
    MISSING_AMOUNT,
    bad_row("lkc-nan-text", amount="NaN"),
    bad_row("lkc-nan-json", amount=float("nan")),  # the stand-in sends the bare JSON token NaN
    bad_row("lkc-infinity", amount="Infinity"),
    bad_row("lkc-minus-infinity", amount=float("-inf")),
    bad_row("lkc-amount-object", amount={"value": 3}),
    bad_row("lkc-credit", amount="-12.5", line_type="PROMO_CREDIT", product="CREDIT"),
    bad_row("lkc-huge", amount="123456789012345.678951"),
    bad_row("lkc-tiny", amount="0.00004999"),
    bad_row("lkc-euro", amount="7.5", currency="EUR"),
    DUPLICATE,
    dict(DUPLICATE),
    bad_row('=HYPERLINK("http://evil.example","x")', line_type="KAFKA_NETWORK_READ"),
    bad_row('\x1b[31m<script>alert(1)</script>,\n"x"', line_type="KAFKA_NETWORK_WRITE"),
    bad_row("lkc-\ud800-lone-surrogate", line_type="KAFKA_PARTITION"),
    bad_row("lkc-nul\x00byte", line_type="KAFKA_PARTITION"),
    bad_row("lkc-bad-date", day="2026-03-05T00:00:00Z"),
]
PAYLOAD_IDS = ['=HYPERLINK("http://evil.example","x")', '\x1b[31m<script>alert(1)</script>,\n"x"']


@dataclass
class Outcome:
    result: dg.ExecuteInProcessResult
    lines: dict[str, BillingLineItem]
    rows: list[ChargebackRow]
    log_text: str
    config: Path

    def line(self, resource_id: str) -> BillingLineItem:
        return self.lines[resource_id]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def materialise(workdir: Path, organisation: RecordedOrganisation, day: date = DAY) -> Outcome:
    """One partition of a Confluent Cloud tenant against ``organisation`` on the stand-in."""
    monkeypatch = pytest.MonkeyPatch()
    for name, value in {**credentials_env(), "CHARGEBACK_NOW": FROZEN_NOW}.items():
        monkeypatch.setenv(name, value)
    for name in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    clear_discovery_cache()
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        with (
            StandInServer(organisation, credentials=CREDENTIALS) as server,
            dg.instance_for_test() as instance,
        ):
            config = workdir / "config.yaml"
            config.write_text(tenant_yaml(server.url), encoding="utf-8")
            job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
            result = job.execute_in_process(
                partition_key=partition_key(TENANT, day), instance=instance, raise_on_error=False
            )
    finally:
        logging.getLogger().removeHandler(records)
        monkeypatch.undo()
        clear_discovery_cache()
    lines: dict[str, BillingLineItem] = {}
    rows: list[ChargebackRow] = []
    store = workdir / "data" / f"{TENANT}.duckdb"
    if store.exists():
        with open_tenant_db(
            store, ecosystem=ECOSYSTEM, tenant_id=TENANT, storage_module=CCloudStorageModule()
        ) as db:
            lines = {x.resource_id: x for x in db.billing.find_by_date(day)}
            rows = list(db.chargebacks.find_by_date(day))
            assert [t for t in db.chargebacks.line_totals(day) if not t.balanced] == []
            totals = db.chargebacks.date_totals(day)
            assert totals.billed == totals.allocated
    return Outcome(result, lines, rows, "\n".join(records.lines), config)


def allocated(outcome: Outcome, resource_id: str) -> Decimal:
    return sum((r.amount for r in outcome.rows if r.resource_id == resource_id), Decimal(0))


def check_passed(result: dg.ExecuteInProcessResult, name: str) -> bool:
    evaluations = [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.asset_check_evaluation_data.check_name == name
    ]
    assert evaluations, f"check {name} did not run"
    return all(x.passed for x in evaluations)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    organisation = RecordedOrganisation(SAMPLE.responses, SAMPLE.billing_rows + BAD_ROWS)
    return materialise(tmp_path_factory.mktemp("bad-billing"), organisation)


def test_the_partition_with_hostile_rows_succeeds_and_reconciles(hostile: Outcome) -> None:
    assert hostile.result.success
    assert check_passed(hostile.result, "chargebacks_reconcile_with_billing")
    for raw in BAD_ROWS:
        malformed = raw is BAD_ROWS[-1]
        resource_id = f"malformed_billing_{row_hash(raw)}" if malformed else raw["resource"]["id"]
        resource_id = without_lone_surrogates(resource_id)  # as the client delivers it
        assert allocated(hostile, resource_id) == hostile.line(resource_id).total_cost, resource_id


@pytest.mark.outcome("billing-missing-amount")
def test_a_row_without_amount_is_billed_as_zero(hostile: Outcome) -> None:
    line = hostile.line("lkc-missing-amount")
    assert line.total_cost == Decimal("0.0000")
    assert allocated(hostile, "lkc-missing-amount") == 0


@pytest.mark.outcome("billing-nan-amount")
@pytest.mark.parametrize(
    ("resource_id", "shown"),
    [
        ("lkc-nan-text", "'NaN'"),
        ("lkc-nan-json", "nan"),
        ("lkc-infinity", "'Infinity'"),
        ("lkc-minus-infinity", "-inf"),
        ("lkc-amount-object", "{'value': 3}"),
    ],
)
def test_non_finite_or_non_numeric_amounts_become_zero_with_a_warning(
    hostile: Outcome, resource_id: str, shown: str
) -> None:
    line = hostile.line(resource_id)
    assert line.total_cost == Decimal("0.0000")
    assert line.total_cost.is_finite()
    digest = row_hash(next(r for r in BAD_ROWS if r["resource"]["id"] == resource_id))
    assert f"billing row {digest}: amount {shown} is not a number; using 0" in hostile.log_text


@pytest.mark.outcome("billing-negative-amount")
def test_a_credit_is_kept_negative_and_allocated_as_such(hostile: Outcome) -> None:
    line = hostile.line("lkc-credit")
    assert (line.product_type, line.total_cost) == ("PROMO_CREDIT", Decimal("-12.5000"))
    credit_rows = [r for r in hostile.rows if r.resource_id == "lkc-credit"]
    assert [(r.identity_id, r.amount) for r in credit_rows] == [("UNALLOCATED", Decimal("-12.5000"))]


@pytest.mark.outcome("billing-huge-amount")
def test_a_huge_amount_with_many_decimals_is_rounded_once_half_up(hostile: Outcome) -> None:
    huge = hostile.line("lkc-huge")
    assert huge.total_cost == Decimal("123456789012345.6790")
    assert huge.metadata["raw_total_cost"] == "123456789012345.678951"
    assert allocated(hostile, "lkc-huge") == Decimal("123456789012345.6790")
    tiny = hostile.line("lkc-tiny")
    assert tiny.total_cost == Decimal("0.0000") and tiny.metadata["raw_total_cost"] == "0.00004999"


@pytest.mark.outcome("billing-wrong-currency")
def test_a_row_in_another_currency_is_stored_as_usd_with_a_warning(hostile: Outcome) -> None:
    line = hostile.line("lkc-euro")
    assert (line.currency, line.total_cost) == ("USD", Decimal("7.5000"))
    digest = row_hash(next(r for r in BAD_ROWS if r["resource"]["id"] == "lkc-euro"))
    assert f"billing row {digest}: currency 'EUR' is not USD; amounts are taken as USD" in hostile.log_text


@pytest.mark.outcome("billing-duplicate-id")
def test_duplicate_rows_are_merged_into_one_line_with_tiers(hostile: Outcome) -> None:
    line = hostile.line("lkc-duplicate")
    assert line.total_cost == Decimal("2.5000")
    assert [t["cost"] for t in line.metadata["tiers"]] == ["1.25", "1.25"]
    assert allocated(hostile, "lkc-duplicate") == Decimal("2.5000")


@pytest.mark.outcome("billing-date-outside-window")
def test_a_row_with_an_unparsable_date_is_kept_as_malformed_at_the_chunk_start(hostile: Outcome) -> None:
    raw = BAD_ROWS[-1]
    line = hostile.line(f"malformed_billing_{row_hash(raw)}")
    assert line.timestamp == datetime(2026, 3, 5, tzinfo=UTC)
    assert line.metadata["malformed"] is True and "not YYYY-MM-DD" in line.metadata["parse_error"]
    assert (line.product_type, line.total_cost) == ("KAFKA_STORAGE", Decimal("2.5000"))
    assert allocated(hostile, line.resource_id) == Decimal("2.5000")  # routed to its handler (§4.3)


@pytest.mark.outcome("billing-date-outside-window")
def test_rows_dated_outside_the_requested_range_are_discarded_with_a_warning(tmp_path: Path) -> None:
    """A vendor that ignores the requested window: other days' rows must not land on this day."""
    rows = [r for r in SAMPLE.billing_rows if r["start_date"] == DAY.isoformat()]
    strays = [bad_row("lkc-stray-past", day="2019-01-01"), bad_row("lkc-stray-future", day="2030-12-31")]
    organisation = RecordedOrganisation(SAMPLE.responses, rows + strays, ignore_billing_window=True)
    outcome = materialise(tmp_path, organisation)
    assert outcome.result.success
    assert "lkc-stray-past" not in outcome.lines and "lkc-stray-future" not in outcome.lines
    assert {x.timestamp.date() for x in outcome.lines.values()} == {DAY}
    assert (
        f"tenant '{TENANT}': discarded 2 billing line(s) dated outside the requested range"
        in outcome.log_text
    )


@pytest.mark.outcome("billing-huge-amount")
def test_an_amount_too_large_for_four_decimals_fails_the_day_naming_the_line(tmp_path: Path) -> None:
    """Beyond 24 integer digits a 28-digit Decimal cannot hold the amount to 4 dp: refused, named."""
    rows = [r for r in SAMPLE.billing_rows if r["start_date"] == DAY.isoformat()]
    organisation = RecordedOrganisation(SAMPLE.responses, [*rows, bad_row("lkc-absurd", amount="1e25")])
    outcome = materialise(tmp_path, organisation)
    assert not outcome.result.success
    failures = []
    for event in outcome.result.all_events:
        error = event.step_failure_data.error if event.is_step_failure and event.step_failure_data else None
        while error is not None:
            failures.append(error.message)
            error = error.cause
    message = json.dumps(failures)
    assert "lkc-absurd" in message, message
    assert "total_cost 10000000000000000000000000 is too large to store with four decimals" in message, (
        message
    )
    assert outcome.lines == {}  # nothing stored for the day


@pytest.mark.outcome("identity-csv-injection")
def test_hostile_resource_ids_from_the_vendor_read_back_from_csv_neutralised(hostile: Outcome) -> None:
    path = hostile.config.parent / "out" / f"{TENANT}_{DAY.isoformat()}.csv"
    with path.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    ids = {r["resource_id"] for r in rows}
    assert "'" + PAYLOAD_IDS[0] in ids and PAYLOAD_IDS[0] not in ids
    assert PAYLOAD_IDS[1] in ids  # no formula trigger: kept exactly, quoting makes it one cell
    for payload in PAYLOAD_IDS:
        assert allocated(hostile, payload) == hostile.line(payload).total_cost
    assert sum(Decimal(r["amount"]) for r in rows) == sum(r.amount for r in hostile.rows)


# --- generated rows through the stand-in ------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["NaN", "-Infinity", "1e400", "-0", "0.00005", "12.34567", "", "abc", "1,5", "\uff12"]),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=4,
)
DAYS_IN_CHUNK = ["2026-03-04", "2026-03-05", "2026-03-06"]


@st.composite
def cost_rows(draw: st.DrawFn) -> Any:
    """A plausible cost row with any field replaced, deleted or mistyped; sometimes not a row."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUES)
    row = bad_row(draw(st.sampled_from(["lkc-a", "lkc-b", ""])), day=draw(st.sampled_from(DAYS_IN_CHUNK)))
    for name in draw(st.lists(st.sampled_from([*row, "currency", "id", "original_amount"]), max_size=3)):
        if draw(st.booleans()):
            row.pop(name, None)
        else:
            row[name] = draw(JSON_VALUES)
    return row


@pytest.fixture(scope="module")
def standin() -> Iterator[tuple[StandInServer, RecordedOrganisation]]:
    organisation = RecordedOrganisation({}, [])
    with StandInServer(organisation, credentials=CREDENTIALS) as server:
        yield server, organisation


def gather_and_store(server: StandInServer, organisation: RecordedOrganisation, rows: list[Any]) -> None:
    """The billing path of one chunk, then what the core stores per date (quantised, merged)."""
    organisation.billing_rows = rows
    with CCloudClient(server.url, CREDENTIALS[0][0], CREDENTIALS[0][1], request_interval_seconds=0) as client:
        start, end = datetime(2026, 3, 4, tzinfo=UTC), datetime(2026, 3, 7, tzinfo=UTC)
        cost_input = CCloudCostInput(client, 15)
        lines = list(cost_input.gather(TENANT, start, end, store=None))  # type: ignore[arg-type]
    assert len(lines) <= len(rows)
    by_day: dict[date, list[BillingLineItem]] = {}
    for line in lines:
        assert all(x.is_finite() for x in (line.quantity, line.unit_price, line.total_cost)), line
        assert line.currency == "USD"
        by_day.setdefault(line.timestamp.date(), []).append(line)
    assert set(by_day) <= {date.fromisoformat(d) for d in DAYS_IN_CHUNK}
    raw_total = sum((x.total_cost for x in lines), Decimal(0))
    module = CCloudStorageModule()
    stored: list[BillingLineItem] = []
    for d, group in by_day.items():
        try:
            stored.extend(normalise_lines(d, group, module.extra_key_fields, module.make_billing_line))
        except ValueError as exc:  # the documented refusal of an amount beyond 4-dp money
            assert "is too large to store with four decimals" in str(exc), exc
            assert sum((abs(x.total_cost) for x in group), Decimal(0)) >= Decimal(10) ** 24
            return
    assert all(x.total_cost == x.total_cost.quantize(Decimal("0.0001")) for x in stored)
    # Rounding happens once per stored line, so the stored total is within half a quantum per line.
    assert abs(sum((x.total_cost for x in stored), Decimal(0)) - raw_total) <= Decimal("0.00005") * len(
        stored
    )


@pytest.mark.outcome("billing-nan-amount")
@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(cost_rows(), max_size=6))
def test_any_cost_rows_map_to_finite_usd_lines_that_store(
    standin: tuple[StandInServer, RecordedOrganisation], rows: list[Any]
) -> None:
    gather_and_store(*standin, rows)


@pytest.mark.slow
@pytest.mark.outcome("billing-nan-amount")
@settings(max_examples=1500, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(cost_rows(), max_size=12))
def test_any_cost_rows_map_and_store_at_scale(
    standin: tuple[StandInServer, RecordedOrganisation], rows: list[Any]
) -> None:
    gather_and_store(*standin, rows)


@pytest.mark.outcome("vendor-broken-unicode")
def test_a_lone_surrogate_or_nul_in_a_vendor_id_is_stored_and_emitted(hostile: Outcome) -> None:
    """JSON can escape half a surrogate pair; no UTF-8 sink takes it, so it becomes U+FFFD."""
    assert "lkc-\ufffd-lone-surrogate" in hostile.lines and "lkc-\ud800-lone-surrogate" not in hostile.lines
    assert hostile.line("lkc-\ufffd-lone-surrogate").total_cost == Decimal("2.5000")
    assert hostile.line("lkc-nul\x00byte").total_cost == Decimal("2.5000")
    path = hostile.config.parent / "out" / f"{TENANT}_{DAY.isoformat()}.csv"
    with path.open(encoding="utf-8", newline="") as stream:
        ids = {r["resource_id"] for r in csv.DictReader(stream)}
    assert {"lkc-\ufffd-lone-surrogate", "lkc-nul\x00byte"} <= ids
