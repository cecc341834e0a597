"""Prometheus going down in the middle of a range run, through Dagster.

The tenant reads a real Prometheus through a real HTTP proxy (``PrometheusProxy``) that
stops listening at a chosen request, the way a server that dies mid-run refuses every
later connection. A range run processes step by step (every date's billing, then the
inventory, then each date's usage, then each date's chargebacks), so "after the first
dates" falls either in the per-date usage step or in the range's billing gather; both
are proved here, each against a clean run of the same dates.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from chargeback_pipeline.metrics import clear_response_cache
from chargeback_pipeline.storage import open_tenant_db
from tests.ops_support import failures, run_range
from tests.prometheus_support import PrometheusProxy, PrometheusServer
from tests.sample_org import TENANTS, tenant_block, write_config

pytestmark = pytest.mark.usefixtures("sample_clock")
TENANT = TENANTS["generic_metrics_only"]
DATES = [date(2026, 3, 1) + timedelta(days=i) for i in range(4)]
# Refused, or reset on a kept-alive connection: which one depends on when the listener closed.
TRANSPORT_ERROR = r"\(last: (ConnectError|ReadError|RemoteProtocolError|WriteError): "
FAST_METRICS = {"max_attempts": 2, "backoff_base_seconds": 0.01, "timeout_seconds": 5}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def config_for(directory: Path, url: str) -> Path:
    block = tenant_block("generic_metrics_only", url)
    block["plugin_settings"]["metrics"].update(FAST_METRICS)
    return write_config(directory, {TENANT: block})


def key(d: date) -> str:
    return f"{d.isoformat()}|{TENANT}"


def run(config: Path, instance: dg.DagsterInstance, first: date, last: date) -> dg.ExecuteInProcessResult:
    clear_response_cache()  # every run asks the server, as a new process would
    return run_range(config, instance, key(first), key(last))


def stored(config: Path) -> dict[date, dict[str, Any]]:
    """Per date: rows, billed and allocated totals, line and row counts, calculation id."""
    with open_tenant_db(
        config.parent / "data" / f"{TENANT}.duckdb", ecosystem="generic_metrics_only", tenant_id=TENANT
    ) as db:
        out: dict[date, dict[str, Any]] = {}
        for d in DATES:
            totals = db.chargebacks.date_totals(d)
            out[d] = {
                "rows": sorted(
                    (r.product_type, r.identity_id, r.allocation_detail or "", r.amount)
                    for r in db.chargebacks.find_by_date(d)
                ),
                "billed": totals.billed,
                "allocated": totals.allocated,
                "lines": totals.line_count,
                "row_count": totals.row_count,
                "calculation_id": db.state.get(d).calculation_id,
            }
        return out


def numbers(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "calculation_id"}


@pytest.fixture
def clean(
    tmp_path: Path, sample_prometheus: PrometheusServer, instance: dg.DagsterInstance
) -> dict[date, Any]:
    """The four dates of a run that never saw an outage."""
    config = config_for(tmp_path / "clean", sample_prometheus.url)
    result = run(config, instance, DATES[0], DATES[-1])
    assert result.success, failures(result)
    state = stored(config)
    for d in DATES:
        assert state[d]["billed"] == state[d]["allocated"] > Decimal(0), d
        assert state[d]["row_count"] == len(state[d]["rows"]) and state[d]["lines"] == 3
    return state


def usage_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == "usage_metrics":
            materialization = event.step_materialization_data.materialization
            out[str(materialization.partition)] = {k: v.value for k, v in materialization.metadata.items()}
    return out


@pytest.mark.outcome("prometheus-down-mid-run")
def test_prometheus_dying_during_the_usage_of_a_range_falls_back_for_the_later_dates_only(
    tmp_path: Path, sample_prometheus: PrometheusServer, instance: dg.DagsterInstance, clean: dict[date, Any]
) -> None:
    # The server dies when the run asks for the third date's usage (billing and inventory
    # of the whole range, and the first two dates' usage, were answered).
    third = DATES[2].isoformat()
    proxy = PrometheusProxy(sample_prometheus.url, down_when=lambda f: f.get("start", "").startswith(third))
    proxy.up()
    try:
        config = config_for(tmp_path / "tenant", proxy.url)
        result = run(config, instance, DATES[0], DATES[-1])
        assert not proxy.is_up
        # Documented fallback (README "When Prometheus is down"): usage failures do not fail the step.
        assert result.success, failures(result)
        usage = usage_metadata(result)
        assert [usage[key(d)]["groups_failed"] for d in DATES] == [0, 0, 1, 1]
        for d in DATES[2:]:
            failed = usage[key(d)]["failed_groups"]
            assert "MetricsQueryError: metrics query " in failed, failed
            assert f"Exhausted 2 attempts for {proxy.url}/api/v1/query_range (last: " in failed
            assert re.search(TRANSPORT_ERROR, failed), failed
        during = stored(config)
        for d in DATES:
            # No row lost or duplicated: every date still adds up to its bill.
            assert during[d]["billed"] == during[d]["allocated"] == clean[d]["billed"], d
            assert during[d]["row_count"] == len(during[d]["rows"]), d
        # The dates answered before the outage equal the clean run exactly ...
        assert [numbers(during[d]) for d in DATES[:2]] == [numbers(clean[d]) for d in DATES[:2]]
        # ... the later ones fell back: their whole usage group failed, and this tenant knows
        # its identities from the same metrics (identity_source: prometheus), so every cost
        # of those dates is parked on UNALLOCATED until a re-run — allocated, never lost.
        for d in DATES[2:]:
            assert {(r[1], r[2]) for r in during[d]["rows"]} == {("UNALLOCATED", "no_identities_located")}
            assert during[d]["row_count"] == 3  # one row per billing line

        # The server is back: re-running the affected dates replaces them by the usage split.
        proxy.up()
        proxy.down_when = None
        again = run(config, instance, DATES[2], DATES[-1])
        assert again.success, failures(again)
        after = stored(config)
        assert [numbers(after[d]) for d in DATES] == [numbers(clean[d]) for d in DATES]
        assert [after[d]["calculation_id"] for d in DATES[:2]] == [
            during[d]["calculation_id"] for d in DATES[:2]
        ]
    finally:
        proxy.close()


@pytest.mark.outcome("prometheus-down-mid-run")
def test_prometheus_dying_during_the_billing_of_a_range_fails_those_dates_and_keeps_committed_ones(
    tmp_path: Path, sample_prometheus: PrometheusServer, instance: dg.DagsterInstance, clean: dict[date, Any]
) -> None:
    proxy = PrometheusProxy(sample_prometheus.url).up()
    try:
        config = config_for(tmp_path / "tenant", proxy.url)
        # The first two dates were committed by an earlier run.
        assert run(config, instance, DATES[0], DATES[1]).success
        committed = stored(config)
        assert [numbers(committed[d]) for d in DATES[:2]] == [numbers(clean[d]) for d in DATES[:2]]

        # Now the range run: the server answers the first cost query of the range gather
        # and dies at the second, so the range and then each date's own retry fail.
        answered: list[str] = []

        def second_cost_query(fields: dict[str, str]) -> bool:
            answered.append(fields.get("query", ""))
            return len(answered) == 2

        proxy.down_when = second_cost_query
        result = run(config, instance, DATES[0], DATES[-1])
        assert not result.success and not proxy.is_up
        errors = failures(result)
        assert set(errors) == {"billing_lines"}, errors  # everything downstream is skipped
        message = errors["billing_lines"]
        assert f"tenant '{TENANT}': billing gather failed for 4 date(s): 2026-03-01: " in message
        for d in DATES:
            assert f"{d.isoformat()}: MetricsQueryError: metrics query 'cost_PG_" in message
        assert "Exhausted 2 attempts" in message and re.search(TRANSPORT_ERROR, message)
        # Committed dates are untouched (same calculation), the others still have nothing.
        during = stored(config)
        assert [during[d] for d in DATES[:2]] == [committed[d] for d in DATES[:2]]
        assert [during[d]["lines"] for d in DATES[2:]] == [0, 0]

        proxy.up()
        proxy.down_when = None
        again = run(config, instance, DATES[0], DATES[-1])
        assert again.success, failures(again)
        after = stored(config)
        assert [numbers(after[d]) for d in DATES] == [numbers(clean[d]) for d in DATES]
    finally:
        proxy.close()
