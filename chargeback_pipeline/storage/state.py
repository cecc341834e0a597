"""Small bookkeeping tables: per-date pipeline state, allocation attempts, emission state,
and the persisted key/value ``gather_state``.

All of them are scoped to the tenant the database was opened for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import duckdb

from chargeback_pipeline.errors import StorageError
from chargeback_pipeline.storage.codec import dump_json, load_json, quoted, require_date, ts_in, utc_seconds
from chargeback_pipeline.storage.schema import BILLING_KEY
from chargeback_pipeline.storage.transactions import atomic, forget

EmissionStatus = Literal["emitted", "failed"]
EMISSION_STATUSES = ("emitted", "failed")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- pipeline_state (domain-model.md §13) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class PipelineState:
    billing_date: date
    billing_gathered: bool = False
    resources_gathered: bool = False
    chargeback_calculated: bool = False
    calculation_id: str | None = None
    calculated_at: datetime | None = None
    billing_fingerprint: str | None = None


_STATE_COLUMNS = (
    "billing_date",
    "billing_gathered",
    "resources_gathered",
    "chargeback_calculated",
    "calculation_id",
    "calculated_at",
    "billing_fingerprint",
)


class PipelineStateRepository:
    def __init__(self, conn: duckdb.DuckDBPyConnection, tenant_id: str) -> None:
        self._conn = conn
        self._tenant = tenant_id

    def get(self, d: date) -> PipelineState:
        """The date's state; a date never touched reads as all defaults."""
        require_date(d, "billing date")
        rows = self._select("AND billing_date = ?", [d])
        return rows[0] if rows else PipelineState(d)

    def all(self) -> list[PipelineState]:
        return self._select("", [])

    def pending_calculation(self) -> list[date]:
        """Dates whose billing is stored but whose chargebacks are not (operations.md §9)."""
        pending = self._select("AND billing_gathered AND NOT chargeback_calculated", [])
        return [s.billing_date for s in pending]

    def calculated_dates(self) -> list[date]:
        return [s.billing_date for s in self._select("AND chargeback_calculated", [])]

    def _select(self, where: str, params: list[Any]) -> list[PipelineState]:
        rows = self._conn.execute(
            f"SELECT {', '.join(_STATE_COLUMNS)} FROM pipeline_state WHERE tenant_id = ? {where} "
            "ORDER BY billing_date",
            [self._tenant, *params],
        ).fetchall()
        return [PipelineState(r[0], r[1], r[2], r[3], r[4], ts_in(r[5]), r[6]) for r in rows]

    def _update(self, d: date, assignments: str, params: list[Any]) -> None:
        require_date(d, "billing date")
        with atomic(self._conn):
            self._conn.execute(
                "INSERT INTO pipeline_state (tenant_id, billing_date) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [self._tenant, d],
            )
            self._conn.execute(
                f"UPDATE pipeline_state SET {assignments}, updated_at = ? "
                "WHERE tenant_id = ? AND billing_date = ?",
                [*params, _now(), self._tenant, d],
            )

    def mark_billing_gathered(self, d: date, fingerprint: str) -> None:
        self._update(d, "billing_gathered = TRUE, billing_fingerprint = ?", [fingerprint])

    def mark_resources_gathered(self, d: date) -> None:
        """Once set it stays set (operations.md §7); there is deliberately no way to clear it."""
        self._update(d, "resources_gathered = TRUE", [])

    def mark_calculated(self, d: date, calculation_id: str, calculated_at: datetime) -> None:
        at = utc_seconds(calculated_at, "calculated_at")
        assignments = "chargeback_calculated = TRUE, calculation_id = ?, calculated_at = ?"
        self._update(d, assignments, [calculation_id, at])


# --- allocation_attempts (allocation.md §9) -------------------------------------------

LineKey = tuple[Any, ...]


class AllocationAttemptsRepository:
    """Persisted failure counters keyed by billing natural key (``billing_natural_key(line, extra)``)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, extra_key_fields: Sequence[str]) -> None:
        self._conn = conn
        self.extra_key_fields = tuple(extra_key_fields)
        self._columns = (*BILLING_KEY, *self.extra_key_fields)
        self._where = " AND ".join(f'"{c}" = ?' for c in self._columns)

    def _key(self, line_key: LineKey) -> list[Any]:
        if len(line_key) != len(self._columns):
            raise ValueError(f"line key {line_key!r} must have {len(self._columns)} parts {self._columns}")
        values = list(line_key)
        values[2] = utc_seconds(values[2], "line key timestamp")
        values[len(BILLING_KEY) :] = [str(v or "") for v in values[len(BILLING_KEY) :]]
        return values

    def current(self, line_key: LineKey) -> int:
        row = self._conn.execute(
            f"SELECT attempts FROM allocation_attempts WHERE {self._where}", self._key(line_key)
        ).fetchone()
        return int(row[0]) if row else 0

    def for_date(self, d: date) -> dict[LineKey, int]:
        rows = self._conn.execute(
            f"SELECT {quoted(self._columns)}, attempts FROM allocation_attempts WHERE billing_date = ?", [d]
        ).fetchall()
        return {(*r[:2], ts_in(r[2]), *r[3:-1]): int(r[-1]) for r in rows}

    def record_failure(self, line_key: LineKey, error: str) -> int:
        """Count one more failure and commit it at once, whatever transaction is open.

        Runs on its own cursor (a separate DuckDB connection to the same file), so the
        count survives the rollback of the date's calculation (allocation.md §9.1).
        """
        key = self._key(line_key)
        cursor = self._conn.cursor()
        try:
            with atomic(cursor):
                cursor.execute(
                    f"INSERT INTO allocation_attempts ({quoted(self._columns)}, billing_date, attempts, "
                    f"last_error, updated_at) VALUES ({', '.join('?' * len(key))}, ?, 1, ?, ?) "
                    f"ON CONFLICT DO UPDATE SET attempts = allocation_attempts.attempts + 1, "
                    f"last_error = excluded.last_error, updated_at = excluded.updated_at",
                    [*key, key[2].date(), error, _now()],
                )
                row = cursor.execute(
                    f"SELECT attempts FROM allocation_attempts WHERE {self._where}", key
                ).fetchone()
        finally:
            forget(cursor)
            with contextlib.suppress(duckdb.Error):
                cursor.close()
        return int(row[0]) if row else 0

    def reset(self, line_keys: Iterable[LineKey]) -> int:
        """Forget the counters of lines that allocated; joins the caller's transaction."""
        wanted = {tuple(self._key(k)) for k in line_keys}
        if not wanted:
            return 0
        stored = self._conn.execute(f"SELECT {quoted(self._columns)} FROM allocation_attempts").fetchall()
        doomed = [list(k) for k in ((*r[:2], ts_in(r[2]), *r[3:]) for r in stored) if k in wanted]
        with atomic(self._conn):
            for key in doomed:
                self._conn.execute(f"DELETE FROM allocation_attempts WHERE {self._where}", key)
        return len(doomed)


# --- emission_state (emitters.md §7) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmissionRecord:
    emitter_name: str
    billing_date: date
    status: str
    attempt_count: int
    calculation_id: str | None
    row_count: int
    updated_at: datetime


class EmissionStateRepository:
    def __init__(self, conn: duckdb.DuckDBPyConnection, tenant_id: str) -> None:
        self._conn = conn
        self._tenant = tenant_id

    def get(self, emitter_name: str, d: date) -> EmissionRecord | None:
        records = self._select("AND emitter_name = ? AND billing_date = ?", [emitter_name, d])
        return records[0] if records else None

    def for_emitter(self, emitter_name: str) -> dict[date, EmissionRecord]:
        return {r.billing_date: r for r in self._select("AND emitter_name = ?", [emitter_name])}

    def _select(self, where: str, params: list[Any]) -> list[EmissionRecord]:
        rows = self._conn.execute(
            "SELECT emitter_name, billing_date, status, attempt_count, calculation_id, row_count, updated_at "
            f"FROM emission_state WHERE tenant_id = ? {where} ORDER BY emitter_name, billing_date",
            [self._tenant, *params],
        ).fetchall()
        return [
            EmissionRecord(r[0], r[1], r[2], int(r[3]), r[4], int(r[5]), r[6].astimezone(UTC)) for r in rows
        ]

    def record(
        self, emitter_name: str, d: date, status: EmissionStatus, calculation_id: str | None, row_count: int
    ) -> EmissionRecord:
        """Insert with ``attempt_count = 1`` or count one more outcome on the existing record."""
        require_date(d, "emission date")
        if status not in EMISSION_STATUSES:
            raise ValueError(f"emission status must be one of {EMISSION_STATUSES}, got {status!r}")
        with atomic(self._conn):
            self._conn.execute(
                "INSERT INTO emission_state VALUES (?, ?, ?, ?, 1, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET status = excluded.status, "
                "attempt_count = emission_state.attempt_count + 1, calculation_id = excluded.calculation_id, "
                "row_count = excluded.row_count, updated_at = excluded.updated_at",
                [self._tenant, emitter_name, d, status, calculation_id, row_count, _now()],
            )
        record = self.get(emitter_name, d)
        if record is None:
            raise StorageError(f"emission state of '{emitter_name}' for {d} was not stored")
        return record


# --- gather_state ---------------------------------------------------------------------


class GatherStateRepository:
    """Persisted JSON values by name: counters, last gather record, suspension (operations.md §4, §5, §11)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, tenant_id: str) -> None:
        self._conn = conn
        self._tenant = tenant_id

    def get(self, name: str, default: Any = None) -> Any:
        row = self._conn.execute(
            "SELECT value FROM gather_state WHERE tenant_id = ? AND counter_name = ?", [self._tenant, name]
        ).fetchone()
        return default if row is None else load_json(row[0])

    def set(self, name: str, value: Any) -> None:
        text = dump_json(value, f"gather_state '{name}'")
        with atomic(self._conn):
            self._conn.execute(
                "INSERT OR REPLACE INTO gather_state VALUES (?, ?, ?, ?)", [self._tenant, name, text, _now()]
            )

    def increment(self, name: str) -> int:
        """Add one to a counter (a missing counter counts as 0) and return the new value."""
        with atomic(self._conn):
            current = self.get(name, 0)
            if isinstance(current, bool) or not isinstance(current, int):
                raise StorageError(f"gather_state '{name}' holds {current!r}, not an integer counter")
            self.set(name, current + 1)
        return current + 1

    def delete(self, name: str) -> None:
        with atomic(self._conn):
            self._conn.execute(
                "DELETE FROM gather_state WHERE tenant_id = ? AND counter_name = ?", [self._tenant, name]
            )

    def names(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT counter_name FROM gather_state WHERE tenant_id = ? ORDER BY 1", [self._tenant]
        ).fetchall()
        return [r[0] for r in rows]
