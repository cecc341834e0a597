"""Like a user: ``dagster dev`` from the repository, the UI in headless Chromium, a backfill via GraphQL.

One ``dagster dev`` (webserver, daemon with the run queue of dagster.yaml, code server)
serves the demo tenants. The test saves screenshots of the asset lineage and of the
backfill under its output directory (and into ``$CHARGEBACK_UI_SCREENSHOTS`` when set,
which is how the README's images are made), launches backfills exactly as the UI does,
waits for them, and checks partition status, per-partition check results, the run
coordinator's tenant tags, that two runs of one tenant never overlapped, and that no more
runs executed at once than ``features.max_parallel_tenants`` (2 runs for 3 tenants; the
50-tenant version is the slow ``tests/test_load.py``).
"""

from __future__ import annotations

import copy
import os
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from tests.browser import rendered_dom, screenshot
from tests.dagster_dev import dagster_dev

ASSETS = [
    "billing_lines",
    "inventory",
    "resource_deletions",
    "usage_metrics",
    "chargebacks",
    "emit_csv",
    "emit_prometheus",
]
# More dates than tenants: Dagster splits a backfill by its dimension with fewer keys.
DATES = ["2026-03-04", "2026-03-05", "2026-03-06", "2026-03-07"]
# A third tenant (a copy of redis-cache with its own store) so that the demo's
# max_parallel_tenants: 2 is a real limit on the 3 tenants backfilled at once.
TENANTS = ["postgres-prod", "redis-cache", "redis-cache-b"]
MAX_PARALLEL_TENANTS = 2
BACKFILL_TIMEOUT_S = 300

PARTITION_STATS = """
query($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { partitionStats { numMaterialized numFailed numPartitions } }
  }
}"""

CHECK_EXECUTIONS = """
query($check: String!) {
  assetCheckExecutions(assetKey: {path: ["chargebacks"]}, checkName: $check, limit: 50) {
    status partition evaluation { severity }
  }
}"""


def keep(path: Path) -> None:
    target = os.environ.get("CHARGEBACK_UI_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def intervals(runs: list[dict[str, Any]], tenant: str) -> list[tuple[float, float]]:
    chosen = [r for r in runs if {"key": "tenant", "value": tenant} in r["tags"]]
    return sorted((r["startTime"], r["endTime"]) for r in chosen)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """Most runs started and not yet ended at one instant (an end and a start at once don't overlap)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def with_third_tenant(config: Path) -> None:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert data["features"]["max_parallel_tenants"] == MAX_PARALLEL_TENANTS
    # Only the runs this test launches: no refresh tick may land in the middle of it.
    data["features"]["enable_periodic_refresh"] = False
    third = copy.deepcopy(data["tenants"]["redis-cache"])
    third["tenant_id"] = "acme-redis-b"
    third["storage"]["path"] = "data/redis-cache-b.duckdb"
    data["tenants"]["redis-cache-b"] = third
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def test_lineage_in_chromium_and_a_backfill_through_graphql(demo_config: Path, tmp_path: Path) -> None:
    with_third_tenant(demo_config)
    with dagster_dev(demo_config, tmp_path / "dagster_home") as dev:
        lineage_url = f"{dev.url}/assets/chargebacks?view=lineage&lineageScope=neighbors&lineageDepth=5"
        dom = rendered_dom(lineage_url)
        for name in [*ASSETS, "gather", "allocate", "emit"]:
            assert name in dom, f"{name} missing from the rendered lineage page"

        everything = dev.launch_backfill([f"{d}|{t}" for d in DATES for t in TENANTS], ASSETS)
        # At the same time, a second backfill of one tenant: the queue must serialise it.
        again = dev.launch_backfill([f"{d}|postgres-prod" for d in DATES], ASSETS)
        first = dev.wait_for_backfill(everything, BACKFILL_TIMEOUT_S)
        second = dev.wait_for_backfill(again, BACKFILL_TIMEOUT_S)
        assert first["status"] == second["status"] == "COMPLETED_SUCCESS", dev.log_tail()

        # Backfill policy single_run: one run per tenant, not one per day; the coordinator
        # tagged each with its tenant (Dagster leaves range runs untagged).
        runs = first["runs"]
        assert sorted(t["value"] for r in runs for t in r["tags"] if t["key"] == "tenant") == TENANTS
        assert {r["status"] for r in runs} == {"SUCCESS"}
        # ... and with the tenant's run timeout (tenant_execution_timeout_seconds, default 3600).
        timeouts = [t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/max_runtime"]
        assert timeouts == ["3600"] * len(TENANTS)
        starts = {
            t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/asset_partition_range_start"
        }
        assert starts == {f"{DATES[0]}|{t}" for t in TENANTS}
        # Same-tenant runs of the two backfills never overlapped.
        pg = intervals(first["runs"] + second["runs"], "postgres-prod")
        assert len(pg) == 2 and pg[0][1] <= pg[1][0], pg
        # max_parallel_tenants: never more than 2 of the 4 runs (3 tenants) executing at once.
        spans = [(r["startTime"], r["endTime"]) for r in first["runs"] + second["runs"]]
        assert len(spans) == 4 and most_at_once(spans) <= MAX_PARALLEL_TENANTS, spans

        for asset in ASSETS:
            stats = dev.graphql(PARTITION_STATS, {"path": [asset]})["assetNodeOrError"]["partitionStats"]
            assert stats["numMaterialized"] == len(DATES) * len(TENANTS) and stats["numFailed"] == 0, asset
        for check in ("chargebacks_reconcile_with_billing", "chargebacks_unallocated_share"):
            executions = dev.graphql(CHECK_EXECUTIONS, {"check": check})["assetCheckExecutions"]
            passed = {e["partition"] for e in executions if e["status"] == "SUCCEEDED"}
            assert passed == {f"{d}|{t}" for d in DATES for t in TENANTS}, (check, executions)

        shots = tmp_path / "screenshots"
        keep(screenshot(lineage_url, shots / "lineage.png"))
        keep(screenshot(f"{dev.url}/runs/b/{everything}", shots / "backfill.png"))
        backfill_dom = rendered_dom(f"{dev.url}/runs/b/{everything}")
        assert "Succeeded" in backfill_dom and "chargebacks" in backfill_dom
        for shot in shots.iterdir():
            assert shot.stat().st_size > 20_000, f"{shot.name} looks blank"

    # The CSV files of the backfill are the demo's numbers.
    csv = demo_config.parent / "out" / "csv" / "postgres-prod" / "2026-03-07.csv"
    lines = csv.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 15
    assert sum(Decimal(line.split(",")[8]) for line in lines[1:]) == Decimal("38.1216")
