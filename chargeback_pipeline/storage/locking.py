"""Per-tenant exclusive lock around a tenant's DuckDB file (spec/dagster-notes.md §4).

DuckDB refuses a second process outright (even read-only) instead of waiting, so two
runs of one tenant would crash rather than queue. An OS ``flock`` on ``<db>.lock``
makes the second run wait; it is independent of how the run was launched. ``flock``
is owned by an open file description, so two threads of one process would not exclude
each other through it alone: a per-path ``threading.Lock`` serialises them first.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from chargeback_pipeline.errors import StorageError, TenantBusyError

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.05
MAX_POLL_INTERVAL_S = 0.5

_registry_guard = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}
_owners: dict[str, int] = {}


def lock_path_for(db_path: Path) -> Path:
    """The lock file lives next to the database so every process derives the same name."""
    return db_path.with_name(db_path.name + ".lock")


class _Waiter:
    """Tracks the deadline and logs the wait once, so a long queue does not flood the log."""

    def __init__(self, tenant_id: str, lock_path: Path, timeout_s: float) -> None:
        self.tenant_id = tenant_id
        self.lock_path = lock_path
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.interval = POLL_INTERVAL_S
        self.logged = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def note_waiting(self) -> None:
        """Log the wait the first time, and give up once the deadline has passed.

        A zero timeout is a try-lock: the caller handles "busy" itself (the freshness
        check skips the store), so nothing waited and nothing is logged.
        """
        if self.timeout_s <= 0:
            raise self.timeout_error()
        if not self.logged:
            log.info(
                "tenant '%s': waiting for another run of this tenant to release %s",
                self.tenant_id,
                self.lock_path,
            )
            self.logged = True
        if self.remaining() <= 0:
            raise self.timeout_error()

    def sleep(self) -> None:
        time.sleep(max(0.0, min(self.interval, self.remaining())))
        self.interval = min(self.interval * 2, MAX_POLL_INTERVAL_S)

    def timeout_error(self) -> StorageError:
        return TenantBusyError(
            f"tenant '{self.tenant_id}': timed out after {self.timeout_s:g}s waiting for the lock "
            f"{self.lock_path}; another run of this tenant still holds it"
        )


def _thread_lock_for(key: str) -> threading.Lock:
    with _registry_guard:
        lock = _thread_locks.get(key)
        if lock is None:
            lock = _thread_locks[key] = threading.Lock()
        return lock


def _acquire_thread_lock(key: str, waiter: _Waiter) -> threading.Lock:
    me = threading.get_ident()
    with _registry_guard:
        if _owners.get(key) == me:
            raise StorageError(
                f"tenant '{waiter.tenant_id}': {waiter.lock_path} is already held by this thread; "
                "opening the same tenant database twice in one thread would deadlock"
            )
    lock = _thread_lock_for(key)
    while not lock.acquire(timeout=max(0.0, min(MAX_POLL_INTERVAL_S, waiter.remaining()))):
        waiter.note_waiting()
    with _registry_guard:
        _owners[key] = me
    return lock


def _release_thread_lock(key: str, lock: threading.Lock) -> None:
    with _registry_guard:
        _owners.pop(key, None)
    lock.release()


def _acquire_flock(fd: int, waiter: _Waiter) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            waiter.note_waiting()
            waiter.sleep()


@contextlib.contextmanager
def tenant_lock(db_path: Path, *, tenant_id: str, timeout_s: float) -> Iterator[Path]:
    """Hold the tenant's exclusive lock (threads and processes) for the ``with`` body.

    Yields the lock file path. Raises ``StorageError`` naming the tenant and the lock
    file when the lock is not obtained within ``timeout_s``.
    """
    lock_path = lock_path_for(db_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(lock_path)
    waiter = _Waiter(tenant_id, lock_path, timeout_s)
    thread_lock = _acquire_thread_lock(key, waiter)
    try:
        fd = _open_lock_file(lock_path, tenant_id)
        try:
            _acquire_flock(fd, waiter)
            try:
                yield lock_path
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        _release_thread_lock(key, thread_lock)


def _open_lock_file(lock_path: Path, tenant_id: str) -> int:
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"tenant '{tenant_id}': cannot open lock file {lock_path}: {exc}") from exc
