"""Confluent Cloud API faults through Dagster: 429 storms, 5xx bursts, answers slower than
the timeout, truncated JSON and a pagination loop.

The tenant talks to the plugin's stand-in server (a real HTTP server on 127.0.0.1) told to
misbehave with ``inject``; the client's real retry path runs, with small waits from the
tenant's ``ccloud_api.retry_wait_scale`` and ``max_attempts`` settings. Each case proves
both outcomes: a fault the retries absorb gives exactly the rows of a clean run, and a
fault that outlasts them fails the partition naming the tenant and the endpoint while
every stored row stays as it was.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.partitions import partition_key
from chargeback_pipeline.loader import clear_discovery_cache
from chargeback_pipeline.storage import open_tenant_db
from chargeback_plugins.confluent_cloud.billing import ECOSYSTEM
from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation
from chargeback_plugins.confluent_cloud.standin import Fault, StandInServer
from chargeback_plugins.confluent_cloud.storage import CCloudStorageModule
from tests.ccloud_support import CREDENTIALS, FROZEN_NOW, SAMPLE_ORG, TENANT, credentials_env, tenant_yaml
from tests.ops_support import failures, file_hashes

DAY = date(2026, 3, 3)
COSTS = "/billing/v1/costs"
ENVIRONMENTS = "/org/v2/environments"
MAX_ATTEMPTS = 4
# Real retries with waits scaled down 1000×: a Retry-After of 30 s waits ~35 ms.
FAST_RETRIES = (
    f"request_interval_seconds: 0\n        max_attempts: {MAX_ATTEMPTS}\n        retry_wait_scale: 0.001"
)


@dataclass
class Tenant:
    config: Path
    server: StandInServer
    instance: dg.DagsterInstance

    def run(self) -> dg.ExecuteInProcessResult:
        job = build_definitions(self.config).resolve_job_def(PIPELINE_JOB)
        return job.execute_in_process(
            partition_key=partition_key(TENANT, DAY), instance=self.instance, raise_on_error=False
        )

    def requests_to(self, path: str) -> int:
        return sum(1 for p in self.server.paths() if p == path)

    def snapshot(self) -> dict[str, Any]:
        """DAY's stored billing, rows and totals, the calculation id, and the CSV's hash."""
        with open_tenant_db(
            self.config.parent / "data" / f"{TENANT}.duckdb",
            ecosystem=ECOSYSTEM,
            tenant_id=TENANT,
            storage_module=CCloudStorageModule(),
        ) as db:
            totals = db.chargebacks.date_totals(DAY)
            rows = sorted(
                (r.resource_id or "", r.product_type, r.identity_id, str(r.cost_type), str(r.amount))
                for r in db.chargebacks.find_by_date(DAY)
            )
            return {
                "billing": sorted(
                    (x.resource_id, x.product_type, str(x.total_cost)) for x in db.billing.find_by_date(DAY)
                ),
                "rows": rows,
                "billed": totals.billed,
                "allocated": totals.allocated,
                "row_count": totals.row_count,
                "calculation_id": db.state.get(DAY).calculation_id,
                "csv": file_hashes(sorted((self.config.parent / "out").rglob("*.csv"))),
            }


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenant]:
    """One stand-in and one clean materialisation of DAY, shared by the module's tests.

    Each test works on a copy of this tenant's directory (config, store, CSV), so the
    clean run is paid once; the server's fault queue is empty between tests.
    """
    monkeypatch = pytest.MonkeyPatch()
    for name, value in {**credentials_env(), "CHARGEBACK_NOW": FROZEN_NOW}.items():
        monkeypatch.setenv(name, value)
    for name in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    clear_discovery_cache()
    try:
        with (
            StandInServer(RecordedOrganisation.from_dir(SAMPLE_ORG), credentials=CREDENTIALS) as server,
            dg.instance_for_test() as instance,
        ):
            config = tmp_path_factory.mktemp("ccloud-vendor-faults") / "config.yaml"
            config.write_text(tenant_yaml(server.url, extra_api=FAST_RETRIES), encoding="utf-8")
            # Every run gathers the inventory (no reuse within a refresh gap), so inventory faults fire.
            edit_plugin_settings(config, min_refresh_gap_seconds=0)
            clean = Tenant(config, server, instance)
            first = clean.run()
            assert first.success, failures(first)
            yield clean
    finally:
        monkeypatch.undo()
        clear_discovery_cache()


@pytest.fixture
def tenant(baseline: Tenant, tmp_path: Path) -> Iterator[Tenant]:
    """A copy of the baseline tenant (its own store and CSV files) on the shared stand-in."""
    directory = tmp_path / "tenant"
    shutil.copytree(baseline.config.parent, directory)
    yield Tenant(directory / "config.yaml", baseline.server, baseline.instance)
    assert baseline.server.pending_faults() == 0


def edit_plugin_settings(config: Path, **fields: Any) -> None:
    """Set keys of the tenant's ``plugin_settings`` (``ccloud_api`` is merged, not replaced)."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    settings = data["tenants"][TENANT]["plugin_settings"]
    api = fields.pop("ccloud_api", {})
    settings["ccloud_api"].update(api)
    settings.update(fields)
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def assert_reconciled(snapshot: dict[str, Any]) -> None:
    assert snapshot["billing"] and snapshot["rows"]
    assert snapshot["billed"] == snapshot["allocated"] > Decimal(0)
    assert snapshot["row_count"] == len(snapshot["rows"])


def assert_same_numbers(after: dict[str, Any], before: dict[str, Any]) -> None:
    """A recalculation from the same answers: same billing, rows, totals and CSV bytes."""
    assert_reconciled(after)
    for key in ("billing", "rows", "billed", "allocated", "row_count", "csv"):
        assert after[key] == before[key], key


def assert_fails_naming(result: dg.ExecuteInProcessResult, step: str, *parts: str) -> str:
    assert not result.success
    errors = failures(result)
    assert set(errors) == {step}, errors  # every step downstream of it is skipped
    message = errors[step]
    for part in (f"tenant '{TENANT}'", *parts):
        assert part in message, message[:2000]
    return message


@pytest.mark.outcome("vendor-429-storm")
def test_a_429_storm_is_waited_out_and_one_that_outlasts_the_retries_fails_the_partition(
    tenant: Tenant,
) -> None:
    before = tenant.snapshot()
    assert_reconciled(before)

    # Three 429s, each naming its wait in a different header, then an answer.
    reset_at = f"{time.time() + 20:.0f}"
    tenant.server.inject(
        COSTS,
        Fault(status=429, headers={"Retry-After": "30"}),
        Fault(status=429, headers={"RateLimit-Reset": "10"}),
        Fault(status=429, headers={"X-RateLimit-Reset": reset_at}),
    )
    calls = tenant.requests_to(COSTS)
    assert tenant.run().success
    assert tenant.server.pending_faults() == 0
    assert tenant.requests_to(COSTS) - calls == 4  # 3 refused + 1 answered
    assert_same_numbers(tenant.snapshot(), before)

    # A storm longer than max_attempts: the partition fails and nothing stored changes.
    kept = tenant.snapshot()
    tenant.server.inject(COSTS, *[Fault(status=429, headers={"Retry-After": "1"})] * MAX_ATTEMPTS)
    message = assert_fails_naming(
        tenant.run(), "billing_lines", "billing gather failed", f"GET {COSTS}", "HTTP 429", "after 4 attempts"
    )
    assert "Traceback" not in message.split("Stack Trace")[0]
    assert tenant.snapshot() == kept


@pytest.mark.outcome("vendor-5xx-burst")
def test_a_5xx_burst_is_retried_and_a_longer_one_fails_naming_the_endpoint(tenant: Tenant) -> None:
    before = tenant.snapshot()
    tenant.server.inject(ENVIRONMENTS, Fault(status=500), Fault(status=502), Fault(status=503))
    tenant.server.inject(COSTS, Fault(status=504), Fault(status=503))
    assert tenant.run().success
    assert tenant.server.pending_faults() == 0
    assert_same_numbers(tenant.snapshot(), before)

    kept = tenant.snapshot()
    tenant.server.inject(COSTS, *[Fault(status=503, body={"errors": [{"detail": "upstream down"}]})] * 4)
    assert_fails_naming(
        tenant.run(), "billing_lines", f"GET {COSTS}", "HTTP 503", "upstream down", "after 4 attempts"
    )
    assert tenant.snapshot() == kept


@pytest.mark.outcome("vendor-slow-response")
def test_answers_slower_than_the_timeout_are_retried_then_fail_as_a_timeout(
    tenant: Tenant,
) -> None:
    edit_plugin_settings(tenant.config, ccloud_api={"max_attempts": 2, "timeout_seconds": 0.3})
    before = tenant.snapshot()
    tenant.server.inject(COSTS, Fault(delay=1.0))  # the client gives up after 0.3 s, then retries
    assert tenant.run().success
    assert_same_numbers(tenant.snapshot(), before)

    kept = tenant.snapshot()
    tenant.server.inject(COSTS, Fault(delay=1.0), Fault(delay=1.0))
    assert_fails_naming(tenant.run(), "billing_lines", f"GET {COSTS}: ReadTimeout")
    assert tenant.snapshot() == kept


@pytest.mark.outcome("vendor-truncated-json")
def test_a_truncated_json_body_is_retried_and_fails_clearly_when_it_persists(tenant: Tenant) -> None:
    before = tenant.snapshot()
    cut = b'{"api_version":"billing/v1","data":[{"amount":12.5,"discount_amount":0,"end_date":"2026-03-0'
    tenant.server.inject(COSTS, Fault(raw=cut))
    tenant.server.inject(ENVIRONMENTS, Fault(raw=b'{"data":[{"id":"env-'))
    assert tenant.run().success
    assert tenant.server.pending_faults() == 0
    assert_same_numbers(tenant.snapshot(), before)

    kept = tenant.snapshot()
    tenant.server.inject(COSTS, *[Fault(raw=cut)] * MAX_ATTEMPTS)
    message = assert_fails_naming(
        tenant.run(),
        "billing_lines",
        f"CCloudApiError: HTTP 200: GET {COSTS}: body is not valid JSON",
        '"end_date":"2026-03-0',  # the start of what arrived
        "after 4 attempts",
    )
    assert "JSONDecodeError:" not in message
    assert tenant.snapshot() == kept


@pytest.mark.outcome("vendor-pagination-loop")
def test_a_pagination_loop_fails_at_once_instead_of_fetching_for_ever(tenant: Tenant) -> None:
    kept = tenant.snapshot()
    looping = Fault(
        status=200, body={"data": [], "metadata": {"next": f"{tenant.server.url}{COSTS}?page_token=AAA"}}
    )
    tenant.server.inject(COSTS, looping, looping)
    calls = tenant.requests_to(COSTS)
    assert_fails_naming(tenant.run(), "billing_lines", f"GET {COSTS}: pagination loop (page token repeated)")
    assert tenant.requests_to(COSTS) - calls == 2  # not retried: the same token would loop again
    assert tenant.snapshot() == kept
