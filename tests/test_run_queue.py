"""The run coordinator: every single-tenant run is tagged with its tenant, and the queue
limits parallel tenants to ``features.max_parallel_tenants`` (dagster.yaml, config.yaml)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from chargeback_pipeline.run_queue import (
    TENANT_RUN_TAG,
    TenantQueuedRunCoordinator,
    derived_tenant_tags,
    max_runtime_tag,
)
from tests.conftest import REPO

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@pytest.mark.parametrize(
    ("tags", "job", "expected"),
    [
        # A backfill run over a range of one tenant's dates: tagged with that tenant.
        (
            {RANGE_START: "2026-01-01|acme", RANGE_END: "2026-12-31|acme"},
            "chargeback_pipeline",
            {"tenant": "acme", TENANT_RUN_TAG: "1"},
        ),
        # A single partition from the UI.
        (
            {"dagster/partition/tenant": "acme", "dagster/partition": "2026-01-01|acme"},
            "chargeback_pipeline",
            {"tenant": "acme", TENANT_RUN_TAG: "1"},
        ),
        # The schedule already set it.
        (
            {"tenant": "acme", RANGE_START: "x|acme", RANGE_END: "y|acme"},
            "chargeback_pipeline",
            {TENANT_RUN_TAG: "1"},
        ),
        # One date of several tenants in one run: no single tenant to limit on.
        (
            {RANGE_START: "2026-01-01|acme", RANGE_END: "2026-01-01|globex"},
            "chargeback_pipeline",
            {"chargeback/tenants": "acme..globex", TENANT_RUN_TAG: "1"},
        ),
        # The retention job is partitioned by tenant alone.
        ({"dagster/partition": "acme"}, "chargeback_retention", {"tenant": "acme", TENANT_RUN_TAG: "1"}),
        # Anything else is left alone.
        ({"dagster/partition": "acme"}, "some_other_job", {}),
        ({}, "chargeback_freshness", {}),
    ],
)
def test_derived_tenant_tags(tags: dict[str, str], job: str, expected: dict[str, str]) -> None:
    assert derived_tenant_tags(tags, job) == expected


@pytest.fixture
def queued_instance(demo_config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """An instance configured by the repository's dagster.yaml (coordinator and limits)."""
    monkeypatch.setenv("CHARGEBACK_CONFIG", str(demo_config))
    settings = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))
    with dg.instance_for_test(overrides={"run_coordinator": settings["run_coordinator"]}) as instance:
        yield instance


def test_the_repository_instance_uses_the_tenant_coordinator(queued_instance: dg.DagsterInstance) -> None:
    # Submission itself (tags derived from a backfill's range runs) is exercised against a
    # real daemon in test_dagster_dev_ui.py.
    assert isinstance(queued_instance.run_coordinator, TenantQueuedRunCoordinator)


def test_queue_limits_follow_the_chargeback_configuration(
    queued_instance: dg.DagsterInstance, demo_config: Path
) -> None:
    def limits() -> dict[str, object]:
        config = queued_instance.get_concurrency_config().run_queue_config
        assert config is not None
        return {entry["key"]: entry.get("limit") for entry in config.tag_concurrency_limits}

    # dagster.yaml: one run per tenant; config.yaml (demo): max_parallel_tenants 2.
    assert limits() == {"tenant": 1, "dagster/partition/tenant": 1, TENANT_RUN_TAG: 2}
    text = demo_config.read_text(encoding="utf-8").replace(
        "max_parallel_tenants: 2", "max_parallel_tenants: 3"
    )
    demo_config.write_text(text, encoding="utf-8")
    later = time.time() + 5  # make the change visible even on coarse mtime clocks
    os.utime(demo_config, (later, later))
    assert limits()[TENANT_RUN_TAG] == 3


TIMEOUTS = {"acme": 600, "globex": 900, "initech": 0, "umbrella": 300}


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"tenant": "acme"}, {"dagster/max_runtime": "600"}),
        # A run over several tenants processes them one after the other.
        ({"chargeback/tenants": "acme..globex"}, {"dagster/max_runtime": "1500"}),
        # A tenant without a limit (0) makes the whole run unlimited.
        ({"chargeback/tenants": "globex..umbrella"}, {}),
        ({"tenant": "initech"}, {}),
        # The launcher's own limit wins; unknown tenants and non-tenant runs get none.
        ({"tenant": "acme", "dagster/max_runtime": "5"}, {}),
        ({"tenant": "hooli"}, {}),
        ({}, {}),
    ],
)
def test_max_runtime_follows_the_tenant_execution_timeout(
    tags: dict[str, str], expected: dict[str, str]
) -> None:
    assert max_runtime_tag(tags, TIMEOUTS) == expected


def test_the_repository_instance_enables_run_monitoring() -> None:
    settings = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))
    assert settings["run_monitoring"]["enabled"] is True
