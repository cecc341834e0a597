"""Faults: a run killed mid-commit, overlapping runs of one tenant, a tenant that cannot start.

Each test drives the real pipeline (Dagster job, DuckDB files, CSV files); the killed run
and the overlapping runs are separate processes, as they would be in production.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from chargeback_pipeline.storage import open_tenant_db
from tests.conftest import REPO
from tests.ops_support import failures, python, run_range

DAY = date(2026, 3, 3)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def pg_state(config: Path) -> tuple[list[tuple[str, str, str]], str | None]:
    """DAY's stored rows and calculation id; every read also proves no row is duplicated."""
    with open_tenant_db(
        config.parent / "data" / "postgres-prod.duckdb",
        ecosystem="generic_metrics_only",
        tenant_id="acme-postgres",
    ) as db:
        rows = [(r.product_type, r.identity_id, f"{r.amount}") for r in db.chargebacks.find_by_date(DAY)]
        totals = db.chargebacks.date_totals(DAY)
        assert totals.allocated == sum((Decimal(r[2]) for r in rows), Decimal(0))
        assert totals.row_count == len(rows) == len(set(rows))  # nothing duplicated
        return rows, db.state.get(DAY).calculation_id


KILL_INSIDE_COMMIT = """
    import os, signal
    from pathlib import Path
    import dagster as dg
    from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
    from chargeback_pipeline.storage.chargebacks import ChargebackRepository

    replace = ChargebackRepository.replace_date

    def replace_then_die(self, d, rows, calculation_id):
        replace(self, d, rows, calculation_id)  # new rows written, transaction still open
        os.kill(os.getpid(), signal.SIGKILL)

    ChargebackRepository.replace_date = replace_then_die
    job = build_definitions(Path(os.environ["CONFIG"])).resolve_job_def(PIPELINE_JOB)
    job.execute_in_process(partition_key="2026-03-03|postgres-prod", instance=dg.DagsterInstance.ephemeral())
"""


@pytest.mark.outcome("killed-during-commit")
def test_a_run_killed_inside_the_commit_leaves_the_partition_as_it_was(
    demo_config: Path, instance: dg.DagsterInstance
) -> None:
    assert run_range(demo_config, instance, "2026-03-03|postgres-prod", "2026-03-03|postgres-prod").success
    before_rows, before_id = pg_state(demo_config)
    csv = demo_config.parent / "out" / "csv" / "postgres-prod" / "2026-03-03.csv"
    csv_hash = hashlib.sha256(csv.read_bytes()).hexdigest()
    assert len(before_rows) == 15 and before_id
    assert pg_billed_allocated(demo_config) == (Decimal("38.1216"), Decimal("38.1216"))

    # The backup rate changes, so the killed calculation would have written other amounts.
    text = demo_config.read_text(encoding="utf-8")
    assert 'rate: "0.021"' in text
    demo_config.write_text(text.replace('rate: "0.021"', 'rate: "0.025"'), "utf-8")
    killed = python(KILL_INSIDE_COMMIT, {"CONFIG": str(demo_config)})
    killed.communicate(timeout=300)
    assert killed.returncode == -9

    assert pg_state(demo_config) == (before_rows, before_id)
    assert hashlib.sha256(csv.read_bytes()).hexdigest() == csv_hash
    # The killed run's billing step had committed the revised bill (its own transaction), so
    # until the next calculation the stored rows still add up to the previous bill.
    assert pg_billed_allocated(demo_config) == (Decimal("38.2176"), Decimal("38.1216"))
    # The lock died with the process: the next run recalculates with the new rate.
    assert run_range(demo_config, instance, "2026-03-03|postgres-prod", "2026-03-03|postgres-prod").success
    rows, calculation_id = pg_state(demo_config)
    assert calculation_id != before_id
    assert ("PG_BACKUP", "app-audit", "0.1200") in rows
    assert pg_billed_allocated(demo_config) == (Decimal("38.2176"), Decimal("38.2176"))


def pg_billed_allocated(config: Path) -> tuple[Decimal, Decimal]:
    with open_tenant_db(
        config.parent / "data" / "postgres-prod.duckdb",
        ecosystem="generic_metrics_only",
        tenant_id="acme-postgres",
    ) as db:
        totals = db.chargebacks.date_totals(DAY)
        return totals.billed, totals.allocated


OVERLAPPING_RUN = """
    import logging, os, sys
    from pathlib import Path
    import dagster as dg
    from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s %(message)s")
    job = build_definitions(Path(os.environ["CONFIG"])).resolve_job_def(PIPELINE_JOB)
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        tags={"dagster/asset_partition_range_start": "2026-03-01|postgres-prod",
              "dagster/asset_partition_range_end": "2026-03-07|postgres-prod"},
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
    )
    print("RESULT", "OK" if result.success else "FAILED", flush=True)
"""
WAITING = "waiting for another run of this tenant to release"


@pytest.mark.outcome("overlapping-runs-one-tenant")
def test_a_run_waits_for_another_run_of_its_tenant_instead_of_failing(
    demo_config: Path, instance: dg.DagsterInstance
) -> None:
    assert run_range(demo_config, instance, "2026-03-01|postgres-prod", "2026-03-01|postgres-prod").success
    store = demo_config.parent / "data" / "postgres-prod.duckdb"
    # This process holds the tenant's database, as a running step of another run would.
    with open_tenant_db(store, ecosystem="generic_metrics_only", tenant_id="acme-postgres"):
        other = python(OVERLAPPING_RUN, {"CONFIG": str(demo_config)})
        watchdog = threading.Timer(180, other.kill)  # never hang the suite on a lost message
        watchdog.start()
        seen: list[str] = []
        assert other.stdout is not None
        for line in other.stdout:
            seen.append(line)
            if WAITING in line:
                break
        assert any(WAITING in line for line in seen), "".join(seen)[-2000:]
    output, _ = other.communicate(timeout=300)
    watchdog.cancel()
    assert other.returncode == 0 and "RESULT OK" in output, output[-2000:]
    with open_tenant_db(store, ecosystem="generic_metrics_only", tenant_id="acme-postgres") as db:
        assert db.chargebacks.dates() == [date(2026, 3, d) for d in range(1, 8)]
        for d in db.chargebacks.dates():
            totals = db.chargebacks.date_totals(d)
            assert totals.billed == totals.allocated == Decimal("38.1216")
            assert totals.row_count == 15


def broken_tenant_config(tmp_path: Path) -> Path:
    shutil.copytree(
        REPO / "tests" / "fixtures" / "plugins_ops" / "scripted", tmp_path / "plugins" / "scripted"
    )
    script = tmp_path / "inventory.json"
    script.write_text(
        '{"handlers": {"svc": {"types": ["service"], "bills": true, "identities": ["ann"]}}}', "utf-8"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
plugins_path: plugins
tenants:
  healthy:
    ecosystem: scripted
    tenant_id: healthy
    lookback_days: 8
    cutoff_days: 1
    plugin_settings: {{script: {script}}}
  broken:
    ecosystem: scripted
    tenant_id: broken
    lookback_days: 8
    cutoff_days: 1
    plugin_settings: {{script: {script}, fail_initialize: true}}
""",
        encoding="utf-8",
    )
    return config


@pytest.mark.outcome("plugin-raises-in-initialize")
def test_a_tenant_that_cannot_initialise_fails_only_its_own_runs(
    tmp_path: Path, frozen_clock: str, instance: dg.DagsterInstance
) -> None:
    config = broken_tenant_config(tmp_path)
    broken = run_range(config, instance, "2026-03-01|broken", "2026-03-07|broken")
    assert not broken.success
    expected = (
        "tenant 'broken': plugin 'scripted' failed to initialise: "
        "RuntimeError: vendor API rejected the credentials"
    )
    assert failures(broken) and all(expected in message for message in failures(broken).values())
    healthy = run_range(config, instance, "2026-03-01|healthy", "2026-03-07|healthy")
    assert healthy.success
    charged = [
        e for e in healthy.get_asset_materialization_events() if e.asset_key == dg.AssetKey("chargebacks")
    ]
    assert len(charged) == 7


@pytest.mark.outcome("plugin-raises-in-initialize")
def test_a_run_spanning_both_tenants_names_only_the_failing_one(
    tmp_path: Path, frozen_clock: str, instance: dg.DagsterInstance
) -> None:
    # A UI backfill of one date for every tenant becomes a single run over both tenants.
    config = broken_tenant_config(tmp_path)
    result = run_range(config, instance, "2026-03-07|broken", "2026-03-07|healthy")
    assert not result.success
    messages = failures(result)
    assert set(messages) == {"billing_lines", "inventory"}  # the roots; everything downstream skipped
    for message in messages.values():
        first_line = message.splitlines()[0]
        assert (
            "tenant 'broken': PluginLoadError: tenant 'broken': plugin 'scripted' failed to initialise"
            in first_line
        )
        assert "healthy" not in first_line
    # The healthy tenant's work in those steps was still committed.
    with open_tenant_db(
        tmp_path / "data" / "healthy.duckdb", ecosystem="scripted", tenant_id="healthy"
    ) as db:
        assert db.state.get(date(2026, 3, 7)).billing_gathered
        assert db.identities.get("ann") is not None
