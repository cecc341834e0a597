"""The refresh schedule (operations.md §9–§11): what each tick requests, executed through Dagster.

Ticks are evaluated against a persistent test instance and the demo tenants; the run
requests are then executed in process exactly as the daemon would launch them (their
tags carry the partition range), and the stores and files are checked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.schedules import REFRESH_SCHEDULE, RETENTION_SCHEDULE
from chargeback_pipeline.refresh import date_ranges, refresh_cron
from chargeback_pipeline.steps import CONSECUTIVE_GATHER_FAILURES, LAST_GATHER_ERROR
from chargeback_pipeline.storage import open_tenant_db
from tests.ops_support import fixed_rate_demo

TICK = datetime(2026, 3, 9, 6, 0, tzinfo=UTC)
WINDOW = ("2026-03-01", "2026-03-07")
TENANTS = {"postgres-prod": "acme-postgres", "redis-cache": "acme-redis"}
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def enable_refresh(config: Path) -> Path:
    """The demo's two fixed-rate tenants, refresh on (as in the demo)."""
    assert "enable_periodic_refresh: true" in config.read_text(encoding="utf-8")
    return fixed_rate_demo(config)


def tick(config: Path, instance: dg.DagsterInstance, at: datetime = TICK) -> dg.SensorResult | Any:
    defs = build_definitions(config)
    schedule = defs.resolve_schedule_def(REFRESH_SCHEDULE)
    context = dg.build_schedule_context(
        instance=instance, repository_def=defs.get_repository_def(), scheduled_execution_time=at
    )
    return schedule.evaluate_tick(context)


def summary(request: dg.RunRequest) -> tuple[str, str, str, str, list[str] | None]:
    tags = request.tags
    assets = sorted(k.to_user_string() for k in request.asset_selection) if request.asset_selection else None
    return (
        tags["tenant"],
        tags["chargeback/refresh"],
        tags["dagster/asset_partition_range_start"],
        tags["dagster/asset_partition_range_end"],
        assets,
    )


def execute(config: Path, instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    result = job.execute_in_process(
        instance=instance, tags=request.tags, asset_selection=request.asset_selection, raise_on_error=False
    )
    assert result.success, [str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
    return result


def set_clock(monkeypatch: pytest.MonkeyPatch, at: datetime) -> None:
    monkeypatch.setenv("CHARGEBACK_NOW", at.isoformat())


def db(config: Path, tenant: str) -> Any:
    return open_tenant_db(
        config.parent / "data" / f"{tenant}.duckdb",
        ecosystem="generic_metrics_only",
        tenant_id=TENANTS[tenant],
    )


def partition_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, dict[str, Any]]:
    return {
        str(e.partition): {
            k: v.value for k, v in e.step_materialization_data.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(asset)
    }


# --- cadence ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "crons"),
    [
        (1800, ["*/30 * * * *"]),
        (60, ["* * * * *"]),
        (61, ["*/2 * * * *"]),  # rounded up to whole minutes
        (3600, ["0 * * * *"]),
        (7200, ["0 */2 * * *"]),
        (5400, ["0 0,3,6,9,12,15,18,21 * * *", "30 1,4,7,10,13,16,19,22 * * *"]),
        (86400, ["0 0 * * *"]),
        (3 * 86400, ["0 0 */3 * *"]),
    ],
)
def test_refresh_cron_fires_every_interval(seconds: int, crons: list[str]) -> None:
    assert refresh_cron(seconds) == crons


def test_date_ranges_split_on_gaps() -> None:
    days = [date(2026, 3, d) for d in (5, 1, 2, 3, 7, 8)]
    assert date_ranges(days) == [
        (date(2026, 3, 1), date(2026, 3, 3)),
        (date(2026, 3, 5), date(2026, 3, 5)),
        (date(2026, 3, 7), date(2026, 3, 8)),
    ]


def test_schedule_is_on_only_when_periodic_refresh_is_enabled(demo_config: Path) -> None:
    def status(config: Path) -> dg.DefaultScheduleStatus:
        return build_definitions(config).resolve_schedule_def(REFRESH_SCHEDULE).default_status

    assert status(demo_config) == dg.DefaultScheduleStatus.RUNNING  # the demo keeps itself up to date
    demo_config.write_text(
        demo_config.read_text(encoding="utf-8").replace(
            "enable_periodic_refresh: true", "enable_periodic_refresh: false"
        ),
        encoding="utf-8",
    )
    assert status(demo_config) == dg.DefaultScheduleStatus.STOPPED
    # Retention runs daily whatever the refresh setting.
    retention = build_definitions(demo_config).resolve_schedule_def(RETENTION_SCHEDULE)
    assert retention.default_status == dg.DefaultScheduleStatus.RUNNING


# --- what a tick requests ------------------------------------------------------------------------


def test_first_tick_requests_one_full_refresh_run_per_tenant(
    demo_config: Path, instance: dg.DagsterInstance
) -> None:
    result = tick(demo_config, instance)  # the whole demo, with its Confluent Cloud tenant
    assert [summary(r) for r in result.run_requests] == [
        ("confluent-cloud", "full", f"{WINDOW[0]}|confluent-cloud", f"{WINDOW[1]}|confluent-cloud", None),
        ("postgres-prod", "full", f"{WINDOW[0]}|postgres-prod", f"{WINDOW[1]}|postgres-prod", None),
        ("redis-cache", "full", f"{WINDOW[0]}|redis-cache", f"{WINDOW[1]}|redis-cache", None),
    ]


def test_refresh_runs_keep_unchanged_dates_and_a_throttled_tick_has_nothing_to_do(
    demo_config: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = enable_refresh(demo_config)
    first = tick(config, instance).run_requests
    results = [execute(config, instance, r) for r in first]
    pg = partition_metadata(results[0], "chargebacks")
    assert len(pg) == 7 and all(m["recalculated"] and m["billed_total"] == "38.1216" for m in pg.values())
    calc_ids = {k: m["calculation_id"] for k, m in pg.items()}
    csv = demo_config.parent / "out" / "csv" / "postgres-prod" / "2026-03-03.csv"
    csv_stat = csv.stat()

    # 10 minutes later the gather is within min_refresh_gap_seconds (1800): throttled, nothing pending.
    set_clock(monkeypatch, TICK + timedelta(minutes=10))
    later = tick(config, instance, TICK + timedelta(minutes=10))
    assert later.run_requests == [] and later.skip_message

    # An hour later: a full refresh again. Nothing changed, so no date is recalculated
    # and no file is rewritten; the calculation ids stay.
    set_clock(monkeypatch, TICK + timedelta(hours=1))
    again = tick(config, instance, TICK + timedelta(hours=1)).run_requests
    assert [summary(r)[1] for r in again] == ["full", "full"]
    rerun = [execute(config, instance, r) for r in again]
    pg2 = partition_metadata(rerun[0], "chargebacks")
    assert all(m["recalculated"] is False for m in pg2.values())
    assert {k: m["calculation_id"] for k, m in pg2.items()} == calc_ids
    emitted = partition_metadata(rerun[0], "emit_csv")
    assert {m["status"] for m in emitted.values()} == {"already emitted"}
    assert csv.stat().st_mtime_ns == csv_stat.st_mtime_ns


def test_a_changed_rate_is_recalculated_and_re_emitted_by_the_next_refresh(
    demo_config: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = enable_refresh(demo_config)
    for request in tick(config, instance).run_requests:
        execute(config, instance, request)
    # The vendor revises the PostgreSQL backup rate: 0.021 → 0.025 per hour (+0.0960 a day).
    text = config.read_text(encoding="utf-8")
    assert "rate: '0.021'" in text
    config.write_text(text.replace("rate: '0.021'", "rate: '0.025'"), "utf-8")
    set_clock(monkeypatch, TICK + timedelta(hours=1))
    requests = tick(config, instance, TICK + timedelta(hours=1)).run_requests
    pg = partition_metadata(execute(config, instance, requests[0]), "chargebacks")
    assert all(m["recalculated"] and m["billed_total"] == "38.2176" for m in pg.values())
    csv = (demo_config.parent / "out" / "csv" / "postgres-prod" / "2026-03-07.csv").read_text("utf-8")
    assert ",PG_BACKUP,analyst-jane,shared,0.1200," in csv  # 0.6000 / 5
    # redis-cache did not change: kept.
    redis = partition_metadata(execute(config, instance, requests[1]), "chargebacks")
    assert all(m["recalculated"] is False for m in redis.values())


def test_pending_work_outside_the_window_gets_its_own_runs(
    demo_config: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = enable_refresh(demo_config)
    for request in tick(config, instance).run_requests:
        execute(config, instance, request)
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    # 2026-02-20 (outside the window): billing stored but never calculated, as after an
    # allocation failure. And a failed emission of 2026-03-02 for postgres-prod.
    result = job.execute_in_process(
        instance=instance,
        partition_key="2026-02-20|postgres-prod",
        asset_selection=[dg.AssetKey("billing_lines")],
    )
    assert result.success
    with db(config, "postgres-prod") as store, store.transaction():
        store.emissions.record("csv", date(2026, 3, 2), "failed", "x", 0)

    set_clock(monkeypatch, TICK + timedelta(minutes=10))  # throttled: only the pending work
    requests = tick(config, instance, TICK + timedelta(minutes=10)).run_requests
    assert [summary(r) for r in requests] == [
        (
            "postgres-prod",
            "recalculate",
            "2026-02-20|postgres-prod",
            "2026-02-20|postgres-prod",
            ["chargebacks", "emit_csv", "emit_prometheus"],
        ),
        (
            "postgres-prod",
            "emit",
            "2026-03-02|postgres-prod",
            "2026-03-02|postgres-prod",
            ["emit_csv", "emit_prometheus"],
        ),
    ]
    for request in requests:
        execute(config, instance, request)
    with db(config, "postgres-prod") as store:
        assert store.state.get(date(2026, 2, 20)).chargeback_calculated
        record = store.emissions.get("csv", date(2026, 3, 2))
        assert record is not None and record.status == "emitted"
        assert record.calculation_id == store.state.get(date(2026, 3, 2)).calculation_id
    assert tick(config, instance, TICK + timedelta(minutes=20)).run_requests == []


def test_a_tenant_with_a_run_in_progress_is_skipped(
    demo_config: Path, instance: dg.DagsterInstance, caplog: pytest.LogCaptureFixture
) -> None:
    config = enable_refresh(demo_config)
    # A backfill run of postgres-prod is executing (the coordinator tagged it with its tenant).
    create_run_for_test(
        instance, job_name=PIPELINE_JOB, status=dg.DagsterRunStatus.STARTED, tags={"tenant": "postgres-prod"}
    )
    with caplog.at_level(logging.INFO, logger="chargeback_pipeline.defs.schedules"):
        requests = tick(config, instance).run_requests
    assert [summary(r)[0] for r in requests] == ["redis-cache"]
    assert "tenant 'postgres-prod': already running; skipped this tick" in caplog.text


def test_suspended_tenants_are_skipped_until_their_settings_change(
    demo_config: Path,
    instance: dg.DagsterInstance,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = enable_refresh(demo_config)
    for request in tick(config, instance).run_requests:
        execute(config, instance, request)
    for tenant in TENANTS:
        with db(config, tenant) as store, store.transaction():
            store.gather_state.set(CONSECUTIVE_GATHER_FAILURES, 5)
            store.gather_state.set(LAST_GATHER_ERROR, "ConnectionError: billing API unreachable")
    set_clock(monkeypatch, TICK + timedelta(hours=1))
    with caplog.at_level(logging.INFO, logger="chargeback_pipeline.defs.schedules"):
        result = tick(config, instance, TICK + timedelta(hours=1))
    assert result.run_requests == []
    assert (
        "tenant postgres-prod suspended after 5 consecutive gather failures: "
        "ConnectionError: billing API unreachable" in caplog.text
    )
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert [r.getMessage() for r in critical] == [
        "every valid tenant is suspended: postgres-prod, redis-cache"
    ]
    # Changing redis-cache's settings lifts its suspension (and resets its counter).
    config.write_text(config.read_text(encoding="utf-8").replace("app-search", "app-searching"), "utf-8")
    set_clock(monkeypatch, TICK + timedelta(hours=2))
    resumed = tick(config, instance, TICK + timedelta(hours=2)).run_requests
    assert [summary(r)[:2] for r in resumed] == [("redis-cache", "full")]
    with db(config, "redis-cache") as store:
        assert store.gather_state.get(CONSECUTIVE_GATHER_FAILURES) == 0


# --- sinks follow chargebacks (declarative automation) ------------------------------------------


def test_sinks_follow_re_materialised_chargebacks_of_old_dates(
    demo_config: Path, instance: dg.DagsterInstance
) -> None:
    defs = build_definitions(fixed_rate_demo(demo_config))
    job = defs.resolve_job_def(PIPELINE_JOB)
    emit_csv = dg.AssetKey("emit_csv")
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert baseline.total_requested == 0

    # A full run: the sinks are materialised in the same run, so nothing more is requested.
    ran = job.execute_in_process(
        instance=instance,
        tags={RANGE_START: "2026-03-01|postgres-prod", RANGE_END: "2026-03-07|postgres-prod"},
    )
    assert ran.success
    after_run = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    assert after_run.get_requested_partitions(emit_csv) == set()

    # An operator re-materialises the chargebacks of an old date (not the latest) from the UI.
    again = job.execute_in_process(
        instance=instance,
        partition_key="2026-03-02|postgres-prod",
        asset_selection=[dg.AssetKey("chargebacks")],
    )
    assert again.success
    follow = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_run.cursor)
    assert follow.get_requested_partitions(emit_csv) == {"2026-03-02|postgres-prod"}
    # Requested once only.
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=follow.cursor)
    assert settled.get_requested_partitions(emit_csv) == set()
