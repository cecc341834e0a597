"""The ``chargeback`` command line (config.md §8).

``validate-config`` / ``check-config`` validate everything that can be checked without
contacting a service (plugin settings, emitter specs, override paths); ``show-config``
prints the effective settings with secrets masked; ``run`` hands over to
:mod:`chargeback_pipeline.run_command`. Every failure ends in one readable line per
problem and a non-zero exit code, never a traceback: 1 when the input, the
configuration or a run failed, 2 for a usage error or an unexpected internal error
(which prints one line naming the command and the exception, and a hint to re-run with
``--traceback``). Everything printed passes through
:class:`~chargeback_pipeline.terminal.EscapingStream`, so control characters coming
from data (ANSI escapes in an identity name, a carriage return in a config value) are
shown as ``\\x1b`` and never act on the terminal.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from datetime import date
from typing import TextIO, cast

from chargeback_pipeline import clock
from chargeback_pipeline.config import LoadedConfig, TenantConfig, load_config, resolved_settings
from chargeback_pipeline.errors import ChargebackError, ConfigError
from chargeback_pipeline.terminal import EscapingStream

VALID_MESSAGE = "Config is valid."
EXIT_FAILED = 1  # the configuration, the input or a run failed
EXIT_INTERNAL = 2  # usage error (argparse) or an unexpected exception: a bug
TRACEBACK_HINT = "hint: this is a bug, not a problem with your input; re-run with --traceback for the details"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargeback", description="Cost chargeback pipeline")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--traceback", action="store_true", help="on an unexpected error, print the Python traceback too"
    )
    for name, summary in (
        ("validate-config", "validate the configuration file; contacts no service"),
        ("check-config", "validate, then show what a refresh would run per tenant"),
        ("show-config", "print the resolved configuration as JSON, secrets masked"),
    ):
        sub = commands.add_parser(name, help=summary, description=summary, parents=[common])
        sub.add_argument(
            "config_file", nargs="?", metavar="F", help="config file (default: $CHARGEBACK_CONFIG)"
        )
        sub.add_argument("--config", dest="config_option", metavar="F", help="same as the positional F")
    run = commands.add_parser("run", help="materialise tenant x date partitions in process", parents=[common])
    run.add_argument(
        "--config", metavar="F", help="config file (default: $CHARGEBACK_CONFIG or ./config.yaml)"
    )
    run.add_argument("--tenant", action="append", metavar="T", help="tenant name (repeatable; default: all)")
    run.add_argument("--start", metavar="D", help="first billing date, YYYY-MM-DD (inclusive)")
    run.add_argument("--end", metavar="D", help="last billing date, YYYY-MM-DD (inclusive)")
    run.add_argument("-v", "--verbose", action="store_true", help="print INFO logs too (default: warnings)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; stdout and stderr escape control characters while it runs."""
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, EscapingStream(stdout))
    sys.stderr = cast(TextIO, EscapingStream(stderr))
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the problem
        return exc.code if isinstance(exc.code, int) else EXIT_INTERNAL
    handlers = {
        "validate-config": _validate,
        "check-config": _check,
        "show-config": _show,
        "run": _run,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a config problem: one line, the stack only on request
        if args.traceback:
            traceback.print_exc(file=sys.stderr)
        print(f"error: {args.command} failed unexpectedly: {describe_exception(exc)}", file=sys.stderr)
        print(TRACEBACK_HINT, file=sys.stderr)
        return EXIT_INTERNAL


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message`` (a multi-line message would read as several errors)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _config_file(args: argparse.Namespace) -> str | None:
    value: str | None = args.config_file or args.config_option
    return value


def _load(args: argparse.Namespace) -> LoadedConfig | None:
    """Load the file with warnings on stderr; ``None`` after printing a fatal error."""
    _log_to_stderr()
    try:
        return load_config(_config_file(args))
    except ConfigError as exc:
        _print_lines(exc.errors, sys.stdout)
        return None
    except (ChargebackError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stdout)
        return None


def _log_to_stderr() -> None:
    """Warnings from loading (unknown keys, literal secrets, broken plugins) go to stderr."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)


def _print_lines(lines: Sequence[str], stream: TextIO) -> None:
    for line in lines:
        for part in str(line).splitlines():
            print(part, file=stream)


def _validate(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return 1
    if loaded.errors:
        _print_lines(loaded.errors, sys.stdout)
        return 1
    print(VALID_MESSAGE)
    return 0


def _check(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return 1
    today = clock.utc_now().date()
    print(f"config: {loaded.path}")
    print(f"today (UTC): {today.isoformat()}")
    print(f"schedule: {_schedule(loaded)}")
    for name, tenant in loaded.tenants.items():
        _describe_tenant(name, tenant, today)
    for name, errors in loaded.tenant_errors.items():
        print(f"tenant {name}: INVALID (excluded)")
        _print_lines([f"  {error}" for error in errors], sys.stdout)
    if loaded.errors:
        print(f"{len(loaded.errors)} error(s):")
        _print_lines(loaded.errors, sys.stdout)
        return 1
    print(VALID_MESSAGE)
    return 0


def _schedule(loaded: LoadedConfig) -> str:
    features = loaded.settings.features
    if not features.enable_periodic_refresh:
        return "periodic refresh disabled (manual runs only)"
    return (
        f"refresh every {features.refresh_interval} s, "
        f"at most {features.max_parallel_tenants} tenant(s) in parallel"
    )


def _describe_tenant(name: str, tenant: TenantConfig, today: date) -> None:
    window = clock.refresh_window(tenant, today)
    first, last = clock.allowed_dates(tenant, today)
    span = (
        f"{window[0].isoformat()} .. {window[-1].isoformat()} ({len(window)} dates)" if window else "(empty)"
    )
    print(f"tenant {name}:")
    print(f"  ecosystem: {tenant.ecosystem}")
    print(f"  tenant_id: {tenant.tenant_id}")
    print(f"  storage: {tenant.storage_path}")
    print(f"  refresh window: {span}")
    print(f"  allowed dates: {first.isoformat()} .. {last.isoformat()}")
    emitters = tenant.plugin_settings.emitters
    if not emitters:
        print("  emitters: (none)")
    for spec in emitters:
        aggregation = spec.aggregation or "none"
        print(f"  emitter {spec.name}: type {spec.type}, aggregation {aggregation}")


def _show(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return 1
    print(json.dumps(resolved_settings(loaded), indent=2, sort_keys=False, default=str))
    if loaded.errors:
        _print_lines(loaded.errors, sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        run_command = importlib.import_module("chargeback_pipeline.run_command")
    except ImportError as exc:
        print(f"error: the run command is unavailable: {exc}", file=sys.stderr)
        return 1
    try:
        result: int = run_command.run(args)
    except (ChargebackError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
