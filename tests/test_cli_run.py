"""``chargeback run`` as a user runs it: a separate process, real files, exit codes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from chargeback_pipeline.storage import open_tenant_db
from tests.conftest import FROZEN_NOW, REPO

PG_DAY_TOTAL = "38.1216"
REDIS_DAY_TOTAL = "10.1880"


def chargeback(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHARGEBACK_CONFIG")}
    environment["CHARGEBACK_NOW"] = FROZEN_NOW
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "chargeback_pipeline.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def tree_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.endswith(".lock")):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_demo_run_prints_progress_summary_and_writes_csvs(demo_config: Path) -> None:
    (demo_config.parent / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    done = chargeback("run", "--config", str(demo_config), cwd=demo_config.parent)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "tenant postgres-prod: 7 date(s) 2026-03-01 .. 2026-03-07" in out
    # One Dagster run per tenant over its 7 dates, each date still reported on its own line.
    assert out.count("  one run over 7 date(s): ok in ") == 3
    assert out.count(f"billed {PG_DAY_TOTAL}  allocated {PG_DAY_TOTAL}  UNALLOCATED 0.0000") == 7
    assert out.count(f"billed {REDIS_DAY_TOTAL}  allocated {REDIS_DAY_TOTAL}  UNALLOCATED 0.0000") == 7
    # 7 × 38.1216 and 7 × 10.1880
    assert (
        "postgres-prod: dates ok 7, failed 0; billed 266.8512, allocated 266.8512, UNALLOCATED 0.0000 (0.00%)"
        in out
    )
    assert (
        "redis-cache: dates ok 7, failed 0; billed 71.3160, allocated 71.3160, UNALLOCATED 0.0000 (0.00%)"
        in out
    )
    csv_dir = demo_config.parent / "out" / "csv"
    assert sorted(p.name for p in (csv_dir / "postgres-prod").iterdir()) == [
        f"2026-03-0{i}.csv" for i in range(1, 8)
    ]
    assert [p.name for p in (csv_dir / "redis-cache").iterdir()] == ["2026-03-01.csv"]
    # The Confluent Cloud tenant replays the recorded sample organisation (no credentials, no
    # Prometheus): the sample's billing to the cent; without telemetry only the mid-day cluster's
    # inactive share and the unknown product type reach UNALLOCATED.
    assert "tenant confluent-cloud: 7 date(s) 2026-03-01 .. 2026-03-07" in out
    assert (
        "confluent-cloud: dates ok 7, failed 0; billed 1609.3295, allocated 1609.3295, "
        "UNALLOCATED 24.7134 (1.54%)" in out
    )
    assert sorted(p.name for p in (csv_dir / "confluent-cloud").iterdir()) == [
        f"2026-03-0{i}.csv" for i in range(1, 8)
    ]
    # The runs went to the persistent instance in the working directory (dagster.yaml there).
    assert (demo_config.parent / "history" / "runs.db").exists()
    with dg.DagsterInstance.from_config(str(demo_config.parent)) as instance:
        runs = instance.get_runs()
        assert sorted(r.tags["tenant"] for r in runs) == ["confluent-cloud", "postgres-prod", "redis-cache"]
        assert {r.tags["dagster/asset_partition_range_end"] for r in runs} == {
            f"2026-03-07|{t}" for t in ("confluent-cloud", "postgres-prod", "redis-cache")
        }

    metrics_dir = demo_config.parent / "out" / "metrics"
    assert sorted(p.name for p in metrics_dir.iterdir()) == [
        "acme-postgres.om",
        "acme-postgres.prom",
        "acme-redis.om",
        "acme-redis.prom",
    ]
    assert f"    wrote {metrics_dir / 'acme-postgres.om'}\n" in out
    assert f"    wrote {metrics_dir / 'acme-redis.prom'}\n" in out
    history = (metrics_dir / "acme-postgres.om").read_text(encoding="utf-8")
    # 7 days × 15 label sets (3 product types × 5 identities), each at its own midnight.
    assert history.count("\nchargeback_amount{") == 7 * 15
    assert history.endswith("# EOF\n")

    # Running again (a recalculation of every date) reproduces every file byte for byte.
    first = tree_hash(csv_dir), tree_hash(metrics_dir)
    assert chargeback("run", "--config", str(demo_config), cwd=demo_config.parent).returncode == 0
    assert (tree_hash(csv_dir), tree_hash(metrics_dir)) == first


def test_selected_tenant_and_dates(demo_config: Path) -> None:
    done = chargeback(
        "run",
        "--config",
        str(demo_config),
        "--tenant",
        "redis-cache",
        "--start",
        "2026-03-02",
        "--end",
        "2026-03-03",
        cwd=demo_config.parent,
    )
    assert done.returncode == 0, done.stderr
    assert "tenant redis-cache: 2 date(s) 2026-03-02 .. 2026-03-03" in done.stdout
    assert "postgres-prod" not in done.stdout
    monthly = demo_config.parent / "out" / "csv" / "redis-cache" / "2026-03-01.csv"
    assert ",REDIS_NODE,app-orders,shared,6.5920," in monthly.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace('rate: "0.416"', 'rate: "-0.416"'),
            "tenant 'postgres-prod': plugin_settings.cost_types.0.rate: must be >= 0",
        ),
        (
            lambda t: t.replace('rate: "0.416"', 'rate: "abc"'),
            "tenant 'postgres-prod': plugin_settings.cost_types.0.rate: must be a decimal number",
        ),
        (
            lambda t: t.replace(
                "ecosystem: generic_metrics_only\n    tenant_id: acme-postgres",
                "ecosystem: no_such_plugin\n    tenant_id: acme-postgres",
            ),
            "tenant 'postgres-prod': ecosystem: unknown ecosystem 'no_such_plugin'",
        ),
        (
            lambda t: t.replace("tenant_id: acme-postgres", "tenant_id: ${PG_TENANT_LABEL}"),
            "Required environment variable 'PG_TENANT_LABEL' is not set (at tenants.postgres-prod.tenant_id)",
        ),
        (
            lambda t: t.replace("path: data/redis-cache.duckdb", "path: data/postgres-prod.duckdb"),
            "postgres-prod",
        ),
        (lambda t: t.replace("  postgres-prod:", "  postgres prod!:"), "postgres prod!"),
        (lambda t: t + "\n  broken: [unclosed\n", "Malformed YAML in"),
    ],
    ids=[
        "negative-rate",
        "non-numeric-rate",
        "unknown-ecosystem",
        "missing-env",
        "shared-storage",
        "bad-name",
        "yaml",
    ],
)
def test_bad_config_fails_clearly_and_changes_nothing(demo_config: Path, edit: object, expected: str) -> None:
    assert (
        chargeback(
            "run", "--config", str(demo_config), "--tenant", "postgres-prod", cwd=demo_config.parent
        ).returncode
        == 0
    )
    before = tree_hash(demo_config.parent / "data"), tree_hash(demo_config.parent / "out")

    original = demo_config.read_text(encoding="utf-8")
    demo_config.write_text(edit(original), encoding="utf-8")  # type: ignore[operator]
    done = chargeback(
        "run", "--config", str(demo_config), "--tenant", "postgres-prod", cwd=demo_config.parent
    )
    assert done.returncode == 1
    assert expected in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert (tree_hash(demo_config.parent / "data"), tree_hash(demo_config.parent / "out")) == before


def test_broken_external_plugin_is_named_and_other_tenants_run(demo_config: Path) -> None:
    plugins = demo_config.parent / "plugins" / "exploding"
    plugins.mkdir(parents=True)
    (plugins / "__init__.py").write_text(
        "def register():\n    raise RuntimeError('license server unreachable')\n", encoding="utf-8"
    )
    text = demo_config.read_text(encoding="utf-8")
    text = text.replace(
        "tenants:\n",
        "plugins_path: plugins\ntenants:\n  vendor-x:\n    ecosystem: exploding\n    tenant_id: x\n",
        1,
    )
    demo_config.write_text(text, encoding="utf-8")

    done = chargeback("run", "--config", str(demo_config), "--tenant", "vendor-x", cwd=demo_config.parent)
    assert done.returncode == 1
    assert "exploding" in done.stderr and "license server unreachable" in done.stderr

    ok = chargeback("run", "--config", str(demo_config), "--tenant", "postgres-prod", cwd=demo_config.parent)
    assert ok.returncode == 0, ok.stderr


def test_two_processes_on_one_tenant_both_succeed(demo_config: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHARGEBACK_CONFIG")}
    environment["CHARGEBACK_NOW"] = FROZEN_NOW
    command = [
        sys.executable,
        "-m",
        "chargeback_pipeline.cli",
        "run",
        "--config",
        str(demo_config),
        "--tenant",
        "postgres-prod",
    ]
    first = subprocess.Popen(
        command,
        cwd=demo_config.parent,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = subprocess.Popen(
        command,
        cwd=demo_config.parent,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    results = [p.communicate(timeout=300) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], results
    for out, _ in results:
        assert out.count(f"billed {PG_DAY_TOTAL}  allocated {PG_DAY_TOTAL}") == 7


def scripted_config(tmp_path: Path, fail_billing_dates: list[str]) -> Path:
    """One tenant of the scripted fixture plugin whose billing export breaks on the given dates."""
    (tmp_path / "plugins").mkdir()
    shutil.copytree(
        REPO / "tests" / "fixtures" / "plugins_ops" / "scripted", tmp_path / "plugins" / "scripted"
    )
    script = tmp_path / "inventory.json"
    script.write_text(
        '{"handlers": {"svc": {"types": ["service"], "bills": true, "identities": ["ann", "bob"]}}}', "utf-8"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
plugins_path: plugins
tenants:
  shop:
    ecosystem: scripted
    tenant_id: shop
    lookback_days: 8
    cutoff_days: 1
    plugin_settings: {{script: {script}, fail_billing_dates: {fail_billing_dates}}}
""",
        encoding="utf-8",
    )
    return config


def stored_dates(config: Path) -> list[str]:
    with open_tenant_db(config.parent / "data" / "shop.duckdb", ecosystem="scripted", tenant_id="shop") as db:
        return [str(d) for d in db.chargebacks.dates()]


def test_a_date_failing_inside_the_range_run_is_named_and_every_other_date_completes(tmp_path: Path) -> None:
    config = scripted_config(tmp_path, ["2026-03-04"])
    done = chargeback("run", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    # The range run fails in its billing step (nothing downstream runs for any date) ...
    assert "  one run over 7 date(s): FAILED after " in out
    assert (
        "billing gather failed for 1 date(s): 2026-03-04: PluginCallError: tenant 'shop': "
        "plugin 'scripted' cost input gather() raised RuntimeError: billing export unavailable"
    ) in out
    assert "  running the 7 date(s) it did not complete one at a time" in out
    # ... so each date runs alone: six complete, the broken one fails under its own date.
    for day in ("01", "02", "03", "05", "06", "07"):
        assert f"  2026-03-{day}  ok " in out
    assert out.count("billed 12.0000  allocated 12.0000  UNALLOCATED 0.0000") == 6
    assert "  2026-03-04  FAILED after " in out
    failed_line = out.split("  2026-03-04  FAILED", 1)[1].splitlines()[0]
    assert "billing export unavailable for 2026-03-04" in failed_line
    assert "shop: dates ok 6, failed 1; billed 72.0000, allocated 72.0000" in out
    assert "    failed dates: 2026-03-04\n" in out
    assert stored_dates(config) == [f"2026-03-0{d}" for d in (1, 2, 3, 5, 6, 7)]

    # The export is repaired: one run over the 7 dates, every date calculated.
    config.write_text(config.read_text(encoding="utf-8").replace("['2026-03-04']", "[]"), encoding="utf-8")
    again = chargeback("run", "--config", str(config), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "  one run over 7 date(s): ok in " in again.stdout
    assert "running the" not in again.stdout
    assert again.stdout.count("billed 12.0000  allocated 12.0000  UNALLOCATED 0.0000") == 7
    assert "shop: dates ok 7, failed 0; billed 84.0000, allocated 84.0000" in again.stdout
    assert stored_dates(config) == [f"2026-03-0{d}" for d in range(1, 8)]
