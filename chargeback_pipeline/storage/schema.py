"""Core tables of a tenant database and their versioned migrations (spec/plugin-system.md §9).

The billing and chargeback keys depend on the plugin's ``extra_key_fields``, so the
DDL is generated for them. The file records which ecosystem, tenant and key fields it
was created for: opening it with different ones is refused, because rows keyed one
way would otherwise be read, merged or purged as if keyed another way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import duckdb

from chargeback_pipeline.errors import StorageError
from chargeback_pipeline.storage.codec import check_identifier, quoted
from chargeback_pipeline.storage.transactions import atomic

BILLING_KEY = ("ecosystem", "tenant_id", "timestamp", "resource_id", "product_type", "product_category")
CHARGEBACK_KEY = (
    "ecosystem",
    "tenant_id",
    "timestamp",
    "resource_id",
    "product_category",
    "product_type",
    "identity_id",
    "cost_type",
    "allocation_method",
    "allocation_detail",
)
RESERVED_COLUMNS = frozenset(
    {*BILLING_KEY, *CHARGEBACK_KEY, "billing_date", "amount", "calculation_id", "quantity", "unit_price"}
    | {"total_cost", "currency", "granularity", "metadata", "attempts", "last_error", "updated_at"}
)

# Tables holding per-billing-date data; retention deletes them by ``billing_date``.
DATED_TABLES = (
    "billing_lines",
    "chargebacks",
    "usage_metrics",
    "usage_metric_groups",
    "pipeline_state",
    "emission_state",
    "allocation_attempts",
)


def validate_extra_key_fields(fields: Sequence[str]) -> tuple[str, ...]:
    checked = tuple(check_identifier(name, "extra key field") for name in fields)
    clash = sorted(set(checked) & RESERVED_COLUMNS)
    if clash:
        raise ValueError(f"extra key field(s) {', '.join(clash)} collide with core column names")
    if len(set(checked)) != len(checked):
        raise ValueError(f"extra key fields {checked} contain duplicates")
    return checked


def _extra_columns(extra: Sequence[str]) -> str:
    return "".join(f"\"{name}\" VARCHAR NOT NULL DEFAULT '', " for name in extra)


def _v1_statements(extra: Sequence[str]) -> list[str]:
    ex = _extra_columns(extra)
    return [
        f"""CREATE TABLE IF NOT EXISTS billing_lines (
            ecosystem VARCHAR NOT NULL, tenant_id VARCHAR NOT NULL, "timestamp" TIMESTAMPTZ NOT NULL,
            resource_id VARCHAR NOT NULL, product_type VARCHAR NOT NULL, product_category VARCHAR NOT NULL,
            {ex}quantity VARCHAR NOT NULL, unit_price VARCHAR NOT NULL, total_cost DECIMAL(38,4) NOT NULL,
            currency VARCHAR NOT NULL, granularity VARCHAR NOT NULL, metadata JSON NOT NULL,
            billing_date DATE NOT NULL,
            PRIMARY KEY ({quoted((*BILLING_KEY, *extra))}))""",
        """CREATE TABLE IF NOT EXISTS resources (
            ecosystem VARCHAR NOT NULL, tenant_id VARCHAR NOT NULL, resource_id VARCHAR NOT NULL,
            resource_type VARCHAR NOT NULL, display_name VARCHAR, parent_id VARCHAR, owner_id VARCHAR,
            status VARCHAR NOT NULL, created_at TIMESTAMPTZ, deleted_at TIMESTAMPTZ, last_seen_at TIMESTAMPTZ,
            cloud VARCHAR, region VARCHAR, metadata JSON NOT NULL,
            PRIMARY KEY (ecosystem, tenant_id, resource_id))""",
        """CREATE TABLE IF NOT EXISTS identities (
            ecosystem VARCHAR NOT NULL, tenant_id VARCHAR NOT NULL, identity_id VARCHAR NOT NULL,
            identity_type VARCHAR NOT NULL, display_name VARCHAR,
            created_at TIMESTAMPTZ, deleted_at TIMESTAMPTZ, last_seen_at TIMESTAMPTZ, metadata JSON NOT NULL,
            PRIMARY KEY (ecosystem, tenant_id, identity_id))""",
        # No PRIMARY KEY: maintaining an index over 10+ key columns makes a 800k-row
        # replace several times slower. Uniqueness is checked on every insert instead.
        f"""CREATE TABLE IF NOT EXISTS chargebacks (
            billing_date DATE NOT NULL, ecosystem VARCHAR NOT NULL, tenant_id VARCHAR NOT NULL,
            "timestamp" TIMESTAMPTZ NOT NULL, resource_id VARCHAR NOT NULL, product_category VARCHAR NOT NULL,
            product_type VARCHAR NOT NULL, identity_id VARCHAR NOT NULL, cost_type VARCHAR NOT NULL,
            allocation_method VARCHAR NOT NULL, allocation_detail VARCHAR NOT NULL, {ex}
            amount DECIMAL(38,4) NOT NULL, calculation_id VARCHAR NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS pipeline_state (
            tenant_id VARCHAR NOT NULL, billing_date DATE NOT NULL,
            billing_gathered BOOLEAN NOT NULL DEFAULT FALSE,
            resources_gathered BOOLEAN NOT NULL DEFAULT FALSE,
            chargeback_calculated BOOLEAN NOT NULL DEFAULT FALSE, calculation_id VARCHAR,
            calculated_at TIMESTAMPTZ, billing_fingerprint VARCHAR, updated_at TIMESTAMPTZ,
            PRIMARY KEY (tenant_id, billing_date))""",
        f"""CREATE TABLE IF NOT EXISTS allocation_attempts (
            ecosystem VARCHAR NOT NULL, tenant_id VARCHAR NOT NULL, "timestamp" TIMESTAMPTZ NOT NULL,
            resource_id VARCHAR NOT NULL, product_type VARCHAR NOT NULL, product_category VARCHAR NOT NULL,
            {ex}billing_date DATE NOT NULL, attempts INTEGER NOT NULL, last_error VARCHAR,
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY ({quoted((*BILLING_KEY, *extra))}))""",
        """CREATE TABLE IF NOT EXISTS usage_metric_groups (
            billing_date DATE NOT NULL, resource_id VARCHAR NOT NULL,
            window_start TIMESTAMPTZ NOT NULL, window_end TIMESTAMPTZ NOT NULL,
            fetch_failed BOOLEAN NOT NULL, metric_keys JSON,
            PRIMARY KEY (billing_date, resource_id, window_start, window_end))""",
        """CREATE TABLE IF NOT EXISTS usage_metrics (
            billing_date DATE NOT NULL, resource_id VARCHAR NOT NULL,
            window_start TIMESTAMPTZ NOT NULL, window_end TIMESTAMPTZ NOT NULL,
            metric_key VARCHAR NOT NULL, row_no INTEGER NOT NULL, row_metric_key VARCHAR NOT NULL,
            "timestamp" TIMESTAMPTZ NOT NULL, value VARCHAR NOT NULL, labels JSON NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS emission_state (
            tenant_id VARCHAR NOT NULL, emitter_name VARCHAR NOT NULL, billing_date DATE NOT NULL,
            status VARCHAR NOT NULL, attempt_count INTEGER NOT NULL, calculation_id VARCHAR,
            row_count INTEGER NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (tenant_id, emitter_name, billing_date))""",
        """CREATE TABLE IF NOT EXISTS gather_state (
            tenant_id VARCHAR NOT NULL, counter_name VARCHAR NOT NULL, value JSON,
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (tenant_id, counter_name))""",
    ]


def _migrate_v1(conn: duckdb.DuckDBPyConnection, extra: Sequence[str]) -> None:
    for statement in _v1_statements(extra):
        conn.execute(statement)


Migration = Callable[[duckdb.DuckDBPyConnection, Sequence[str]], None]

# Append new migrations here; never edit an applied one.
MIGRATIONS: tuple[tuple[int, str, Migration], ...] = ((1, "core tables", _migrate_v1),)
LATEST_VERSION = MIGRATIONS[-1][0]


def ensure_core_schema(
    conn: duckdb.DuckDBPyConnection, *, ecosystem: str, tenant_id: str, extra: Sequence[str], where: str
) -> None:
    """Create or migrate the core tables and check the file belongs to this tenant."""
    with atomic(conn):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, description VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)"
        )
        expected = _expected_meta(ecosystem, tenant_id, extra)
        stored = read_meta(conn)
        if stored:
            check_meta(stored, expected, where)
        current = current_version(conn)
        if current > LATEST_VERSION:
            raise StorageError(
                f"{where}: database schema version {current} is newer than this code "
                f"supports ({LATEST_VERSION})"
            )
        for version, description, migrate in MIGRATIONS:
            if version > current:
                migrate(conn, extra)
                conn.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?)", [version, description, datetime.now(UTC)]
                )
        if not stored:
            for name, value in expected.items():
                conn.execute("INSERT INTO store_meta VALUES (?, ?)", [name, value])


def verify_schema(
    conn: duckdb.DuckDBPyConnection, *, ecosystem: str, tenant_id: str, extra: Sequence[str], where: str
) -> None:
    """The read-only counterpart of ``ensure_core_schema``: nothing may be created, only checked."""
    tables = {row[0] for row in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "schema_version" not in tables or "store_meta" not in tables:
        raise StorageError(f"{where}: not an initialised tenant database (open it read-write once first)")
    check_meta(read_meta(conn), _expected_meta(ecosystem, tenant_id, extra), where)
    current = current_version(conn)
    if current != LATEST_VERSION:
        raise StorageError(
            f"{where}: database schema version {current} differs from {LATEST_VERSION}; "
            "open it read-write to migrate"
        )


def current_version(conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def read_meta(conn: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM store_meta").fetchall()}


def _expected_meta(ecosystem: str, tenant_id: str, extra: Sequence[str]) -> dict[str, str]:
    return {"ecosystem": ecosystem, "tenant_id": tenant_id, "extra_key_fields": json.dumps(list(extra))}


def check_meta(stored: dict[str, str], expected: dict[str, str], where: str) -> None:
    wrong = [
        f"{name} is {stored.get(name)!r}, opened as {value!r}"
        for name, value in expected.items()
        if stored.get(name) != value
    ]
    if wrong:
        raise StorageError(
            f"{where}: this database file belongs to another tenant or plugin layout ({'; '.join(wrong)}); "
            "point the tenant at its own storage path"
        )
