"""The ``chargeback`` CLI: validate-config, check-config, show-config and ``run`` (config.md §8)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargeback_pipeline.cli import main
from chargeback_pipeline.errors import ChargebackError
from chargeback_pipeline.loader import clear_discovery_cache

PLUGINS = Path(__file__).parent / "fixtures" / "plugins_mixed"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    for name in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.setenv("CHARGEBACK_NOW", "2026-03-10T08:00:00Z")
    monkeypatch.setenv("CB_CLI_ACCESS_KEY", "cli-secret-value")
    clear_discovery_cache()
    yield
    clear_discovery_cache()


def write_config(tmp_path: Path, tenants: str) -> Path:
    path = tmp_path / "config.yaml"
    body = textwrap.indent(textwrap.dedent(tenants).strip(), "  ")
    path.write_text(f"plugins_path: {PLUGINS}\ntenants:\n{body}\n", encoding="utf-8")
    return path


GOOD = """
acme:
  ecosystem: fixture_good
  tenant_id: acme-id
  lookback_days: 30
  cutoff_days: 3
  retention_days: 90
  plugin_settings:
    api: {url: http://vendor, access_key: '${CB_CLI_ACCESS_KEY}'}
    emitters:
      - {type: csv, params: {output_dir: out}}
      - {type: csv, name: monthly_csv, aggregation: monthly, params: {output_dir: out/monthly}}
"""

BAD = """
broken:
  ecosystem: fixture_good
  tenant_id: broken-id
  cutoff_days: 0
  plugin_settings:
    api: {url: http://vendor}
    emitters: [{type: csv, params: {output_dir: out, colour: red}}]
typo:
  ecosystem: fixture_godo
  tenant_id: typo-id
"""


def test_validate_config_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, GOOD)
    assert main(["validate-config", str(path)]) == 0
    assert capsys.readouterr().out == "Config is valid.\n"


def test_validate_config_uses_chargeback_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHARGEBACK_CONFIG", str(write_config(tmp_path, GOOD)))
    assert main(["validate-config"]) == 0
    assert capsys.readouterr().out == "Config is valid.\n"


def test_validate_config_prints_every_error_one_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, GOOD + BAD)
    assert main(["validate-config", "--config", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: tenant 'broken': cutoff_days: Input should be greater than or equal to 1"
    assert lines[1] == (
        f"{path}: tenant 'broken': plugin_settings.emitters.0: emitter 'csv': params.colour: "
        "unknown parameter for emitter 'csv' (allowed: output_dir, filename_template)"
    )
    assert lines[2].startswith(
        f"{path}: tenant 'typo': ecosystem: unknown ecosystem 'fixture_godo'; available: "
    )
    assert "fixture_good" in lines[2] and "register exploded on purpose" in lines[2]
    assert len(lines) == 3
    assert "Config is valid." not in lines


def test_validate_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-config", "nope.yaml"]) == 1
    assert capsys.readouterr().out == "Configuration file not found: 'nope.yaml'\n"


def test_validate_config_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.yaml").write_text("tenants: [unclosed\n")
    assert main(["validate-config", "config.yaml"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("Malformed YAML in 'config.yaml': ")
    assert "Traceback" not in out


def test_validate_config_top_level_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.yaml").write_text("features: {max_parallel_tenants: 0, refresh_interval: -5}\n")
    assert main(["validate-config", "config.yaml"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "config.yaml: features.refresh_interval: Input should be greater than 0",
        "config.yaml: features.max_parallel_tenants: Input should be greater than or equal to 1",
    ]


def test_check_config_shows_what_would_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, GOOD)
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"config: {path}",
        "today (UTC): 2026-03-10",
        "schedule: refresh every 1800 s, at most 4 tenant(s) in parallel",
        "tenant acme:",
        "  ecosystem: fixture_good",
        "  tenant_id: acme-id",
        f"  storage: {(tmp_path / 'data' / 'acme.duckdb').resolve()}",
        "  refresh window: 2026-02-08 .. 2026-03-06 (27 dates)",
        "  allowed dates: 2025-12-10 .. 2026-03-06",
        "  emitter csv: type csv, aggregation none",
        "  emitter monthly_csv: type csv, aggregation monthly",
        "Config is valid.",
    ]


def test_check_config_lists_invalid_tenants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, GOOD + BAD)
    assert main(["check-config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "tenant acme:\n  ecosystem: fixture_good" in out
    assert "tenant broken: INVALID (excluded)\n" in out
    assert "tenant typo: INVALID (excluded)\n" in out
    assert "3 error(s):" in out
    assert "Config is valid." not in out


def test_show_config_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, GOOD)
    assert main(["show-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cli-secret-value" not in out
    data = json.loads(out)
    acme = data["tenants"]["acme"]
    assert acme["plugin_settings"]["api"] == {"url": "http://vendor", "access_key": "**********"}
    assert acme["lookback_days"] == 30
    assert acme["plugin_settings"]["emitters"][0]["params"]["output_dir"] == str(tmp_path / "out")
    assert data["plugins_path"] == str(PLUGINS.resolve())
    assert data["logging"]["level"] == "INFO"
    assert data["invalid_tenants"] == {}


def test_show_config_with_invalid_tenant_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, GOOD + BAD)
    assert main(["show-config", str(path)]) == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert list(data["tenants"]) == ["acme"]
    assert sorted(data["invalid_tenants"]) == ["broken", "typo"]
    assert f"{path}: tenant 'broken': cutoff_days:" in captured.err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: chargeback" in capsys.readouterr().err


def test_run_is_handed_to_run_command(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[argparse.Namespace] = []
    fake = types.ModuleType("chargeback_pipeline.run_command")

    def run(args: argparse.Namespace) -> int:
        received.append(args)
        return 7

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "chargeback_pipeline.run_command", fake)
    argv = ["run", "--config", "c.yaml", "--tenant", "a", "--tenant", "b", "--start", "2026-03-01"]
    assert main([*argv, "--end", "2026-03-02"]) == 7
    [args] = received
    assert (args.config, args.tenant, args.start, args.end) == (
        "c.yaml",
        ["a", "b"],
        "2026-03-01",
        "2026-03-02",
    )


def test_unexpected_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = types.ModuleType("chargeback_pipeline.run_command")

    def run(args: argparse.Namespace) -> int:
        raise KeyError("bug")

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "chargeback_pipeline.run_command", fake)
    assert main(["run"]) == 2  # a bug, not a problem with the input (README, exit codes)
    assert capsys.readouterr().err == (
        "error: run failed unexpectedly: KeyError: 'bug'\n"
        "hint: this is a bug, not a problem with your input; re-run with --traceback for the details\n"
    )


def test_check_config_with_refresh_disabled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, GOOD)
    path.write_text("features: {enable_periodic_refresh: false}\n" + path.read_text())
    assert main(["check-config", str(path)]) == 0
    assert "schedule: periodic refresh disabled (manual runs only)\n" in capsys.readouterr().out


def test_run_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake = types.ModuleType("chargeback_pipeline.run_command")

    def run(args: argparse.Namespace) -> int:
        raise ChargebackError("tenant 'x': date 2026-03-09 is not allowed")

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "chargeback_pipeline.run_command", fake)
    assert main(["run"]) == 1
    assert capsys.readouterr().err == "error: tenant 'x': date 2026-03-09 is not allowed\n"
