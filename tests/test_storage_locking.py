from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback_pipeline.errors import StorageError, TenantBusyError
from chargeback_pipeline.storage import lock_path_for, open_tenant_db, tenant_lock
from tests.test_storage_support import ECO, TENANT, day, hold_and_write, write_once


def test_lock_timeout_names_tenant_and_lock_file(tmp_path: Path) -> None:
    db_path = tmp_path / "acme.duckdb"
    lock_path = lock_path_for(db_path)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: blocks like another process
    try:
        started = time.monotonic()
        with (
            pytest.raises(StorageError) as info,
            open_tenant_db(db_path, ecosystem=ECO, tenant_id=TENANT, lock_timeout_s=0.3),
        ):
            pass
        waited = time.monotonic() - started
    finally:
        os.close(fd)
    assert str(info.value) == (
        f"tenant '{TENANT}': timed out after 0.3s waiting for the lock {lock_path}; "
        "another run of this tenant still holds it"
    )
    assert 0.3 <= waited < 2.0
    assert not db_path.exists()  # nothing was opened


def test_waiting_is_logged_once_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db_path = tmp_path / "acme.duckdb"
    release = threading.Event()
    held = threading.Event()

    def holder() -> None:
        with tenant_lock(db_path, tenant_id=TENANT, timeout_s=5):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    threading.Timer(1.0, release.set).start()
    with (
        caplog.at_level(logging.INFO, logger="chargeback_pipeline.storage.locking"),
        tenant_lock(db_path, tenant_id=TENANT, timeout_s=5),
    ):
        pass
    thread.join()
    waits = [r for r in caplog.records if "waiting for another run" in r.getMessage()]
    assert len(waits) == 1
    assert waits[0].levelno == logging.INFO
    assert waits[0].getMessage() == (
        f"tenant '{TENANT}': waiting for another run of this tenant to release {lock_path_for(db_path)}"
    )


def test_zero_timeout_is_a_silent_try_lock(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The freshness check peeks every tenant's store: a busy one is skipped at once, unlogged."""
    db_path = tmp_path / "acme.duckdb"
    fd = os.open(lock_path_for(db_path), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run of the tenant holds it
    try:
        started = time.monotonic()
        with (
            caplog.at_level(logging.INFO, logger="chargeback_pipeline.storage.locking"),
            pytest.raises(TenantBusyError),
            tenant_lock(db_path, tenant_id=TENANT, timeout_s=0),
        ):
            pass
        assert time.monotonic() - started < 0.2
    finally:
        os.close(fd)
    assert [r.getMessage() for r in caplog.records] == []
    with tenant_lock(db_path, tenant_id=TENANT, timeout_s=0) as path:  # free: taken at once
        assert path == lock_path_for(db_path)


def test_threads_of_one_process_are_serialised(tmp_path: Path) -> None:
    db_path = tmp_path / "acme.duckdb"
    inside = 0
    overlaps = 0
    guard = threading.Lock()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        nonlocal inside, overlaps
        try:
            with open_tenant_db(db_path, ecosystem=ECO, tenant_id=TENANT, lock_timeout_s=30) as db:
                with guard:
                    inside += 1
                    overlaps += inside > 1
                time.sleep(0.05)
                db.gather_state.increment("writes")
                with guard:
                    inside -= 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert overlaps == 0
    with open_tenant_db(db_path, ecosystem=ECO, tenant_id=TENANT) as db:
        assert db.gather_state.get("writes") == 4


def test_nested_open_in_one_thread_fails_fast_instead_of_deadlocking(tmp_path: Path) -> None:
    db_path = tmp_path / "acme.duckdb"
    with open_tenant_db(db_path, ecosystem=ECO, tenant_id=TENANT):
        started = time.monotonic()
        with (
            pytest.raises(StorageError, match="already held by this thread"),
            open_tenant_db(db_path, ecosystem=ECO, tenant_id=TENANT),
        ):
            pass
        assert time.monotonic() - started < 1.0


def test_two_processes_write_one_tenant_both_succeed_other_tenant_not_blocked(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    try:
        times = manager.dict()
        acquired = manager.Event()
        acme = str(tmp_path / "acme.duckdb")
        globex = str(tmp_path / "globex.duckdb")
        holder = ctx.Process(
            target=hold_and_write,
            args=(
                acme,
                "acme",
                day(0),
                0.5,
                {"acquired": acquired, "times": times},
                ("waiter_started", "other_done"),
            ),
        )
        holder.start()
        assert acquired.wait(60), "holder never acquired the lock"
        waiter = ctx.Process(target=write_once, args=(acme, "acme", day(1), "waiter", times))
        other = ctx.Process(target=write_once, args=(globex, "globex", day(0), "other", times))
        waiter.start()
        other.start()
        for process in (holder, waiter, other):
            process.join(120)
            assert process.exitcode == 0
        t = dict(times)
    finally:
        manager.shutdown()

    # The second acme writer asked while the first held the file and queued instead of crashing...
    assert t["waiter_started"] < t["holder_released"] <= t["waiter_acquired"]
    # ...while globex, started at the same moment, finished before acme was released.
    assert t["other_done"] < t["holder_released"]
    with open_tenant_db(Path(acme), ecosystem=ECO, tenant_id="acme") as db:
        assert db.billing.dates() == [day(0), day(1)]
        assert [x.total_cost for x in db.billing.find_by_date(day(1))] == [Decimal("2.0000")]
    with open_tenant_db(Path(globex), ecosystem=ECO, tenant_id="globex") as db:
        assert db.billing.dates() == [day(0)]
