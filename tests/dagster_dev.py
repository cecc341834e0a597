"""A real ``dagster dev`` (webserver + daemon + code server) for end-to-end tests and benchmarks.

Started from the repository with its ``workspace.yaml`` on a free port of 127.0.0.1,
with its own ``DAGSTER_HOME`` (a copy of the repository's ``dagster.yaml``) and the given
chargeback configuration. Stopped with SIGINT, which shuts the webserver, daemon and
code server down cleanly; the process group is killed only if that does not happen.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
LOCATION = "chargeback"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
FINISHED_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""

BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status numPartitions
      runs(limit: 1000) { runId status startTime endTime creationTime tags { key value } }
    }
    ... on PythonError { message }
  }
}"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _default_signals() -> None:
    """A non-interactive parent may leave SIGINT/SIGTERM ignored; dagster dev needs them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class DagsterDev:
    url: str
    home: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": dict(variables or {})}, timeout=120
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return dict(body["data"])

    def launch_backfill(
        self, partition_names: list[str], asset_keys: list[str], tags: Mapping[str, str] | None = None
    ) -> str:
        params: dict[str, Any] = {
            "partitionNames": partition_names,
            "assetSelection": [{"path": [key]} for key in asset_keys],
        }
        if tags:
            params["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        result = self.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise AssertionError(f"backfill not launched: {result}")
        return str(result["backfillId"])

    def backfill(self, backfill_id: str) -> dict[str, Any]:
        result = self.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            raise AssertionError(f"backfill {backfill_id}: {result}")
        return dict(result)

    def wait_for_backfill(self, backfill_id: str, timeout_s: float, poll_s: float = 2.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.backfill(backfill_id)
            if state["status"] in FINISHED_BACKFILL:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"backfill {backfill_id} still {state['status']} after {timeout_s}s")
            time.sleep(poll_s)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def dagster_dev(
    config: Path, home: Path, env: Mapping[str, str] | None = None, port: int | None = None
) -> Iterator[DagsterDev]:
    """Run ``dagster dev`` until the ``with`` block ends; yields once the location is loaded."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    port = port or free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHARGEBACK_CONFIG")},
        "DAGSTER_HOME": str(home),
        "CHARGEBACK_CONFIG": str(config),
        **(env or {}),
    }
    dagster = Path(sys.executable).parent / "dagster"
    log_path = home / "dagster-dev.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
            cwd=REPO,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_default_signals,
            start_new_session=True,
        )
        dev = DagsterDev(f"http://127.0.0.1:{port}", home, log_path, process)
        try:
            _wait_until_loaded(dev)
            yield dev
        finally:
            _stop(process)


def _wait_until_loaded(dev: DagsterDev) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            raise AssertionError(f"dagster dev exited with {dev.process.returncode}:\n{dev.log_tail()}")
        with contextlib.suppress(httpx.HTTPError, AssertionError, KeyError):
            entries = dev.graphql(query)["workspaceOrError"]["locationEntries"]
            if any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" for e in entries):
                return
        time.sleep(1.0)
    raise AssertionError(f"dagster dev did not load {LOCATION} within {START_TIMEOUT_S}s:\n{dev.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
