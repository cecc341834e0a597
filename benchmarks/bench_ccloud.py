"""Benchmark: a large Confluent Cloud organisation, 30 days, through ``chargeback run``.

Usage::

    .venv/bin/python benchmarks/bench_ccloud.py [--workdir DIR] [--no-metrics] [--throttle] [--strict]
                                                [--profile FILE]

1. Generates the large sample organisation (``gen_sample_org.py --name large --seed 7``:
   30 days, ~21,800 cost rows, ~2,050 identities and 4,000 API keys) into the work
   directory, once (later runs reuse it).
2. Serves its API responses from the plugin's stand-in server on 127.0.0.1 (real HTTP,
   real pagination) and, unless ``--no-metrics``, its telemetry from a real Prometheus
   loaded with ``promtool`` (needs the ``prometheus`` and ``promtool`` binaries).
3. Runs ``chargeback run`` as a separate process for the 30 days — billing gather,
   inventory, deletion detection, usage metrics, allocation, commit and CSV — on a fresh
   DuckDB file and Dagster instance, with the clock pinned at the organisation's "now".
4. Reports wall time, user + system CPU time (the stable figure on a shared machine)
   and peak RSS of that process, the load average, a per-phase breakdown from the
   Dagster event log (time and highest sampled RSS per asset step), row counts and the
   conservation check, and exits 1 if any partition failed (``--strict``: also when the
   30 s / 500 MiB target is missed).

The client's 0.1 s request spacing exists to respect the vendor's rate limit; against
the local stand-in it only adds sleep, so it is off unless ``--throttle`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation  # noqa: E402
from chargeback_plugins.confluent_cloud.standin import StandInServer  # noqa: E402

TARGET_WALL_S = 30.0
TARGET_RSS_MIB = 500.0
TENANT = "ccloud-large"
KEY, SECRET = "BENCHKEY", "bench-secret"
FLINK_KEY, FLINK_SECRET = "FLINKKEY", "flink-bench-secret"


def generate(workdir: Path) -> Path:
    dataset = workdir / "dataset-large"
    if not (dataset / "manifest.json").exists():
        print("generating the large organisation (seed 7) ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(REPO / "benchmarks" / "gen_sample_org.py"),
                "--name",
                "large",
                "--seed",
                "7",
                "--out",
                str(workdir),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return dataset


def start_prometheus(dataset: Path, workdir: Path) -> Any:
    """A real Prometheus over the organisation's telemetry (blocks built once, then reused)."""
    from tests.prometheus_support import PrometheusServer, create_blocks, load_series, series_to_openmetrics

    prom_dir = workdir / "prometheus"
    data_dir = prom_dir / "data"
    if not (prom_dir / "loaded").exists():
        print("loading the telemetry into Prometheus (promtool, once) ...", flush=True)
        shutil.rmtree(prom_dir, ignore_errors=True)
        prom_dir.mkdir(parents=True)
        source = prom_dir / "series.om.txt"
        source.write_text(
            series_to_openmetrics(load_series(dataset / "prometheus" / "series.json")), encoding="utf-8"
        )
        create_blocks(source, data_dir)
        source.unlink()
        (prom_dir / "loaded").write_text("ok", encoding="utf-8")
    return PrometheusServer(prom_dir, data_dir).start()


def write_config(
    run_dir: Path, api_url: str, metrics_url: str | None, manifest: dict[str, Any], throttle: bool
) -> Path:
    metrics = f"      metrics: {{type: prometheus, url: '{metrics_url}'}}\n" if metrics_url else ""
    interval = "" if throttle else "        request_interval_seconds: 0\n"
    config = run_dir / "config.yaml"
    config.write_text(
        f"""
logging: {{level: WARNING}}
features: {{enable_periodic_refresh: false}}
tenants:
  {TENANT}:
    ecosystem: confluent_cloud
    tenant_id: {TENANT}
    lookback_days: {manifest["lookback_days"]}
    cutoff_days: {manifest["cutoff_days"]}
    retention_days: 400
    plugin_settings:
      ccloud_api:
        key: ${{BENCH_CCLOUD_KEY}}
        secret: ${{BENCH_CCLOUD_SECRET}}
        base_url: '{api_url}'
        flink_base_url: '{api_url}/__host/flink.{{region}}.{{cloud}}.confluent.cloud'
{interval}      billing_api: {{days_per_query: {manifest["ccloud"]["days_per_query"]}}}
      flink:
        - region_id: us-east-1
          key: ${{BENCH_FLINK_KEY}}
          secret: ${{BENCH_FLINK_SECRET}}
{metrics}      emitters:
        - {{type: csv, params: {{output_dir: out/csv, filename_template: "{{tenant_name}}/{{date}}.csv"}}}}
""",
        encoding="utf-8",
    )
    # The repository's event log storage (dagster.yaml), as a deployment configures it.
    (run_dir / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "event_log_storage:\n  module: chargeback_pipeline.instance_storage\n"
        "  class: BatchingSqliteEventLogStorage\n",
        encoding="utf-8",
    )
    return config


PROFILED_CLI = """
import cProfile, os, sys, time
from chargeback_pipeline import cli
sys.argv[0] = "chargeback"
profiler = cProfile.Profile(time.process_time if os.environ.get("PROFILE_CPU") else time.perf_counter)
try:
    profiler.runcall(cli.main)
finally:
    profiler.dump_stats({out!r})
"""

# (epoch seconds, RSS MiB) of the last ``chargeback run``, to attribute its peak to a step.
RSS_SAMPLES: list[tuple[float, float]] = []


class RssSampler(threading.Thread):
    """Reads the process's resident set every 0.1 s (``/proc/<pid>/status``)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._path = Path(f"/proc/{pid}/status")
        self._done = threading.Event()
        self.samples: list[tuple[float, float]] = []

    def run(self) -> None:
        while not self._done.wait(0.1):
            try:
                text = self._path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append((time.time(), int(line.split()[1]) / 1024))

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_pipeline(
    run_dir: Path, config: Path, now: str, profile: Path | None = None
) -> tuple[float, float, tuple[float, float], subprocess.CompletedProcess[str]]:
    """``chargeback run`` in its own process: (wall seconds, peak RSS MiB, (user, sys) CPU seconds, result).

    CPU time is the stable measure on a shared machine: wall time grows with other jobs'
    load, the process's own user + system time hardly does.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE")}
    env.update(
        CHARGEBACK_NOW=now,
        DAGSTER_HOME=str(run_dir),
        BENCH_CCLOUD_KEY=KEY,
        BENCH_CCLOUD_SECRET=SECRET,
        BENCH_FLINK_KEY=FLINK_KEY,
        BENCH_FLINK_SECRET=FLINK_SECRET,
    )
    command = [sys.executable, "-m", "chargeback_pipeline.cli", "run", "--config", str(config)]
    if profile is not None:
        # cProfile slows Python-heavy code: compare profiles, not times. PROFILE_CPU=1
        # times on CPU (process_time): a loaded machine no longer shows up as slow code,
        # but every call then costs a system call.
        command[1:3] = ["-c", PROFILED_CLI.format(out=str(profile))]
    out_path, err_path = run_dir / "run.stdout", run_dir / "run.stderr"
    with out_path.open("w") as out, err_path.open("w") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=run_dir, env=env, stdout=out, stderr=err)
        sampler = RssSampler(process.pid)
        sampler.start()
        # wait4 on this pid: the rusage is that process's own (not promtool's or the generator's).
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        sampler.stop()
    RSS_SAMPLES[:] = sampler.samples
    returncode = os.waitstatus_to_exitcode(status)
    process.returncode = returncode
    result = subprocess.CompletedProcess(command, returncode, out_path.read_text(), err_path.read_text())
    return wall, usage.ru_maxrss / 1024, (usage.ru_utime, usage.ru_stime), result


def phase_breakdown(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per asset step, summed over every run, from the Dagster instance's event log,
    and the highest RSS sampled while each step ran."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(run_dir)
    totals: dict[str, float] = defaultdict(float)
    peaks: dict[str, float] = defaultdict(float)
    with dg.DagsterInstance.get() as instance:
        for run in instance.get_runs():
            starts: dict[str, float] = {}
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if event is None or record.step_key is None:
                    continue
                if event.event_type_value == "STEP_START":
                    starts[record.step_key] = record.timestamp
                elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and record.step_key in starts:
                    began = starts.pop(record.step_key)
                    totals[record.step_key] += record.timestamp - began
                    during = [rss for t, rss in RSS_SAMPLES if began <= t <= record.timestamp]
                    peaks[record.step_key] = max([peaks[record.step_key], *during])
    return dict(totals), dict(peaks)


def verify(run_dir: Path) -> dict[str, Any]:
    """Row counts and conservation (every date's rows sum to its billing) from the tenant's store."""
    from chargeback_pipeline.storage import open_tenant_db
    from chargeback_plugins.confluent_cloud.storage import CCloudStorageModule

    path = run_dir / "data" / f"{TENANT}.duckdb"
    with open_tenant_db(
        path, ecosystem="confluent_cloud", tenant_id=TENANT, storage_module=CCloudStorageModule()
    ) as db:
        lines = db.conn.execute("SELECT count(*), sum(total_cost) FROM billing_lines").fetchone()
        rows = db.conn.execute("SELECT count(*), sum(amount) FROM chargebacks").fetchone()
        unallocated = db.conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM chargebacks WHERE identity_id = 'UNALLOCATED'"
        ).fetchone()
        unbalanced = db.conn.execute(
            """SELECT count(*) FROM (
                 SELECT billing_date, sum(total_cost) AS t FROM billing_lines GROUP BY 1) b
               FULL JOIN (SELECT billing_date, sum(amount) AS a FROM chargebacks GROUP BY 1) c
               USING (billing_date)
               WHERE b.t IS DISTINCT FROM c.a"""
        ).fetchone()
        dates = len(db.chargebacks.dates())
    assert lines is not None and rows is not None and unallocated is not None and unbalanced is not None
    return {
        "dates": dates,
        "billing_lines": lines[0],
        "billed": Decimal(lines[1]),
        "chargeback_rows": rows[0],
        "allocated": Decimal(rows[1]),
        "unallocated": Decimal(unallocated[0]),
        "unbalanced_dates": unbalanced[0],
    }


def _load_average() -> str:
    """The 1/5/15-minute load, so a wall time can be read against what else was running."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".work", help="cache for data")
    parser.add_argument("--no-metrics", action="store_true", help="no Prometheus: usage splits fall back")
    parser.add_argument("--throttle", action="store_true", help="keep the client's 0.1 s request spacing")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when the time or memory target is missed"
    )
    parser.add_argument(
        "--profile", type=Path, help="run chargeback run under cProfile, writing its stats to this file"
    )
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = generate(workdir)
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()

    prometheus = None if args.no_metrics else start_prometheus(dataset, workdir)
    organisation = RecordedOrganisation.from_dir(dataset / "ccloud")
    try:
        with StandInServer(organisation, credentials=[(KEY, SECRET), (FLINK_KEY, FLINK_SECRET)]) as server:
            config = write_config(
                run_dir, server.url, prometheus.url if prometheus else None, manifest, args.throttle
            )
            print(f"running chargeback run for {len(manifest['billing_days'])} days ...", flush=True)
            wall, rss, (user_s, sys_s), result = run_pipeline(
                run_dir, config, manifest["frozen_now"], args.profile
            )
            api_requests = len(server.requests)
    finally:
        if prometheus is not None:
            prometheus.stop()
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
    phases, step_peaks = phase_breakdown(run_dir)
    checked = verify(run_dir)
    steps = sum(phases.values())

    print(f"\nConfluent Cloud benchmark — {manifest['name']} organisation, {checked['dates']} days")
    print(
        f"  metrics: {'Prometheus' if prometheus else 'none (--no-metrics)'}; request spacing: "
        f"{'0.1 s (--throttle)' if args.throttle else 'off'}; API requests served: {api_requests}"
    )
    print(f"  wall time        {wall:7.1f} s   (target ≤ {TARGET_WALL_S:.0f} s)")
    print(f"  CPU time         {user_s + sys_s:7.1f} s   (user {user_s:.1f} s + sys {sys_s:.1f} s)")
    print(f"  load average     {_load_average()}   (at the end of the run; 2 cores here)")
    sampled = max((mib for _, mib in RSS_SAMPLES), default=0.0)
    print(
        f"  peak RSS         {rss:7.0f} MiB (target ≤ {TARGET_RSS_MIB:.0f} MiB; "
        f"sampled every 0.1 s: {sampled:.0f} MiB)"
    )
    print("  phases (Dagster step time summed over all runs; highest RSS sampled during the step):")
    for step, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"    {step:<48} {seconds:6.1f} s  {step_peaks.get(step, 0):5.0f} MiB")
    print(f"    {'(process start, definitions, run orchestration)':<48} {wall - steps:6.1f} s")
    print(f"  billing lines {checked['billing_lines']:,}  billed {checked['billed']}")
    print(
        f"  chargeback rows {checked['chargeback_rows']:,}  allocated {checked['allocated']}  "
        f"UNALLOCATED {checked['unallocated']}"
    )
    print(f"  dates whose rows do not sum to their billing: {checked['unbalanced_dates']}")
    ok = (
        result.returncode == 0
        and checked["unbalanced_dates"] == 0
        and checked["billed"] == checked["allocated"]
    )
    if args.strict and (wall > TARGET_WALL_S or rss > TARGET_RSS_MIB):
        ok = False
    print(f"  started {datetime.now().isoformat(timespec='seconds')}; {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
