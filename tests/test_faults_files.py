"""Faults while writing files: the process killed mid CSV write, and a full disk under the
CSV output directory or under the tenant's DuckDB store.

Everything is real: the pipeline job runs through Dagster, the killed run is a separate
process that receives SIGKILL, and "disk full" is a small tmpfs mounted for the test
(the suite runs as root locally and in CI; a failed mount fails the test, never skips).
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from chargeback_pipeline.emitters.files import atomic_write
from chargeback_pipeline.storage import open_tenant_db
from tests.ops_support import edit_config, failures, file_hashes, fixed_rate_demo, python, run_range

DAY = date(2026, 3, 3)
PARTITION = f"{DAY.isoformat()}|postgres-prod"
EMIT_CSV = [dg.AssetKey("emit_csv")]
BILLED = Decimal("38.1216")  # the demo's postgres-prod bill of one day (3 lines)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def demo(demo_config: Path) -> Path:
    return fixed_rate_demo(demo_config)


def set_backup_rate(config: Path, rate: str) -> None:
    text = config.read_text(encoding="utf-8")
    assert 'rate: "0.021"' in text or "rate: '0.021'" in text
    config.write_text(text.replace("0.021", rate), encoding="utf-8")


def store_path(config: Path) -> Path:
    return config.parent / "data" / "postgres-prod.duckdb"


def csv_path(config: Path) -> Path:
    return config.parent / "out" / "csv" / "postgres-prod" / f"{DAY.isoformat()}.csv"


def stored(store: Path) -> dict[str, object]:
    """What the tenant's store says about DAY: rows, totals, calculation and csv emission."""
    with open_tenant_db(store, ecosystem="generic_metrics_only", tenant_id="acme-postgres") as db:
        totals = db.chargebacks.date_totals(DAY)
        record = db.emissions.get("csv", DAY)
        return {
            "rows": sorted(
                (r.product_type, r.identity_id, str(r.amount)) for r in db.chargebacks.find_by_date(DAY)
            ),
            "billed": totals.billed,
            "allocated": totals.allocated,
            "row_count": totals.row_count,
            "calculation_id": db.state.get(DAY).calculation_id,
            "csv_emission": None if record is None else (record.status, record.calculation_id),
        }


def csv_rows_total(path: Path) -> tuple[int, Decimal]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    amount = header.index("amount")
    return len(lines) - 1, sum((Decimal(line.split(",")[amount]) for line in lines[1:]), Decimal(0))


# --- SIGKILL between the temporary file and the rename ---------------------------------------

KILL_BEFORE_CSV_RENAME = """
    import os, signal
    from pathlib import Path
    import dagster as dg
    from chargeback_pipeline.definitions import PIPELINE_JOB, build_definitions
    replace = os.replace

    def die_before_csv_rename(temp_path, path):
        # atomic_write renames its complete, fsynced temporary file over the target.
        if str(path).endswith(".csv") and str(temp_path).endswith(".tmp"):
            print("KILLED-AT", temp_path, flush=True)  # the complete temp file, target not replaced yet
            os.kill(os.getpid(), signal.SIGKILL)
        replace(temp_path, path)

    os.replace = die_before_csv_rename  # this process only exists to be killed here
    job = build_definitions(Path(os.environ["CONFIG"])).resolve_job_def(PIPELINE_JOB)
    job.execute_in_process(partition_key=os.environ["PARTITION"], instance=dg.DagsterInstance.ephemeral())
"""


@pytest.mark.outcome("killed-during-csv-write")
def test_a_run_killed_between_csv_temp_file_and_rename_keeps_the_previous_csv(
    demo: Path, instance: dg.DagsterInstance
) -> None:
    assert run_range(demo, instance, PARTITION, PARTITION).success
    csv = csv_path(demo)
    before_hash = file_hashes([csv])
    before = stored(store_path(demo))
    assert before["billed"] == before["allocated"] == BILLED and before["row_count"] == 15
    assert csv_rows_total(csv) == (15, BILLED)

    # A revised rate: the killed run commits a new calculation, then dies writing its CSV.
    set_backup_rate(demo, "0.042")
    killed = python(KILL_BEFORE_CSV_RENAME, {"CONFIG": str(demo), "PARTITION": PARTITION})
    output, _ = killed.communicate(timeout=300)
    assert killed.returncode == -9, output[-3000:]
    orphan = Path(output.split("KILLED-AT ", 1)[1].split()[0])

    # The previous CSV is intact, byte for byte; the killed write's complete temp file is left over.
    assert file_hashes([csv]) == before_hash
    assert orphan.parent == csv.parent and orphan.is_file() and orphan.name.startswith(f".{csv.name}.")
    after_kill = stored(store_path(demo))
    # The recalculation did commit (its transaction ended before the sink ran): new calculation,
    # still reconciling; the emission record still names the previous calculation, so it is pending.
    assert after_kill["calculation_id"] != before["calculation_id"]
    assert after_kill["billed"] == after_kill["allocated"] == Decimal("38.6256")
    assert after_kill["row_count"] == 15
    assert after_kill["csv_emission"] == ("emitted", before["calculation_id"])

    # The next run of the sink alone re-emits the committed calculation and removes the orphan.
    again = run_range(demo, instance, PARTITION, PARTITION, EMIT_CSV)
    assert again.success, failures(again)
    assert not orphan.exists()
    assert sorted(p.name for p in csv.parent.iterdir()) == [csv.name]
    assert csv_rows_total(csv) == (15, Decimal("38.6256"))
    final = stored(store_path(demo))
    assert final["csv_emission"] == ("emitted", after_kill["calculation_id"])
    assert final["rows"] == after_kill["rows"]


# --- disk full ------------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB mounted on a fresh directory for the block's duration."""
    directory = Path(tempfile.mkdtemp(prefix="chargeback-tmpfs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        directory.rmdir()
        raise RuntimeError(
            "cannot mount a tmpfs for the disk-full tests (they need root, as in CI): "
            + mounted.stderr.strip()
        )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
        directory.rmdir()


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full; return it (delete it to free the space)."""
    filler = directory / "filler.bin"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as handle:
        while True:
            try:
                handle.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    return filler


@pytest.mark.outcome("disk-full-csv")
def test_a_full_disk_under_the_csv_directory_fails_the_sink_and_keeps_the_previous_file(
    demo: Path, instance: dg.DagsterInstance
) -> None:
    with tiny_tmpfs(256) as mount:
        data = csv_output_to(demo, mount)
        assert run_range(demo, instance, PARTITION, PARTITION).success
        csv = data / "postgres-prod" / f"{DAY.isoformat()}.csv"
        before_hash = file_hashes([csv])
        before = stored(store_path(demo))
        assert csv_rows_total(csv) == (15, BILLED)

        set_backup_rate(demo, "0.042")
        filler = fill(mount)
        full = run_range(demo, instance, PARTITION, PARTITION)
        assert not full.success
        errors = failures(full)
        assert set(errors) == {"emit_csv"}  # the store is elsewhere: chargebacks committed
        message = errors["emit_csv"]
        assert (
            "tenant 'postgres-prod': emitter 'csv': 2026-03-03: OSError: [Errno 28] No space left on device"
            in (message)
        )
        assert str(csv) in message  # the file that could not be written is named
        assert file_hashes([csv]) == before_hash
        assert sorted(p.name for p in csv.parent.iterdir()) == [csv.name]  # no partial temp file left
        after = stored(store_path(demo))
        assert after["calculation_id"] != before["calculation_id"]
        assert after["billed"] == after["allocated"] == Decimal("38.6256")
        assert after["csv_emission"] == ("failed", after["calculation_id"])

        filler.unlink()
        retried = run_range(demo, instance, PARTITION, PARTITION, EMIT_CSV)
        assert retried.success, failures(retried)
        assert csv_rows_total(csv) == (15, Decimal("38.6256"))
        assert stored(store_path(demo))["csv_emission"] == ("emitted", after["calculation_id"])


def csv_output_to(config: Path, directory: Path) -> Path:
    """Point postgres-prod's CSV emitter at ``directory``/csv (its other emitter is dropped)."""
    target = directory / "csv"
    edit_config(
        config,
        **{
            "postgres-prod": {
                "plugin_settings": {
                    **_tenant_settings(config, "postgres-prod"),
                    "emitters": [
                        {
                            "type": "csv",
                            "params": {
                                "output_dir": str(target),
                                "filename_template": "{tenant_name}/{date}.csv",
                            },
                        }
                    ],
                }
            }
        },
    )
    return target


def _tenant_settings(config: Path, tenant: str) -> dict[str, object]:
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))["tenants"][tenant]["plugin_settings"]
    return dict(settings)


@pytest.mark.outcome("disk-full-store")
def test_a_full_disk_under_the_store_fails_the_step_and_the_store_reopens_intact(
    demo: Path, instance: dg.DagsterInstance
) -> None:
    with tiny_tmpfs(8192) as mount:
        store = mount / "postgres-prod.duckdb"
        edit_config(demo, **{"postgres-prod": {"storage": {"path": str(store)}}})
        assert run_range(demo, instance, PARTITION, PARTITION).success
        before = stored(store)
        csv = csv_path(demo)
        before_hash = file_hashes([csv])
        assert before["billed"] == before["allocated"] == BILLED and before["row_count"] == 15

        set_backup_rate(demo, "0.042")
        filler = fill(mount)
        full = run_range(demo, instance, PARTITION, PARTITION)
        assert not full.success
        errors = failures(full)
        # The first commit of the run fails (billing lines); everything downstream is skipped.
        assert "billing_lines" in errors and "chargebacks" not in errors, errors
        wal = f"{store}.wal"
        for message in errors.values():
            assert "tenant 'postgres-prod': StorageError: commit failed" in message, message
            assert f'Could not write file "{wal}": No space left on device' in message, message

        # DuckDB reopens the file (still full) and DAY's committed rows are exactly the previous ones.
        with duckdb.connect(str(store), read_only=True) as conn:
            assert conn.execute("SELECT count(*) FROM chargebacks").fetchone() == (15,)
        assert stored(store) == before
        assert file_hashes([csv]) == before_hash

        filler.unlink()
        retried = run_range(demo, instance, PARTITION, PARTITION)
        assert retried.success, failures(retried)
        after = stored(store)
        assert after["billed"] == after["allocated"] == Decimal("38.6256") and after["row_count"] == 15
        assert csv_rows_total(csv) == (15, Decimal("38.6256"))


@pytest.mark.outcome("killed-during-csv-write")
def test_only_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "2026-03-03.csv"
    dead_pid = subprocess.Popen(["true"])  # a writer that has exited
    dead_pid.wait()
    dead = tmp_path / f".{target.name}.{dead_pid.pid}-abc123.tmp"
    legacy = tmp_path / f".{target.name}.q1w2e3.tmp"  # the shape written before the PID was added
    alive = tmp_path / f".{target.name}.1-xyz789.tmp"  # PID 1 always runs: a writer still at work
    other = tmp_path / f".other.csv.{dead_pid.pid}-abc123.tmp"  # another file's temp: not ours to judge
    for path in (dead, legacy, alive, other):
        path.write_text("partial", encoding="utf-8")
    with atomic_write(target) as stream:
        stream.write("a,b\n")
    assert target.read_text(encoding="utf-8") == "a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, alive.name, other.name])
