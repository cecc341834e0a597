"""Load: many tenants × a month through the Dagster daemon, under ``max_parallel_tenants``.

Usage::

    .venv/bin/python benchmarks/bench_load.py [--tenants 50] [--days 30] [--limit 4] [--keep DIR]

Generates a configuration of ``--tenants`` cheap tenants (``generic_metrics_only`` with
fixed rates and static identities, like the demo's PostgreSQL and Redis tenants; each
with its own DuckDB store and CSV directory) and ``features.max_parallel_tenants:
--limit``, starts ``dagster dev`` (webserver, daemon with this repository's run
coordinator, code server) and launches one partition backfill per tenant over ``--days``
settled dates through GraphQL — one backfill per tenant because a single backfill over
fewer dates than tenants would run all tenants in one run per date (README,
"Backfills"). It waits until every backfill finished, sampling the resident memory of
every process of ``dagster dev`` (and the run workers it starts) from ``/proc`` twice a
second, and then verifies:

* every backfill and run succeeded; every asset has every partition materialised,
  ``chargebacks`` and ``emit_csv`` exactly once each, and every partition passed its
  reconciliation check;
* billed == allocated == the tenant's daily bill × days, per tenant and date (DuckDB);
* at no moment more than ``--limit`` runs were started at once, and never two runs of
  one tenant (from the runs' start and end times);
* no event of any run reports a lock failure (a timeout, DuckDB refusing its file lock);
  lock waits are counted and reported;
* peak RSS of each kind of process stays under ``RSS_BOUNDS_MB``.

Prints the report (wall time, partitions/s, runs, concurrency observed, peak RSS per
kind of process); exit code 1 when a verification fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.dagster_dev import DagsterDev, dagster_dev  # noqa: E402

ASSETS = ["billing_lines", "inventory", "resource_deletions", "usage_metrics", "chargebacks", "emit_csv"]
ONCE_ASSETS = ("chargebacks", "emit_csv")
# Peak resident memory allowed per process kind (MB). Measured with 50 tenants × 30 days on
# the 2-core development machine: daemon 249, run worker 243, code server 208, webserver
# 180, dagster dev 126 (README "Benchmarks"); the bounds leave about 2× room.
RSS_BOUNDS_MB = {"daemon": 600, "webserver": 600, "code server": 500, "run worker": 600, "dagster dev": 300}
# A step that found its tenant's lock held (by another run's brief read, e.g. the freshness
# check) logs this once; it then waits, which is the lock doing its job.
LOCK_WAIT = "waiting for another run of this tenant"
# A lock that was not obtained: our timeout, or DuckDB's own file lock refusing a second writer.
LOCK_FAILURES = ("timed out after", "could not set lock", "conflicting lock")
IDENTITIES = ["app-a", "app-b", "app-c"]
# Per tenant i: COMPUTE at 0.1000 + i/1000 per hour × 2 nodes, STORAGE flat 0.0125 per hour.
STORAGE_RATE = Decimal("0.0125")

RUNS = """
query { runsOrError(limit: 5000) { ... on Runs { results {
  runId status startTime endTime creationTime tags { key value } } } } }"""

RUN_EVENTS = """
query($runId: ID!, $after: String) { logsForRun(runId: $runId, afterCursor: $after, limit: 5000) {
  __typename
  ... on EventConnection { cursor hasMore events { __typename ... on MessageEvent { message level } } }
  ... on PythonError { message } } }"""

STATS = """
query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
  ... on AssetNode { partitionStats { numMaterialized numFailed numPartitions } } } }"""

MATERIALISATIONS = """
query($path: [String!]!, $limit: Int!) { assetNodeOrError(assetKey: {path: $path}) {
  ... on AssetNode { assetMaterializations(limit: $limit) { partition runId } } } }"""

CHECKS = """
query($limit: Int!) { assetCheckExecutions(assetKey: {path: ["chargebacks"]},
  checkName: "chargebacks_reconcile_with_billing", limit: $limit) { status partition } }"""


def tenant_name(i: int) -> str:
    return f"load-{i:02d}"


def compute_rate(i: int) -> Decimal:
    return Decimal("0.1000") + Decimal(i) / 1000


def daily_bill(i: int) -> Decimal:
    """What tenant ``i`` is billed per day: both cost types × 24 h."""
    return (compute_rate(i) * 2 + STORAGE_RATE) * 24


def load_config(target: Path, tenants: int, days: int, limit: int) -> Path:
    """``tenants`` fixed-rate tenants, each with its own store and CSV directory."""
    config: dict[str, Any] = {
        "logging": {"level": "INFO"},
        "features": {"enable_periodic_refresh": False, "max_parallel_tenants": limit},
        "tenants": {},
    }
    for i in range(tenants):
        name = tenant_name(i)
        config["tenants"][name] = {
            "ecosystem": "generic_metrics_only",
            "tenant_id": f"acme-{name}",
            "lookback_days": min(days + 2, 364),
            "cutoff_days": 1,
            "retention_days": days + 30,
            "storage": {"path": f"data/{name}.duckdb"},
            "plugin_settings": {
                "cluster_id": f"cluster-{i:02d}",
                "identity_source": {
                    "source": "static",
                    "static_identities": [
                        {"identity_id": identity, "identity_type": "service_account"}
                        for identity in IDENTITIES
                    ],
                },
                "cost_types": [
                    {
                        "name": "COMPUTE",
                        "product_category": "db",
                        "rate": str(compute_rate(i)),
                        "cost_quantity": {"type": "fixed", "count": 2},
                        "allocation_strategy": "even_split",
                    },
                    {
                        "name": "STORAGE",
                        "product_category": "db",
                        "rate": str(STORAGE_RATE),
                        "cost_quantity": {"type": "fixed", "count": 1},
                        "allocation_strategy": "even_split",
                    },
                ],
                "emitters": [{"type": "csv", "params": {"output_dir": f"out/csv/{name}"}}],
            },
        }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return target


# --- memory ---------------------------------------------------------------------------------


def process_kind(argv: list[str]) -> str | None:
    """Which part of ``dagster dev`` a process is, from the start of its command line.

    (Only the first arguments: later ones carry the instance's config as JSON.)
    """
    cmdline = " ".join(argv[:5])
    if "resource_tracker" in cmdline:
        return None  # multiprocessing's helper, a few MB
    # The code server starts each run in a fresh interpreter (multiprocessing spawn).
    if "execute_run" in cmdline or "spawn_main" in cmdline:
        return "run worker"
    if "api grpc" in cmdline or "code-server" in cmdline:
        return "code server"
    if "dagster-daemon" in cmdline or "dagster._daemon" in cmdline:
        return "daemon"
    if "dagster-webserver" in cmdline or "dagster_webserver" in cmdline:
        return "webserver"
    if " dev" in cmdline:
        return "dagster dev"
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    children: defaultdict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat:
                # Field 4 (ppid) follows the ")" that closes the command name.
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children[ppid].append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


class MemorySampler:
    """Peak resident memory (``VmHWM``) per process of a tree, sampled from ``/proc``."""

    def __init__(self, root: int, interval_s: float = 0.5) -> None:
        self.root = root
        self.interval_s = interval_s
        self.peak_kb: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        for pid in _descendants(self.root):
            kind = process_kind(_read(f"/proc/{pid}/cmdline").split("\0"))
            if kind is None:
                continue
            for line in _read(f"/proc/{pid}/status").splitlines():
                if line.startswith("VmHWM:"):
                    kb = int(line.split()[1])
                    if kb > self.peak_kb.get(pid, (kind, 0))[1]:
                        self.peak_kb[pid] = (kind, kb)

    def peaks_mb(self) -> dict[str, float]:
        """Highest peak RSS per process kind, in MB."""
        out: dict[str, float] = {}
        for kind, kb in self.peak_kb.values():
            out[kind] = max(out.get(kind, 0.0), kb / 1024)
        return out

    def processes(self) -> dict[str, int]:
        counts: defaultdict[str, int] = defaultdict(int)
        for kind, _kb in self.peak_kb.values():
            counts[kind] += 1
        return dict(counts)


# --- concurrency ------------------------------------------------------------------------------


def max_concurrent(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant; one ending exactly when another starts does not overlap."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = peak = 0
    for _, delta in events:  # at equal times -1 sorts before +1
        now += delta
        peak = max(peak, now)
    return peak


def tag(run: dict[str, Any], key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


@dataclass
class LoadReport:
    tenants: int
    days: int
    limit: int
    partitions: int = 0
    wall_s: float = 0.0
    runs_span_s: float = 0.0
    runs: int = 0
    run_statuses: list[str] = field(default_factory=list)
    backfill_statuses: list[str] = field(default_factory=list)
    max_concurrent_runs: int = 0
    max_concurrent_runs_per_tenant: int = 0
    longest_run_s: float = 0.0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    lock_waits: list[str] = field(default_factory=list)
    lock_failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def partitions_per_s(self) -> float:
        return self.partitions / self.wall_s if self.wall_s else 0.0

    def lines(self) -> list[str]:
        out = [
            f"load: {self.tenants} tenants x {self.days} days = {self.partitions} partitions"
            f" x {len(ASSETS)} assets,"
            f" max_parallel_tenants {self.limit}",
            f"  wall time          {self.wall_s:.1f} s (launch of the first backfill -> all finished)",
            f"  throughput         {self.partitions_per_s:.2f} partitions/s"
            f" ({self.partitions * len(ASSETS) / self.wall_s if self.wall_s else 0:.1f} asset partitions/s)",
            f"  runs               {self.runs} {self.run_statuses}; backfills {self.backfill_statuses}",
            f"  runs executing     {self.runs_span_s:.1f} s (first start -> last end), longest run"
            f" {self.longest_run_s:.1f} s",
            f"  concurrency        max {self.max_concurrent_runs} runs started at once (limit {self.limit}),"
            f" max {self.max_concurrent_runs_per_tenant} per tenant",
            "  peak RSS (MB)      "
            + ", ".join(
                f"{kind} {mb:.0f} (bound {RSS_BOUNDS_MB[kind]}, {self.processes.get(kind, 0)} processes)"
                for kind, mb in sorted(self.peak_rss_mb.items())
            ),
            f"  tenant locks       {len(self.lock_failures)} failures, {len(self.lock_waits)} waits"
            f" in {len({w.split(':')[0] for w in self.lock_waits})} runs",
        ]
        out.extend(f"  PROBLEM: {problem}" for problem in self.problems)
        return out


def run_load(tenants: int, days: int, limit: int, workdir: Path, timeout_s: float = 3600) -> LoadReport:
    """Run the whole load and return its report (``problems`` empty when every check passed)."""
    config = load_config(workdir / "deploy" / "config.yaml", tenants, days, limit)
    newest = datetime.now(UTC).date() - timedelta(days=2)  # cutoff_days 1
    dates = [newest - timedelta(days=i) for i in range(days)][::-1]
    report = LoadReport(tenants, days, limit, partitions=tenants * days)
    with dagster_dev(config, workdir / "dagster_home") as dev, MemorySampler(dev.process.pid) as sampler:
        started = time.monotonic()
        backfills = [
            dev.launch_backfill([f"{d.isoformat()}|{tenant_name(i)}" for d in dates], ASSETS)
            for i in range(tenants)
        ]
        deadline = started + timeout_s
        states = [dev.wait_for_backfill(b, max(1.0, deadline - time.monotonic())) for b in backfills]
        report.wall_s = time.monotonic() - started
        sampler.sample()
        runs = [r for r in dev.graphql(RUNS)["runsOrError"]["results"]]
        report.backfill_statuses = sorted({s["status"] for s in states})
        _concurrency(report, runs)
        report.lock_waits, report.lock_failures = _lock_events(dev, runs)
        _verify_dagster(dev, report, tenants, days)
    report.peak_rss_mb = sampler.peaks_mb()
    report.processes = sampler.processes()
    _verify_result(report, config, dates)
    return report


def _concurrency(report: LoadReport, runs: list[dict[str, Any]]) -> None:
    report.runs = len(runs)
    report.run_statuses = sorted({r["status"] for r in runs})
    finished = [r for r in runs if r["startTime"] and r["endTime"]]
    intervals = [(float(r["startTime"]), float(r["endTime"])) for r in finished]
    report.max_concurrent_runs = max_concurrent(intervals)
    per_tenant: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    for run, interval in zip(finished, intervals, strict=True):
        per_tenant[tag(run, "tenant") or "?"].append(interval)
    report.max_concurrent_runs_per_tenant = max((max_concurrent(v) for v in per_tenant.values()), default=0)
    if intervals:
        report.runs_span_s = max(e for _, e in intervals) - min(s for s, _ in intervals)
        report.longest_run_s = max(e - s for s, e in intervals)
    if sorted(per_tenant) != sorted(tenant_name(i) for i in range(report.tenants)):
        report.problems.append(f"runs per tenant tag: {sorted(per_tenant)[:5]}… ({len(per_tenant)} tags)")


def _lock_events(dev: DagsterDev, runs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Lock waits and lock failures in the event logs of ``runs``, as ``run id: message``."""
    waits, failures = [], []
    for run in runs:
        cursor: str | None = None
        while True:
            page = dev.graphql(RUN_EVENTS, {"runId": run["runId"], "after": cursor})["logsForRun"]
            if page["__typename"] != "EventConnection":
                failures.append(f"{run['runId']}: cannot read the event log: {page}")
                break
            for event in page["events"]:
                message = event.get("message") or ""
                if LOCK_WAIT in message:
                    waits.append(f"{run['runId']}: {message[:200]}")
                if any(word in message.lower() for word in LOCK_FAILURES):
                    failures.append(f"{run['runId']}: {message[:200]}")
            if not page["hasMore"]:
                break
            cursor = page["cursor"]
    return waits, failures


def _settled_partition_stats(
    dev: DagsterDev, asset: str, expected: int, wait_s: float = 120.0
) -> dict[str, Any]:
    """The asset's partition stats once they count ``expected`` partitions (or after ``wait_s``).

    Under load the UI's partition status of the last run's final step was once seen a few
    seconds behind the run's SUCCESS (the event log held every materialisation when read
    again); the stats are re-read until they settle rather than sampled once.
    """
    deadline = time.monotonic() + wait_s
    while True:
        stats: dict[str, Any] = dev.graphql(STATS, {"path": [asset]})["assetNodeOrError"]["partitionStats"]
        if stats["numMaterialized"] >= expected or stats["numFailed"] or time.monotonic() > deadline:
            return stats
        time.sleep(2.0)


def _verify_dagster(dev: DagsterDev, report: LoadReport, tenants: int, days: int) -> None:
    n = tenants * days
    if report.backfill_statuses != ["COMPLETED_SUCCESS"]:
        report.problems.append(f"backfills ended {report.backfill_statuses}")
    if report.run_statuses != ["SUCCESS"] or report.runs != tenants:
        report.problems.append(
            f"{report.runs} runs {report.run_statuses}; expected {tenants} runs, all SUCCESS"
        )
    if report.max_concurrent_runs > report.limit:
        report.problems.append(f"{report.max_concurrent_runs} runs at once, limit {report.limit}")
    if report.max_concurrent_runs_per_tenant > 1:
        report.problems.append(f"{report.max_concurrent_runs_per_tenant} runs of one tenant at once")
    if report.lock_failures:
        report.problems.append(f"lock failures: {report.lock_failures[:3]}")
    for asset in ASSETS:
        stats = _settled_partition_stats(dev, asset, n)
        if stats["numMaterialized"] != n or stats["numFailed"]:
            report.problems.append(f"{asset}: {stats}")
    for asset in ONCE_ASSETS:
        events = dev.graphql(MATERIALISATIONS, {"path": [asset], "limit": n * 2})["assetNodeOrError"]
        counts: defaultdict[str, int] = defaultdict(int)
        for event in events["assetMaterializations"]:
            counts[event["partition"]] += 1
        if len(counts) != n or set(counts.values()) != {1}:
            again = sorted(p for p, c in counts.items() if c != 1)[:5]
            report.problems.append(
                f"{asset}: {len(counts)} partitions materialised, not exactly once: {again}"
            )
    executions = dev.graphql(CHECKS, {"limit": n * 2})["assetCheckExecutions"]
    passed = {e["partition"] for e in executions if e["status"] == "SUCCEEDED"}
    if len(passed) != n:
        report.problems.append(f"reconciliation passed for {len(passed)} of {n} partitions")


def _verify_result(report: LoadReport, config: Path, dates: list[date]) -> None:
    import duckdb

    for kind, mb in report.peak_rss_mb.items():
        if mb > RSS_BOUNDS_MB[kind]:
            report.problems.append(f"{kind} peak RSS {mb:.0f} MB > {RSS_BOUNDS_MB[kind]} MB")
    for i in range(report.tenants):
        name = tenant_name(i)
        with duckdb.connect(str(config.parent / "data" / f"{name}.duckdb"), read_only=True) as conn:
            billed = dict(
                conn.execute("SELECT billing_date, sum(total_cost) FROM billing_lines GROUP BY 1").fetchall()
            )
            allocated = dict(
                conn.execute("SELECT billing_date, sum(amount) FROM chargebacks GROUP BY 1").fetchall()
            )
        expected = {d: daily_bill(i) for d in dates}
        if billed != expected or allocated != expected:
            wrong = sorted(
                d for d in expected if billed.get(d) != expected[d] or allocated.get(d) != expected[d]
            )
            report.problems.append(
                f"{name}: billed/allocated differ from {expected[dates[0]]}/day on {wrong[:3]}"
            )
        csv_files = list((config.parent / "out" / "csv" / name).glob("*.csv"))
        if len(csv_files) != len(dates):
            report.problems.append(f"{name}: {len(csv_files)} CSV files, expected {len(dates)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--limit", type=int, default=4, help="features.max_parallel_tenants")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        report = run_load(args.tenants, args.days, args.limit, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(report.lines()))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
