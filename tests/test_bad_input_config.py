"""Bad-input corpus for the configuration file (issue #7): generated and hand-picked.

The generated part mutates the bundled demo configuration (three tenants: Confluent
Cloud replayed, two generic_metrics_only) at a random path: a wrong type, an
out-of-range or huge number, unicode / NUL / ANSI / RTL text, a deleted key, an unknown
key, an unsafe tenant name. For every mutation the CLI, called in process through
``main(argv)``:

- exits 0 (the mutation happens to be valid: unknown keys only warn, config.md §1) or 1;
- never prints a Python traceback;
- when it exits 1, names the file on the first line of its output, and the tenant when
  the mutation is inside one;
- writes nothing: no store, no output file, whatever the command (``run`` included).

The fast suite runs a few dozen derandomised examples; the slow suite runs hundreds.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargeback_pipeline import cli as cli_module
from chargeback_pipeline.cli import TRACEBACK_HINT, main
from chargeback_pipeline.loader import clear_discovery_cache
from tests.conftest import DEMO_CONFIG, FROZEN_NOW

DEMO = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
RUNNABLE = frozenset(DEMO["tenants"])  # tenants that can run offline (the slow suite runs them)

# The demo plus a self-managed Kafka tenant and the Confluent Cloud knobs the demo leaves
# at their defaults, so that every plugin's settings are mutated.
SMK_TENANT = """
ecosystem: self_managed_kafka
tenant_id: onprem
lookback_days: 8
cutoff_days: 1
retention_days: 90
storage: {path: data/kafka-onprem.duckdb}
plugin_settings:
  cluster_id: kafka-prod
  broker_count: 3
  discovery_window_hours: 1
  cost_model:
    compute_hourly_rate: "0.50"
    storage_per_gib_hourly: "0.000125"
    network_ingress_per_gib: "0.01"
    network_egress_per_gib: "0.09"
    region_overrides: {eu-west-1: {compute_hourly_rate: "0.60"}}
  metrics: {type: prometheus, url: "http://127.0.0.1:9/prom", timeout_seconds: 5, backoff_base_seconds: 0}
  min_refresh_gap_seconds: 600
  granularity_durations: {weekly: 168}
  emitters: [{type: csv, aggregation: daily, params: {output_dir: out/csv}}]
"""
BASE = copy.deepcopy(DEMO)
BASE["tenants"]["kafka-onprem"] = yaml.safe_load(SMK_TENANT)
_CCLOUD = BASE["tenants"]["confluent-cloud"]["plugin_settings"]
_CCLOUD["ccloud_api"].update(timeout_seconds=30, request_interval_seconds=0)
_CCLOUD["billing_api"] = {"days_per_query": 15}
_CCLOUD["allocator_params"] = {"kafka_cku_usage_ratio": 0.7, "kafka_cku_shared_ratio": 0.3}
TRACEBACK = "Traceback (most recent call last)"

KeyPath = tuple[str | int, ...]


def _paths(node: Any, path: KeyPath = ()) -> Iterator[KeyPath]:
    """Every key path in the document (mappings and list items), the root excluded."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*path, index)
            yield from _paths(value, (*path, index))


def _get(doc: Any, path: KeyPath) -> Any:
    for part in path:
        doc = doc[part]
    return doc


PATHS = sorted(_paths(BASE), key=repr)
MAPPING_PATHS = [()] + [p for p in PATHS if isinstance(_get(BASE, p), dict)]

# Strings a user, an editor or an attacker puts in a config value.
NASTY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "\x1b[31mred\x1b[0m",
        "\u202eevil",
        "half\ud800pair",
        "\u05e9\u05dc\u05d5\u05dd",  # Hebrew (RTL)
        "😀",
        "é" * 300,
        '=HYPERLINK("http://x")',
        "${CB_BADINPUT_UNSET_VAR}",
        "${CB_BADINPUT_UNSET_VAR:-}",
        "${",
        "1e400",
        "-1",
        "0",
        "NaN",
        "../outside",
        "line\nbreak",
        "\r",
    ]
) | st.text(max_size=12)

BAD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([10**100, -(10**100), 2**63, 2**64 + 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    NASTY_TEXT,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["x", "type", "name", "😀"]), st.integers(), max_size=2),
)

TENANT_NAMES = st.sampled_from(
    [
        "😀",
        "ünï",
        "a b",
        "x\udfff",
        "-lead",
        "x" * 64,
        "a\x00b",
        "\x1b[2J",
        "\u202eabc",
        "../up",
        "tenant!",
        "",
    ]
)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[dict[str, Any], KeyPath, str]:
    """(mutated document, path touched, kind of mutation)."""
    doc = copy.deepcopy(BASE)
    kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "unknown-key", "tenant-name"]))
    if kind == "tenant-name":
        old = draw(st.sampled_from(sorted(doc["tenants"])))
        new = draw(TENANT_NAMES)
        doc["tenants"] = {(new if k == old else k): v for k, v in doc["tenants"].items()}
        return doc, ("tenants", new), kind
    if kind == "unknown-key":
        path = draw(st.sampled_from(MAPPING_PATHS))
        key = draw(st.sampled_from(["lookback_day", "😀", "api", "preview", "\x1b[31m", "tenant_id2"]))
        _get(doc, path)[key] = draw(BAD_VALUES)
        return doc, (*path, key), kind
    path = draw(st.sampled_from(PATHS))
    parent = _get(doc, path[:-1])
    if kind == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(BAD_VALUES)
    return doc, path, kind


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The demo directory (with the Confluent Cloud recording) and a frozen clock."""
    target = tmp_path / "demo"
    # Not the stores and outputs of a demo run in this checkout: the tests own those.
    shutil.copytree(DEMO_CONFIG.parent, target, ignore=shutil.ignore_patterns("data", "out"))
    monkeypatch.chdir(target)
    monkeypatch.setenv("CHARGEBACK_NOW", FROZEN_NOW)
    for name in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE", "DAGSTER_HOME", "CB_BADINPUT_UNSET_VAR"):
        monkeypatch.delenv(name, raising=False)
    clear_discovery_cache()
    yield target
    clear_discovery_cache()


def cli(*argv: str) -> tuple[int, str]:
    """``main(argv)`` in process; (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def written(workdir: Path) -> list[str]:
    """Anything a command wrote besides the config file (stores, outputs, Dagster files)."""
    keep = {"config.yaml"}
    return sorted(
        str(p.relative_to(workdir))
        for p in workdir.rglob("*")
        if p.is_file() and p.name not in keep and p.relative_to(workdir).parts[0] != "ccloud"
    )


def _stays_inside(node: Any) -> bool:
    """No string that could point a valid run's stores or files outside the temporary tree."""
    if isinstance(node, dict):
        return all(_stays_inside(k) and _stays_inside(v) for k, v in node.items())
    if isinstance(node, list):
        return all(_stays_inside(v) for v in node)
    return not isinstance(node, str) or not (node.startswith(("/", "~", "\\")) or ".." in node)


def assert_clean_failure(code: int, output: str, config: Path, tenant: str | None) -> None:
    assert code == 1, output
    assert TRACEBACK not in output and "Stack Trace" not in output, output
    assert TRACEBACK_HINT not in output, output  # a config problem is not a bug
    first = output.strip().splitlines()[0]
    assert str(config) in first or config.name in first, output
    if tenant is not None:
        assert repr(tenant)[1:-1] in output or tenant in output, output


def check_mutation(workdir: Path, doc: dict[str, Any], path: KeyPath, *, run_valid: bool) -> None:
    # Each example starts from an empty work directory, whatever an earlier one left.
    for leftover in written(workdir):
        (workdir / leftover).unlink()
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    tenant = str(path[1]) if len(path) > 1 and path[0] == "tenants" else None
    code, output = cli("validate-config", str(config))
    assert code in (0, 1), output
    assert TRACEBACK not in output, output
    for command in ("check-config", "show-config"):
        other, other_output = cli(command, str(config))
        assert other == code, (command, other_output)
        assert TRACEBACK not in other_output, other_output
    if code == 1:
        assert_clean_failure(code, output, config, tenant)
        if tenant is not None and tenant in doc.get("tenants", {}):
            selected = [f"--tenant={tenant}"]
        else:
            selected = ["--tenant=postgres-prod"]
        run_code, run_output = cli("run", "--config", str(config), *selected, "--start=2026-03-05")
        assert run_code == 1, run_output
        assert TRACEBACK not in run_output, run_output
    elif run_valid and tenant in RUNNABLE and tenant in doc["tenants"] and _stays_inside(doc):
        run_code, run_output = cli(
            "run", "--config", str(config), "--tenant", tenant, "--start", "2026-03-05", "--end", "2026-03-05"
        )
        assert run_code in (0, 1), run_output
        assert TRACEBACK not in run_output and "Stack Trace" not in run_output, run_output
        for leftover in written(workdir):  # a valid run writes stores and files: start clean
            (workdir / leftover).unlink()
        return
    assert written(workdir) == []


FAST = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SLOW = settings(FAST, max_examples=250)


def test_the_unmutated_base_is_valid(workdir: Path) -> None:
    """Mutations start from a valid file, so a rejection is the mutation's doing."""
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(BASE, allow_unicode=True, sort_keys=False), encoding="utf-8")
    assert cli("validate-config", str(config)) == (0, "Config is valid.\n")


@pytest.mark.outcome("config-corpus")
@FAST
@given(mutation=mutations())
def test_generated_bad_configs_fail_clearly_and_write_nothing(
    workdir: Path, mutation: tuple[dict[str, Any], KeyPath, str]
) -> None:
    doc, path, _ = mutation
    check_mutation(workdir, doc, path, run_valid=False)


@pytest.mark.slow
@pytest.mark.outcome("config-corpus")
@SLOW
@given(mutation=mutations())
def test_generated_bad_configs_at_scale_and_valid_ones_run(
    workdir: Path, mutation: tuple[dict[str, Any], KeyPath, str]
) -> None:
    doc, path, _ = mutation
    check_mutation(workdir, doc, path, run_valid=True)


# --- hand-picked files ------------------------------------------------------------------------


def _demo_with(edit: str, replacement: str) -> bytes:
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    assert edit in text
    return text.replace(edit, replacement, 1).encode("utf-8")


REDIS = "      cluster_id: redis-cache-1\n"
NOT_YAML = pytest.mark.outcome("config-not-yaml")
WRONG_TYPE = pytest.mark.outcome("config-wrong-type")
HUGE = pytest.mark.outcome("config-huge-number")
UNICODE = pytest.mark.outcome("config-unicode")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            b"tenants: [unclosed\n", "Malformed YAML in 'config.yaml': ", marks=NOT_YAML, id="syntax"
        ),
        pytest.param(
            bytes(range(128, 256)),
            "Cannot read configuration file 'config.yaml': not UTF-8 text (byte 0: invalid start byte)",
            marks=NOT_YAML,
            id="binary",
        ),
        pytest.param(
            b"tenants:\n  a\x00b: {}\n",
            "Malformed YAML in 'config.yaml': unacceptable character #x0000",
            marks=NOT_YAML,
            id="nul-byte",
        ),
        pytest.param(
            b"- just\n- a list\n",
            "config.yaml: the top level must be a mapping, got list",
            marks=NOT_YAML,
            id="list",
        ),
        pytest.param(
            b"a: !!python/object:os.system x\n",
            "Malformed YAML in 'config.yaml': could not determine a constructor",
            marks=NOT_YAML,
            id="python-tag",
        ),
        pytest.param(
            b"tenants: 5\n",
            "config.yaml: tenants: must be a mapping, got int",
            marks=WRONG_TYPE,
            id="tenants",
        ),
        pytest.param(
            b'plugins_path: "a\\0b"\n',
            "config.yaml: plugins_path: not a usable path: embedded null byte",
            marks=WRONG_TYPE,
            id="nul-path",
        ),
        pytest.param(
            _demo_with("refresh_interval: 1800", "refresh_interval: " + "9" * 60),
            "config.yaml: features.refresh_interval: Input should be less than or equal to 316224000",
            marks=HUGE,
            id="refresh-interval",
        ),
        pytest.param(
            _demo_with(REDIS, REDIS + "      min_refresh_gap_seconds: 1000000000000000000000000000000\n"),
            "config.yaml: tenant 'redis-cache': plugin_settings.min_refresh_gap_seconds: "
            "Input should be less than or equal to 316224000",
            marks=HUGE,
            id="refresh-gap",
        ),
        pytest.param(
            _demo_with(REDIS, REDIS + "      granularity_durations: {weekly: 100000000000000000000}\n"),
            "config.yaml: tenant 'redis-cache': plugin_settings.granularity_durations.weekly: "
            "maximum is 87840 hours (ten years)",
            marks=HUGE,
            id="granularity",
        ),
        pytest.param(
            _demo_with(REDIS, REDIS + "      allocator_params: {weight: .nan, cap: 1.0e+400}\n"),
            "config.yaml: tenant 'redis-cache': plugin_settings.allocator_params: "
            "'weight' must be a finite number, got nan",
            marks=HUGE,
            id="nan-param",
        ),
        pytest.param(
            _demo_with('rate: "0.206"', 'rate: "1e400"'),
            "config.yaml: tenant 'redis-cache': plugin_settings.cost_types.0.rate: must be <= 1000000000000",
            marks=HUGE,
            id="huge-rate",
        ),
        pytest.param(
            _demo_with('rate: "0.206"', 'rate: "NaN"'),
            "config.yaml: tenant 'redis-cache': plugin_settings.cost_types.0.rate: "
            "must be a finite decimal number",
            marks=HUGE,
            id="nan-rate",
        ),
        pytest.param(
            _demo_with('rate: "0.206"', "rate: true"),
            "config.yaml: tenant 'redis-cache': plugin_settings.cost_types.0.rate: must be a decimal number",
            marks=WRONG_TYPE,
            id="bool-rate",
        ),
        pytest.param(
            _demo_with("count: 2}", "count: 100000000000000000000}"),
            "config.yaml: tenant 'redis-cache': plugin_settings.cost_types.0.cost_quantity.fixed.count: "
            "Input should be less than or equal to 1000000",
            marks=HUGE,
            id="huge-count",
        ),
        pytest.param(
            _demo_with("replay:", "timeout_seconds: .inf\n        replay:"),
            "config.yaml: tenant 'confluent-cloud': plugin_settings.ccloud_api.timeout_seconds: ",
            marks=HUGE,
            id="infinite-timeout",
        ),
        pytest.param(
            _demo_with("tenant_id: acme-redis", 'tenant_id: "acme\\ud800redis"'),
            "config.yaml: tenants.redis-cache.tenant_id: contains a lone UTF-16 surrogate",
            marks=UNICODE,
            id="lone-surrogate",
        ),
        pytest.param(
            _demo_with("  redis-cache:\n", "  rédis-😀:\n"),
            "config.yaml: tenant 'rédis-😀': invalid tenant name; it must match "
            "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$",
            marks=UNICODE,
            id="emoji-tenant",
        ),
        pytest.param(
            _demo_with("  redis-cache:\n", '  "redis\\u202e-cache":\n'),
            "config.yaml: tenant 'redis\\u202e-cache': invalid tenant name",
            marks=UNICODE,
            id="rtl-override-tenant",
        ),
        pytest.param(
            _demo_with("tenant_id: acme-redis", "tenant_id: ${CB_BADINPUT_UNSET_VAR}"),
            "Required environment variable 'CB_BADINPUT_UNSET_VAR' is not set "
            "(at tenants.redis-cache.tenant_id)",
            marks=WRONG_TYPE,
            id="unset-variable",
        ),
    ],
)
def test_hand_picked_bad_files_fail_with_one_clear_line(workdir: Path, content: bytes, expected: str) -> None:
    (workdir / "config.yaml").write_bytes(content)
    code, output = cli("validate-config", "config.yaml")
    assert code == 1, output
    assert expected in output, output
    assert TRACEBACK not in output
    assert written(workdir) == []


# --- the CLI itself ---------------------------------------------------------------------------


@pytest.mark.outcome("cli-unexpected-error")
@pytest.mark.parametrize("command", ["validate-config", "check-config", "show-config", "run"])
def test_an_unexpected_exception_is_one_line_and_a_hint(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """A bug inside a command (simulated: its handler divides by zero) is not a traceback."""
    handler = (
        "_run"
        if command == "run"
        else {"validate-config": "_validate", "check-config": "_check"}.get(command, "_show")
    )

    def broken(args: object) -> int:
        return 1 // 0

    monkeypatch.setattr(cli_module, handler, broken)
    code, output = cli(command, "--config", "config.yaml")
    assert code == 2
    assert output == (
        f"error: {command} failed unexpectedly: ZeroDivisionError: integer division or modulo by zero\n"
        f"{TRACEBACK_HINT}\n"
    )
    code, output = cli(command, "--config", "config.yaml", "--traceback")
    assert code == 2
    assert TRACEBACK in output and "ZeroDivisionError" in output  # only when asked for


@pytest.mark.outcome("cli-unexpected-error")
def test_an_unexpected_exception_in_a_real_process(workdir: Path) -> None:
    script = (
        "import sys; import chargeback_pipeline.cli as c\n"
        "def broken(args): raise KeyError('\\x1b[2Jboom')\n"
        "c._validate = broken\n"
        "sys.exit(c.main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "validate-config", "config.yaml"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"error: validate-config failed unexpectedly: KeyError: '\\x1b[2Jboom'\n{TRACEBACK_HINT}\n"
    )


@pytest.mark.outcome("config-missing-file")
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["validate-config", "nope.yaml"], "Configuration file not found: 'nope.yaml'\n"),
        (["validate-config", "ccloud"], "Cannot read configuration file 'ccloud': Is a directory\n"),
        (["run", "--config", "nope.yaml"], "demo/nope.yaml'\n"),
        (
            ["run", "--config", "config.yaml", "--start", "2026-02-30"],
            "error: --start '2026-02-30' is not a date",
        ),
    ],
    ids=["missing", "directory", "run-missing", "bad-date"],
)
def test_missing_file_directory_and_bad_dates_in_a_real_process(
    workdir: Path, argv: list[str], expected: str
) -> None:
    environment = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHARGEBACK_CONFIG")}
    environment["CHARGEBACK_NOW"] = FROZEN_NOW
    done = subprocess.run(
        [sys.executable, "-m", "chargeback_pipeline.cli", *argv],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert expected in done.stdout + done.stderr
    assert TRACEBACK not in done.stdout + done.stderr
    assert written(workdir) == []


@pytest.mark.outcome("config-unknown-key")
def test_unknown_keys_warn_with_their_path_and_are_ignored(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """config.md §1: unknown top-level and tenant keys (and `api`/`preview`) warn, never fail."""
    content = _demo_with("logging:\n", "api: {port: 1}\nlogging:\n").decode() + "vérbose: true\n"
    content = content.replace("    lookback_days: 8\n", "    lookback_day: 3\n    lookback_days: 8\n", 1)
    (workdir / "config.yaml").write_text(content, encoding="utf-8")
    with caplog.at_level("WARNING"):
        code, output = cli("validate-config", "config.yaml")
    assert (code, output) == (0, "Config is valid.\n")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("tenants.confluent-cloud.lookback_day" in w for w in warnings), warnings
    assert any("'api'" in w or " api" in w for w in warnings), warnings
    assert any("vérbose" in w for w in warnings), warnings


@pytest.mark.outcome("config-unknown-key")
def test_unknown_keys_where_settings_are_strict_are_errors(workdir: Path) -> None:
    """Emitter params and static identities are closed sets: a typo there is an error, named."""
    metrics = "            output_dir: out/metrics\n"
    content = _demo_with(metrics, metrics + "            colour: red\n").decode()
    content = content.replace("display_name: Orders service}", "display_name: Orders service, tema: x}")
    (workdir / "config.yaml").write_text(content, encoding="utf-8")
    code, output = cli("validate-config", "config.yaml")
    assert code == 1
    assert "config.yaml: tenant 'postgres-prod': plugin_settings" in output
    assert "colour" in output and "tema" in output, output


@pytest.mark.outcome("config-unicode")
@pytest.mark.parametrize("placeholder", ["${CCLOUD_API_SECRET}", "${CCLOUD_API_SECRET:-offline-demo}"])
def test_an_environment_value_that_is_not_utf8_is_named_without_its_value(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, placeholder: str
) -> None:
    """Python hands non-UTF-8 environment bytes over as lone surrogates, which used to
    reach the vendor client and fail there; the variable is named, its value never shown."""
    config = workdir / "config.yaml"
    config.write_text(
        config.read_text(encoding="utf-8").replace("${CCLOUD_API_SECRET:-offline-demo}", placeholder)
    )
    monkeypatch.setitem(os.environb, b"CCLOUD_API_SECRET", b"s3cr\xffet")
    assert os.environ["CCLOUD_API_SECRET"] == "s3cr\udcffet"
    code, output = cli("validate-config", "config.yaml")
    assert code == 1
    assert (
        "config.yaml: tenant 'confluent-cloud': plugin_settings.ccloud_api.secret: Required environment "
        "variable 'CCLOUD_API_SECRET' is not valid UTF-8 text (at tenants.confluent-cloud.plugin_settings."
        "ccloud_api.secret)"
    ) in output, output
    assert "s3cr" not in output
    monkeypatch.setitem(os.environb, b"CCLOUD_API_SECRET", b"s3cret")
    assert cli("validate-config", "config.yaml")[0] == 0


@pytest.mark.outcome("config-not-yaml")
@pytest.mark.parametrize(
    ("env_file", "expected"),
    [
        (bytes(range(200, 256)), "Cannot read env file '{env}': not UTF-8 text (byte 0)\n"),
        (b"A=x\x00y\n", "{env}:1: the value of A contains a NUL byte\n"),
        (b"\x1b[2J=1\n", "{env}:1: expected KEY=VALUE\n"),
    ],
    ids=["binary", "nul-value", "ansi-key"],
)
def test_a_bad_env_file_beside_the_config_is_named(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, env_file: bytes, expected: str
) -> None:
    (workdir / ".env").write_bytes(env_file)
    monkeypatch.delenv("A", raising=False)
    code, output = cli("validate-config", "config.yaml")
    assert (code, output) == (1, expected.format(env=workdir / ".env"))
    assert "A" not in os.environ


@pytest.mark.outcome("cli-unexpected-error")
def test_a_failing_step_in_a_real_run_is_one_line_without_a_stack_trace(workdir: Path) -> None:
    """The store path is a directory: the partition fails in ``billing_lines``, named in one line."""
    text = (workdir / "config.yaml").read_text(encoding="utf-8")
    (workdir / "config.yaml").write_text(text.replace("path: data/redis-cache.duckdb", "path: ccloud"))
    environment = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHARGEBACK_CONFIG")}
    environment["CHARGEBACK_NOW"] = FROZEN_NOW
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chargeback_pipeline.cli",
            "run",
            "--tenant=redis-cache",
            "--start=2026-03-05",
        ],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    # One line for the range run, then each date retried alone fails on its own line.
    lines = done.stdout.splitlines()
    assert sum("one run over 3 date(s): FAILED" in line for line in lines) == 1, output
    failed = [line for line in lines if line.startswith("  2026-") and "FAILED" in line]
    assert [line.split()[0] for line in failed] == ["2026-03-05", "2026-03-06", "2026-03-07"], output
    assert "billing_lines: TenantStepError: tenant 'redis-cache': StorageError" in failed[0], output
    assert all("billing_lines: " in line and "Is a directory" in line for line in failed), output
    assert TRACEBACK not in output and "Stack Trace" not in output and 'File "' not in output, output
    assert "hint: re-run with -v for the failing steps' stack traces" in done.stderr


@pytest.mark.outcome("config-huge-number")
@pytest.mark.parametrize(
    ("rate", "message"),
    [
        ("-0.5", "must be >= 0"),
        ("NaN", "must be a finite decimal number"),
        ("-Infinity", "must be a finite decimal number"),
        ("1e400", "must be <= 1000000000000"),
        (True, "must be a decimal number"),
        ("0,50", "must be a decimal number"),
    ],
)
def test_bad_self_managed_kafka_rates_name_the_rate(workdir: Path, rate: object, message: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["tenants"]["kafka-onprem"]["plugin_settings"]["cost_model"]["region_overrides"]["eu-west-1"] = {
        "network_egress_per_gib": rate
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    code, output = cli("validate-config", "config.yaml")
    assert (code, output) == (
        1,
        "config.yaml: tenant 'kafka-onprem': "
        f"plugin_settings.cost_model.region_overrides.eu-west-1.network_egress_per_gib: {message}\n",
    )


@pytest.mark.outcome("config-missing-file")
@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("0001-01-01", "9999-12-31", "date 0001-01-01 is not allowed: retention_days=90"),
        ("2026-03-05", "9999-12-31", "date 9999-12-31 is not allowed: cutoff_days=1"),
        ("2026-03-05", "2026-03-04", "--end 2026-03-04 is before --start 2026-03-05"),
        ("2026-3-5", "2026-03-06", "--start '2026-3-5' is not a date (YYYY-MM-DD)"),
    ],
)
def test_absurd_date_ranges_are_refused_at_once(workdir: Path, start: str, end: str, expected: str) -> None:
    """Both ends are checked before the dates are listed: the error names ``--end`` itself."""
    code, output = cli(
        "run", "--config", "config.yaml", "--tenant=redis-cache", f"--start={start}", f"--end={end}"
    )
    assert code == 1
    assert output.startswith("error: ") and expected in output, output
    assert written(workdir) == []


@pytest.mark.outcome("config-unicode")
@pytest.mark.parametrize(
    ("field", "message"),
    [
        (("storage", "path"), "storage.path: the path contains a NUL byte"),
        (
            ("plugin_settings", "emitters", 0, "params", "output_dir"),
            "params.output_dir: '{dir}/a\\x00b' contains a NUL byte",
        ),
    ],
)
def test_a_nul_byte_in_a_path_is_a_config_error_naming_the_field(
    workdir: Path, field: tuple[str | int, ...], message: str
) -> None:
    # Found by the slow corpus: the OS refused these later with a bare "embedded null byte".
    doc = copy.deepcopy(DEMO)
    node: Any = doc["tenants"]["postgres-prod"]
    for key in field[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[field[-1]] = "a\x00b"
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    before = written(workdir)
    code, output = cli("validate-config", str(config))
    assert code == 1, output
    assert "tenant 'postgres-prod': " in output, output
    assert message.format(dir=workdir) in output, output
    assert written(workdir) == before
