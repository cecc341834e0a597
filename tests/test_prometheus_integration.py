"""The metrics sink against a real Prometheus: the demo's chargebacks, emitted through
Dagster, loaded with ``promtool tsdb create-blocks-from openmetrics`` and queried with
PromQL must give back exactly the totals stored in DuckDB, per tenant, identity and day.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.partitions import partition_key
from chargeback_pipeline.emitters.openmetrics import unix_seconds
from chargeback_pipeline.storage import open_tenant_db
from tests.prometheus_support import PrometheusServer, create_blocks

TENANTS = {"postgres-prod": "acme-postgres", "redis-cache": "acme-redis"}
DAYS = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]
NOT_CALCULATED = date(2026, 3, 4)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def materialise(config: Path, instance: dg.DagsterInstance, tenant: str, d: date) -> None:
    job = build_definitions(config).resolve_job_def(PIPELINE_JOB)
    result = job.execute_in_process(partition_key=partition_key(tenant, d), instance=instance)
    assert result.success


def stored_totals(config: Path) -> dict[tuple[str, str, date], Decimal]:
    """Σ amount per (tenant_id, identity, day) and Σ billed per (tenant_id, '<billed>', day), from DuckDB."""
    totals: dict[tuple[str, str, date], Decimal] = defaultdict(Decimal)
    for tenant, tenant_id in TENANTS.items():
        path = config.parent / "data" / f"{tenant}.duckdb"
        with open_tenant_db(path, ecosystem="generic_metrics_only", tenant_id=tenant_id) as db:
            for d in DAYS:
                for row in db.chargebacks.find_by_date(d):
                    totals[(tenant_id, row.identity_id, d)] += row.amount
                for line in db.billing.find_by_date(d):
                    totals[(tenant_id, "<billed>", d)] += line.total_cost
    return dict(totals)


def query(server: PrometheusServer, promql: str, at: int) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/v1/query", params={"query": promql, "time": str(at)}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_promql_per_tenant_identity_and_day_equals_duckdb(
    demo_config: Path, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    for tenant in TENANTS:
        for d in DAYS[:2]:
            materialise(demo_config, instance, tenant, d)
    # A revised rate: March 2nd is recalculated and March 3rd calculated with it, so the
    # days differ and the history must carry the recalculated numbers.
    text = demo_config.read_text(encoding="utf-8")
    demo_config.write_text(text.replace('rate: "0.021"', 'rate: "0.0337"'), encoding="utf-8")
    for tenant in TENANTS:
        for d in DAYS[1:]:
            materialise(demo_config, instance, tenant, d)
    expected = stored_totals(demo_config)
    assert expected[("acme-postgres", "app-orders", DAYS[0])] == Decimal("7.6243")
    # 5.9904 + 1.5331 + PG_BACKUP 24 h × 0.0337 = 0.8088 / 5 → Q4 0.1618 each, the −0.0002
    # remainder taken from the first two sorted ids (analyst-jane, app-audit): 0.1618.
    assert expected[("acme-postgres", "app-orders", DAYS[2])] == Decimal("7.6853")

    metrics = demo_config.parent / "out" / "metrics"
    data_dir = tmp_path / "prometheus" / "data"
    for tenant_id in TENANTS.values():
        create_blocks(metrics / f"{tenant_id}.om", data_dir)
    with PrometheusServer(tmp_path / "prometheus", data_dir) as server:
        checked = 0
        for (tenant_id, identity, d), total in sorted(expected.items()):
            if identity == "<billed>":
                continue
            midnight = unix_seconds(d)
            series = query(
                server, f'chargeback_amount{{tenant_id="{tenant_id}",identity_id="{identity}"}}', midnight
            )
            assert series, (tenant_id, identity, d)
            assert all(s["value"][0] == midnight for s in series)
            # Every sample comes back as the exact 4-dp text that was written.
            assert sum(Decimal(s["value"][1]) for s in series) == total, (tenant_id, identity, d)
            checked += 1
        assert checked == 3 * (5 + 3)  # postgres 5 and redis 3 identities, 3 days
        for tenant_id in TENANTS.values():
            for d in DAYS:
                midnight = unix_seconds(d)
                # The README's Grafana query: per-identity daily totals, rounded to 0.0001.
                selector = f'chargeback_amount{{tenant_id="{tenant_id}"}}'
                grafana = query(
                    server,
                    f"round(sum by (identity_id) (last_over_time({selector}[1d])), 0.0001)",
                    midnight + 12 * 3600,  # any time of the day shows that day's totals
                )
                assert {s["metric"]["identity_id"]: Decimal(s["value"][1]) for s in grafana} == {
                    identity: total
                    for (tid, identity, day), total in expected.items()
                    if tid == tenant_id and day == d and identity != "<billed>"
                }
                billed = query(
                    server,
                    f'round(sum(chargeback_billing_amount{{tenant_id="{tenant_id}"}}), 0.0001)',
                    midnight,
                )
                allocated = query(
                    server, f'round(sum(chargeback_amount{{tenant_id="{tenant_id}"}}), 0.0001)', midnight
                )
                assert Decimal(billed[0]["value"][1]) == expected[(tenant_id, "<billed>", d)]
                assert Decimal(allocated[0]["value"][1]) == expected[(tenant_id, "<billed>", d)]
                active = query(
                    server, f'count(chargeback_identity_active{{tenant_id="{tenant_id}"}})', midnight
                )
                assert active[0]["value"][1] == ("5" if tenant_id == "acme-postgres" else "3")
        # Samples sit exactly at midnight: nothing for a day that was never calculated,
        # and a plain instant query at noon finds nothing (5-minute lookback).
        assert query(server, "chargeback_amount", unix_seconds(NOT_CALCULATED)) == []
        assert query(server, "chargeback_amount", unix_seconds(DAYS[0]) + 12 * 3600) == []
        assert len(query(server, "chargeback_amount", unix_seconds(DAYS[0]))) == 15 + 6


def test_history_spans_every_emitted_day(demo_config: Path, instance: dg.DagsterInstance) -> None:
    for d in (DAYS[0], DAYS[2]):
        materialise(demo_config, instance, "redis-cache", d)
    history = (demo_config.parent / "out" / "metrics" / "acme-redis.om").read_text(encoding="utf-8")
    stamps = sorted(
        {int(line.rsplit(" ", 1)[1]) for line in history.splitlines() if not line.startswith("#")}
    )
    assert stamps == [unix_seconds(DAYS[0]), unix_seconds(DAYS[2])]
    assert unix_seconds(DAYS[2]) - unix_seconds(DAYS[0]) == int(timedelta(days=2).total_seconds())
