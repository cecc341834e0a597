"""Deletion detection over several days of gathers, through the Dagster assets (operations.md §5).

Each "day" the test rewrites the scripted plugin's inventory, moves the pinned clock a
day forward, and materialises ``inventory`` and ``resource_deletions`` for that day's
partition, as successive scheduled refreshes would.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
from chargeback_pipeline.defs.partitions import partition_key
from chargeback_pipeline.storage import open_tenant_db
from tests.conftest import REPO

FIXTURE_PLUGINS = REPO / "tests" / "fixtures" / "plugins_ops"
START = datetime(2026, 3, 9, 6, 0, tzinfo=UTC)
TENANT = "inv"


class Days:
    """Drives one tenant through successive daily gathers."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: int = -1) -> None:
        shutil.copytree(FIXTURE_PLUGINS / "scripted", tmp_path / "plugins" / "scripted")
        self.script = tmp_path / "inventory.json"
        self.config = tmp_path / "config.yaml"
        self.config.write_text(
            f"""
plugins_path: plugins
tenants:
  {TENANT}:
    ecosystem: scripted
    tenant_id: inv-1
    lookback_days: 8
    cutoff_days: 1
    retention_days: 60
    zero_gather_deletion_threshold: {threshold}
    plugin_settings:
      script: {self.script}
      min_refresh_gap_seconds: 0
""",
            encoding="utf-8",
        )
        self.monkeypatch = monkeypatch
        self.instance = dg.DagsterInstance.ephemeral()
        self.day = 0

    def gather(self, handlers: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Run day N's inventory + deletion detection; return the deletion step's metadata."""
        self.script.write_text(json.dumps({"handlers": handlers}), encoding="utf-8")
        now = START + timedelta(days=self.day)
        self.monkeypatch.setenv("CHARGEBACK_NOW", now.isoformat())
        d = now.date() - timedelta(days=2)
        job = build_definitions(self.config).resolve_job_def(PIPELINE_JOB)
        result = job.execute_in_process(
            partition_key=partition_key(TENANT, d),
            instance=self.instance,
            asset_selection=[dg.AssetKey("inventory"), dg.AssetKey("resource_deletions")],
            raise_on_error=False,
        )
        assert result.success, [
            str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure
        ]
        self.day += 1
        (event,) = [
            e
            for e in result.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey("resource_deletions")
        ]
        return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}

    def _db(self) -> Any:
        return open_tenant_db(
            self.config.parent / "data" / f"{TENANT}.duckdb", ecosystem="scripted", tenant_id="inv-1"
        )

    def gather_time(self, day: int) -> datetime:
        return START + timedelta(days=day)

    def deleted(self) -> dict[str, datetime | None]:
        """Resource and identity id → ``deleted_at`` (``None`` while live)."""
        with self._db() as db:
            state: dict[str, datetime | None] = {}
            for table in ("resources", "identities"):
                key = "resource_id" if table == "resources" else "identity_id"
                for entity_id, deleted_at in db.conn.execute(
                    f"SELECT {key}, deleted_at FROM {table} WHERE {key} <> 'UNALLOCATED'"
                ).fetchall():
                    state[entity_id] = deleted_at.astimezone(UTC) if deleted_at else None
            return state

    def counters(self) -> dict[str, Any]:
        with self._db() as db:
            return {
                n: db.gather_state.get(n) for n in db.gather_state.names() if n.startswith("zero_gathers:")
            }


@pytest.fixture
def days(tmp_path: Path, frozen_clock: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Days]:
    yield Days(tmp_path, monkeypatch)


def handler(
    types: list[str], resources: list[list[str]], identities: list[str] | None = None, fail: bool = False
) -> dict[str, Any]:
    return {"types": types, "resources": resources, "identities": identities or [], "fail": fail}


def test_entities_missing_from_a_later_gather_are_deleted_at_that_gathers_start(days: Days) -> None:
    days.gather({"kafka": handler(["cluster"], [["c1", "cluster"], ["c2", "cluster"]], ["alice", "bob"])})
    assert days.deleted() == {"c1": None, "c2": None, "alice": None, "bob": None}

    summary = days.gather({"kafka": handler(["cluster"], [["c1", "cluster"]], ["alice"])})
    assert summary["deleted_resources"] == 1 and summary["deleted_identities"] == 1
    assert days.deleted() == {
        "c1": None,
        "c2": days.gather_time(1),
        "alice": None,
        "bob": days.gather_time(1),
    }

    # A third day that sees everything again keeps the earlier deletion time of nothing live.
    days.gather({"kafka": handler(["cluster"], [["c1", "cluster"]], ["alice"])})
    assert days.deleted()["c2"] == days.gather_time(1)


def test_a_failed_handler_protects_its_declared_types_and_all_identities(days: Days) -> None:
    both_topics = {
        "kafka": handler(["cluster", "topic"], [["c1", "cluster"], ["t1", "topic"]], ["alice"]),
        "schema": handler(["topic", "subject"], [["t2", "topic"], ["s1", "subject"]], ["bob"]),
    }
    days.gather(both_topics)
    # Day 2: 'schema' fails after yielding nothing. It declares topic and subject, so
    # neither type is swept (even t1, which 'kafka' stopped returning), nor are identities.
    # 'cluster' is declared only by 'kafka', which succeeded: c1 (replaced by c3) is swept.
    summary = days.gather(
        {
            "kafka": handler(["cluster", "topic"], [["c3", "cluster"]], []),
            "schema": handler(["topic", "subject"], [], [], fail=True),
        }
    )
    assert summary["skipped_types"] == "identities"
    assert days.deleted() == {
        "c1": days.gather_time(1),
        "c3": None,
        "t1": None,
        "t2": None,
        "s1": None,
        "alice": None,
        "bob": None,
    }
    # Day 3: both succeed again; t1, s1, alice and bob are no longer returned and go now.
    days.gather(
        {
            "kafka": handler(["cluster", "topic"], [["c3", "cluster"]], []),
            "schema": handler(["topic", "subject"], [["t2", "topic"], ["s2", "subject"]], ["carol"]),
        }
    )
    gone = {k for k, v in days.deleted().items() if v == days.gather_time(2)}
    assert gone == {"t1", "s1", "alice", "bob"}


def test_undeclared_resource_types_are_never_swept(days: Days) -> None:
    days.gather({"kafka": handler(["cluster"], [["c1", "cluster"], ["x1", "legacy"]], ["alice"])})
    days.gather({"kafka": handler(["cluster"], [["c1", "cluster"]], ["alice"])})
    assert days.deleted()["x1"] is None


@pytest.mark.parametrize(
    ("threshold", "deleted_on_empty_gather"),
    [(-1, None), (0, 1), (1, 1), (3, 3)],
)
def test_zero_gather_threshold(
    tmp_path: Path,
    frozen_clock: str,
    monkeypatch: pytest.MonkeyPatch,
    threshold: int,
    deleted_on_empty_gather: int | None,
) -> None:
    days = Days(tmp_path, monkeypatch, threshold=threshold)
    days.gather({"kafka": handler(["cluster"], [["c1", "cluster"], ["c2", "cluster"]], ["alice"])})
    empty = {"kafka": handler(["cluster"], [], [])}
    for n in range(1, 5):
        days.gather(empty)
        state = days.deleted()
        if deleted_on_empty_gather is not None and n >= deleted_on_empty_gather:
            expected = days.gather_time(deleted_on_empty_gather)
            assert state == {"c1": expected, "c2": expected, "alice": expected}, f"empty gather #{n}"
        else:
            assert set(state.values()) == {None}, f"empty gather #{n}"
            assert days.counters() == {"zero_gathers:resources:cluster": n, "zero_gathers:identities": n}
    if deleted_on_empty_gather is not None:
        # Reset when the deletion happened; with nothing active left it stays at 0.
        assert days.counters() == {"zero_gathers:resources:cluster": 0, "zero_gathers:identities": 0}


def test_a_gather_reused_within_the_refresh_gap_does_not_sweep_again(
    tmp_path: Path, frozen_clock: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    days = Days(tmp_path, monkeypatch)
    days.config.write_text(
        days.config.read_text(encoding="utf-8").replace(
            "min_refresh_gap_seconds: 0", "min_refresh_gap_seconds: 172800"
        ),
        encoding="utf-8",
    )
    days.gather({"kafka": handler(["cluster"], [["c1", "cluster"], ["c2", "cluster"]], [])})
    # A day later, within the 2-day gap: the inventory is reused, nothing is gathered or swept.
    summary = days.gather({"kafka": handler(["cluster"], [["c1", "cluster"]], [])})
    assert summary["note"] == "already applied for the latest gather"
    assert days.deleted() == {"c1": None, "c2": None}
