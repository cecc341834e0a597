"""The core's usage step with the Prometheus source, end to end through Dagster.

A fixture plugin (tests/fixtures/plugins_metered) bills a daily fee for the sample
PostgreSQL server and splits it by ``pg_stat_activity_count`` per user, read from a
real Prometheus. Expected shares come from the series file. When Prometheus cannot be
reached the usage group is stored as failed, the step still succeeds, the failure is
logged with tenant, query key and reason, and the usage tier falls back to an even
split; re-materialising with Prometheus back replaces the partition exactly.
"""

from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from chargeback_pipeline.allocation import usage_ratio
from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.partitions import partition_key
from chargeback_pipeline.metrics import clear_response_cache
from chargeback_pipeline.storage import open_tenant_db
from tests.prometheus_support import PrometheusServer, free_port, load_series, series_samples

DAY = date(2026, 3, 1)
DAY_START = datetime(2026, 3, 1, tzinfo=UTC)
TENANT = "pg-usage"
FEE = Decimal("100.0000")
PLUGINS = Path(__file__).parent / "fixtures" / "plugins_metered"


def write_config(tmp_path: Path, url: str) -> Path:
    if not (tmp_path / "plugins").exists():
        shutil.copytree(PLUGINS, tmp_path / "plugins")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
plugins_path: plugins
tenants:
  {TENANT}:
    ecosystem: metered
    tenant_id: pg-small
    lookback_days: 8
    cutoff_days: 1
    plugin_settings:
      resource_id: postgres
      resource_label: job
      daily_fee: "{FEE}"
      users: [analyst, app_billing, app_orders, batch_job]
      usage_query: "sum by (user) (pg_stat_activity_count{{}})"
      usage_label: user
      metrics: {{type: prometheus, url: "{url}", backoff_base_seconds: 0.01}}
""",
        encoding="utf-8",
    )
    return config


def materialise(config: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    clear_response_cache()
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    return job.execute_in_process(
        partition_key=partition_key(TENANT, DAY), instance=instance, raise_on_error=False
    )


def usage_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    (materialisation,) = result.asset_materializations_for_node("usage_metrics")
    return {k: v.value for k, v in materialisation.metadata.items()}


def stored(config: Path) -> tuple[list[tuple[str, str, str, Decimal]], bool]:
    with open_tenant_db(
        config.parent / "data" / f"{TENANT}.duckdb", ecosystem="metered", tenant_id="pg-small"
    ) as db:
        rows = [
            (r.identity_id, r.allocation_method or "", r.allocation_detail or "", r.amount)
            for r in db.chargebacks.find_by_date(DAY)
        ]
        (group,) = db.usage.load_date(DAY).values()
    return sorted(rows), group.fetch_failed


def expected_usage() -> dict[str, Decimal]:
    """Σ of each user's hourly gauge samples over [00:00, 24:00) — what a 1 h step returns."""
    hours = {int((DAY_START + timedelta(hours=h)).timestamp()) for h in range(24)}
    usage: dict[str, Decimal] = defaultdict(Decimal)
    for series in load_series():
        if series["labels"]["__name__"] == "pg_stat_activity_count":
            for ts, value in series_samples(series):
                if ts in hours:
                    usage[series["labels"]["user"]] += value
    return dict(usage)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def test_usage_from_prometheus_drives_the_split_and_an_outage_falls_back(
    tmp_path: Path,
    frozen_clock: str,
    instance: dg.DagsterInstance,
    sample_prometheus: PrometheusServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    usage = expected_usage()
    assert sorted(usage) == ["analyst", "app_billing", "app_orders", "batch_job"]
    by_usage = sorted(
        (who, "usage_ratio", "usage_ratio_allocation", amount) for who, amount, _ in usage_ratio(usage, FEE)
    )

    # 1. Prometheus is down (nothing listens on the port): the usage group fails, the
    #    step succeeds, the chain falls back to an even split over the active users.
    dead_url = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, dead_url)
    with caplog.at_level(logging.WARNING, logger="chargeback_pipeline"):
        result = materialise(config, instance)
    assert result.success
    metadata = usage_metadata(result)
    assert (metadata["groups_with_queries"], metadata["groups_fetched"], metadata["groups_failed"]) == (
        1,
        0,
        1,
    )
    assert str(metadata["failed_groups"]).startswith(
        "postgres [2026-03-01T00:00:00+00:00, 2026-03-02T00:00:00+00:00): MetricsQueryError: "
        "metrics query 'usage' (sum by (user) (pg_stat_activity_count{job=\"postgres\"})): "
        f"Exhausted 4 attempts for {dead_url}/api/v1/query_range (last: ConnectError"
    )
    warnings = [r.getMessage() for r in caplog.records if "usage fetch failed" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"tenant '{TENANT}': 2026-03-01: usage fetch failed for postgres [")
    assert "metrics query 'usage'" in warnings[0] and "Exhausted 4 attempts" in warnings[0]
    rows, failed = stored(config)
    assert failed is True
    assert rows == [
        (who, "even_split", "no_metrics_located", Decimal("25.0000"))
        for who in ["analyst", "app_billing", "app_orders", "batch_job"]
    ]

    # 2. Prometheus answers: the same partition is replaced by the usage split.
    config = write_config(tmp_path, sample_prometheus.url)
    result = materialise(config, instance)
    assert result.success
    metadata = usage_metadata(result)
    assert (metadata["groups_fetched"], metadata["groups_failed"], metadata["failed_groups"]) == (
        1,
        0,
        "none",
    )
    assert metadata["metric_rows"] == 4 * 24
    rows, failed = stored(config)
    assert failed is False
    assert rows == by_usage
    assert sum(r[3] for r in rows) == FEE
    assert len({r[3] for r in rows}) > 1  # a real usage split, not an even one
