"""Safe output paths and atomic file replacement for file-writing emitters.

Emitted files are read by finance tooling while the pipeline may be rewriting them, and
their names are partly built from configuration and tenant data. Two guarantees follow:
a reader sees either the previous complete file or the new complete file, never a
half-written one; and no configured template or tenant label can make the pipeline
write outside the configured output directory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

# New files get ordinary read permissions; ``mkstemp`` alone would leave them 0600 and
# invisible to the (often different) account that collects the reports.
DEFAULT_FILE_MODE = 0o644
TEMP_SUFFIX = ".tmp"


def relative_path_problem(relative: str) -> str | None:
    """Why ``relative`` may not be used under an output directory, or ``None`` if it may.

    Both separators are checked so that a template written on Windows cannot smuggle an
    absolute path or a parent reference past a POSIX-only check.
    """
    if not relative:
        return "is empty"
    if "\x00" in relative:
        return "contains a NUL character"
    if relative.startswith(("/", "\\")) or PurePosixPath(relative).is_absolute():
        return "is an absolute path"
    if PureWindowsPath(relative).drive:
        return "is an absolute path (has a drive)"
    parts = relative.replace("\\", "/").split("/")
    if ".." in parts:
        return "contains a '..' path component"
    if parts[-1] in ("", "."):
        return "does not end in a file name"
    return None


def safe_join(base: Path, relative: str) -> Path:
    """Join ``relative`` under ``base`` and prove the result stays inside ``base``.

    The lexical check rejects the obvious escapes with a readable message; resolving
    both paths afterwards also catches symbolic links inside ``base`` that point out.
    """
    problem = relative_path_problem(relative)
    if problem is not None:
        raise ValueError(f"output path {relative!r} {problem}")
    root = base.resolve()
    target = (root / relative.replace("\\", "/")).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ValueError(f"output path {relative!r} resolves to {target}, outside output directory {root}")
    return target


def _fsync_directory(directory: Path) -> None:
    """Make a rename or unlink durable; best effort where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _target_mode(path: Path) -> int:
    """Keep the permissions an operator gave an existing file; otherwise use the default."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return DEFAULT_FILE_MODE


@contextlib.contextmanager
def atomic_write(path: Path, *, encoding: str = "utf-8", newline: str = "") -> Iterator[IO[str]]:
    """Yield a text stream whose content replaces ``path`` only if the block succeeds.

    The data goes to a hidden temporary file in the target's own directory (a rename is
    atomic only within one file system), is fsynced, and is then renamed over the
    target. If the block raises, the temporary file is removed and the previous file is
    left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    temp_path = Path(temp_name)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline=newline) as stream:
            yield stream
            stream.flush()
            os.fchmod(stream.fileno(), _target_mode(path))
            os.fsync(stream.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def remove_file(path: Path) -> bool:
    """Delete ``path`` if present; report whether something was removed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _fsync_directory(path.parent)
    return True
