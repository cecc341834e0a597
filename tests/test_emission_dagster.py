"""Emission state end to end through Dagster (spec/emitters.md §6–§7, operations.md §8):
once per calculation, again after a recalculation, failures keep the previous files and
are retried, ``lookback_days`` skips are visible, monthly specs record every date."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.partitions import partition_key
from chargeback_pipeline.emitters import csv_emitter
from chargeback_pipeline.storage import open_tenant_db
from chargeback_pipeline.storage.state import EmissionRecord

DAY = date(2026, 3, 1)
SINKS = [dg.AssetKey("emit_csv"), dg.AssetKey("emit_prometheus")]


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def run(
    config: Path, instance: dg.DagsterInstance, tenant: str, d: date, assets: list[dg.AssetKey] | None = None
) -> dg.ExecuteInProcessResult:
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    return job.execute_in_process(
        partition_key=partition_key(tenant, d),
        instance=instance,
        raise_on_error=False,
        asset_selection=assets,
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    return {
        e.asset_key.to_user_string(): {
            k: v.value for k, v in e.step_materialization_data.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }


def failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {e.step_key: str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure}


def emission(config: Path, tenant: str, tenant_id: str, name: str, d: date) -> EmissionRecord | None:
    with open_tenant_db(
        config.parent / "data" / f"{tenant}.duckdb", ecosystem="generic_metrics_only", tenant_id=tenant_id
    ) as db:
        return db.emissions.get(name, d)


def set_backup_rate(config: Path, rate: str) -> None:
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('rate: "0.021"', f'rate: "{rate}"'), encoding="utf-8")


def pg_files(config: Path) -> tuple[Path, Path, Path]:
    out = config.parent / "out"
    return (
        out / "csv" / "postgres-prod" / "2026-03-01.csv",
        out / "metrics" / "acme-postgres.om",
        out / "metrics" / "acme-postgres.prom",
    )


def test_emitted_once_per_calculation_and_again_after_recalculation(
    demo_config: Path, instance: dg.DagsterInstance
) -> None:
    first = run(demo_config, instance, "postgres-prod", DAY)
    assert first.success
    meta = metadata(first)
    calculation = meta["chargebacks"]["calculation_id"]
    csv_path, om_path, prom_path = pg_files(demo_config)
    assert meta["emit_csv"] == {
        "status": "emitted",
        "emitter_type": "csv",
        "calculation_id": calculation,
        "rows": 15,
        "attempt": 1,
        "path": str(csv_path),
        "row_count": 15,
        "bytes_written": csv_path.stat().st_size,
        "removed": False,
    }
    prom = meta["emit_prometheus"]
    assert (prom["status"], prom["calculation_id"], prom["rows"]) == ("emitted", calculation, 15)
    assert (prom["path"], prom["current_state_path"]) == (str(om_path), str(prom_path))
    assert (
        prom["bytes_written"] == om_path.stat().st_size
        and prom["current_state_bytes"] == prom_path.stat().st_size
    )
    # 15 amounts + 3 billing lines + 1 resource + 5 identities, one day.
    assert (prom["samples"], prom["dates_rendered"], prom["latest_date"]) == (24, 1, "2026-03-01")
    assert 'identity_id="app-orders"' in om_path.read_text(encoding="utf-8")

    # Materialising the sinks again for the same calculation writes nothing.
    stamps = [p.stat().st_mtime_ns for p in (csv_path, om_path, prom_path)]
    again = run(demo_config, instance, "postgres-prod", DAY, SINKS)
    assert again.success
    for sink in ("emit_csv", "emit_prometheus"):
        assert metadata(again)[sink]["status"] == "already emitted"
        assert metadata(again)[sink]["calculation_id"] == calculation
    assert [p.stat().st_mtime_ns for p in (csv_path, om_path, prom_path)] == stamps

    # A recalculation (here: a revised rate) is emitted again and replaces the numbers.
    set_backup_rate(demo_config, "0.042")  # PG_BACKUP 24 h × 0.042 = 1.0080 / 5 = 0.2016
    third = run(demo_config, instance, "postgres-prod", DAY)
    assert third.success
    meta = metadata(third)
    recalculated = meta["chargebacks"]["calculation_id"]
    assert recalculated != calculation
    assert (meta["emit_csv"]["status"], meta["emit_csv"]["calculation_id"], meta["emit_csv"]["attempt"]) == (
        "emitted",
        recalculated,
        2,
    )
    assert ",PG_BACKUP,app-orders,shared,0.2016," in csv_path.read_text(encoding="utf-8")
    history = om_path.read_text(encoding="utf-8")
    assert (
        'product_type="PG_BACKUP",cost_type="shared",allocation_method="even_split"} 0.2016 1772323200'
        in history
    )
    assert "0.1008" not in history
    record = emission(demo_config, "postgres-prod", "acme-postgres", "prometheus", DAY)
    assert record is not None
    assert (record.status, record.calculation_id, record.row_count, record.attempt_count) == (
        "emitted",
        recalculated,
        15,
        2,
    )


def test_failed_emission_keeps_previous_files_and_is_retried(
    demo_config: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(demo_config, instance, "postgres-prod", DAY).success
    csv_path, om_path, _ = pg_files(demo_config)
    before = csv_path.read_bytes()

    real_write_csv = csv_emitter.write_csv

    def disk_full(stream: Any, rows: Any, extra: Any = ()) -> int:
        real_write_csv(stream, list(rows)[:3], extra)  # part of the file reaches the temp file …
        raise OSError(28, "No space left on device")  # … then the write fails

    set_backup_rate(demo_config, "0.042")
    with monkeypatch.context() as patch:
        patch.setattr(csv_emitter, "write_csv", disk_full)
        failed = run(demo_config, instance, "postgres-prod", DAY)
    assert not failed.success
    assert set(failures(failed)) == {"emit_csv"}
    assert (
        "tenant 'postgres-prod': emitter 'csv': 2026-03-01: OSError: [Errno 28] No space left on device"
        in failures(failed)["emit_csv"]
    )
    # Chargebacks committed the recalculation; the CSV still holds the previous complete file.
    assert csv_path.read_bytes() == before
    assert sorted(p.name for p in csv_path.parent.iterdir()) == ["2026-03-01.csv"]
    record = emission(demo_config, "postgres-prod", "acme-postgres", "csv", DAY)
    assert record is not None and (record.status, record.attempt_count) == ("failed", 2)
    # The other emitter of the tenant is not blocked.
    assert metadata(failed)["emit_prometheus"]["status"] == "emitted"
    assert "} 0.2016 1772323200" in om_path.read_text(encoding="utf-8")

    retried = run(demo_config, instance, "postgres-prod", DAY, SINKS)
    assert retried.success
    assert metadata(retried)["emit_csv"]["status"] == "emitted"
    assert metadata(retried)["emit_csv"]["attempt"] == 3
    assert metadata(retried)["emit_prometheus"]["status"] == "already emitted"
    assert ",PG_BACKUP,app-orders,shared,0.2016," in csv_path.read_text(encoding="utf-8")
    record = emission(demo_config, "postgres-prod", "acme-postgres", "csv", DAY)
    assert record is not None and (record.status, record.attempt_count) == ("emitted", 3)


def test_lookback_days_skips_older_dates_and_says_so(demo_config: Path, instance: dg.DagsterInstance) -> None:
    text = demo_config.read_text(encoding="utf-8")
    demo_config.write_text(
        text.replace(
            "        - type: prometheus\n", "        - type: prometheus\n          lookback_days: 3\n", 1
        ),
        encoding="utf-8",
    )
    # Today is 2026-03-09 (frozen): lookback 3 emits dates >= 2026-03-06.
    old = run(demo_config, instance, "postgres-prod", DAY)
    assert old.success
    assert metadata(old)["emit_prometheus"] == {
        "status": "skipped",
        "reason": "older than lookback_days=3: only dates >= 2026-03-06 are emitted",
    }
    assert metadata(old)["emit_csv"]["status"] == "emitted"  # the csv spec has no lookback
    _, om_path, _ = pg_files(demo_config)
    assert not om_path.exists()
    assert emission(demo_config, "postgres-prod", "acme-postgres", "prometheus", DAY) is None

    recent = run(demo_config, instance, "postgres-prod", date(2026, 3, 6))
    assert recent.success and metadata(recent)["emit_prometheus"]["status"] == "emitted"
    history = om_path.read_text(encoding="utf-8")
    assert " 1772755200\n" in history  # 2026-03-06
    assert " 1772323200\n" not in history  # 2026-03-01 is stored but outside the lookback


def test_monthly_spec_records_every_pending_date_of_its_month(
    demo_config: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(demo_config, instance, "redis-cache", DAY).success

    def broken(*args: Any, **kwargs: Any) -> int:
        raise OSError("share unavailable")

    with monkeypatch.context() as patch:
        patch.setattr(csv_emitter, "write_csv", broken)
        second = run(demo_config, instance, "redis-cache", date(2026, 3, 2))
    assert set(failures(second)) == {"emit_csv"}
    record = emission(demo_config, "redis-cache", "acme-redis", "csv", date(2026, 3, 2))
    assert record is not None and record.status == "failed"

    # Recalculating March 1st rewrites the month's file, which also delivers March 2nd.
    third = run(demo_config, instance, "redis-cache", DAY)
    assert third.success
    assert metadata(third)["emit_csv"]["dates_in_output"] == "2026-03-01, 2026-03-02"
    monthly = demo_config.parent / "out" / "csv" / "redis-cache" / "2026-03-01.csv"
    assert ",REDIS_NODE,app-orders,shared,6.5920," in monthly.read_text(encoding="utf-8")
    for d, attempts in ((DAY, 2), (date(2026, 3, 2), 2)):
        record = emission(demo_config, "redis-cache", "acme-redis", "csv", d)
        assert record is not None and (record.status, record.attempt_count, record.row_count) == (
            "emitted",
            attempts,
            6,
        )
