"""Resources and identities: upsert, lifecycle queries, deletion marks.

Lifecycle tests follow spec/domain-model.md §10 exactly (strict ``>`` on ``deleted_at``
at the start of a window) and are evaluated in SQL, so the store and the in-memory
helpers in ``models`` agree on every boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

import duckdb

from chargeback_pipeline.models import SYSTEM_IDENTITY_TYPE, Identity, Resource, ResourceStatus, require_utc
from chargeback_pipeline.storage.codec import (
    dump_json,
    frame,
    from_epoch_us,
    insert_frame,
    iso_or_none,
    load_json,
    optional_utc,
    type_filter,
)
from chargeback_pipeline.storage.transactions import atomic

TIMESTAMP_COLUMNS = ("created_at", "deleted_at", "last_seen_at")
ACTIVE_AT_SQL = "(created_at IS NULL OR created_at <= ?) AND (deleted_at IS NULL OR deleted_at > ?)"
OVERLAPS_SQL = "(created_at IS NULL OR created_at < ?) AND (deleted_at IS NULL OR deleted_at > ?)"


class _EntityRepository:
    """Shared SQL of the two entity tables; subclasses map rows to their dataclass."""

    table: ClassVar[str]
    id_column: ClassVar[str]
    type_column: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self._conn = conn

    # --- writes ---------------------------------------------------------------------

    def _upsert_rows(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        columns = {name: [row[name] for row in rows] for name in self.columns}
        select = ", ".join(
            f"CAST({name} AS TIMESTAMPTZ)" if name in TIMESTAMP_COLUMNS else name for name in self.columns
        )
        with atomic(self._conn):
            insert_frame(
                self._conn,
                f"_{self.table}_stage",
                frame(columns),
                f"INSERT OR REPLACE INTO {self.table} ({', '.join(self.columns)}) "
                f"SELECT {select} FROM _{self.table}_stage",
            )
        return len(rows)

    def _mark_deleted(self, ids: Iterable[str], at: datetime, extra_sql: str = "") -> int:
        id_list = sorted(set(ids))
        if not id_list:
            return 0
        at = require_utc(at, "deletion time")
        status = ", status = 'deleted'" if "status" in self.columns else ""
        with atomic(self._conn):
            row = self._conn.execute(
                f"UPDATE {self.table} SET deleted_at = ?{status} "
                f"WHERE {self.id_column} IN (SELECT unnest(?::VARCHAR[])) AND deleted_at IS NULL{extra_sql}",
                [at, id_list],
            ).fetchone()
        return int(row[0]) if row else 0

    # --- reads ----------------------------------------------------------------------

    def _select(self, where: str, params: list[Any]) -> list[tuple[Any, ...]]:
        """Rows in column order; timestamps come as epoch microseconds (see ``_instants``).

        A calculation reads every identity of its window (thousands: API keys are
        identities), and letting DuckDB build zone-aware datetimes costs three times
        the rest of the query.
        """
        select = ", ".join(
            f"epoch_us({name})" if name in TIMESTAMP_COLUMNS else name for name in self.columns
        )
        return self._conn.execute(
            f"SELECT {select} FROM {self.table} WHERE {where} ORDER BY {self.id_column}", params
        ).fetchall()

    def _get_row(self, entity_id: str) -> tuple[Any, ...] | None:
        rows = self._select(f"{self.id_column} = ?", [entity_id])
        return rows[0] if rows else None

    def _lifecycle_rows(
        self, lifecycle_sql: str, params: list[Any], types: str | Sequence[str] | None, extra_sql: str = ""
    ) -> list[tuple[Any, ...]]:
        flt = type_filter(self.type_column, types)
        if flt is None:
            return []
        fragment, type_params = flt
        return self._select(f"{lifecycle_sql}{fragment}{extra_sql}", params + type_params)

    def _active_rows(
        self, t: datetime, types: str | Sequence[str] | None, extra_sql: str = ""
    ) -> list[tuple[Any, ...]]:
        t = require_utc(t, "active-at time")
        return self._lifecycle_rows(ACTIVE_AT_SQL, [t, t], types, extra_sql)

    def _period_rows(
        self, start: datetime, end: datetime, types: str | Sequence[str] | None, extra_sql: str = ""
    ) -> list[tuple[Any, ...]]:
        start = require_utc(start, "period start")
        end = require_utc(end, "period end")
        if end < start:
            raise ValueError(f"period end {end.isoformat()} is before its start {start.isoformat()}")
        return self._lifecycle_rows(OVERLAPS_SQL, [end, start], types, extra_sql)

    def count(self) -> int:
        row = self._conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()
        return int(row[0]) if row else 0


def _last_wins(entities: Iterable[Any], id_attr: str) -> list[Any]:
    """One row per id: a handler yielding an entity twice must not make the batch insert fail."""
    by_id: dict[str, Any] = {}
    for entity in entities:
        by_id[getattr(entity, id_attr)] = entity
    return list(by_id.values())


def _instants(rows: list[tuple[Any, ...]], columns: Sequence[int]) -> dict[int | None, datetime | None]:
    """UTC datetimes of the epoch-microsecond columns of ``rows`` (``None`` stays ``None``),
    each distinct value converted once (a gather stamps thousands of rows alike)."""
    values = {row[i] for row in rows for i in columns}
    return {us: None if us is None else from_epoch_us(us) for us in values}


def _metadata(texts: list[str]) -> list[Any]:
    """Decode many stored JSON texts at once.

    The column is DuckDB ``JSON`` (validated on insert), so every text is exactly one
    JSON value and one array of them parses to the same values several times faster
    than one ``json.loads`` each. Should that ever fail, each is decoded on its own, so
    the error is the one of the offending text.
    """
    if not texts:
        return []
    try:
        values = json.loads("[" + ",".join(texts) + "]")
    except ValueError:
        values = None
    if not isinstance(values, list) or len(values) != len(texts):
        return [load_json(text) for text in texts]
    return values


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


class ResourceRepository(_EntityRepository):
    table = "resources"
    id_column = "resource_id"
    type_column = "resource_type"
    columns = (
        "ecosystem",
        "tenant_id",
        "resource_id",
        "resource_type",
        "display_name",
        "parent_id",
        "owner_id",
        "status",
        "created_at",
        "deleted_at",
        "last_seen_at",
        "cloud",
        "region",
        "metadata",
    )

    def upsert_many(self, resources: Iterable[Resource], seen_at: datetime | None = None) -> int:
        """Overwrite stored rows with what was gathered (domain-model §2).

        The gathered object's own ``status``/``deleted_at`` are written, so gathering
        a resource that was marked deleted revives it. ``seen_at`` (the gather start)
        becomes ``last_seen_at``; ``None`` keeps the object's own value.
        """
        seen = optional_utc(seen_at, "seen_at")
        return self._upsert_rows([self._row(r, seen) for r in _last_wins(resources, "resource_id")])

    def upsert(self, resource: Resource, seen_at: datetime | None = None) -> None:
        self.upsert_many([resource], seen_at)

    def _row(self, r: Resource, seen: datetime | None) -> dict[str, Any]:
        where = f"resource {r.resource_id}"
        return {
            "ecosystem": r.ecosystem,
            "tenant_id": r.tenant_id,
            "resource_id": r.resource_id,
            "resource_type": r.resource_type,
            "display_name": r.display_name,
            "parent_id": r.parent_id,
            "owner_id": r.owner_id,
            "status": str(ResourceStatus(r.status)),
            "created_at": iso_or_none(optional_utc(r.created_at, f"{where} created_at")),
            "deleted_at": iso_or_none(optional_utc(r.deleted_at, f"{where} deleted_at")),
            "last_seen_at": iso_or_none(seen or optional_utc(r.last_seen_at, f"{where} last_seen_at")),
            "cloud": _optional_str(r.metadata.get("cloud")),
            "region": _optional_str(r.metadata.get("region")),
            "metadata": dump_json(r.metadata, f"{where} metadata"),
        }

    @staticmethod
    def _entity(row: tuple[Any, ...]) -> Resource:
        (resource,) = ResourceRepository._entities([row])
        return resource

    @staticmethod
    def _entities(rows: list[tuple[Any, ...]]) -> list[Resource]:
        """Rows of ``_select`` as resources; see ``_metadata`` and ``_instants``."""
        at = _instants(rows, (8, 9, 10))
        return [
            Resource(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                ResourceStatus(r[7]),
                at[r[8]],
                at[r[9]],
                at[r[10]],
                m or {},
            )
            for r, m in zip(rows, _metadata([r[13] for r in rows]), strict=True)
        ]

    def get(self, resource_id: str) -> Resource | None:
        """Ignores lifecycle: deleted resources are returned too."""
        row = self._get_row(resource_id)
        return None if row is None else self._entity(row)

    def find_active_at(self, t: datetime, resource_type: str | Sequence[str] | None = None) -> list[Resource]:
        return self._entities(self._active_rows(t, resource_type))

    def find_by_period(
        self,
        start: datetime,
        end: datetime,
        resource_type: str | Sequence[str] | None = None,
        metadata_filter: Mapping[str, Any] | None = None,
    ) -> list[Resource]:
        """Resources overlapping ``[start, end)``; ``metadata_filter`` is key → value equality."""
        found = self._entities(self._period_rows(start, end, resource_type))
        if not metadata_filter:
            return found
        wanted = list(metadata_filter.items())
        return [r for r in found if all(k in r.metadata and r.metadata[k] == v for k, v in wanted)]

    def mark_deleted(self, resource_ids: Iterable[str], at: datetime) -> int:
        """Sets ``deleted_at``/``status``; already-deleted rows keep their original deletion time."""
        return self._mark_deleted(resource_ids, at)


class IdentityRepository(_EntityRepository):
    """Identities. ``include_system=False`` drops type ``system`` (``UNALLOCATED``), as
    ``tenant_period`` and deletion sweeps require (plugin-system §6, operations §5)."""

    table = "identities"
    id_column = "identity_id"
    type_column = "identity_type"
    columns = (
        "ecosystem",
        "tenant_id",
        "identity_id",
        "identity_type",
        "display_name",
        "created_at",
        "deleted_at",
        "last_seen_at",
        "metadata",
    )

    def upsert_many(self, identities: Iterable[Identity], seen_at: datetime | None = None) -> int:
        """Same rule as resources: the gathered object overwrites the row (reviving it)."""
        seen = optional_utc(seen_at, "seen_at")
        return self._upsert_rows([self._row(i, seen) for i in _last_wins(identities, "identity_id")])

    def upsert(self, identity: Identity, seen_at: datetime | None = None) -> None:
        self.upsert_many([identity], seen_at)

    def _row(self, i: Identity, seen: datetime | None) -> dict[str, Any]:
        where = f"identity {i.identity_id}"
        return {
            "ecosystem": i.ecosystem,
            "tenant_id": i.tenant_id,
            "identity_id": i.identity_id,
            "identity_type": i.identity_type,
            "display_name": i.display_name,
            "created_at": iso_or_none(optional_utc(i.created_at, f"{where} created_at")),
            "deleted_at": iso_or_none(optional_utc(i.deleted_at, f"{where} deleted_at")),
            "last_seen_at": iso_or_none(seen or optional_utc(i.last_seen_at, f"{where} last_seen_at")),
            "metadata": dump_json(i.metadata, f"{where} metadata"),
        }

    @staticmethod
    def _entity(row: tuple[Any, ...]) -> Identity:
        (identity,) = IdentityRepository._entities([row])
        return identity

    @staticmethod
    def _entities(rows: list[tuple[Any, ...]]) -> list[Identity]:
        """Rows of ``_select`` as identities; see ``_metadata`` and ``_instants``."""
        at = _instants(rows, (5, 6, 7))
        return [
            Identity(r[0], r[1], r[2], r[3], r[4], at[r[5]], at[r[6]], at[r[7]], m or {})
            for r, m in zip(rows, _metadata([r[8] for r in rows]), strict=True)
        ]

    @staticmethod
    def _system_sql(include_system: bool) -> str:
        return "" if include_system else f" AND identity_type <> '{SYSTEM_IDENTITY_TYPE}'"

    def get(self, identity_id: str) -> Identity | None:
        """Ignores lifecycle: deleted identities are returned too."""
        row = self._get_row(identity_id)
        return None if row is None else self._entity(row)

    def find_active_at(
        self, t: datetime, identity_types: Sequence[str] | None = None, *, include_system: bool = True
    ) -> list[Identity]:
        return self._entities(self._active_rows(t, identity_types, self._system_sql(include_system)))

    def find_by_period(
        self,
        start: datetime,
        end: datetime,
        identity_types: Sequence[str] | None = None,
        *,
        include_system: bool = True,
    ) -> list[Identity]:
        return self._entities(self._period_rows(start, end, identity_types, self._system_sql(include_system)))

    def mark_deleted(self, identity_ids: Iterable[str], at: datetime) -> int:
        """Type ``system`` is never marked deleted, whatever the caller passes."""
        return self._mark_deleted(identity_ids, at, self._system_sql(False))
