"""Helpers of the operations and fault tests: edit a copied configuration file by tenant,
run partitions through the pipeline job, and run the pipeline in a separate process
(which a test may kill)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from tests.conftest import FROZEN_NOW, REPO

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def edit_config(config: Path, *, drop: tuple[str, ...] = (), **tenant_fields: dict[str, Any]) -> Path:
    """Remove tenants ``drop`` and set top-level fields of tenants (``{"postgres-prod": {...}}``).

    Comments are lost; ``${VAR}`` references are kept as text.
    """
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    for name in drop:
        del data["tenants"][name]
    for name, fields in tenant_fields.items():
        data["tenants"][name].update(fields)
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return config


def fixed_rate_demo(config: Path) -> Path:
    """The demo without its replayed Confluent Cloud tenant: the two fixed-rate services."""
    return edit_config(config, drop=("confluent-cloud",))


def run_range(
    config: Path,
    instance: dg.DagsterInstance,
    first: str,
    last: str,
    assets: list[dg.AssetKey] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialise the partitions ``first`` … ``last`` (``"<date>|<tenant>"``) as one run."""
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    return job.execute_in_process(
        instance=instance,
        tags={RANGE_START: first, RANGE_END: last},
        raise_on_error=False,
        asset_selection=assets,
    )


def failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Step key → the error text of each failed step of the run."""
    return {e.step_key or "": str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure}


def materialised(result: dg.ExecuteInProcessResult) -> set[str]:
    """Asset keys (as strings) materialised by the run."""
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def python(script: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Run ``script`` in a fresh interpreter at the repository root under the frozen clock."""
    environment = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHARGEBACK_CONFIG")}
    environment.update({"CHARGEBACK_NOW": FROZEN_NOW, **env})
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def file_hashes(paths: Iterable[Path]) -> dict[str, str]:
    """SHA-256 of each existing file, by path (a missing file is absent from the result)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}
