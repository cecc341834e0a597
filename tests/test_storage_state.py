from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback_pipeline.errors import StorageError
from chargeback_pipeline.models import Identity, MetricRow, Resource, billing_natural_key
from chargeback_pipeline.storage import PipelineState, TenantDatabase, UsageGroupData, open_tenant_db
from tests.test_storage_support import D1, ECO, T1, TENANT, EnvStorageModule, env_line, line, row

D2 = date(2026, 3, 2)
W_END = T1 + timedelta(days=1)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[TenantDatabase]:
    with open_tenant_db(tmp_path / "acme.duckdb", ecosystem=ECO, tenant_id=TENANT) as opened:
        yield opened


# --- pipeline_state ---------------------------------------------------------------------


def test_pipeline_state_defaults_and_updates(db: TenantDatabase) -> None:
    assert db.pipeline_state.get(D1) == PipelineState(D1)
    db.pipeline_state.mark_billing_gathered(D1, "abc")
    db.pipeline_state.mark_resources_gathered(D1)
    assert db.state.pending_calculation() == [D1]
    db.pipeline_state.mark_calculated(D1, "calc-1", datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC))
    assert db.pipeline_state.get(D1) == PipelineState(
        billing_date=D1,
        billing_gathered=True,
        resources_gathered=True,
        chargeback_calculated=True,
        calculation_id="calc-1",
        calculated_at=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
        billing_fingerprint="abc",
    )
    assert db.state.pending_calculation() == []
    assert db.state.calculated_dates() == [D1]
    db.pipeline_state.mark_billing_gathered(D1, "def")
    assert db.pipeline_state.get(D1).billing_fingerprint == "def"
    assert db.pipeline_state.get(D1).calculation_id == "calc-1"
    assert db.pipeline_state.get(D2) == PipelineState(D2)
    with pytest.raises(ValueError, match="timezone-aware"):
        db.pipeline_state.mark_calculated(D1, "x", datetime(2026, 3, 4))


# --- allocation_attempts ----------------------------------------------------------------


def test_attempts_survive_a_rolled_back_calculation_and_reset_in_commit(db: TenantDatabase) -> None:
    key = billing_natural_key(line("1"))
    other = billing_natural_key(line("1", resource_id="other"))
    assert db.attempts.current(key) == 0
    with pytest.raises(RuntimeError), db.transaction():
        db.chargebacks.replace_date(D1, [row("a", "1")], "calc-x")
        assert db.attempts.record_failure(key, "boom 1") == 1
        assert db.attempts.record_failure(key, "boom 2") == 2
        raise RuntimeError("date failed")
    assert db.chargebacks.count(D1) == 0
    assert db.attempts.current(key) == 2
    db.attempts.record_failure(other, "x")
    last_error = db.conn.execute(
        "SELECT last_error FROM allocation_attempts WHERE resource_id = 'lkc-1'"
    ).fetchone()
    assert last_error == ("boom 2",)
    assert db.attempts.for_date(D1) == {key: 2, other: 1}
    with db.transaction():
        assert db.attempts.reset([key, billing_natural_key(line("1", resource_id="never-failed"))]) == 1
    assert (db.attempts.current(key), db.attempts.current(other)) == (0, 1)


def test_attempt_keys_include_extra_key_fields(tmp_path: Path) -> None:
    with open_tenant_db(
        tmp_path / "cc.duckdb", ecosystem=ECO, tenant_id=TENANT, storage_module=EnvStorageModule()
    ) as db:
        a = db.line_key(env_line("1", "env-a"))
        b = db.line_key(env_line("1", "env-b"))
        db.attempts.record_failure(a, "x")
        assert (db.attempts.current(a), db.attempts.current(b)) == (1, 0)
        with pytest.raises(ValueError, match="must have 7 parts"):
            db.attempts.current(billing_natural_key(line("1")))


# --- emission_state ---------------------------------------------------------------------


def test_emission_state_counts_attempts(db: TenantDatabase) -> None:
    assert db.emission_state.get("csv", D1) is None
    first = db.emissions.record("csv", D1, "failed", "calc-1", 10)
    assert (first.status, first.attempt_count, first.calculation_id, first.row_count) == (
        "failed",
        1,
        "calc-1",
        10,
    )
    second = db.emissions.record("csv", D1, "emitted", "calc-2", 12)
    assert (second.status, second.attempt_count, second.calculation_id, second.row_count) == (
        "emitted",
        2,
        "calc-2",
        12,
    )
    db.emissions.record("prom", D1, "emitted", "calc-2", 12)
    assert db.emission_state.get("prom", D1).attempt_count == 1  # type: ignore[union-attr]
    assert list(db.emission_state.for_emitter("csv")) == [D1]
    assert second.updated_at.tzinfo is UTC
    with pytest.raises(ValueError, match="emission status"):
        db.emissions.record("csv", D1, "done", "c", 1)  # type: ignore[arg-type]


# --- gather_state -----------------------------------------------------------------------


def test_gather_state_values_and_counters(db: TenantDatabase) -> None:
    assert db.gather_state.get("missing") is None
    assert db.gather_state.get("missing", 7) == 7
    assert [db.gather_state.increment("failures") for _ in range(3)] == [1, 2, 3]
    record = {"started_at": "2026-03-01T00:00:00+00:00", "complete": False, "failed": ["kafka"], "n": 1.5}
    db.gather_state.set("last_gather", record)
    assert db.gather_state.get("last_gather") == record
    db.gather_state.set("failures", 0)
    assert db.gather_state.increment("failures") == 1
    with pytest.raises(StorageError, match="not an integer counter"):
        db.gather_state.increment("last_gather")
    db.gather_state.delete("failures")
    assert db.gather_state.names() == ["last_gather"]


# --- usage_metrics ----------------------------------------------------------------------


def metric(value: str, hour: int, **labels: str) -> MetricRow:
    return MetricRow(
        timestamp=T1 + timedelta(hours=hour), metric_key="bytes_in", value=Decimal(value), labels=labels
    )


def test_usage_round_trip_keeps_none_empty_failed_and_exact_values(db: TenantDatabase) -> None:
    groups = {
        ("lkc-1", T1, W_END): (
            {
                "bytes_in": [metric("0.1", 0, principal="sa-1"), metric("12345678901234567890.123456789", 1)],
                "bytes_out": [],
            },
            False,
        ),
        ("lkc-2", T1, W_END): UsageGroupData(None, True),
        ("lkc-3", T1, W_END): ({}, False),
        ("lkc-0", T1, T1 + timedelta(hours=1)): (None, False),
    }
    assert db.usage.replace_date(D1, groups) == 2
    loaded = db.usage_metrics.load_date(D1)
    assert list(loaded) == [
        ("lkc-0", T1, T1 + timedelta(hours=1)),
        ("lkc-1", T1, W_END),
        ("lkc-2", T1, W_END),
        ("lkc-3", T1, W_END),
    ]
    assert loaded[("lkc-1", T1, W_END)] == (groups[("lkc-1", T1, W_END)][0], False)
    assert str(loaded[("lkc-1", T1, W_END)].rows["bytes_in"][1].value) == "12345678901234567890.123456789"  # type: ignore[index]
    assert loaded[("lkc-2", T1, W_END)] == UsageGroupData(None, True)
    assert loaded[("lkc-3", T1, W_END)] == ({}, False)
    assert loaded[("lkc-0", T1, T1 + timedelta(hours=1))] == (None, False)

    db.usage.replace_date(D1, {("lkc-9", T1, W_END): ({"k": [metric("1", 0)]}, False)})
    assert list(db.usage.load_date(D1)) == [("lkc-9", T1, W_END)]
    assert db.usage.load_date(D2) == {}


def test_usage_labels_of_one_series_are_decoded_once_and_read_only(db: TenantDatabase) -> None:
    series = [metric(str(h), h, principal="sa-1", kafka_id="lkc-1") for h in range(24)]
    other = [metric("5", 0, kafka_id="lkc-1", principal="sa-2")]
    db.usage.replace_date(D1, {("lkc-1", T1, W_END): ({"bytes_in": series + other}, False)})
    rows = db.usage.load_date(D1)[("lkc-1", T1, W_END)].rows["bytes_in"]  # type: ignore[index]
    assert [dict(r.labels) for r in rows] == [dict(r.labels) for r in series + other]
    assert all(r.labels is rows[0].labels for r in rows[:24]) and rows[24].labels is not rows[0].labels
    with pytest.raises(TypeError):
        rows[0].labels["principal"] = "someone-else"  # type: ignore[index]


def test_usage_refuses_float_values_and_naive_windows(db: TenantDatabase) -> None:
    bad = MetricRow(timestamp=T1, metric_key="k", value=0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value must be a Decimal, got float"):
        db.usage.replace_date(D1, {("r", T1, W_END): ({"k": [bad]}, False)})
    with pytest.raises(ValueError, match="usage window start of r must be timezone-aware"):
        db.usage.replace_date(D1, {("r", datetime(2026, 3, 1), W_END): (None, False)})


# --- retention --------------------------------------------------------------------------


def test_purge_before_deletes_old_dates_and_long_deleted_entities(db: TenantDatabase) -> None:
    old, new = D1, D2
    for d in (old, new):
        ts = datetime.combine(d, datetime.min.time(), UTC)
        db.billing.replace_date(d, [line("1", ts=ts)])
        db.chargebacks.replace_date(d, [row("a", "1", ts=ts)], "c")
        db.usage.replace_date(d, {("r", ts, ts + timedelta(days=1)): ({"k": [metric("1", 0)]}, False)})
        db.state.mark_billing_gathered(d, "f")
        db.emissions.record("csv", d, "emitted", "c", 1)
        db.attempts.record_failure(billing_natural_key(line("1", ts=ts)), "x")
    cutoff = datetime(2026, 2, 1, tzinfo=UTC)
    db.resources.upsert_many(
        [
            Resource(ECO, TENANT, "gone-long-ago", "t", deleted_at=cutoff - timedelta(seconds=1)),
            Resource(ECO, TENANT, "gone-recently", "t", deleted_at=cutoff),
            Resource(ECO, TENANT, "alive", "t"),
        ]
    )
    db.identities.upsert_many(
        [Identity(ECO, TENANT, "old-sa", "service_account", deleted_at=T1 - timedelta(days=90))]
    )
    db.gather_state.set("keep", 1)

    counts = db.purge_before(new, cutoff)

    assert counts == {
        "billing_lines": 1,
        "chargebacks": 1,
        "usage_metrics": 1,
        "usage_metric_groups": 1,
        "pipeline_state": 1,
        "emission_state": 1,
        "allocation_attempts": 1,
        "resources": 1,
        "identities": 1,
    }
    assert db.billing.dates() == [new] and db.chargebacks.dates() == [new]
    assert list(db.usage.load_date(old)) == [] and len(db.usage.load_date(new)) == 1
    assert [r.resource_id for r in db.resources.find_by_period(cutoff - timedelta(days=9), T1)] == [
        "alive",
        "gone-recently",
    ]
    assert db.identities.get("UNALLOCATED") is not None and db.identities.get("old-sa") is None
    assert db.gather_state.get("keep") == 1
    with pytest.raises(ValueError, match="timezone-aware"):
        db.purge_before(new, datetime(2026, 1, 1))
