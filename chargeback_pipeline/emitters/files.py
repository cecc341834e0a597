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
import string
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from chargeback_pipeline.emitters.registry import EmitterContext

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
    if (problem := _control_character_problem(relative)) is not None:
        return problem
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


def _control_character_problem(text: str) -> str | None:
    """A newline or escape sequence in a file name breaks every listing and log line."""
    control = next((ch for ch in text if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0), None)
    return None if control is None else f"contains the control character U+{ord(control):04X}"


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


def _temp_prefix(path: Path) -> str:
    """Temporary files of ``path`` are ``.<name>.<writer pid>-<random>.tmp`` beside it."""
    return f".{path.name}."


def _writer_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (it may be writing its temporary file right now)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another account
    return True


def remove_orphan_temps(path: Path) -> list[Path]:
    """Delete temporary files of ``path`` left by writers that no longer run.

    A process killed between creating its temporary file and the rename (SIGKILL, OOM,
    power loss) cannot clean up after itself; without this, every such death left a
    full-size hidden copy of the output beside it for ever. The writer's PID is part of
    the name, so a temporary file of a writer that is still alive (another process or
    this one) is never touched. Temporary files without a PID (written before the PID
    was part of the name) are orphans by construction: nothing writes that shape now.
    """
    prefix = _temp_prefix(path)
    removed: list[Path] = []
    try:
        candidates = [
            entry
            for entry in os.scandir(path.parent)
            if entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX) and entry.is_file()
        ]
    except FileNotFoundError:
        return removed
    for entry in candidates:
        middle = entry.name[len(prefix) : -len(TEMP_SUFFIX)]
        pid_text, dash, _ = middle.partition("-")
        if dash and pid_text.isdigit() and _writer_alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_write(path: Path, *, encoding: str = "utf-8", newline: str = "") -> Iterator[IO[str]]:
    """Yield a text stream whose content replaces ``path`` only if the block succeeds.

    The data goes to a hidden temporary file in the target's own directory (a rename is
    atomic only within one file system), is fsynced, and is then renamed over the
    target. If the block raises, the temporary file is removed and the previous file is
    left untouched. Temporary files of this target left by a killed writer are removed
    first (:func:`remove_orphan_temps`), so a crash costs disk space only until the
    next write of the same file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(path)
    fd, temp_name = tempfile.mkstemp(
        prefix=f"{_temp_prefix(path)}{os.getpid()}-", suffix=TEMP_SUFFIX, dir=path.parent
    )
    temp_path = Path(temp_name)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline=newline) as stream:
            yield stream
            stream.flush()
            os.fchmod(stream.fileno(), _target_mode(path))
            os.fsync(stream.fileno())
        os.replace(temp_path, path)
    except OSError as exc:
        temp_path.unlink(missing_ok=True)
        raise _naming(exc, path) from exc
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _naming(exc: OSError, path: Path) -> OSError:
    """The error with the target file named: a stream's write or fsync error names no file,
    and "No space left on device" alone does not say which output could not be written."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, str(path))


def remove_file(path: Path) -> bool:
    """Delete ``path`` if present; report whether something was removed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _fsync_directory(path.parent)
    return True


# --- file-name templates and output directories shared by file-writing emitters -------

_SAMPLE_VALUE = "x"


def template_placeholders(template: str) -> set[str]:
    """Placeholder names used by a template (assumes it passed validation)."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def template_problem(template: str, allowed: Sequence[str]) -> str | None:
    """Why ``template`` is not an acceptable file-name template, or ``None``.

    Only plain ``{name}`` placeholders from ``allowed`` are accepted: attribute access,
    indexing, conversions and format specs would let a configuration reach into
    objects or produce names nobody reviewed.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"is malformed ({exc})"
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in allowed:
            shown = "{" + field + "}"
            return f"uses unknown placeholder {shown}; allowed: {', '.join('{' + p + '}' for p in allowed)}"
        if spec or conversion:
            return f"placeholder {{{field}}} may not have a conversion or format spec"
    problem = relative_path_problem(template.format(**dict.fromkeys(allowed, _SAMPLE_VALUE)))
    return None if problem is None else f"must be a relative path inside output_dir but {problem}"


def path_value_problem(value: str) -> str | None:
    """Why a substituted value (tenant id, tenant name …) cannot be one path component."""
    if not value:
        return "is empty"
    if value in (".", ".."):
        return "is a relative directory reference"
    for ch, what in (("/", "'/'"), ("\\", "'\\'"), ("\x00", "a NUL character")):
        if ch in value:
            return f"contains {what}"
    return _control_character_problem(value)


def check_path_value(placeholder: str, value: str) -> None:
    """A substituted value may name a file or folder, never a path of its own."""
    problem = path_value_problem(value)
    if problem is not None:
        raise ValueError(f"{{{placeholder}}} value {value!r} cannot be used in a file name: it {problem}")


def render_path(output_dir: Path, template: str, values: Mapping[str, str]) -> Path:
    """``template`` filled with ``values``, proven to lie inside ``output_dir``."""
    for name in sorted(template_placeholders(template)):
        if name not in values:
            raise ValueError(f"{{{name}}} has no value here (available: {', '.join(sorted(values))})")
        check_path_value(name, values[name])
    return safe_join(output_dir, template.format(**values))


def resolve_output_dir(output_dir: str | os.PathLike[str], config_dir: Path | None) -> Path:
    """Relative directories follow the config file (config.md §1), else the start-up cwd."""
    path = Path(output_dir).expanduser()
    if not path.is_absolute() and config_dir is not None:
        path = config_dir / path
    return path.absolute()


def output_dir_problem(directory: Path) -> str | None:
    """Why files cannot be written in ``directory`` (created with parents if missing), or ``None``.

    Checked when the configuration is validated so that a typo or a read-only mount is
    reported against the tenant and emitter before any run, not as a failed sink later.
    """
    if "\x00" in str(directory):  # pathlib treats such a path as merely missing
        return f"{str(directory)!r} contains a NUL byte"
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            return f"{directory} cannot be created: no existing parent directory"
        probe = probe.parent
    if not probe.is_dir():
        what = (
            "is not a directory" if probe == directory else f"cannot be created: {probe} is not a directory"
        )
        return f"{directory} {what}"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == directory else f"cannot be created: {probe} is not writable"
        return f"{directory} {what}"
    return None


def context_path_values(context: EmitterContext | None) -> dict[str, str]:
    """The tenant-level placeholder values a context supplies (``{tenant_name}``, ``{ecosystem}``)."""
    if context is None:
        return {}
    return {"tenant_name": context.tenant_name, "ecosystem": context.ecosystem}


def check_output_location(output_dir: str, templates: Sequence[str], context: EmitterContext) -> None:
    """Prove, before any run, that one tenant's files can be written where configured.

    Every tenant-level value a template uses must be a single, safe path component (a
    ``tenant_id`` of ``../x`` is refused here rather than at the first emission), and
    ``output_dir`` must be writable or creatable.
    """
    values = context_path_values(context)
    if context.tenant_id is not None:
        values["tenant_id"] = context.tenant_id
    for template in templates:
        for name in sorted(template_placeholders(template) & set(values)):
            problem = path_value_problem(values[name])
            if problem is not None:
                raise ValueError(
                    f"{{{name}}} in filename template {template!r} would be {values[name]!r}, "
                    f"which cannot be used in a file name: it {problem}"
                )
    problem = output_dir_problem(resolve_output_dir(output_dir, context.config_dir))
    if problem is not None:
        raise ValueError(f"params.output_dir: {problem}")
