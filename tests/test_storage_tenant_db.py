from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from chargeback_pipeline.errors import StorageError
from chargeback_pipeline.models import Identity, Resource
from chargeback_pipeline.protocols import StorageModule
from chargeback_pipeline.storage import (
    CoreStorageModule,
    StorageBackend,
    TenantDatabase,
    TenantStorageBackend,
    open_tenant_db,
)
from chargeback_pipeline.storage.schema import LATEST_VERSION
from tests.test_storage_support import D1, ECO, T1, TENANT, EnvStorageModule, line, row


def open_db(path: Path, **kwargs: Any) -> AbstractContextManager[TenantDatabase]:
    return open_tenant_db(path, ecosystem=ECO, tenant_id=TENANT, **kwargs)


def test_core_module_satisfies_the_protocol() -> None:
    module = CoreStorageModule()
    assert isinstance(module, StorageModule)
    assert module.extra_key_fields == ()
    assert isinstance(EnvStorageModule(), StorageModule)


def test_reopen_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "acme.duckdb"
    with open_db(path) as db:
        db.billing.replace_date(D1, [line("1.5")])
    for _ in range(2):
        with open_db(path) as db:
            assert [x.total_cost for x in db.billing.find_by_date(D1)] == [Decimal("1.5000")]
            versions = db.conn.execute("SELECT version FROM schema_version").fetchall()
            assert versions == [(LATEST_VERSION,)]
            assert db.identities.count() == 1
    assert (tmp_path / "nested" / "acme.duckdb.lock").exists()


def test_connection_is_closed_after_the_block_even_on_error(tmp_path: Path) -> None:
    path = tmp_path / "acme.duckdb"
    with pytest.raises(RuntimeError, match="boom"), open_db(path) as db:
        conn = db.conn
        raise RuntimeError("boom")
    with pytest.raises(duckdb.ConnectionException):
        conn.execute("SELECT 1")
    # The lock was released: another open succeeds at once.
    with open_db(path, lock_timeout_s=0.5) as db:
        assert db.billing.dates() == []


def test_unallocated_is_revived_when_found_deleted(tmp_path: Path) -> None:
    path = tmp_path / "acme.duckdb"
    with open_db(path) as db:
        db.conn.execute("UPDATE identities SET deleted_at = now() WHERE identity_id = 'UNALLOCATED'")
    with open_db(path) as db:
        unallocated = db.identities.get("UNALLOCATED")
        assert unallocated is not None
        assert (unallocated.identity_type, unallocated.display_name, unallocated.deleted_at) == (
            "system",
            "Unallocated Costs",
            None,
        )


def test_file_of_another_tenant_or_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "acme.duckdb"
    with open_db(path):
        pass
    with (
        pytest.raises(StorageError, match=r"tenant_id is 'acme', opened as 'globex'"),
        open_tenant_db(path, ecosystem=ECO, tenant_id="globex"),
    ):
        pass
    with (
        pytest.raises(StorageError, match=r"extra_key_fields is '\[\]', opened as '\[\"env_id\"\]'"),
        open_db(path, storage_module=EnvStorageModule()),
    ):
        pass


def test_invalid_extra_key_field_is_refused(tmp_path: Path) -> None:
    class Bad(CoreStorageModule):
        extra_key_fields: tuple[str, ...] = ("amount",)

    class Evil(CoreStorageModule):
        extra_key_fields: tuple[str, ...] = ('x" VARCHAR); DROP TABLE t; --',)

    with (
        pytest.raises(StorageError, match="collide with core column names"),
        open_db(tmp_path / "a.duckdb", storage_module=Bad()),
    ):
        pass
    with (
        pytest.raises(StorageError, match="not a valid column name"),
        open_db(tmp_path / "b.duckdb", storage_module=Evil()),
    ):
        pass


def test_plugin_register_tables_hook_runs_after_core_tables(tmp_path: Path) -> None:
    class WithTable(CoreStorageModule):
        def register_tables(self, conn: duckdb.DuckDBPyConnection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS plugin_notes (id INTEGER, billing_lines_seen BIGINT)")
            conn.execute("INSERT INTO plugin_notes SELECT 1, count(*) FROM billing_lines")

    path = tmp_path / "acme.duckdb"
    for _ in range(2):
        with open_db(path, storage_module=WithTable()) as db:
            pass
    with open_db(path) as db:
        assert db.conn.execute("SELECT count(*) FROM plugin_notes").fetchone() == (2,)


def test_read_only_open(tmp_path: Path) -> None:
    path = tmp_path / "acme.duckdb"
    with (
        pytest.raises(StorageError, match="does not exist"),
        open_db(path, read_only=True),
    ):
        pass
    with open_db(path) as db:
        db.billing.replace_date(D1, [line("2")])
    with open_db(path, read_only=True) as db:
        assert db.read_only
        assert [x.total_cost for x in db.billing.find_by_date(D1)] == [Decimal("2.0000")]
        with pytest.raises(duckdb.Error):
            db.billing.replace_date(D1, [line("3")])


def test_storage_backend(tmp_path: Path) -> None:
    with open_db(tmp_path / "acme.duckdb") as db:
        db.billing.replace_date(D1, [line("3")])
        db.chargebacks.replace_date(D1, [row("sa-1", "1"), row("UNALLOCATED", "2", method=None)], "calc-1")
        db.state.mark_calculated(D1, "calc-1", T1)
        empty_day = date(2026, 3, 3)
        db.state.mark_calculated(empty_day, "calc-2", T1)
        db.identities.upsert_many([Identity(ECO, TENANT, "sa-1", "service_account")])
        db.resources.upsert_many(
            [Resource(ECO, TENANT, "lkc-1", "kafka_cluster"), Resource(ECO, TENANT, "t-1", "topic")]
        )
        backend = db.storage_backend()
        assert isinstance(backend, StorageBackend)
        assert isinstance(backend, TenantStorageBackend)
        assert backend.chargeback_dates() == [D1, empty_day]
        assert [r.identity_id for r in backend.chargebacks_for_date(D1)] == ["UNALLOCATED", "sa-1"]
        assert [r.amount for r in backend.chargebacks_aggregated(D1, D1 + timedelta(days=1), "day")] == [
            Decimal("2.0000"),
            Decimal("1.0000"),
        ]
        assert [x.total_cost for x in backend.billing_for_date(D1)] == [Decimal("3.0000")]
        assert [r.resource_id for r in backend.resources_active_at(T1)] == ["lkc-1", "t-1"]
        assert [r.resource_id for r in backend.resources_active_at(T1, ["topic"])] == ["t-1"]
        assert [i.identity_id for i in backend.identities_active_at(T1)] == ["sa-1"]
        assert backend.calculation_id(D1) == "calc-1"
        assert backend.calculation_id(date(2026, 3, 9)) is None
        assert not any(hasattr(backend, name) for name in ("replace_date", "upsert_many", "purge_before"))


def test_sessions_run_in_utc_and_datetimes_come_back_as_utc(tmp_path: Path) -> None:
    late = datetime(2026, 3, 1, 2, tzinfo=UTC)  # still 28 February in the Americas
    with open_db(tmp_path / "acme.duckdb") as db:
        assert db.conn.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
        cursor = db.conn.cursor()  # what allocation_attempts uses for its own commits
        assert cursor.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
        cursor.close()
        db.resources.upsert_many([Resource(ECO, TENANT, "r", "t", created_at=late)])
        stored = db.resources.get("r")
        assert stored is not None and stored.created_at == late
        assert stored.created_at.tzinfo is UTC
        assert db.conn.execute("SELECT CAST(created_at AS DATE) FROM resources").fetchone() == (D1,)
