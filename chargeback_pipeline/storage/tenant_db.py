"""Opening a tenant's DuckDB file: lock, schema, repositories, and the ``TenantDatabase`` facade."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb

from chargeback_pipeline.errors import StorageError
from chargeback_pipeline.models import (
    SYSTEM_IDENTITY_TYPE,
    UNALLOCATED,
    BillingLineItem,
    require_utc,
    unallocated_identity,
)
from chargeback_pipeline.protocols import StorageModule, missing_members
from chargeback_pipeline.storage.backend import (
    BillingReadView,
    IdentityReadView,
    ResourceReadView,
    TenantReadView,
    TenantStorageBackend,
)
from chargeback_pipeline.storage.billing import BillingRepository, line_key
from chargeback_pipeline.storage.chargebacks import ChargebackRepository
from chargeback_pipeline.storage.codec import require_date, rows_digest
from chargeback_pipeline.storage.core_module import CoreStorageModule
from chargeback_pipeline.storage.entities import OVERLAPS_SQL, IdentityRepository, ResourceRepository
from chargeback_pipeline.storage.locking import tenant_lock
from chargeback_pipeline.storage.schema import (
    DATED_TABLES,
    ensure_core_schema,
    validate_extra_key_fields,
    verify_schema,
)
from chargeback_pipeline.storage.state import (
    AllocationAttemptsRepository,
    EmissionStateRepository,
    GatherStateRepository,
    PipelineStateRepository,
)
from chargeback_pipeline.storage.transactions import atomic, forget
from chargeback_pipeline.storage.usage import UsageMetricsRepository

DEFAULT_LOCK_TIMEOUT_S = 3600.0

# DuckDB checkpoints (rewrites the changed tables into the file) once this much WAL has
# accumulated. A day of usage rows and chargebacks is several MB, so DuckDB's 16 MB
# default checkpointed every few days of a range run: most of the commit time of a
# 30-day Confluent Cloud run. The remainder is checkpointed when the store is closed.
CHECKPOINT_THRESHOLD = "64MB"

# The dated tables a calculation reads (with the entities of its windows).
CALCULATION_INPUT_TABLES = ("billing_lines", "usage_metric_groups", "usage_metrics")


@dataclass(eq=False)
class TenantDatabase:
    """One tenant's open database. Valid only inside ``open_tenant_db``.

    ``billing``, ``resources``, ``identities`` and ``chargebacks`` come from the
    storage module's factories (a plugin may supply subclasses); the bookkeeping
    repositories are core-only. ``state``/``usage``/``attempts``/``emissions`` are
    short aliases of the long names.
    """

    path: Path
    ecosystem: str
    tenant_id: str
    storage_module: StorageModule
    conn: duckdb.DuckDBPyConnection
    read_only: bool
    billing: BillingRepository
    resources: ResourceRepository
    identities: IdentityRepository
    chargebacks: ChargebackRepository
    pipeline_state: PipelineStateRepository = field(init=False)
    allocation_attempts: AllocationAttemptsRepository = field(init=False)
    usage_metrics: UsageMetricsRepository = field(init=False)
    emission_state: EmissionStateRepository = field(init=False)
    gather_state: GatherStateRepository = field(init=False)

    def __post_init__(self) -> None:
        self.pipeline_state = PipelineStateRepository(self.conn, self.tenant_id)
        self.allocation_attempts = AllocationAttemptsRepository(self.conn, self.extra_key_fields)
        self.usage_metrics = UsageMetricsRepository(self.conn)
        self.emission_state = EmissionStateRepository(self.conn, self.tenant_id)
        self.gather_state = GatherStateRepository(self.conn, self.tenant_id)

    @property
    def extra_key_fields(self) -> tuple[str, ...]:
        return tuple(self.storage_module.extra_key_fields)

    @property
    def state(self) -> PipelineStateRepository:
        return self.pipeline_state

    @property
    def usage(self) -> UsageMetricsRepository:
        return self.usage_metrics

    @property
    def attempts(self) -> AllocationAttemptsRepository:
        return self.allocation_attempts

    @property
    def emissions(self) -> EmissionStateRepository:
        return self.emission_state

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One commit for every write in the body; nested blocks join the outer one."""
        with atomic(self.conn):
            yield

    def line_key(self, line: BillingLineItem) -> tuple[Any, ...]:
        """The stored natural key of ``line`` (the key of ``allocation_attempts``)."""
        return line_key(line, self.extra_key_fields)

    def read_view(self) -> TenantReadView:
        """The read-only ``TenantStore`` handed to handlers and cost inputs."""
        return TenantReadView(
            resources=ResourceReadView(self.resources),
            identities=IdentityReadView(self.identities),
            billing=BillingReadView(self.billing),
        )

    def storage_backend(self) -> TenantStorageBackend:
        """The read-only ``StorageBackend`` injected into emitters that ask for it."""
        return TenantStorageBackend(self)

    def calculation_inputs_digest(self, d: date, start: datetime, end: datetime) -> str:
        """Digest of every stored input the calculation of ``d`` reads (recalculation.py).

        The date's billing lines, usage groups and usage rows, and the resources and
        identities overlapping its billing windows ``[start, end)``, without
        ``last_seen_at`` (every gather bumps it; the allocation never reads it).
        """
        require_date(d, "billing date")
        period = [require_utc(end, "period end"), require_utc(start, "period start")]
        dated = [rows_digest(self.conn, table, "billing_date = ?", [d]) for table in CALCULATION_INPUT_TABLES]
        entities = [
            rows_digest(self.conn, table, OVERLAPS_SQL, period, exclude=("last_seen_at",))
            for table in ("resources", "identities")
        ]
        return "|".join(dated + entities)

    def purge_before(self, d: date, deleted_before: datetime) -> dict[str, int]:
        """Retention (operations.md §13), in one transaction; returns deleted rows per table.

        Dated tables lose every billing date ``< d``; resources and identities are
        removed only when ``deleted_at < deleted_before`` (live entities never, and
        the ``system`` identity never). Plugin-owned tables are not touched.
        """
        cutoff = require_utc(deleted_before, "deleted_before")
        counts: dict[str, int] = {}
        with self.transaction():
            for table in DATED_TABLES:
                counts[table] = self._delete(f"DELETE FROM {table} WHERE billing_date < ?", [d])
            counts["resources"] = self._delete(
                "DELETE FROM resources WHERE deleted_at IS NOT NULL AND deleted_at < ?", [cutoff]
            )
            counts["identities"] = self._delete(
                "DELETE FROM identities "
                "WHERE deleted_at IS NOT NULL AND deleted_at < ? AND identity_type <> ?",
                [cutoff, SYSTEM_IDENTITY_TYPE],
            )
        return counts

    def _delete(self, sql: str, params: list[Any]) -> int:
        row = self.conn.execute(sql, params).fetchone()
        return int(row[0]) if row else 0

    def ensure_unallocated(self) -> None:
        """``UNALLOCATED`` must exist and be live in every store (domain-model.md §3)."""
        current = self.identities.get(UNALLOCATED)
        if current is None or current.deleted_at is not None or current.identity_type != SYSTEM_IDENTITY_TYPE:
            self.identities.upsert_many([unallocated_identity(self.ecosystem, self.tenant_id)])


@contextlib.contextmanager
def open_tenant_db(
    path: Path,
    *,
    ecosystem: str,
    tenant_id: str,
    storage_module: StorageModule | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    read_only: bool = False,
) -> Iterator[TenantDatabase]:
    """Lock, open and initialise a tenant's database; always closes and unlocks.

    The lock is exclusive for readers too: DuckDB refuses any second open of a file
    while a writer holds it, so a reader must queue like a writer.
    """
    path = Path(path)
    module: StorageModule = storage_module if storage_module is not None else CoreStorageModule()
    where = f"tenant '{tenant_id}' database {path}"
    extra = _checked_module(module, where)
    if read_only and not path.exists():
        raise StorageError(f"{where}: file does not exist (cannot create it read-only)")
    with tenant_lock(path, tenant_id=tenant_id, timeout_s=lock_timeout_s):
        conn = _connect(path, read_only, where)
        try:
            yield _initialise(conn, path, ecosystem, tenant_id, module, extra, read_only, where)
        finally:
            forget(conn)
            with contextlib.suppress(duckdb.Error):
                conn.close()


def _checked_module(module: StorageModule, where: str) -> tuple[str, ...]:
    missing = missing_members(module, StorageModule)
    if missing:
        raise StorageError(f"{where}: storage module {type(module).__name__} lacks {', '.join(missing)}")
    try:
        return validate_extra_key_fields(module.extra_key_fields)
    except ValueError as exc:
        raise StorageError(f"{where}: storage module {type(module).__name__}: {exc}") from exc


def _connect(path: Path, read_only: bool, where: str) -> duckdb.DuckDBPyConnection:
    try:
        conn = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        raise StorageError(f"{where}: cannot open: {exc}") from exc
    try:
        # GLOBAL so that cursors (separate connections) also read timestamps in UTC.
        conn.execute("SET GLOBAL TimeZone = 'UTC'")
        conn.execute("SET TimeZone = 'UTC'")
        if not read_only:
            conn.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
    except duckdb.Error as exc:
        conn.close()
        raise StorageError(f"{where}: cannot set the session time zone to UTC: {exc}") from exc
    return conn


def _initialise(
    conn: duckdb.DuckDBPyConnection,
    path: Path,
    ecosystem: str,
    tenant_id: str,
    module: StorageModule,
    extra: tuple[str, ...],
    read_only: bool,
    where: str,
) -> TenantDatabase:
    try:
        if read_only:
            verify_schema(conn, ecosystem=ecosystem, tenant_id=tenant_id, extra=extra, where=where)
        else:
            ensure_core_schema(conn, ecosystem=ecosystem, tenant_id=tenant_id, extra=extra, where=where)
            with atomic(conn):
                module.register_tables(conn)
        db = TenantDatabase(
            path=path,
            ecosystem=ecosystem,
            tenant_id=tenant_id,
            storage_module=module,
            conn=conn,
            read_only=read_only,
            billing=module.create_billing_repository(conn),
            resources=module.create_resource_repository(conn),
            identities=module.create_identity_repository(conn),
            chargebacks=module.create_chargeback_repository(conn),
        )
        if not read_only:
            db.ensure_unallocated()
    except duckdb.Error as exc:
        raise StorageError(f"{where}: initialisation failed ({type(module).__name__}): {exc}") from exc
    return db
