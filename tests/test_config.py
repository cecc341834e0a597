"""Configuration loading (config.md), environment substitution and the date windows (operations.md §1)."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, SecretStr, ValidationError

from chargeback_pipeline import clock
from chargeback_pipeline.config import (
    LoadedConfig,
    PluginSettingsBase,
    load_config,
    parse_env_file,
    resolved_settings,
    substitute_env,
    substitute_string,
)
from chargeback_pipeline.emitters import registry as emitter_registry
from chargeback_pipeline.errors import ConfigError, DateOutOfRangeError, PluginConfigError
from chargeback_pipeline.loader import PluginRegistry

# --- helpers ----------------------------------------------------------------------------


class FakeApi(BaseModel):
    url: str
    key: str | None = None
    secret: SecretStr | None = None


class FakeSettings(PluginSettingsBase):
    api: FakeApi | None = None
    signing_key: SecretStr | None = None


class FakePlugin:
    """Only what config validation touches: ``validate_settings`` and ``settings_model``."""

    ecosystem = "fake"
    settings_model = FakeSettings
    seen: list[dict[str, Any]] = []

    def validate_settings(self, config: dict[str, Any]) -> None:
        FakePlugin.seen.append(config)
        try:
            FakeSettings.model_validate(config)
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            raise PluginConfigError(".".join(str(p) for p in first["loc"]), first["msg"]) from None


def fake_registry(load_errors: list[str] | None = None) -> PluginRegistry:
    return PluginRegistry(factories={"fake": FakePlugin}, load_errors=list(load_errors or []))  # type: ignore[dict-item]


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, **kwargs: Any) -> LoadedConfig:
    return load_config(write(tmp_path, text), registry=fake_registry(), **kwargs)


def unset(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Remove variables for this test only (setenv first so undo restores the original state)."""
    for name in names:
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)


def tenant_yaml(body: str = "", name: str = "acme") -> str:
    lines = textwrap.indent(textwrap.dedent(body).strip(), "    ") if body.strip() else ""
    return f"tenants:\n  {name}:\n    ecosystem: fake\n    tenant_id: {name}-id\n{lines}\n"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    unset(monkeypatch, "CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE", "CHARGEBACK_NOW")
    FakePlugin.seen = []


# --- §2 environment substitution --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A}", {"A": ""}, ""),
        ("${A:-dflt}", {}, "dflt"),
        ("${A:-dflt}", {"A": ""}, "dflt"),
        ("${A:-dflt}", {"A": "set"}, "set"),
        ("${A:-}", {}, ""),
        ("${A:-http://h:9090/p}", {}, "http://h:9090/p"),
        ("pre-${A}-mid-${B:-b}-post", {"A": "a"}, "pre-a-mid-b-post"),
        ("${A}${A}", {"A": "z"}, "zz"),
        ("$A and $B stay", {"A": "x"}, "$A and $B stay"),
        ("${A", {"A": "x"}, "${A"),
        ("no placeholders", {}, "no placeholders"),
    ],
)
def test_substitute_string_table(text: str, env: dict[str, str], expected: str) -> None:
    assert substitute_string(text, "k", env) == expected


def test_substitute_unset_variable_is_an_error_with_the_key_path() -> None:
    tree = {"tenants": {"acme": {"plugin_settings": {"ccloud_api": {"key": "${CCLOUD_API_KEY}"}}}}}
    _, _, errors = substitute_env(tree, env={})
    assert errors == [
        "Required environment variable 'CCLOUD_API_KEY' is not set "
        "(at tenants.acme.plugin_settings.ccloud_api.key)"
    ]


def test_substitute_env_walks_lists_keeps_keys_and_non_strings() -> None:
    tree = {"${K}": ["${V}", 3, {"n": "${V:-d}"}], "flag": True, "none": None}
    result, placeholders, errors = substitute_env(tree, env={"K": "kk", "V": "vv"})
    assert result == {"${K}": ["vv", 3, {"n": "vv"}], "flag": True, "none": None}
    assert placeholders == {("${K}", 0), ("${K}", 2, "n")}
    assert errors == []


def test_several_missing_variables_are_all_reported() -> None:
    _, _, errors = substitute_env({"a": "${X1}", "b": ["${X2}"]}, env={})
    assert errors == [
        "Required environment variable 'X1' is not set (at a)",
        "Required environment variable 'X2' is not set (at b.0)",
    ]


# --- .env files ----------------------------------------------------------------------------


def test_env_file_parser(tmp_path: Path) -> None:
    env = write(
        tmp_path,
        """
        # comment
        export A=1
        B = two words # trailing comment
        C="quoted # not a comment"
        D='single'
        E=
        """,
        name=".env",
    )
    assert parse_env_file(env) == {
        "A": "1",
        "B": "two words",
        "C": "quoted # not a comment",
        "D": "single",
        "E": "",
    }


def test_env_file_bad_line_names_file_and_line(tmp_path: Path) -> None:
    env = write(tmp_path, "A=1\nthis is not an assignment\n", name=".env")
    with pytest.raises(ConfigError, match=r"\.env:2: expected KEY=VALUE"):
        parse_env_file(env)


def test_dotenv_next_to_config_is_loaded_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unset(monkeypatch, "CB_TEST_TENANT_ID", "CB_TEST_LOOKBACK")
    monkeypatch.setenv("CB_TEST_LOOKBACK", "40")
    write(tmp_path, "CB_TEST_TENANT_ID=from-dotenv\nCB_TEST_LOOKBACK=99\n", name=".env")
    loaded = load(
        tmp_path,
        """
        tenants:
          acme:
            ecosystem: fake
            tenant_id: ${CB_TEST_TENANT_ID}
            lookback_days: ${CB_TEST_LOOKBACK}
        """,
    )
    assert loaded.tenants["acme"].tenant_id == "from-dotenv"
    assert loaded.tenants["acme"].lookback_days == 40


def test_chargeback_env_file_overrides_the_default_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unset(monkeypatch, "CB_TEST_TENANT_ID")
    write(tmp_path, "CB_TEST_TENANT_ID=from-default\n", name=".env")
    other = write(tmp_path, "CB_TEST_TENANT_ID=from-explicit\n", name="explicit.env")
    monkeypatch.setenv("CHARGEBACK_ENV_FILE", str(other))
    loaded = load(tmp_path, "tenants:\n  acme: {ecosystem: fake, tenant_id: '${CB_TEST_TENANT_ID}'}\n")
    assert loaded.tenants["acme"].tenant_id == "from-explicit"


def test_missing_explicit_env_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARGEBACK_ENV_FILE", str(tmp_path / "nope.env"))
    with pytest.raises(ConfigError, match=r"CHARGEBACK_ENV_FILE names .*nope\.env', which is not a file"):
        load(tmp_path, "{}")


# --- §1 loading -------------------------------------------------------------------------------


def test_default_path_comes_from_chargeback_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, tenant_yaml(), name="custom.yaml")
    monkeypatch.setenv("CHARGEBACK_CONFIG", str(path))
    loaded = load_config(registry=fake_registry())
    assert loaded.path == path.resolve()
    assert list(loaded.tenants) == ["acme"]


def test_default_path_is_config_yaml_in_the_working_directory(tmp_path: Path) -> None:
    write(tmp_path, tenant_yaml())
    loaded = load_config(registry=fake_registry())
    assert loaded.path == (tmp_path / "config.yaml").resolve()
    assert loaded.display_path == "config.yaml"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^Configuration file not found: 'missing\.yaml'$"):
        load_config("missing.yaml", registry=fake_registry())


def test_malformed_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "tenants:\n  acme: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, registry=fake_registry())
    assert str(info.value).startswith(f"Malformed YAML in '{path}': ")
    assert "line 3" in str(info.value)
    assert len(info.value.errors) == 1


def test_empty_file_gives_defaults_and_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chargeback_pipeline.config"):
        loaded = load(tmp_path, "")
    assert loaded.tenants == {} and loaded.tenant_errors == {}
    assert loaded.settings.logging.level == "INFO"
    assert loaded.settings.features.refresh_interval == 1800
    assert loaded.settings.features.max_parallel_tenants == 4
    assert loaded.settings.features.enable_periodic_refresh is True
    assert loaded.settings.plugins_path is None
    assert loaded.warnings == [f"{tmp_path / 'config.yaml'}: no tenants configured"]
    assert "no tenants configured" in caplog.text


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping, got list"):
        load_config(path, registry=fake_registry())


def test_unknown_keys_warn_with_their_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = """
        api: {port: 1}
        preview: true
        features: {refresh_interval: 60, turbo: true}
        tenants:
          acme:
            ecosystem: fake
            tenant_id: acme
            lookback_day: 3
            storage: {size: 1}
            plugin_settings: {own_key: 1}
        """
    with caplog.at_level(logging.WARNING, logger="chargeback_pipeline.config"):
        loaded = load(tmp_path, text)
    display = str(tmp_path / "config.yaml")
    assert loaded.warnings == [
        f"{display}: unknown key 'api' ignored",
        f"{display}: unknown key 'preview' ignored",
        f"{display}: unknown key 'features.turbo' ignored",
        f"{display}: unknown key 'tenants.acme.lookback_day' ignored",
        f"{display}: unknown key 'tenants.acme.storage.size' ignored",
    ]
    assert "tenants.acme.lookback_day" in caplog.text
    assert loaded.tenants["acme"].lookback_days == 200


# --- §3 top-level settings ---------------------------------------------------------------------


def test_top_level_settings_are_validated_and_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        logging: {level: verbose}
        features: {refresh_interval: 0, max_parallel_tenants: 65}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, registry=fake_registry())
    assert info.value.errors == [
        f"{path}: logging.level: must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG",
        f"{path}: features.refresh_interval: Input should be greater than 0",
        f"{path}: features.max_parallel_tenants: Input should be less than or equal to 64",
    ]
    assert str(info.value) == "\n".join(info.value.errors)


def test_logging_levels_are_upper_cased(tmp_path: Path) -> None:
    loaded = load(tmp_path, "logging: {level: debug, per_module_levels: {httpx: warning}}\n")
    assert loaded.settings.logging.level == "DEBUG"
    assert loaded.settings.logging.per_module_levels == {"httpx": "WARNING"}


def test_missing_variable_in_top_level_section_invalidates_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unset(monkeypatch, "CB_TEST_INTERVAL")
    path = write(tmp_path, "features: {refresh_interval: '${CB_TEST_INTERVAL}'}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, registry=fake_registry())
    assert info.value.errors == [
        f"{path}: Required environment variable 'CB_TEST_INTERVAL' is not set (at features.refresh_interval)"
    ]


def test_plugins_path_is_resolved_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "conf" / "plugins").mkdir(parents=True)
    path = write(tmp_path / "conf", "plugins_path: ./plugins\n")
    loaded = load_config(path, registry=fake_registry())
    assert loaded.settings.plugins_path == (tmp_path / "conf" / "plugins").resolve()


def test_plugins_path_that_is_not_a_directory_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "plugins_path: nowhere\n")
    with pytest.raises(ConfigError, match=r"plugins_path: '.*nowhere' is not a directory"):
        load_config(path, registry=fake_registry())


# --- §4 tenants ------------------------------------------------------------------------------------


def test_tenant_defaults(tmp_path: Path) -> None:
    tenant = load(tmp_path, tenant_yaml()).tenants["acme"]
    assert (tenant.ecosystem, tenant.tenant_id, tenant.name) == ("fake", "acme-id", "acme")
    assert (tenant.lookback_days, tenant.cutoff_days, tenant.retention_days) == (200, 5, 250)
    assert tenant.allocation_retry_limit == 3
    assert tenant.zero_gather_deletion_threshold == -1
    assert tenant.gather_failure_threshold == 5
    assert tenant.tenant_execution_timeout_seconds == 3600
    assert tenant.metrics_prefetch_workers == 4
    assert tenant.storage.backend == "duckdb"
    assert tenant.storage_path == (tmp_path / "data" / "acme.duckdb").resolve()
    base = tenant.plugin_settings
    assert base.allocator_params == {} and base.emitters == []
    assert base.min_refresh_gap_seconds == 1800
    assert base.metrics_step_seconds == 3600
    assert base.chargeback_granularity == "daily"
    assert tenant.plugin_settings_dict() == {}


LIMIT_CASES = [
    ("lookback_days: 0", "lookback_days: Input should be greater than or equal to 1"),
    ("lookback_days: 365", "lookback_days: Input should be less than or equal to 364"),
    ("cutoff_days: 0", "cutoff_days: Input should be greater than or equal to 1"),
    ("cutoff_days: 31", "cutoff_days: Input should be less than or equal to 30"),
    ("retention_days: 0", "retention_days: Input should be greater than or equal to 1"),
    ("retention_days: 731", "retention_days: Input should be less than or equal to 730"),
    ("allocation_retry_limit: 0", "allocation_retry_limit: Input should be greater than or equal to 1"),
    ("allocation_retry_limit: 11", "allocation_retry_limit: Input should be less than or equal to 10"),
    (
        "zero_gather_deletion_threshold: -2",
        "zero_gather_deletion_threshold: Input should be greater than or equal to -1",
    ),
    ("gather_failure_threshold: 0", "gather_failure_threshold: Input should be greater than or equal to 1"),
    (
        "tenant_execution_timeout_seconds: -1",
        "tenant_execution_timeout_seconds: Input should be greater than or equal to 0",
    ),
    ("metrics_prefetch_workers: 0", "metrics_prefetch_workers: Input should be greater than or equal to 1"),
    ("metrics_prefetch_workers: 21", "metrics_prefetch_workers: Input should be less than or equal to 20"),
    (
        "lookback_days: abc",
        "lookback_days: Input should be a valid integer, unable to parse string as an integer",
    ),
    (
        "lookback_days: 3.5",
        "lookback_days: Input should be a valid integer, got a number with a fractional part",
    ),
    ("lookback_days: true", "lookback_days: Input should be a valid integer, not a boolean"),
    ("cutoff_days: 10\nlookback_days: 10", "lookback_days: lookback_days must be > cutoff_days"),
    ("lookback_days: 100\nretention_days: 99", "retention_days: retention_days must be >= lookback_days"),
    ("retention_days: 150", "retention_days: retention_days must be >= lookback_days"),
    ("lookback_days: 4", "lookback_days: lookback_days must be > cutoff_days"),
    ("storage: {backend: sqlite}", "storage.backend: Input should be 'duckdb'"),
    ("tenant_id: '  '", "tenant_id: must not be empty"),
    ("plugin_settings: [1]", "plugin_settings: must be a mapping, got list"),
]


@pytest.mark.parametrize(("body", "message"), LIMIT_CASES)
def test_tenant_limits(tmp_path: Path, body: str, message: str) -> None:
    loaded = load(tmp_path, tenant_yaml(body))
    assert loaded.tenants == {}
    assert loaded.tenant_errors == {"acme": [f"{tmp_path / 'config.yaml'}: tenant 'acme': {message}"]}


@pytest.mark.parametrize(
    "body",
    [
        "cutoff_days: 30\nlookback_days: 31\nretention_days: 31",
        "cutoff_days: 1\nlookback_days: 364\nretention_days: 730",
        "zero_gather_deletion_threshold: -1\ntenant_execution_timeout_seconds: 0",
        "allocation_retry_limit: 10\nmetrics_prefetch_workers: 20",
    ],
)
def test_tenant_limit_boundaries_are_accepted(tmp_path: Path, body: str) -> None:
    loaded = load(tmp_path, tenant_yaml(body))
    assert loaded.tenant_errors == {}
    assert list(loaded.tenants) == ["acme"]


def test_missing_required_fields(tmp_path: Path) -> None:
    loaded = load(tmp_path, "tenants:\n  acme: {}\n")
    prefix = f"{tmp_path / 'config.yaml'}: tenant 'acme'"
    assert loaded.tenant_errors["acme"] == [
        f"{prefix}: ecosystem: Field required",
        f"{prefix}: tenant_id: Field required",
    ]


def test_substituted_strings_are_coerced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_TEST_LOOKBACK", "30")
    tenant = load(tmp_path, tenant_yaml("lookback_days: ${CB_TEST_LOOKBACK}")).tenants["acme"]
    assert tenant.lookback_days == 30


@pytest.mark.parametrize("name", ["bad name", "-leading-dash", "x" * 64, "dots.not.allowed", "ünïcode"])
def test_invalid_tenant_names_exclude_only_that_tenant(tmp_path: Path, name: str) -> None:
    text = tenant_yaml() + f"  '{name}':\n    ecosystem: fake\n    tenant_id: t\n"
    loaded = load(tmp_path, text)
    assert list(loaded.tenants) == ["acme"]
    assert loaded.tenant_errors == {
        name: [
            f"{tmp_path / 'config.yaml'}: tenant '{name}': invalid tenant name; "
            "it must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
        ]
    }


def test_longest_valid_tenant_name(tmp_path: Path) -> None:
    name = "A" + "b_-" * 20 + "xy"
    assert len(name) == 63
    assert list(load(tmp_path, tenant_yaml(name=name)).tenants) == [name]


def test_two_tenants_on_one_file_are_both_excluded(tmp_path: Path) -> None:
    text = """
        tenants:
          one: {ecosystem: fake, tenant_id: a, storage: {path: shared.duckdb}}
          two: {ecosystem: fake, tenant_id: b, storage: {path: ./sub/../shared.duckdb}}
          three: {ecosystem: fake, tenant_id: c}
        """
    loaded = load(tmp_path, text)
    shared = (tmp_path / "shared.duckdb").resolve()
    display = str(tmp_path / "config.yaml")
    assert list(loaded.tenants) == ["three"]
    assert loaded.tenant_errors == {
        "one": [
            f"{display}: tenant 'one': storage.path: '{shared}' is also used by tenant 'two'; "
            "each tenant needs its own file"
        ],
        "two": [
            f"{display}: tenant 'two': storage.path: '{shared}' is also used by tenant 'one'; "
            "each tenant needs its own file"
        ],
    }


def test_missing_variable_excludes_only_its_tenant_and_other_errors_are_still_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unset(monkeypatch, "CB_TEST_SECRET")
    text = """
        tenants:
          acme:
            ecosystem: fake
            tenant_id: acme
            cutoff_days: 99
            plugin_settings: {api: {url: http://x, secret: '${CB_TEST_SECRET}'}}
          other: {ecosystem: fake, tenant_id: other}
        """
    loaded = load(tmp_path, text)
    prefix = f"{tmp_path / 'config.yaml'}: tenant 'acme'"
    assert list(loaded.tenants) == ["other"]
    assert loaded.tenant_errors["acme"] == [
        f"{prefix}: plugin_settings.api.secret: Required environment variable 'CB_TEST_SECRET' is not set "
        "(at tenants.acme.plugin_settings.api.secret)",
        f"{prefix}: cutoff_days: Input should be less than or equal to 30",
    ]


def test_errors_of_all_tenants_are_collected(tmp_path: Path) -> None:
    text = """
        tenants:
          a: {ecosystem: fake, tenant_id: a, cutoff_days: 0}
          b: {ecosystem: fake, tenant_id: b}
          c: {ecosystem: fake, tenant_id: c, lookback_days: x}
        """
    loaded = load(tmp_path, text)
    assert list(loaded.tenants) == ["b"]
    assert [e.split(": ", 2)[1] for e in loaded.errors] == ["tenant 'a'", "tenant 'c'"]
    assert loaded.tenant_names() == ["b", "a", "c"]


def test_validation_messages_never_echo_values(tmp_path: Path) -> None:
    text = tenant_yaml(
        """
        lookback_days: hunter2-secret
        plugin_settings:
          allocator_params: {ratio: [hunter2-in-a-list]}
          api: {url: [hunter2-url]}
        """
    )
    loaded = load(tmp_path, text)
    errors = loaded.tenant_errors["acme"]
    assert not any("hunter2" in e or "input_value" in e for e in errors)
    prefix = f"{tmp_path / 'config.yaml'}: tenant 'acme'"
    # The fake plugin reports only its first problem (allocator_params), which the core
    # already reported for the same path, so it is not repeated.
    assert errors == [
        f"{prefix}: lookback_days: Input should be a valid integer, unable to parse string as an integer",
        f"{prefix}: plugin_settings.allocator_params: 'ratio' must be a number, string or boolean, got list",
    ]
    loaded = load(tmp_path, tenant_yaml("plugin_settings: {api: {url: [hunter2-url]}}"))
    assert loaded.tenant_errors["acme"] == [
        f"{prefix}: plugin_settings.api.url: Input should be a valid string"
    ]


# --- §5 plugin settings base and emitters ---------------------------------------------------------


def test_plugin_settings_base_fields(tmp_path: Path) -> None:
    text = tenant_yaml(
        """
        plugin_settings:
          allocator_params: {kafka_cku_usage_ratio: 0.7, label: x, flag: true, n: 3}
          granularity_durations: {weekly: 168}
          min_refresh_gap_seconds: 0
          metrics_step_seconds: 600
          chargeback_granularity: hourly
          own_setting: kept for the plugin
        """
    )
    tenant = load(tmp_path, text).tenants["acme"]
    base = tenant.plugin_settings
    assert base.allocator_params == {"kafka_cku_usage_ratio": 0.7, "label": "x", "flag": True, "n": 3}
    assert base.granularity_durations == {"weekly": 168}
    assert (base.min_refresh_gap_seconds, base.metrics_step_seconds) == (0, 600)
    assert base.chargeback_granularity == "hourly"
    assert tenant.plugin_settings_dict()["own_setting"] == "kept for the plugin"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "granularity_durations: {weekly: 0}",
            "plugin_settings.granularity_durations.weekly: minimum is 1 hour",
        ),
        ("metrics_step_seconds: 0", "plugin_settings.metrics_step_seconds: Input should be greater than 0"),
        (
            "min_refresh_gap_seconds: -1",
            "plugin_settings.min_refresh_gap_seconds: Input should be greater than or equal to 0",
        ),
        (
            "chargeback_granularity: weekly",
            "plugin_settings.chargeback_granularity: Input should be 'hourly', 'daily' or 'monthly'",
        ),
        ("allocator_overrides: {X: ''}", "plugin_settings.allocator_overrides.X: must not be empty"),
    ],
)
def test_plugin_settings_base_limits(tmp_path: Path, body: str, message: str) -> None:
    loaded = load(tmp_path, tenant_yaml("plugin_settings:\n" + textwrap.indent(body, "  ")))
    assert loaded.tenant_errors["acme"] == [f"{tmp_path / 'config.yaml'}: tenant 'acme': {message}"]


def test_metrics_step_that_does_not_divide_a_day_warns(tmp_path: Path) -> None:
    loaded = load(tmp_path, tenant_yaml("plugin_settings: {metrics_step_seconds: 7000}"))
    assert "acme" in loaded.tenants
    assert loaded.warnings == [
        f"{tmp_path / 'config.yaml'}: tenant 'acme': plugin_settings.metrics_step_seconds: "
        "7000 does not divide a day (86400 s); metric windows will not align with days"
    ]


@pytest.fixture
def test_emitter() -> Any:
    """A throw-away emitter type whose params validator accepts only ``output_dir``/``prefix``."""

    def validate(params: Mapping[str, Any]) -> None:
        unknown = sorted(set(params) - {"output_dir", "prefix"})
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}")

    def factory(**params: Any) -> Any:
        return lambda tenant_id, d, rows: None

    factory.validate_params = validate  # type: ignore[attr-defined]
    emitter_registry.register("cfgtest", factory)
    yield factory
    emitter_registry.unregister("cfgtest")


def test_emitter_specs_defaults_and_output_dir_resolution(tmp_path: Path, test_emitter: Any) -> None:
    text = tenant_yaml(
        """
        plugin_settings:
          emitters:
            - {type: cfgtest, params: {output_dir: out/csv}}
            - type: cfgtest
              name: second
              aggregation: monthly
              lookback_days: 7
              params: {output_dir: /abs}
        """
    )
    tenant = load(tmp_path, text).tenants["acme"]
    first, second = tenant.plugin_settings.emitters
    assert (first.name, first.type, first.aggregation, first.lookback_days) == (
        "cfgtest",
        "cfgtest",
        None,
        None,
    )
    assert first.params == {"output_dir": str(tmp_path / "out" / "csv")}
    assert (second.name, second.aggregation, second.lookback_days) == ("second", "monthly", 7)
    assert second.params == {"output_dir": "/abs"}
    assert tenant.plugin_settings_dict()["emitters"][0]["params"]["output_dir"] == str(
        tmp_path / "out" / "csv"
    )


def test_duplicate_emitter_names_and_too_fine_aggregation(tmp_path: Path, test_emitter: Any) -> None:
    text = tenant_yaml(
        """
        plugin_settings:
          emitters:
            - {type: cfgtest}
            - {type: cfgtest, aggregation: hourly}
        """
    )
    loaded = load(tmp_path, text)
    assert loaded.tenant_errors["acme"] == [
        f"{tmp_path / 'config.yaml'}: tenant 'acme': plugin_settings.emitters: duplicate emitter name "
        "'cfgtest': entries 0 (type 'cfgtest') and 1 (type 'cfgtest'); set a distinct 'name'; "
        "entry 1 ('cfgtest'): aggregation 'hourly' is finer than chargeback_granularity 'daily'"
    ]


@pytest.mark.parametrize(
    ("granularity", "aggregation", "ok"),
    [
        ("hourly", "hourly", True),
        ("hourly", "monthly", True),
        ("daily", "daily", True),
        ("daily", "hourly", False),
        ("monthly", "daily", False),
        ("monthly", "monthly", True),
    ],
)
def test_aggregation_levels(
    tmp_path: Path, test_emitter: Any, granularity: str, aggregation: str, ok: bool
) -> None:
    text = tenant_yaml(
        f"""
        plugin_settings:
          chargeback_granularity: {granularity}
          emitters: [{{type: cfgtest, aggregation: {aggregation}}}]
        """
    )
    loaded = load(tmp_path, text)
    assert ("acme" in loaded.tenants) is ok


def test_emitter_params_are_validated_by_the_registry(tmp_path: Path, test_emitter: Any) -> None:
    text = tenant_yaml(
        """
        plugin_settings:
          emitters:
            - {type: cfgtest, name: mine, params: {colour: red}}
            - {type: no_such_emitter}
            - {type: cfgtest, name: third, params: {storage_backend: x}}
        """
    )
    errors = load(tmp_path, text).tenant_errors["acme"]
    prefix = f"{tmp_path / 'config.yaml'}: tenant 'acme': plugin_settings.emitters"
    assert errors[0] == (
        f"{prefix}.2.params: params.storage_backend is supplied by the pipeline and must not be configured"
    )
    # The registry checks run once the model is valid; fix entry 2 and look again.
    text = text.replace("params: {storage_backend: x}", "params: {}")
    errors = load(tmp_path, text).tenant_errors["acme"]
    assert errors[0] == f"{prefix}.0: emitter 'mine': unknown parameter(s) colour"
    assert errors[1].startswith(
        f"{prefix}.1: emitter 'no_such_emitter': Unknown emitter type 'no_such_emitter'."
    )
    assert "cfgtest" in errors[1]
    assert len(errors) == 2


def test_file_emitters_are_checked_against_the_tenant_at_load(tmp_path: Path) -> None:
    """Unsafe tenant ids in file names and unwritable output directories exclude the tenant."""
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    text = (
        "tenants:\n"
        "  acme:\n"
        "    ecosystem: fake\n"
        "    tenant_id: ../evil\n"
        "    plugin_settings:\n"
        "      emitters:\n"
        "        - {type: csv, params: {output_dir: out}}\n"
        "        - type: csv\n"
        "          name: by_name\n"
        "          params: {output_dir: out, filename_template: '{tenant_name}/{date}.csv'}\n"
        "        - {type: prometheus, params: {output_dir: a-file/metrics}}\n"
    )
    errors = load(tmp_path, text).tenant_errors["acme"]
    prefix = f"{tmp_path / 'config.yaml'}: tenant 'acme': plugin_settings.emitters"
    assert errors == [
        f"{prefix}.0: emitter 'csv': {{tenant_id}} in filename template '{{tenant_id}}_{{date}}.csv' "
        "would be '../evil', which cannot be used in a file name: it contains '/'",
        f"{prefix}.2: emitter 'prometheus': {{tenant_id}} in filename template '{{tenant_id}}.om' would be "
        "'../evil', which cannot be used in a file name: it contains '/'",
    ]
    # A control character (here an escape sequence) would land in the file name too.
    errors = load(tmp_path, text.replace("tenant_id: ../evil", 'tenant_id: "acme\\e[2J"')).tenant_errors[
        "acme"
    ]
    assert errors[0] == (
        f"{prefix}.0: emitter 'csv': {{tenant_id}} in filename template '{{tenant_id}}_{{date}}.csv' "
        "would be 'acme\\x1b[2J', which cannot be used in a file name: "
        "it contains the control character U+001B"
    )
    text = text.replace("tenant_id: ../evil", "tenant_id: acme-id")
    assert load(tmp_path, text).tenant_errors["acme"] == [
        f"{prefix}.2: emitter 'prometheus': params.output_dir: {tmp_path / 'a-file' / 'metrics'} cannot be "
        f"created: {tmp_path / 'a-file'} is not a directory"
    ]
    text = text.replace("a-file/metrics", "metrics/not/yet/there")
    tenant = load(tmp_path, text).tenants["acme"]
    assert [spec.name for spec in tenant.plugin_settings.emitters] == ["csv", "by_name", "prometheus"]
    assert not (tmp_path / "metrics").exists(), "validation must not create directories"


# --- plugins: unknown ecosystem, validate_settings, secrets ---------------------------------------


def test_unknown_ecosystem_names_tenant_ecosystem_available_and_load_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "tenants:\n  acme: {ecosystem: confluent_clod, tenant_id: a}\n")
    registry = fake_registry(["plugin '/p/broken' failed to import: SyntaxError: invalid syntax"])
    loaded = load_config(path, registry=registry)
    assert loaded.tenant_errors["acme"] == [
        f"{path}: tenant 'acme': ecosystem: unknown ecosystem 'confluent_clod'; available: fake; "
        "plugin load errors: plugin '/p/broken' failed to import: SyntaxError: invalid syntax"
    ]


def test_plugin_validate_settings_is_called_with_the_substituted_dict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_TEST_URL", "http://prom:9090")
    loaded = load(tmp_path, tenant_yaml("plugin_settings: {api: {url: '${CB_TEST_URL}'}}"))
    assert "acme" in loaded.tenants
    assert FakePlugin.seen == [{"api": {"url": "http://prom:9090"}}]


def test_plugin_settings_errors_are_prefixed_with_the_field_path(tmp_path: Path) -> None:
    loaded = load(tmp_path, tenant_yaml("plugin_settings: {api: {key: k}}"))
    assert loaded.tenant_errors["acme"] == [
        f"{tmp_path / 'config.yaml'}: tenant 'acme': plugin_settings.api.url: Field required"
    ]


def test_literal_secrets_warn_without_the_value_and_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_TEST_API_SECRET", "env-secret-value")
    text = tenant_yaml(
        """
        plugin_settings:
          api: {url: http://x, key: visible-key, secret: '${CB_TEST_API_SECRET}'}
          signing_key: literal-signing-value
          metrics: {url: http://prom, password: literal-password-value}
          flink:
            - {region_id: r1, key: k1, secret: literal-flink-value}
        """
    )
    loaded = load(tmp_path, text)
    tenant = loaded.tenants["acme"]
    prefix = f"{tmp_path / 'config.yaml'}: tenant 'acme'"
    hint = "secret given literally in the file; use a ${VAR} reference"
    assert loaded.warnings == [
        f"{prefix}: plugin_settings.flink.0.secret: {hint}",
        f"{prefix}: plugin_settings.metrics.password: {hint}",
        f"{prefix}: plugin_settings.signing_key: {hint}",
    ]
    settings = tenant.plugin_settings_dict()
    assert settings["api"]["secret"] == "env-secret-value"
    assert settings["signing_key"] == "literal-signing-value"
    masked = tenant.masked_plugin_settings()
    assert masked["api"] == {"url": "http://x", "key": "visible-key", "secret": "**********"}
    assert masked["signing_key"] == "**********"
    assert masked["metrics"]["password"] == "**********"
    assert masked["flink"][0] == {"region_id": "r1", "key": "k1", "secret": "**********"}
    dumped = json.dumps(resolved_settings(loaded))
    for value in (
        "env-secret-value",
        "literal-signing-value",
        "literal-password-value",
        "literal-flink-value",
    ):
        assert value not in dumped
        assert value not in repr(tenant)


def test_plugin_settings_dict_is_a_fresh_copy(tmp_path: Path) -> None:
    tenant = load(tmp_path, tenant_yaml("plugin_settings: {api: {url: http://x}}")).tenants["acme"]
    tenant.plugin_settings_dict()["api"]["url"] = "mutated"
    assert tenant.plugin_settings_dict() == {"api": {"url": "http://x"}}


def test_override_paths_are_checked_at_load(tmp_path: Path) -> None:
    text = tenant_yaml(
        """
        plugin_settings:
          allocator_overrides: {KAFKA_X: no_colon_here}
          identity_resolution_overrides: {KAFKA_Y: "chargeback_nonexistent_module_xyz:f"}
        """
    )
    errors = load(tmp_path, text).tenant_errors["acme"]
    prefix = f"{tmp_path / 'config.yaml'}: tenant 'acme': plugin_settings"
    assert errors[0] == (
        f"{prefix}.allocator_overrides.KAFKA_X: ValueError: "
        "expected 'module.path:attribute', got 'no_colon_here'"
    )
    assert errors[1].startswith(
        f"{prefix}.identity_resolution_overrides.KAFKA_Y: ImportError: cannot import module "
        "'chargeback_nonexistent_module_xyz'"
    )


def test_resolved_settings_shape(tmp_path: Path) -> None:
    loaded = load(tmp_path, tenant_yaml() + "  broken: {ecosystem: fake}\n")
    data = resolved_settings(loaded)
    assert data["config_path"] == str(tmp_path / "config.yaml")
    assert data["features"]["refresh_interval"] == 1800
    assert data["tenants"]["acme"]["storage"]["path"] == str((tmp_path / "data" / "acme.duckdb").resolve())
    assert data["tenants"]["acme"]["plugin_settings"] == {}
    assert list(data["invalid_tenants"]) == ["broken"]


def test_require_tenant(tmp_path: Path) -> None:
    loaded = load(tmp_path, tenant_yaml() + "  broken: {ecosystem: fake}\n")
    assert loaded.require_tenant("acme").tenant_id == "acme-id"
    with pytest.raises(ConfigError) as info:
        loaded.require_tenant("broken")
    assert info.value.errors == [f"{tmp_path / 'config.yaml'}: tenant 'broken': tenant_id: Field required"]
    with pytest.raises(ConfigError, match="unknown tenant 'nope'; configured tenants: acme, broken"):
        loaded.require_tenant("nope")


def test_fingerprint_changes_with_settings(tmp_path: Path) -> None:
    first = load(tmp_path, tenant_yaml("lookback_days: 30")).tenants["acme"].fingerprint()
    again = load(tmp_path, tenant_yaml("lookback_days: 30")).tenants["acme"].fingerprint()
    other = load(tmp_path, tenant_yaml("lookback_days: 31")).tenants["acme"].fingerprint()
    assert first == again != other


# --- clock (operations.md §1) ----------------------------------------------------------------------


class Limits:
    def __init__(self, lookback_days: int, cutoff_days: int, retention_days: int) -> None:
        self.lookback_days, self.cutoff_days, self.retention_days = lookback_days, cutoff_days, retention_days


def test_refresh_window_example_from_the_spec() -> None:
    window = clock.refresh_window(Limits(30, 3, 90), date(2026, 3, 10))
    assert (window[0], window[-1], len(window)) == (date(2026, 2, 8), date(2026, 3, 6), 27)
    assert window == sorted(window)


def test_allowed_dates() -> None:
    assert clock.allowed_dates(Limits(30, 3, 90), date(2026, 3, 10)) == (date(2025, 12, 10), date(2026, 3, 6))


def test_check_date_allowed_names_tenant_date_and_limit() -> None:
    limits, today = Limits(30, 3, 90), date(2026, 3, 10)
    clock.check_date_allowed("acme", limits, date(2026, 3, 6), today)
    clock.check_date_allowed("acme", limits, date(2025, 12, 10), today)
    with pytest.raises(DateOutOfRangeError) as too_new:
        clock.check_date_allowed("acme", limits, date(2026, 3, 7), today)
    assert str(too_new.value) == (
        "tenant 'acme': date 2026-03-07 is not allowed: cutoff_days=3 "
        "(today 2026-03-10; latest allowed date 2026-03-06)"
    )
    with pytest.raises(DateOutOfRangeError) as too_old:
        clock.check_date_allowed("acme", limits, date(2025, 12, 9), today)
    assert str(too_old.value) == (
        "tenant 'acme': date 2025-12-09 is not allowed: retention_days=90 "
        "(today 2026-03-10; earliest allowed date 2025-12-10)"
    )


@pytest.mark.parametrize(
    ("pinned", "expected"),
    [
        ("2026-03-09T00:00:00Z", datetime(2026, 3, 9, tzinfo=UTC)),
        ("2026-03-09T02:30:00+02:00", datetime(2026, 3, 9, 0, 30, tzinfo=UTC)),
        ("2026-03-09", datetime(2026, 3, 9, tzinfo=UTC)),
    ],
)
def test_utc_now_can_be_pinned(monkeypatch: pytest.MonkeyPatch, pinned: str, expected: datetime) -> None:
    monkeypatch.setenv("CHARGEBACK_NOW", pinned)
    assert clock.utc_now() == expected
    assert clock.utc_now().tzinfo is UTC


@pytest.mark.parametrize(
    ("pinned", "message"), [("2026-03-09T00:00:00", "has no timezone"), ("soon", "not an ISO")]
)
def test_bad_pinned_now(monkeypatch: pytest.MonkeyPatch, pinned: str, message: str) -> None:
    monkeypatch.setenv("CHARGEBACK_NOW", pinned)
    with pytest.raises(ValueError, match=message):
        clock.utc_now()


def test_utc_now_unpinned_is_aware_and_current() -> None:
    before = datetime.now(UTC)
    now = clock.utc_now()
    assert now.tzinfo is not None and before <= now <= datetime.now(UTC)


# --- PluginSettingsBase as a base class ---------------------------------------------------------------


def test_plugin_models_extend_the_base_and_can_list_unknown_keys() -> None:
    class Own(PluginSettingsBase):
        cluster_id: str = Field(min_length=1)

    raw = {"cluster_id": "c", "emitters": [{"type": "csv"}], "typo_key": 1}
    parsed = Own.model_validate(raw)
    assert parsed.cluster_id == "c" and parsed.emitters[0].name == "csv"
    assert Own.unknown_keys(raw) == ["typo_key"]
