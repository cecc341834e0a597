"""End to end through Dagster: the demo's partitions materialised on a real instance.

Expected amounts are derived from the demo rates by the allocation rules:
PG_COMPUTE 3 nodes × 24 h × 0.416 = 29.9520 over 5 identities = 5.9904 each;
PG_STORAGE 24 h × 0.3194 = 7.6656 / 5 = 1.53312 → 1.5331 each, +0.0001 to the first
sorted id (analyst-jane); PG_BACKUP 24 h × 0.021 = 0.5040 / 5 = 0.1008 each.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.partitions import DATE_DIM, TENANT_DIM, partition_key
from chargeback_pipeline.models import ChargebackRow
from chargeback_pipeline.storage import open_tenant_db

DAY = date(2026, 3, 1)
PG_IDS = ["analyst-jane", "app-audit", "app-billing", "app-orders", "etl-nightly"]

EXPECTED_PG_CSV = (
    "ecosystem,tenant_id,timestamp,resource_id,product_category,product_type,identity_id,cost_type,"
    "amount,allocation_method,allocation_detail\r\n"
    + "".join(
        f"generic_metrics_only,acme-postgres,2026-03-01T00:00:00+00:00,pg-prod-1,postgres,{pt},{who},shared,"
        f"{amount},even_split,even_split_allocation\r\n"
        for pt, amounts in [
            ("PG_BACKUP", ["0.1008"] * 5),
            ("PG_COMPUTE", ["5.9904"] * 5),
            ("PG_STORAGE", ["1.5332", "1.5331", "1.5331", "1.5331", "1.5331"]),
        ]
        for who, amount in zip(PG_IDS, amounts, strict=True)
    )
)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def materialise(
    config: Path, instance: dg.DagsterInstance, tenant: str, d: date
) -> dg.ExecuteInProcessResult:
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    return job.execute_in_process(
        partition_key=partition_key(tenant, d), instance=instance, raise_on_error=False
    )


def stored_rows(config: Path, tenant: str, tenant_id: str, d: date) -> list[ChargebackRow]:
    path = config.parent / "data" / f"{tenant}.duckdb"
    with open_tenant_db(path, ecosystem="generic_metrics_only", tenant_id=tenant_id) as db:
        return db.chargebacks.find_by_date(d)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_definitions_show_every_lifecycle_step(demo_config: Path) -> None:
    defs = build_definitions(demo_config)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "billing_lines",
        "inventory",
        "resource_deletions",
        "usage_metrics",
        "chargebacks",
        "emit_csv",
        "emit_prometheus",
    }
    parents = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
        for k in graph.get_all_asset_keys()
    }
    assert parents["chargebacks"] == {"billing_lines", "resource_deletions", "usage_metrics"}
    assert parents["usage_metrics"] == {"billing_lines", "inventory"}
    assert parents["resource_deletions"] == {"inventory"}
    assert parents["emit_csv"] == {"chargebacks"}
    assert parents["emit_prometheus"] == {"chargebacks"}
    partitions = graph.get(dg.AssetKey("chargebacks")).partitions_def
    assert isinstance(partitions, dg.MultiPartitionsDefinition)
    assert {d.name for d in partitions.partitions_defs} == {TENANT_DIM, DATE_DIM}
    keys_of_day = [k for k in partitions.get_partition_keys() if k.startswith("2026-03-07|")]
    assert keys_of_day == ["2026-03-07|confluent-cloud", "2026-03-07|postgres-prod", "2026-03-07|redis-cache"]
    # The newest settled date is today (2026-03-09) − cutoff_days − 1.
    assert partitions.get_last_partition_key() == "2026-03-07|redis-cache"
    blocking = {k.name: graph.get_check_spec(k).blocking for k in graph.asset_check_keys}
    assert blocking == {
        "chargebacks_reconcile_with_billing": True,
        "chargebacks_unallocated_share": False,
        "chargebacks_freshness": False,
    }


def test_partition_materialises_exact_rows_csv_and_passing_check(
    demo_config: Path, instance: dg.DagsterInstance
) -> None:
    result = materialise(demo_config, instance, "postgres-prod", DAY)
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"chargebacks_reconcile_with_billing", "chargebacks_unallocated_share"}
    assert all(e.passed and e.partition == "2026-03-01|postgres-prod" for e in evaluations.values())
    evaluation = evaluations["chargebacks_reconcile_with_billing"]
    assert evaluation.metadata["billed_total"].value == "38.1216"
    assert evaluation.metadata["allocated_total"].value == "38.1216"

    rows = stored_rows(demo_config, "postgres-prod", "acme-postgres", DAY)
    assert len(rows) == 15
    assert sum(r.amount for r in rows) == Decimal("38.1216")
    csv_path = demo_config.parent / "out" / "csv" / "postgres-prod" / "2026-03-01.csv"
    assert csv_path.read_bytes().decode("utf-8") == EXPECTED_PG_CSV

    materialisations = {
        e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    chargebacks = materialisations["chargebacks"]
    assert chargebacks["line_count"].value == 3
    assert chargebacks["row_count"].value == 15
    assert chargebacks["unallocated_total"].value == "0.0000"
    assert chargebacks["unallocated_share"].value == "0.00%"
    assert materialisations["billing_lines"]["billed_total"].value == "38.1216"
    assert materialisations["emit_csv"]["row_count"].value == 15
    assert materialisations["emit_csv"]["path"].value == str(csv_path)


def test_rematerialising_replaces_exactly(demo_config: Path, instance: dg.DagsterInstance) -> None:
    assert materialise(demo_config, instance, "postgres-prod", DAY).success
    csv_path = demo_config.parent / "out" / "csv" / "postgres-prod" / "2026-03-01.csv"
    first_rows = stored_rows(demo_config, "postgres-prod", "acme-postgres", DAY)
    first_hash = sha256(csv_path)

    assert materialise(demo_config, instance, "postgres-prod", DAY).success
    second_rows = stored_rows(demo_config, "postgres-prod", "acme-postgres", DAY)
    assert [(r.identity_id, r.product_type, r.amount) for r in second_rows] == [
        (r.identity_id, r.product_type, r.amount) for r in first_rows
    ]
    assert len(second_rows) == 15
    assert sha256(csv_path) == first_hash


def test_monthly_csv_collects_every_calculated_day(demo_config: Path, instance: dg.DagsterInstance) -> None:
    for day in (date(2026, 3, 1), date(2026, 3, 2)):
        assert materialise(demo_config, instance, "redis-cache", day).success
    monthly = demo_config.parent / "out" / "csv" / "redis-cache" / "2026-03-01.csv"
    lines = monthly.read_text(encoding="utf-8").splitlines()
    # 2 product types × 3 identities, each summing two days: REDIS_NODE 3.2960 × 2.
    assert len(lines) == 1 + 6
    assert (
        "generic_metrics_only,acme-redis,2026-03-01T00:00:00+00:00,redis-cache-1,redis,REDIS_NODE,"
        "app-orders,shared,6.5920,even_split," in lines
    )


def test_date_outside_a_tenants_window_fails_with_a_clear_message(
    demo_config: Path, instance: dg.DagsterInstance
) -> None:
    # redis-cache waits 3 days for settled costs; postgres-prod only 1. 2026-03-07 is a
    # partition (postgres may calculate it) but not yet an allowed date for redis-cache.
    text = demo_config.read_text(encoding="utf-8")
    demo_config.write_text(
        text.replace(
            "cutoff_days: 1\n    retention_days: 90\n    storage:\n      path: data/redis",
            "cutoff_days: 3\n    retention_days: 90\n    storage:\n      path: data/redis",
        ),
        encoding="utf-8",
    )
    result = materialise(demo_config, instance, "redis-cache", date(2026, 3, 7))
    assert not result.success
    failures = {e.step_key: str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure}
    assert set(failures) == {"billing_lines", "inventory"}
    for message in failures.values():
        assert "tenant 'redis-cache': date 2026-03-07 is not allowed: cutoff_days=3" in message
    assert not (demo_config.parent / "data" / "redis-cache.duckdb").exists()
    # The other tenant is unaffected.
    assert materialise(demo_config, instance, "postgres-prod", date(2026, 3, 7)).success


def test_external_plugin_and_custom_emitter_with_storage_backend(
    tmp_path: Path, frozen_clock: str, instance: dg.DagsterInstance
) -> None:
    plugins = tmp_path / "plugins"
    shutil.copytree(Path(__file__).parent.parent / "examples" / "plugins" / "flat_fee", plugins / "flat_fee")
    config = tmp_path / "config.yaml"
    config.write_text(
        """
plugins_path: plugins
tenants:
  team-tools:
    ecosystem: flat_fee
    tenant_id: tools
    lookback_days: 8
    cutoff_days: 1
    plugin_settings:
      service_id: wiki
      daily_fee: "10.0000"
      users: [carol, alice, bob]
      emitters:
        - {type: team_totals, params: {output_dir: out/json}}
        - {type: csv, params: {output_dir: out/csv}}
""",
        encoding="utf-8",
    )
    result = materialise(config, instance, "team-tools", DAY)
    assert result.success
    document = (tmp_path / "out" / "json" / "tools-2026-03-01.json").read_text(encoding="utf-8")
    # 10.0000 / 3 = 3.3333 each, the remainder 0.0001 to the first sorted id (alice).
    assert (
        '"alice": "3.3334"' in document and '"bob": "3.3333"' in document and '"carol": "3.3333"' in document
    )
    # The billed total comes from the injected storage backend, not from the rows.
    assert '"billed": "10.0000"' in document
    assert (tmp_path / "out" / "csv" / "tools_2026-03-01.csv").exists()
    # The custom emitter's sink partition shows what it wrote, like the built-in ones.
    sink = next(
        e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("emit_team_totals")
    )
    assert sink["status"].value == "emitted"
    assert sink["path"].value == str(tmp_path / "out" / "json" / "tools-2026-03-01.json")
    assert (sink["row_count"].value, sink["bytes_written"].value) == (3, len(document.encode("utf-8")))


def test_reconciliation_check_fails_when_rows_do_not_sum_to_the_bill(
    demo_config: Path, instance: dg.DagsterInstance
) -> None:
    from types import SimpleNamespace

    import duckdb

    from chargeback_pipeline.defs.checks import reconcile

    assert materialise(demo_config, instance, "postgres-prod", DAY).success
    path = demo_config.parent / "data" / "postgres-prod.duckdb"
    with duckdb.connect(str(path)) as conn:  # tamper: move 0.0001 of one row
        conn.execute(
            "UPDATE chargebacks SET amount = amount + 0.0001 "
            "WHERE identity_id = 'app-audit' AND product_type = 'PG_COMPUTE' "
            "AND billing_date = DATE '2026-03-01'"
        )
    with open_tenant_db(path, ecosystem="generic_metrics_only", tenant_id="acme-postgres") as db:
        outcome = reconcile(SimpleNamespace(db=db), DAY)  # type: ignore[arg-type]
    assert outcome["passed"] is False
    assert outcome["mismatched_lines"] == 1
    assert outcome["billed_total"] == "38.1216" and outcome["allocated_total"] == "38.1217"
    assert (
        "PG_COMPUTE" in outcome["first_mismatches"]
        and "billed 29.9520 allocated 29.9521" in outcome["first_mismatches"]
    )


def test_workspace_loads_for_dagster_dev(demo_config: Path) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "CHARGEBACK_CONFIG": str(demo_config), "DAGSTER_HOME": str(demo_config.parent)}
    (demo_config.parent / "dagster.yaml").write_text(
        (repo / "dagster.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    dagster = Path(sys.executable).parent / "dagster"
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "All code locations passed validation" in done.stdout + done.stderr


def test_secrets_never_reach_run_config_events_metadata_or_files(
    tmp_path: Path, frozen_clock: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "tok-9f8e7d6c5b4a-NEVER-SHOW"
    monkeypatch.setenv("FLAT_FEE_TOKEN", secret)
    shutil.copytree(
        Path(__file__).parent.parent / "examples" / "plugins" / "flat_fee", tmp_path / "plugins" / "flat_fee"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        """
plugins_path: plugins
tenants:
  team-tools:
    ecosystem: flat_fee
    tenant_id: tools
    lookback_days: 8
    cutoff_days: 1
    plugin_settings:
      service_id: wiki
      daily_fee: "10.0000"
      users: [alice]
      api_token: ${FLAT_FEE_TOKEN}
      emitters: [{type: csv, params: {output_dir: out}}]
""",
        encoding="utf-8",
    )
    result = materialise(config, instance, "team-tools", DAY)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and secret not in repr(run.run_config) and secret not in repr(run.tags)
    for record in instance.all_logs(result.run_id):
        assert secret not in repr(record)
    defs = build_definitions(config)
    resources = repr(defs.resources)
    assert secret not in resources and str(config) in resources
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in {".csv", ".json", ".yaml"} and path != config:
            assert secret not in path.read_text(encoding="utf-8")
