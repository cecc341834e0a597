"""Nestable transactions on one DuckDB connection.

Repositories make each write atomic on its own, yet a step must also be able to
combine several writes into one commit (replace chargebacks + mark calculated + reset
attempt counters). DuckDB has no savepoints, so an inner block joins the outer
transaction. If an inner block fails and the caller swallows the error, the outer
transaction is poisoned and refuses to commit: half of a partition is never written.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb

from chargeback_pipeline.errors import StorageError


@dataclass(slots=True)
class _TxState:
    conn: duckdb.DuckDBPyConnection
    depth: int = 0
    failed: bool = False


_guard = threading.Lock()
_states: dict[int, _TxState] = {}


def _state_for(conn: duckdb.DuckDBPyConnection) -> _TxState:
    with _guard:
        state = _states.get(id(conn))
        if state is None or state.conn is not conn:
            state = _states[id(conn)] = _TxState(conn)
        return state


def forget(conn: duckdb.DuckDBPyConnection) -> None:
    """Drop the bookkeeping of a connection that is being closed."""
    with _guard:
        state = _states.get(id(conn))
        if state is not None and state.conn is conn:
            del _states[id(conn)]


def in_transaction(conn: duckdb.DuckDBPyConnection) -> bool:
    return _state_for(conn).depth > 0


@contextlib.contextmanager
def atomic(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN/COMMIT around the body, or join the enclosing ``atomic`` block."""
    state = _state_for(conn)
    if state.depth == 0:
        conn.begin()
        state.failed = False
    state.depth += 1
    try:
        yield
    except BaseException:
        state.failed = True
        if state.depth == 1:
            with contextlib.suppress(duckdb.Error):
                conn.rollback()
        raise
    finally:
        state.depth -= 1
    if state.depth == 0:
        _finish(conn, state)


def _finish(conn: duckdb.DuckDBPyConnection, state: _TxState) -> None:
    if state.failed:
        conn.rollback()
        state.failed = False
        raise StorageError(
            "transaction rolled back: a write inside it failed (the error was caught and ignored)"
        )
    try:
        conn.commit()
    except duckdb.Error as exc:
        with contextlib.suppress(duckdb.Error):
            conn.rollback()
        raise StorageError(f"commit failed: {exc}") from exc
