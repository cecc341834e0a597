"""A plugin that raises in each method the core calls, through Dagster.

The fixture plugin ``faulty`` (tests/fixtures/plugins_faulty) raises ``InjectedFailure``
in the one method its ``fail_in`` setting names. Two tenants run the same plugin; only
``victim`` is told to fail. Each case runs one partition of both tenants as one run (what
a backfill of a date over all tenants is) on a copy of a clean baseline, and checks:
which steps fail, that the error names the tenant, the plugin and the method (and only
the failing tenant), that the documented fallback applies where the core tolerates the
failure, and that neither tenant's stored rows, totals or CSV bytes changed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from chargeback_pipeline.loader import clear_discovery_cache
from chargeback_pipeline.storage import open_tenant_db
from tests.conftest import FROZEN_NOW, REPO
from tests.ops_support import failures, file_hashes, run_range

DAY = date(2026, 3, 7)
FIRST, LAST = f"{DAY.isoformat()}|bystander", f"{DAY.isoformat()}|victim"
PLUGIN = "tenant 'victim': plugin 'faulty'"
BILLED = Decimal("25.0000")  # FEE 24 + ODD 1 (the ODD line goes through the fallback allocator)
ROOTS = {"billing_lines", "inventory"}

CONFIG = """
plugins_path: plugins
tenants:
  bystander:
    ecosystem: faulty
    tenant_id: bystander
    lookback_days: 8
    cutoff_days: 1
    plugin_settings:
      emitters: [{type: csv, params: {output_dir: out}}]
  victim:
    ecosystem: faulty
    tenant_id: victim
    lookback_days: 8
    cutoff_days: 1
    plugin_settings:
      min_refresh_gap_seconds: 0
      emitters: [{type: csv, params: {output_dir: out}}]
"""


@dataclass(frozen=True)
class Expected:
    """What a failure in one method does: the failing steps and the words of the error."""

    failed_steps: frozenset[str]
    names: str  # the part of the message naming where it failed (after the tenant and plugin)


def fails(steps: set[str], names: str) -> Expected:
    return Expected(frozenset(steps), names)


# method (fail_in) → outcome. Methods the core tolerates fail no step (their fallback is checked below).
CASES: dict[str, Expected] = {
    # Start-up: the tenant's runtime cannot be built, so each of its steps fails; the roots
    # report it and everything downstream is skipped.
    "get_service_handlers": fails(ROOTS, "get_service_handlers()"),
    "get_cost_input": fails(ROOTS, "get_cost_input()"),
    "get_metrics_source": fails(ROOTS, "get_metrics_source()"),
    "get_storage_module": fails(ROOTS, "get_storage_module()"),
    "get_fallback_allocator": fails(ROOTS, "get_fallback_allocator()"),
    # The storage module is used when the tenant's database is opened, i.e. by every step.
    "register_tables": fails(ROOTS, "storage module register_tables()"),
    "create_billing_repository": fails(ROOTS, "storage module create_billing_repository()"),
    "create_resource_repository": fails(ROOTS, "storage module create_resource_repository()"),
    "create_identity_repository": fails(ROOTS, "storage module create_identity_repository()"),
    "create_chargeback_repository": fails(ROOTS, "storage module create_chargeback_repository()"),
    # One step each.
    "cost_input_gather": fails({"billing_lines"}, "cost input gather()"),
    "build_shared_context": fails({"inventory"}, "build_shared_context()"),
    "get_metrics_for_product_type": fails({"usage_metrics"}, "handler 'svc' get_metrics_for_product_type()"),
    "resolve_identities": fails({"chargebacks"}, "handler 'svc' resolve_identities()"),
    "get_allocator": fails({"chargebacks"}, "handler 'svc' get_allocator()"),
    "allocator": fails({"chargebacks"}, "handler 'svc' allocator from get_allocator('FEE') __call__()"),
    "fallback_allocator": fails({"chargebacks"}, "fallback allocator __call__()"),
    # Tolerated: the run succeeds with the documented fallback.
    "gather_resources": fails(set(), "handler 'svc' gather_resources()"),
    "gather_identities": fails(set(), "handler 'svc' gather_identities()"),
    "cost_types_without_data": fails(set(), "cost input cost_types_without_data()"),
    "metrics_query": fails(set(), "metrics source query()"),
    "close": fails(set(), "close()"),
}

# One parameter per method; the fast suite runs one method of each kind, the slow suite the rest.
METHODS = [
    pytest.param(
        "get_service_handlers",
        marks=[pytest.mark.outcome("plugin-raises-in-get-service-handlers"), pytest.mark.slow],
    ),
    pytest.param("get_cost_input", marks=pytest.mark.outcome("plugin-raises-in-get-cost-input")),
    pytest.param(
        "get_metrics_source",
        marks=[pytest.mark.outcome("plugin-raises-in-get-metrics-source"), pytest.mark.slow],
    ),
    pytest.param(
        "get_storage_module",
        marks=[pytest.mark.outcome("plugin-raises-in-get-storage-module"), pytest.mark.slow],
    ),
    pytest.param(
        "get_fallback_allocator",
        marks=[pytest.mark.outcome("plugin-raises-in-get-fallback-allocator"), pytest.mark.slow],
    ),
    pytest.param("register_tables", marks=pytest.mark.outcome("plugin-raises-in-register-tables")),
    pytest.param(
        "create_billing_repository",
        marks=[pytest.mark.outcome("plugin-raises-in-create-billing-repository"), pytest.mark.slow],
    ),
    pytest.param(
        "create_resource_repository",
        marks=[pytest.mark.outcome("plugin-raises-in-create-resource-repository"), pytest.mark.slow],
    ),
    pytest.param(
        "create_identity_repository",
        marks=[pytest.mark.outcome("plugin-raises-in-create-identity-repository"), pytest.mark.slow],
    ),
    pytest.param(
        "create_chargeback_repository",
        marks=[pytest.mark.outcome("plugin-raises-in-create-chargeback-repository"), pytest.mark.slow],
    ),
    pytest.param("cost_input_gather", marks=pytest.mark.outcome("plugin-raises-in-cost-input-gather")),
    pytest.param("build_shared_context", marks=pytest.mark.outcome("plugin-raises-in-build-shared-context")),
    pytest.param(
        "get_metrics_for_product_type",
        marks=pytest.mark.outcome("plugin-raises-in-get-metrics-for-product-type"),
    ),
    pytest.param("resolve_identities", marks=pytest.mark.outcome("plugin-raises-in-resolve-identities")),
    pytest.param(
        "get_allocator", marks=[pytest.mark.outcome("plugin-raises-in-get-allocator"), pytest.mark.slow]
    ),
    pytest.param("allocator", marks=pytest.mark.outcome("plugin-raises-in-allocator")),
    pytest.param(
        "fallback_allocator",
        marks=[pytest.mark.outcome("plugin-raises-in-fallback-allocator"), pytest.mark.slow],
    ),
    pytest.param("gather_resources", marks=pytest.mark.outcome("plugin-raises-in-gather-resources")),
    pytest.param(
        "gather_identities",
        marks=[pytest.mark.outcome("plugin-raises-in-gather-identities"), pytest.mark.slow],
    ),
    pytest.param(
        "cost_types_without_data",
        marks=[pytest.mark.outcome("plugin-raises-in-cost-types-without-data"), pytest.mark.slow],
    ),
    pytest.param("metrics_query", marks=pytest.mark.outcome("plugin-raises-in-metrics-query")),
    pytest.param("close", marks=pytest.mark.outcome("plugin-raises-in-close")),
]


@dataclass
class Tenants:
    config: Path
    instance: dg.DagsterInstance

    def run(self) -> dg.ExecuteInProcessResult:
        return run_range(self.config, self.instance, FIRST, LAST)

    def state(self, tenant: str) -> dict[str, Any]:
        with open_tenant_db(
            self.config.parent / "data" / f"{tenant}.duckdb", ecosystem="faulty", tenant_id=tenant
        ) as db:
            totals = db.chargebacks.date_totals(DAY)
            return {
                "rows": sorted(
                    (r.product_type, r.identity_id, r.allocation_detail or "", str(r.amount))
                    for r in db.chargebacks.find_by_date(DAY)
                ),
                "billed": totals.billed,
                "allocated": totals.allocated,
                "billing_lines": totals.line_count,
                "calculation_id": db.state.get(DAY).calculation_id,
                "active_identities": sorted(i.identity_id for i in db.identities.find_active_at(db_now())),
                "csv": file_hashes([self.config.parent / "out" / f"{tenant}_{DAY.isoformat()}.csv"]),
            }


def db_now() -> datetime:
    return datetime(2026, 3, 9, tzinfo=UTC)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    """Both tenants healthy, DAY materialised once; each test works on a copy."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("CHARGEBACK_NOW", FROZEN_NOW)
    for name in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    clear_discovery_cache()
    try:
        directory = tmp_path_factory.mktemp("faulty-plugin")
        shutil.copytree(REPO / "tests" / "fixtures" / "plugins_faulty", directory / "plugins")
        config = directory / "config.yaml"
        config.write_text(CONFIG, encoding="utf-8")
        with dg.instance_for_test() as instance:
            tenants = Tenants(config, instance)
            first = tenants.run()
            assert first.success, failures(first)
            yield tenants
    finally:
        monkeypatch.undo()
        clear_discovery_cache()


@pytest.fixture
def tenants(baseline: Tenants, tmp_path: Path) -> Tenants:
    shutil.copytree(baseline.config.parent, tmp_path / "copy")
    return Tenants(tmp_path / "copy" / "config.yaml", baseline.instance)


def fail_victim_in(config: Path, method: str) -> None:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["tenants"]["victim"]["plugin_settings"]["fail_in"] = method
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def materialised(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, dict[str, Any]]:
    """Metadata of ``asset`` per partition key materialised by the run."""
    out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            materialization = event.step_materialization_data.materialization
            out[str(materialization.partition)] = {k: v.value for k, v in materialization.metadata.items()}
    return out


def test_the_baseline_reconciles(baseline: Tenants) -> None:
    for tenant in ("bystander", "victim"):
        state = baseline.state(tenant)
        assert state["billed"] == state["allocated"] == BILLED
        assert state["billing_lines"] == 2
        # FEE split over ann and bob, ODD parked on UNALLOCATED by the fallback allocator.
        assert state["rows"] == [
            ("FEE", "ann", "even_split_allocation", "12.0000"),
            ("FEE", "bob", "even_split_allocation", "12.0000"),
            ("ODD", "UNALLOCATED", "UNKNOWN_PRODUCT_TYPE", "1.0000"),
        ]
        assert state["csv"] and state["active_identities"] == ["UNALLOCATED", "ann", "bob"]


@pytest.mark.parametrize("method", METHODS)
def test_a_plugin_raising_in_one_method_fails_only_what_depends_on_it(
    tenants: Tenants, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    expected = CASES[method]
    before = {t: tenants.state(t) for t in ("bystander", "victim")}
    fail_victim_in(tenants.config, method)
    with caplog.at_level(logging.WARNING):
        result = tenants.run()
    errors = failures(result)
    assert set(errors) == expected.failed_steps, errors
    outcome = "failed:" if method == "close" else "raised"  # close() is logged by the runtime itself
    words = f"{PLUGIN} {expected.names} {outcome} InjectedFailure: injected failure in {method}"
    for step, message in errors.items():
        first_line = message.splitlines()[0]
        assert words in message, (step, message[:1500])
        assert "bystander" not in first_line, first_line  # only the failing tenant is named
    after = {t: tenants.state(t) for t in ("bystander", "victim")}

    # No row lost or duplicated anywhere: same rows, totals and CSV bytes for both tenants.
    for tenant in ("bystander", "victim"):
        for key in ("rows", "billed", "allocated", "billing_lines", "csv", "active_identities"):
            assert after[tenant][key] == before[tenant][key], (tenant, key)
        assert after[tenant]["billed"] == after[tenant]["allocated"] == BILLED
    if expected.failed_steps:
        assert after["victim"]["calculation_id"] == before["victim"]["calculation_id"]  # not replaced
    if expected.failed_steps:
        assert not result.success
        return
    # Tolerated failures: the run succeeds, the fallback is visible where an operator looks.
    assert result.success
    assert after["victim"]["calculation_id"] != before["victim"]["calculation_id"]  # recalculated
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert words in logged, logged[-3000:]
    victim_key = LAST
    if method in ("gather_resources", "gather_identities"):
        inventory = materialised(result, "inventory")[victim_key]
        assert (inventory["complete"], inventory["failed_handlers"]) == (False, "svc")
        deletions = materialised(result, "resource_deletions")[victim_key]
        # Nothing is marked deleted on the strength of a gather that failed half-way.
        assert (deletions["deleted_resources"], deletions["deleted_identities"]) == (0, 0)
        assert "recalculating on a partially refreshed inventory" in logged
    elif method == "cost_types_without_data":
        assert materialised(result, "billing_lines")[victim_key]["cost_types_without_data"] == "unknown"
    elif method == "metrics_query":
        usage = materialised(result, "usage_metrics")[victim_key]
        assert usage["groups_failed"] == 1 and words in usage["failed_groups"]
    elif method == "close":
        assert [r.levelname for r in caplog.records if "close() failed" in r.getMessage()] == ["WARNING"]
