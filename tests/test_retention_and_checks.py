"""Retention (operations.md §13) and the non-blocking checks, through Dagster jobs and assets."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from chargeback_pipeline.config import load_config
from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.checks import FRESHNESS, UNALLOCATED_SHARE, expected_fresh_date
from chargeback_pipeline.defs.schedules import RETENTION_SCHEDULE
from chargeback_pipeline.models import Identity
from chargeback_pipeline.run_queue import RETENTION_JOB
from chargeback_pipeline.storage import open_tenant_db
from tests.conftest import EXAMPLE_PLUGINS
from tests.ops_support import edit_config, fixed_rate_demo

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def run_range(config: Path, instance: dg.DagsterInstance, tenant: str, first: str, last: str) -> Any:
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    result = job.execute_in_process(
        instance=instance,
        tags={RANGE_START: f"{first}|{tenant}", RANGE_END: f"{last}|{tenant}"},
        raise_on_error=False,
    )
    return result


def pg_db(config: Path) -> Any:
    return open_tenant_db(
        config.parent / "data" / "postgres-prod.duckdb",
        ecosystem="generic_metrics_only",
        tenant_id="acme-postgres",
    )


# --- retention ---------------------------------------------------------------------------------


def test_retention_job_removes_what_left_the_window_and_says_what(
    demo_config: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = edit_config(demo_config, drop=("confluent-cloud",), **{"postgres-prod": {"retention_days": 10}})
    assert run_range(config, instance, "postgres-prod", "2026-03-01", "2026-03-07").success
    with pg_db(config) as db, db.transaction():
        db.identities.upsert_many(
            [
                Identity("generic_metrics_only", "acme-postgres", "gone-long-ago", "user"),
                Identity("generic_metrics_only", "acme-postgres", "gone-recently", "user"),
            ]
        )
        db.identities.mark_deleted(["gone-long-ago"], datetime(2026, 2, 20, tzinfo=UTC))
        db.identities.mark_deleted(["gone-recently"], datetime(2026, 3, 10, tzinfo=UTC))

    # Five days later: billing dates before 2026-03-04 and entities deleted before
    # 2026-03-04T06:00 fall out of the 10-day window.
    monkeypatch.setenv("CHARGEBACK_NOW", "2026-03-14T06:00:00Z")
    defs = build_definitions(config)
    result = defs.resolve_job_def(RETENTION_JOB).execute_in_process(
        instance=instance, partition_key="postgres-prod"
    )
    assert result.success
    (output,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    metadata = {k: v.value for k, v in output.step_output_data.metadata.items()}
    removed = metadata["removed_by_table"]
    assert metadata["first_kept_date"] == "2026-03-04"
    assert removed["chargebacks"] == 3 * 15 and removed["billing_lines"] == 3 * 3
    assert removed["pipeline_state"] == 3 and removed["emission_state"] == 3 * 2  # csv + prometheus
    assert removed["calculation_inputs"] == 3 and removed["identities"] == 1
    assert metadata["rows_removed"] == sum(removed.values())
    with pg_db(config) as db:
        assert db.chargebacks.dates() == [date(2026, 3, d) for d in range(4, 8)]
        assert db.identities.get("gone-long-ago") is None
        assert db.identities.get("gone-recently") is not None
        assert db.identities.get("app-orders") is not None  # live entities are never purged
    # Files already written by the emitter stay.
    assert (config.parent / "out" / "csv" / "postgres-prod" / "2026-03-01.csv").exists()
    # A date outside the window is now refused by the assets, naming the limit.
    refused = run_range(config, instance, "postgres-prod", "2026-03-02", "2026-03-02")
    messages = [str(e.step_failure_data.error) for e in refused.all_events if e.is_step_failure]
    assert messages and all(
        "tenant 'postgres-prod': date 2026-03-02 is not allowed: retention_days=10" in m for m in messages
    )


def test_retention_schedule_requests_one_run_per_tenant(
    demo_config: Path, instance: dg.DagsterInstance
) -> None:
    defs = build_definitions(demo_config)
    context = dg.build_schedule_context(
        instance=instance,
        repository_def=defs.get_repository_def(),
        scheduled_execution_time=datetime(2026, 3, 9, 2, 30, tzinfo=UTC),
    )
    requests = defs.resolve_schedule_def(RETENTION_SCHEDULE).evaluate_tick(context).run_requests
    assert [(r.partition_key, r.tags["tenant"]) for r in requests] == [
        ("confluent-cloud", "confluent-cloud"),
        ("postgres-prod", "postgres-prod"),
        ("redis-cache", "redis-cache"),
    ]


# --- UNALLOCATED share -------------------------------------------------------------------------


def flat_fee_config(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLE_PLUGINS / "flat_fee", tmp_path / "plugins" / "flat_fee")
    config = tmp_path / "config.yaml"
    config.write_text(
        """
plugins_path: plugins
tenants:
  staffed:
    ecosystem: flat_fee
    tenant_id: staffed
    lookback_days: 8
    cutoff_days: 1
    plugin_settings: {service_id: wiki, daily_fee: "10.0000", users: [alice, bob]}
  orphaned:
    ecosystem: flat_fee
    tenant_id: orphaned
    lookback_days: 8
    cutoff_days: 1
    checks: {unallocated_share_warning_pct: "25"}
    plugin_settings: {service_id: old-wiki, daily_fee: "10.0000", users: []}
""",
        encoding="utf-8",
    )
    return config


def test_unallocated_share_above_the_threshold_warns_without_failing_the_run(
    tmp_path: Path, frozen_clock: str, instance: dg.DagsterInstance
) -> None:
    config = flat_fee_config(tmp_path)
    outcomes = {}
    for tenant in ("staffed", "orphaned"):
        result = run_range(config, instance, tenant, "2026-03-01", "2026-03-02")
        assert result.success  # a warning never blocks
        outcomes[tenant] = {
            e.partition: e for e in result.get_asset_check_evaluations() if e.check_name == UNALLOCATED_SHARE
        }
    assert set(outcomes["staffed"]) == {"2026-03-01|staffed", "2026-03-02|staffed"}
    assert all(e.passed for e in outcomes["staffed"].values())
    orphaned = outcomes["orphaned"]["2026-03-02|orphaned"]
    assert not orphaned.passed and orphaned.severity == dg.AssetCheckSeverity.WARN
    assert orphaned.description == (
        "tenant 'orphaned' 2026-03-02: UNALLOCATED is 100.00% of 10.0000 billed (warning above 25%)"
    )
    assert orphaned.metadata["threshold"].value == "25%"


def test_check_thresholds_are_validated(tmp_path: Path, frozen_clock: str) -> None:
    config = flat_fee_config(tmp_path)
    config.write_text(
        config.read_text(encoding="utf-8").replace(
            'unallocated_share_warning_pct: "25"', "unallocated_share_warning_pct: 150"
        ),
        "utf-8",
    )
    loaded = load_config(config)
    assert "orphaned" in loaded.tenant_errors and "staffed" in loaded.tenants
    assert any(
        "tenant 'orphaned': checks.unallocated_share_warning_pct: Input should be less than or equal to 100"
        in e
        for e in loaded.tenant_errors["orphaned"]
    )


# --- freshness ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "grace", "expected"),
    [
        ("2026-03-09T06:00:00+00:00", 6, date(2026, 3, 7)),  # 03-07 settled at 03-09 00:00, grace over
        ("2026-03-09T05:59:00+00:00", 6, date(2026, 3, 6)),  # still within the grace period
        ("2026-03-09T00:00:00+00:00", 0, date(2026, 3, 7)),
    ],
)
def test_expected_fresh_date(now: str, grace: int, expected: date) -> None:
    assert expected_fresh_date(1, grace, datetime.fromisoformat(now)) == expected


def test_freshness_check_flags_each_tenant_whose_latest_settled_date_is_missing(
    demo_config: Path, instance: dg.DagsterInstance
) -> None:
    fixed_rate_demo(demo_config)

    def freshness() -> dg.AssetCheckEvaluation:
        job = build_definitions(demo_config).resolve_job_def("chargeback_freshness")
        result = job.execute_in_process(instance=instance)
        assert result.success
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.check_name == FRESHNESS and evaluation.partition is None
        return evaluation

    before = freshness()
    assert not before.passed and before.severity == dg.AssetCheckSeverity.WARN
    assert before.metadata["stale_tenants"].value == "postgres-prod, redis-cache"

    assert run_range(demo_config, instance, "postgres-prod", "2026-03-05", "2026-03-07").success
    assert run_range(demo_config, instance, "redis-cache", "2026-03-05", "2026-03-06").success
    after = freshness()
    assert after.metadata["stale_tenants"].value == "redis-cache"
    assert after.description == (
        "tenant 'redis-cache': 2026-03-07 not calculated (latest calculated: 2026-03-06)"
    )
    assert run_range(demo_config, instance, "redis-cache", "2026-03-07", "2026-03-07").success
    assert freshness().passed
