"""Load: 50 tenants × 30 days backfilled through the Dagster daemon (slow suite).

The work and its checks live in ``benchmarks/bench_load.py`` (which prints the same
report from the command line); this test runs it at the issue's size and fails on any
problem it found: a failed run or backfill, a partition materialised other than once,
billed ≠ allocated, more runs at once than ``features.max_parallel_tenants`` or two of
one tenant, a lock failure in any event log, or a process above its RSS bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_load import ASSETS, RSS_BOUNDS_MB, run_load

TENANTS, DAYS, LIMIT = 50, 30, 4


@pytest.mark.slow
@pytest.mark.outcome("load-50-tenants")
def test_fifty_tenants_for_thirty_days_through_the_daemon(tmp_path: Path) -> None:
    report = run_load(TENANTS, DAYS, LIMIT, tmp_path)
    print("\n".join(report.lines()))
    assert report.problems == [], "\n".join(report.lines())
    # One run per tenant (one backfill each), every partition of every asset, no failure.
    assert report.runs == TENANTS and report.run_statuses == ["SUCCESS"]
    assert report.partitions == TENANTS * DAYS and len(ASSETS) == 6
    # The queue is the binding limit: it filled the allowed slots and never more.
    assert report.max_concurrent_runs == LIMIT
    assert report.max_concurrent_runs_per_tenant == 1
    assert report.lock_failures == []
    # Memory of every kind of process was observed, and each stayed under its bound.
    assert set(report.peak_rss_mb) == set(RSS_BOUNDS_MB), report.peak_rss_mb
    assert report.processes["run worker"] >= TENANTS
    assert all(report.peak_rss_mb[kind] <= bound for kind, bound in RSS_BOUNDS_MB.items())
