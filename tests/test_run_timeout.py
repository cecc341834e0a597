"""A tenant run that outlives ``tenant_execution_timeout_seconds`` is failed by the daemon.

Slow suite: a real ``dagster dev`` (daemon with run monitoring from the repository's
``dagster.yaml``), a Confluent Cloud tenant whose stand-in billing API answers slowly,
and a backfill through GraphQL. The run coordinator tags the run with the tenant's
timeout; run monitoring terminates it; the tenant's store holds no half-written day.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chargeback_pipeline.storage import open_tenant_db
from chargeback_plugins.confluent_cloud.billing import ECOSYSTEM
from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation
from chargeback_plugins.confluent_cloud.standin import Fault, StandInServer
from chargeback_plugins.confluent_cloud.storage import CCloudStorageModule
from tests.ccloud_support import (
    CREDENTIALS,
    DAYS,
    FROZEN_NOW,
    SAMPLE_ORG,
    TENANT,
    credentials_env,
    tenant_yaml,
)
from tests.dagster_dev import dagster_dev

TIMEOUT_S = 5
ASSETS = ["billing_lines", "inventory", "resource_deletions", "usage_metrics", "chargebacks"]

RUN_STATUS = """
query($id: ID!) {
  runOrError(runId: $id) {
    __typename
    ... on Run { status tags { key value } }
  }
}"""

RUN_MESSAGES = """
query($id: ID!) {
  logsForRun(runId: $id, limit: 1000) {
    __typename
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}"""


@pytest.mark.slow
@pytest.mark.outcome("run-exceeds-tenant-timeout")
def test_a_hanging_run_is_failed_after_the_tenant_timeout(tmp_path: Path) -> None:
    organisation = RecordedOrganisation.from_dir(SAMPLE_ORG)
    with StandInServer(organisation, credentials=CREDENTIALS) as server:
        # Every API call answers after 20 s (under the client's 30 s timeout): the run
        # would take many minutes, far past the tenant's 5 s limit.
        server.inject("/", *[Fault(delay=20.0) for _ in range(40)])
        config = tmp_path / "config.yaml"
        text = tenant_yaml(server.url).replace(
            "    cutoff_days:", f"    tenant_execution_timeout_seconds: {TIMEOUT_S}\n    cutoff_days:", 1
        )
        config.write_text(text, encoding="utf-8")
        env = {**credentials_env(), "CHARGEBACK_NOW": FROZEN_NOW}
        with dagster_dev(config, tmp_path / "home", env=env) as dev:
            started = time.monotonic()
            backfill = dev.launch_backfill([f"{DAYS[0]}|{TENANT}"], ASSETS)
            state = dev.wait_for_backfill(backfill, timeout_s=240)
            waited = time.monotonic() - started
            (run,) = state["runs"]
            detail = dev.graphql(RUN_STATUS, {"id": run["runId"]})["runOrError"]
            tags = {t["key"]: t["value"] for t in detail["tags"]}
            events = dev.graphql(RUN_MESSAGES, {"id": run["runId"]})["logsForRun"]["events"]
            messages = [e.get("message") or "" for e in events]

    assert tags["tenant"] == TENANT and tags["dagster/max_runtime"] == str(TIMEOUT_S)
    assert detail["status"] == "FAILURE", (detail["status"], dev.log_tail())
    assert any(f"Exceeded maximum runtime of {TIMEOUT_S} seconds" in m for m in messages), messages[-10:]
    # Failed by the monitor, not by finishing: 20 slow chunks would take minutes.
    assert waited < 200
    store = tmp_path / "data" / f"{TENANT}.duckdb"
    if store.exists():
        with open_tenant_db(
            store, ecosystem=ECOSYSTEM, tenant_id=TENANT, storage_module=CCloudStorageModule()
        ) as db:
            assert db.chargebacks.find_by_date(DAYS[0]) == []
