"""Self-managed Kafka and generic metrics tenants against a real Prometheus, through Dagster.

The stored billing lines and chargebacks of the sample organisation's 7 billing days
must equal the expected CSVs row for row (amounts as decimals).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.partitions import partition_key
from chargeback_pipeline.storage import open_tenant_db
from tests.prometheus_support import PrometheusServer
from tests.sample_org import (
    BILLING_DAYS,
    TENANTS,
    billing_key,
    chargeback_key,
    expected_rows,
    tenant_block,
    write_config,
)


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def run_days(config: Path, tenant: str, instance: dg.DagsterInstance) -> list[dg.ExecuteInProcessResult]:
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    return [
        job.execute_in_process(
            partition_key=partition_key(tenant, d), instance=instance, raise_on_error=False
        )
        for d in BILLING_DAYS
    ]


@pytest.mark.parametrize("ecosystem", ["self_managed_kafka", "generic_metrics_only"])
def test_sample_org_matches_expected_outputs(
    ecosystem: str,
    tmp_path: Path,
    sample_prometheus: PrometheusServer,
    sample_clock: None,
    instance: dg.DagsterInstance,
) -> None:
    tenant = TENANTS[ecosystem]
    config = write_config(tmp_path, {tenant: tenant_block(ecosystem, sample_prometheus.url)})
    results = run_days(config, tenant, instance)
    assert all(r.success for r in results)
    assert all(e.passed for r in results for e in r.get_asset_check_evaluations())

    with open_tenant_db(tmp_path / "data" / f"{tenant}.duckdb", ecosystem=ecosystem, tenant_id=tenant) as db:
        billing = [line for d in BILLING_DAYS for line in db.billing.find_by_date(d)]
        chargebacks = [row for d in BILLING_DAYS for row in db.chargebacks.find_by_date(d)]

    assert sorted(map(billing_key, billing)) == sorted(map(billing_key, expected_rows(ecosystem, "billing")))
    expected = sorted(map(chargeback_key, expected_rows(ecosystem, "chargebacks")))
    assert sorted(map(chargeback_key, chargebacks)) == expected
