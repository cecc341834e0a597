"""What a tenant sees when Prometheus misbehaves, through Dagster against a real server.

Each case ends in the documented outcome — a clear failure that names the tenant and
the query, or the documented fallback — and nothing already stored is lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.partitions import partition_key
from chargeback_pipeline.metrics import clear_response_cache
from chargeback_pipeline.models import ChargebackRow
from chargeback_pipeline.storage import open_tenant_db
from tests.prometheus_support import PrometheusServer, clone_prometheus, free_port
from tests.sample_org import MANIFEST, TENANTS, tenant_block, write_config

DAY = date(2026, 3, 2)
pytestmark = pytest.mark.usefixtures("sample_clock")
FAST_METRICS = {"max_attempts": 2, "backoff_base_seconds": 0.01, "timeout_seconds": 5}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def generic_config(tmp_path: Path, url: str, **cost_overrides: dict[str, Any]) -> Path:
    cost_types = [
        {**c, **cost_overrides.get(c["name"], {})} for c in MANIFEST["generic_metrics_only"]["cost_types"]
    ]
    block = tenant_block("generic_metrics_only", url, cost_types=cost_types)
    block["plugin_settings"]["metrics"].update(FAST_METRICS)
    return write_config(tmp_path, {TENANTS["generic_metrics_only"]: block})


def smk_config(tmp_path: Path, url: str) -> Path:
    block = tenant_block("self_managed_kafka", url)
    block["plugin_settings"]["metrics"].update(FAST_METRICS)
    return write_config(tmp_path, {TENANTS["self_managed_kafka"]: block})


def materialise(config: Path, tenant: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    return job.execute_in_process(
        partition_key=partition_key(tenant, DAY), instance=instance, raise_on_error=False
    )


def failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {e.step_key or "": str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure}


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialised")


def stored(config: Path, ecosystem: str) -> tuple[list[Any], list[ChargebackRow]]:
    tenant = TENANTS[ecosystem]
    with open_tenant_db(
        config.parent / "data" / f"{tenant}.duckdb", ecosystem=ecosystem, tenant_id=tenant
    ) as db:
        return db.billing.find_by_date(DAY), db.chargebacks.find_by_date(DAY)


def rows_of(rows: list[ChargebackRow], product_type: str) -> list[tuple[str, Decimal, str, str]]:
    return [
        (r.identity_id, r.amount, str(r.cost_type), r.allocation_detail or "")
        for r in rows
        if r.product_type == product_type
    ]


@pytest.mark.outcome("prometheus-down")
def test_stopped_prometheus_fails_the_partition_and_keeps_stored_rows(
    tmp_path: Path, sample_prometheus: PrometheusServer, instance: dg.DagsterInstance
) -> None:
    server = clone_prometheus(sample_prometheus, tmp_path / "own-prometheus")
    try:
        config = smk_config(tmp_path / "tenant", server.url)
        tenant = TENANTS["self_managed_kafka"]
        assert materialise(config, tenant, instance).success
        before = stored(config, "self_managed_kafka")
        assert before[0] and before[1]

        server.stop()
        clear_response_cache()
        result = materialise(config, tenant, instance)
        assert not result.success
        message = failures(result)["billing_lines"]
        assert f"tenant '{tenant}'" in message
        assert "cluster_" in message  # the failing cost query is named
        assert stored(config, "self_managed_kafka") == before

        server.start()
        clear_response_cache()
        assert materialise(config, tenant, instance).success
        assert stored(config, "self_managed_kafka") == before
    finally:
        server.stop()


@pytest.mark.outcome("prometheus-down")
def test_unreachable_prometheus_is_a_clear_failure_with_nothing_stored(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    config = generic_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    tenant = TENANTS["generic_metrics_only"]
    result = materialise(config, tenant, instance)
    assert not result.success
    errors = failures(result)
    assert "Exhausted 2 attempts" in errors["billing_lines"]
    assert "cost_PG_" in errors["billing_lines"]
    # A failing handler does not fail the inventory step: the gather is marked incomplete.
    assert "inventory" not in errors
    inventory = metadata(result, "inventory")
    assert (inventory["complete"], inventory["failed_handlers"]) == (False, "generic")
    assert stored(config, "generic_metrics_only") == ([], [])


@pytest.mark.outcome("prometheus-bad-query")
def test_invalid_promql_names_the_query_and_prometheus_error(
    tmp_path: Path, sample_prometheus: PrometheusServer, instance: dg.DagsterInstance
) -> None:
    config = generic_config(
        tmp_path,
        sample_prometheus.url,
        PG_STORAGE={"cost_quantity": {"type": "storage_gib", "query": "sum("}},
    )
    result = materialise(config, TENANTS["generic_metrics_only"], instance)
    message = failures(result)["billing_lines"]
    assert "cost_PG_STORAGE" in message
    assert "bad_data" in message
    assert stored(config, "generic_metrics_only") == ([], [])


def test_missing_metric_bills_nothing_for_that_cost_type_and_says_so(
    tmp_path: Path, sample_prometheus: PrometheusServer, instance: dg.DagsterInstance
) -> None:
    config = generic_config(
        tmp_path,
        sample_prometheus.url,
        PG_STORAGE={"cost_quantity": {"type": "storage_gib", "query": "sum(no_such_metric_bytes)"}},
    )
    result = materialise(config, TENANTS["generic_metrics_only"], instance)
    assert result.success
    assert metadata(result, "billing_lines")["cost_types_without_data"] == "PG_STORAGE"
    billing, _ = stored(config, "generic_metrics_only")
    assert sorted(line.product_type for line in billing) == ["PG_COMPUTE", "PG_NETWORK"]


def test_infinite_samples_are_skipped_like_missing_data(
    tmp_path: Path, sample_prometheus: PrometheusServer, instance: dg.DagsterInstance
) -> None:
    config = generic_config(
        tmp_path,
        sample_prometheus.url,
        PG_STORAGE={"cost_quantity": {"type": "storage_gib", "query": "sum(pg_database_size_bytes) / 0"}},
    )
    result = materialise(config, TENANTS["generic_metrics_only"], instance)
    assert result.success
    assert metadata(result, "billing_lines")["cost_types_without_data"] == "PG_STORAGE"


def test_series_without_the_allocation_label_fall_back_to_even_split(
    tmp_path: Path, sample_prometheus: PrometheusServer, instance: dg.DagsterInstance
) -> None:
    config = generic_config(
        tmp_path,
        sample_prometheus.url,
        PG_NETWORK={"allocation_query": "sum(increase(pg_net_bytes_total[1h]))"},
    )
    result = materialise(config, TENANTS["generic_metrics_only"], instance)
    assert result.success
    _, rows = stored(config, "generic_metrics_only")
    network = rows_of(rows, "PG_NETWORK")
    assert {who for who, *_ in network} == {"analyst", "app_billing", "app_orders", "batch_job"}
    assert {(cost_type, detail) for _, _, cost_type, detail in network} == {
        ("shared", "no_usage_for_active_identities")
    }


def test_failing_allocation_query_declines_usage_and_reports_the_group(
    tmp_path: Path, sample_prometheus: PrometheusServer, instance: dg.DagsterInstance
) -> None:
    config = generic_config(
        tmp_path, sample_prometheus.url, PG_NETWORK={"allocation_query": "sum by (user) ("}
    )
    result = materialise(config, TENANTS["generic_metrics_only"], instance)
    assert result.success
    assert metadata(result, "usage_metrics")["groups_failed"] == 1
    _, rows = stored(config, "generic_metrics_only")
    network = rows_of(rows, "PG_NETWORK")
    # The whole group failed, so no identities are derived from metrics either.
    assert network and {(c, d) for _, _, c, d in network} == {("shared", "no_identities_located")}
    assert sum(amount for _, amount, *_ in network) == next(
        line.total_cost
        for line in stored(config, "generic_metrics_only")[0]
        if line.product_type == "PG_NETWORK"
    )


def test_credentials_never_reach_logs_or_metadata(
    tmp_path: Path,
    sample_prometheus: PrometheusServer,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "s3cr3t-Prom-Passw0rd-4417"
    monkeypatch.setenv("PROM_PASSWORD", secret)
    block = tenant_block("generic_metrics_only", sample_prometheus.url)
    block["plugin_settings"]["metrics"].update(
        {"auth_type": "basic", "username": "chargeback", "password": "${PROM_PASSWORD}"}
    )
    config = write_config(tmp_path, {TENANTS["generic_metrics_only"]: block})
    result = materialise(config, TENANTS["generic_metrics_only"], instance)
    assert result.success
    records = instance.get_records_for_run(result.run_id).records
    text = "\n".join(str(record.event_log_entry) for record in records)
    assert "chargeback" in text  # the log really holds the run's events
    assert secret not in text
    assert secret not in str(instance.get_run_by_id(result.run_id))
