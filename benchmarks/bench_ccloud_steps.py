"""Benchmark: the Confluent Cloud benchmark's 30 days through the step functions, without Dagster.

Usage::

    .venv/bin/python benchmarks/bench_ccloud_steps.py [--workdir DIR] [--no-metrics]

Same organisation, stand-in API, Prometheus and configuration as ``bench_ccloud.py``,
but the lifecycle steps are called directly in this process, shaped like one run over
the whole date range: one plugin runtime, and for each step one session of the tenant's
store over all 30 dates, in asset order (billing, inventory, deletion detection, usage,
chargebacks, reconciliation, CSV). It measures the engine's own per-date cost — what is
left once the per-run orchestration of ``chargeback run`` is gone — and prints the time
of each step, the time its commits took, and the peak RSS of this process (which also
holds the stand-in API and its data).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_ccloud as bench  # noqa: E402

from chargeback_pipeline import clock, emission, steps  # noqa: E402
from chargeback_pipeline.config import load_config  # noqa: E402
from chargeback_pipeline.loader import discover_plugins  # noqa: E402
from chargeback_pipeline.runtime import open_runtime  # noqa: E402
from chargeback_pipeline.storage import open_tenant_db, transactions  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".work", help="cache for data")
    parser.add_argument("--no-metrics", action="store_true", help="no Prometheus: usage splits fall back")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = bench.generate(workdir)
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    run_dir = workdir / "run-steps"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    os.environ.update(
        CHARGEBACK_NOW=manifest["frozen_now"],
        BENCH_CCLOUD_KEY=bench.KEY,
        BENCH_CCLOUD_SECRET=bench.SECRET,
        BENCH_FLINK_KEY=bench.FLINK_KEY,
        BENCH_FLINK_SECRET=bench.FLINK_SECRET,
    )
    os.chdir(run_dir)

    seconds: dict[str, float] = defaultdict(float)
    commits: dict[str, float] = defaultdict(float)
    current = ["-"]
    finish = transactions._finish

    def timed_finish(*a: Any) -> None:
        started = time.perf_counter()
        try:
            finish(*a)
        finally:
            commits[current[0]] += time.perf_counter() - started

    transactions._finish = timed_finish  # type: ignore[assignment]
    prometheus = None if args.no_metrics else bench.start_prometheus(dataset, workdir)
    organisation = bench.RecordedOrganisation.from_dir(dataset / "ccloud")
    try:
        credentials = [(bench.KEY, bench.SECRET), (bench.FLINK_KEY, bench.FLINK_SECRET)]
        with bench.StandInServer(organisation, credentials=credentials) as server:
            config = bench.write_config(
                run_dir, server.url, prometheus.url if prometheus else None, manifest, False
            )
            loaded = load_config(config)
            tenant = loaded.tenants[bench.TENANT]
            dates = clock.refresh_window(tenant, clock.utc_now().date())
            registry = discover_plugins(loaded.settings.plugins_path)
            started = time.perf_counter()
            with open_runtime(bench.TENANT, tenant, registry) as runtime:

                def step(name: str, fn: Callable[[steps.TenantSession], object]) -> None:
                    current[0] = name
                    begin = time.perf_counter()
                    with open_tenant_db(
                        tenant.storage_path,
                        ecosystem=runtime.ecosystem,
                        tenant_id=runtime.tenant_id,
                        storage_module=runtime.storage_module,
                    ) as db:
                        fn(steps.TenantSession(bench.TENANT, tenant, runtime, db))
                    seconds[name] += time.perf_counter() - begin

                run_id = uuid.uuid4().hex
                step("billing", lambda s: steps.gather_billing(s, dates))
                step("inventory", lambda s: steps.gather_inventory(s, run_id, clock.utc_now()))
                step("deletions", steps.detect_deletions)
                step("usage", lambda s: steps.fetch_usage_dates(s, dates))
                step("chargebacks", lambda s: [steps.calculate_chargebacks(s, d) for d in dates])
                step("reconciliation", lambda s: [_reconcile(s, d) for d in dates])
                step("csv", lambda s: emission.emit_dates(s, "csv", dates, clock.utc_today()))
            wall = time.perf_counter() - started
    finally:
        transactions._finish = finish  # type: ignore[assignment]
        if prometheus is not None:
            prometheus.stop()
    print(f"\nConfluent Cloud steps without Dagster — {len(dates)} days, one session per step")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  wall time {wall:6.1f} s   peak RSS {peak:.0f} MiB")
    for name, value in seconds.items():
        print(f"    {name:<16} {value:6.2f} s   (commits {commits[name]:5.2f} s)")
    return 0


def _reconcile(session: steps.TenantSession, d: Any) -> None:
    """The reconciliation check's queries: every line and the date must balance."""
    chargebacks = session.db.chargebacks
    unbalanced = [t for t in chargebacks.line_totals(d) if not t.balanced]
    totals = chargebacks.date_totals(d)
    if unbalanced or totals.billed != totals.allocated:
        raise AssertionError(f"{d}: {len(unbalanced)} unbalanced lines, {totals}")


if __name__ == "__main__":
    sys.exit(main())
