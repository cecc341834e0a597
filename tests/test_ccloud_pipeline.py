"""Acceptance: the sample organisation through Dagster matches the expected outputs row for row.

Real components only: the stand-in Confluent Cloud API on 127.0.0.1 (real pagination,
Basic auth), a real Prometheus loaded with the sample telemetry, DuckDB on disk, and
the project's Dagster definitions executing every lifecycle asset per partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.partitions import partition_key
from chargeback_pipeline.loader import clear_discovery_cache
from chargeback_pipeline.metrics import clear_response_cache
from chargeback_pipeline.models import q4
from chargeback_pipeline.storage import open_tenant_db
from chargeback_plugins.confluent_cloud.billing import ECOSYSTEM
from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation
from chargeback_plugins.confluent_cloud.standin import StandInServer
from chargeback_plugins.confluent_cloud.storage import CCloudStorageModule
from tests.ccloud_support import (
    API_SECRET,
    CREDENTIALS,
    DAYS,
    FLINK_SECRET,
    FROZEN_NOW,
    SAMPLE_ORG,
    TENANT,
    actual_billing,
    actual_chargebacks,
    credentials_env,
    csv_chargebacks,
    differences,
    expected_billing,
    expected_chargebacks,
    tenant_yaml,
)
from tests.prometheus_support import PrometheusServer


@dataclass
class Run:
    config: Path
    server: StandInServer
    instance: dg.DagsterInstance
    results: dict[date, dg.ExecuteInProcessResult]
    log_text: str


@pytest.fixture(scope="module")
def acceptance(
    tmp_path_factory: pytest.TempPathFactory, sample_prometheus: PrometheusServer
) -> Iterator[Run]:
    """The 7 sample days materialised once (module scope: the assertions below share the run)."""
    workdir = tmp_path_factory.mktemp("ccloud-acceptance")
    monkeypatch = pytest.MonkeyPatch()
    for name, value in {**credentials_env(), "CHARGEBACK_NOW": FROZEN_NOW}.items():
        monkeypatch.setenv(name, value)
    for name in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    clear_discovery_cache()
    clear_response_cache()
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        with (
            StandInServer(RecordedOrganisation.from_dir(SAMPLE_ORG), credentials=CREDENTIALS) as server,
            dg.instance_for_test() as instance,
        ):
            config = workdir / "config.yaml"
            config.write_text(tenant_yaml(server.url, metrics_url=sample_prometheus.url), encoding="utf-8")
            job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
            results = {
                d: job.execute_in_process(
                    partition_key=partition_key(TENANT, d), instance=instance, raise_on_error=False
                )
                for d in DAYS
            }
            yield Run(config, server, instance, results, "\n".join(records.lines))
    finally:
        logging.getLogger().removeHandler(records)
        monkeypatch.undo()
        clear_discovery_cache()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def stored(run: Run) -> tuple[list, list]:  # type: ignore[type-arg]
    path = run.config.parent / "data" / f"{TENANT}.duckdb"
    with open_tenant_db(
        path, ecosystem=ECOSYSTEM, tenant_id=TENANT, storage_module=CCloudStorageModule()
    ) as db:
        lines = [x for d in db.billing.dates() for x in db.billing.find_by_date(d)]
        rows = [x for d in db.chargebacks.dates() for x in db.chargebacks.find_by_date(d)]
    return lines, rows


def test_every_partition_succeeds_with_a_passing_reconciliation_check(acceptance: Run) -> None:
    for d, result in acceptance.results.items():
        failures = [str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
        assert result.success, f"{d}: {failures}"
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert set(checks) == {"chargebacks_reconcile_with_billing", "chargebacks_unallocated_share"}, d
        assert checks["chargebacks_reconcile_with_billing"].passed, d


def test_stored_billing_lines_equal_the_expected_file(acceptance: Run) -> None:
    lines, _ = stored(acceptance)
    assert differences(expected_billing(DAYS), actual_billing(lines)) == []
    assert len(lines) == 278


def test_stored_chargebacks_equal_the_expected_file(acceptance: Run) -> None:
    _, rows = stored(acceptance)
    assert differences(expected_chargebacks(DAYS), actual_chargebacks(rows)) == []
    assert len(rows) == 950


def test_csv_files_carry_env_id_and_equal_the_expected_rows(acceptance: Run) -> None:
    files = sorted((acceptance.config.parent / "out").rglob("*.csv"))
    assert len(files) == 7
    header = files[0].read_text(encoding="utf-8").splitlines()[0]
    assert header.endswith(",allocation_method,allocation_detail,env_id")
    assert differences(expected_chargebacks(DAYS), csv_chargebacks(files)) == []


def test_scenarios_of_the_sample_organisation(acceptance: Run) -> None:
    lines, rows = stored(acceptance)

    def amounts(resource: str, day: str, product_type: str) -> dict[tuple[str, str], Decimal]:
        return {
            (r.identity_id, r.allocation_detail or ""): r.amount
            for r in rows
            if r.resource_id == resource
            and r.timestamp.date().isoformat() == day
            and r.product_type == product_type
        }

    # Cluster created mid-day (14:00): 10/24 of its first day is charged, 14/24 is inactive.
    (line,) = [
        x
        for x in lines
        if (x.resource_id, x.product_type, x.timestamp.date())
        == ("lkc-g3tys", "KAFKA_BASE", date(2026, 3, 4))
    ]
    base = amounts("lkc-g3tys", "2026-03-04", "KAFKA_BASE")
    active = q4(line.total_cost * Decimal(10) / Decimal(24))
    assert base.pop(("UNALLOCATED", "RESOURCE_INACTIVE")) == line.total_cost - active
    assert sum(base.values()) == active and base
    # A deleted service account that still owns an API key is charged through the key.
    assert any(r.identity_id == "sa-a783l" for r in rows if r.resource_id == "lkc-axi3p")
    # A connector whose key is masked, and one deleted before the gather.
    assert {r.identity_id for r in rows if r.resource_id == "lcc-v21tj"} == {"connector_api_key_masked"}
    assert {r.identity_id for r in rows if r.resource_id == "lcc-6c90a"} == {"connector_credentials_masked"}
    # Unknown product types reach UNALLOCATED through the fallback.
    quantum = [r for r in rows if r.product_type == "QUANTUM_STREAMS_QUBIT_HOURS"]
    assert quantum and {(r.identity_id, r.allocation_detail) for r in quantum} == {
        ("UNALLOCATED", "UNKNOWN_PRODUCT_TYPE")
    }
    assert "no handler for product type 'QUANTUM_STREAMS_QUBIT_HOURS'" in acceptance.log_text


def test_the_api_was_called_with_the_tenant_credentials_and_one_gather(acceptance: Run) -> None:
    requests = acceptance.server.requests
    assert all(r.authorized for r in requests)
    # One inventory gather for the whole run (the other partitions reuse it), one billing call per day.
    assert sum(1 for r in requests if r.path == "/org/v2/environments") == 1
    billing = [
        (r.params["start_date"], r.params["end_date"]) for r in requests if r.path == "/billing/v1/costs"
    ]
    assert billing == [(d.isoformat(), date.fromordinal(d.toordinal() + 1).isoformat()) for d in DAYS]


def test_secrets_never_reach_logs_events_metadata_or_files(acceptance: Run) -> None:
    secrets = (API_SECRET, FLINK_SECRET)
    for secret in secrets:
        assert secret not in acceptance.log_text
    for result in acceptance.results.values():
        run = acceptance.instance.get_run_by_id(result.run_id)
        assert run is not None
        for secret in secrets:
            assert secret not in repr(run.run_config) and secret not in repr(run.tags)
        for record in acceptance.instance.all_logs(result.run_id):
            for secret in secrets:
                assert secret not in repr(record)
    for path in acceptance.config.parent.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, path
