"""Dagster's SQLite event log, tuned for backfills of many partitions on one machine.

A backfill run over a year of one tenant records about 14 events per partition: a
"materialization planned" and a materialization for each of the six assets, plus two
check evaluations. Dagster's ``SqliteEventLogStorage`` writes each event with a fresh
SQLAlchemy engine and two or three synchronous (fsync'd) commits, ~40 ms per event on
the 2-core development machine, so 10,000 events cost minutes before any chargeback is
computed. This subclass keeps the same files and schema and changes three things:

* engines are cached per shard (an engine's first connection pays dialect set-up), and
  the index shard (every asset event is mirrored there) keeps one open connection, so
  a write no longer ends with the WAL checkpoint that closing the last connection does.
  Run shards are still closed after each write: the webserver follows a running run by
  watching its shard file, which only changes at a checkpoint;
* connections use ``PRAGMA synchronous=NORMAL``: in WAL mode (Dagster's journal mode)
  a commit no longer waits for fsync; an OS crash may lose the last events, never
  corrupt the database;
* ``store_event_batch`` writes a batch in one transaction per shard. Dagster hands
  batches (the planned events of a run, the per-partition materialisations of a range
  output) to the storage only when ``DAGSTER_EVENT_BATCH_SIZE`` is set, so this class
  sets it to 1000 in every process that opens the instance, unless already set.

It is configured in ``dagster.yaml`` (``event_log_storage``). A multi-machine deployment
uses ``dagster-postgres`` instead and does not need it.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dagster._config import Field, StringSource
from dagster._config.config_schema import UserConfigSchema
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS, EVENT_TYPE_TO_PIPELINE_RUN_STATUS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster._core.storage.sqlite import create_db_conn_string
from dagster._serdes import ConfigurableClassData
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, StaticPool

BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
DEFAULT_BATCH_SIZE = "1000"
SQLITE_BUSY_TIMEOUT_S = 120
MAX_CACHED_ENGINES = 16


def _relaxed_sync(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with cached engines, relaxed fsync and real batch writes."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None) -> None:
        os.environ.setdefault(BATCH_SIZE_ENV, DEFAULT_BATCH_SIZE)
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._known_tables: set[str] = set()
        super().__init__(base_dir or default_base_dir(), inst_data)

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> BatchingSqliteEventLogStorage:
        return cls(base_dir=config_value.get("base_dir"), inst_data=inst_data)

    # --- connections -----------------------------------------------------------------------

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        persistent = shard == INDEX_SHARD_NAME
        engine = create_engine(
            create_db_conn_string(self._base_dir, shard),
            # One shared connection; ``_connect`` holds the storage lock while it is used.
            poolclass=StaticPool if persistent else NullPool,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": not persistent},
        )
        sqlalchemy_event.listen(engine, "connect", _relaxed_sync)
        self._engines[shard] = engine
        while len(self._engines) > MAX_CACHED_ENGINES:
            _, oldest = self._engines.popitem(last=False)
            oldest.dispose()
        return engine

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        """Tables are never dropped while the process runs, so a ``True`` is remembered."""
        if table_name in self._known_tables:
            return True
        found = super().has_table(table_name)
        if found:
            self._known_tables.add(table_name)
        return found

    def dispose(self) -> None:
        super().dispose()
        self._dispose_engines()

    def wipe(self) -> None:
        """Shard files are deleted: no cached connection may keep writing to them."""
        with self._db_lock:
            self._dispose_engines()
        super().wipe()

    def _dispose_engines(self) -> None:
        while self._engines:
            _, engine = self._engines.popitem()
            engine.dispose()

    # --- batch writes --------------------------------------------------------------------------

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Same effect as ``store_event`` for each event, in one transaction per shard.

        The run shards are written first; once they are, a failure mirroring the events
        into the index shard falls back to mirroring one event at a time, so Dagster's
        own fallback (storing every event again) can never duplicate run-shard rows.
        """
        if not events:
            return
        by_run: dict[str, list[EventLogEntry]] = defaultdict(list)
        for entry in events:
            by_run[entry.run_id].append(entry)
        for run_id, run_events in by_run.items():
            with self.run_connection(run_id) as conn:
                conn.execute(self.prepare_insert_event_batch(run_events))
        mirrored = [e for e in events if _mirrored_in_index(e)]
        if not mirrored:
            return
        checks: list[tuple[EventLogEntry, int]] = []
        try:
            with self.index_transaction() as conn:
                checks = [c for entry in mirrored if (c := self._mirror(conn, entry))]
        except Exception:
            checks = []
            for entry in mirrored:
                with self.index_transaction() as conn:
                    if check := self._mirror(conn, entry):
                        checks.append(check)
        # Check bookkeeping opens its own index connection (and the storage lock), so it
        # runs after the transaction above, as in ``store_event``.
        for entry, event_id in checks:
            self.store_asset_check_event(entry, event_id)

    def _mirror(self, conn: Connection, entry: EventLogEntry) -> tuple[EventLogEntry, int] | None:
        """The index-shard part of ``SqliteEventLogStorage.store_event`` for one event;
        returns check events (with their id) whose bookkeeping is still to do."""
        with db_result(conn, self.prepare_insert_event(entry)) as result:
            event_id = int(result.inserted_primary_key[0])
        if entry.dagster_event_type in ASSET_EVENTS:
            self._store_asset_event_tags(conn, [entry], [event_id])
            self._store_asset_event(conn, entry, event_id)
        elif entry.dagster_event_type in ASSET_CHECK_EVENTS:
            return entry, event_id
        return None


def _mirrored_in_index(entry: EventLogEntry) -> bool:
    if not entry.is_dagster_event:
        return False
    event_type = entry.dagster_event_type
    if event_type in ASSET_EVENTS:
        return entry.get_dagster_event().asset_key is not None
    return event_type in ASSET_CHECK_EVENTS or event_type in EVENT_TYPE_TO_PIPELINE_RUN_STATUS


def default_base_dir() -> str:
    """Where Dagster's default SQLite storage keeps run shards: ``$DAGSTER_HOME/history/runs``."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise ValueError("DAGSTER_HOME must be set to locate the event log (or set base_dir in dagster.yaml)")
    return os.path.join(home, "history", "runs")
