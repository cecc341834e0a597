"""Plugin discovery with real plugin directories on disk (plugin-system.md §2)."""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import chargeback_plugins
from chargeback_pipeline.config import load_config
from chargeback_pipeline.errors import PluginLoadError
from chargeback_pipeline.loader import PluginRegistry, clear_discovery_cache, discover_plugins

FIXTURES = Path(__file__).parent / "fixtures"
MIXED = FIXTURES / "plugins_mixed"
BUILTIN = FIXTURES / "plugins_builtin"
PREFIX = "chargeback_external_plugin_"


@pytest.fixture(autouse=True)
def _fresh_discovery() -> Iterator[None]:
    clear_discovery_cache()
    before = set(sys.modules)
    yield
    clear_discovery_cache()
    for name in set(sys.modules) - before:
        if (
            name.startswith(PREFIX)
            or name.startswith("chargeback_plugins.fixture")
            or "broken_builtin" in name
        ):
            del sys.modules[name]


@pytest.fixture
def fixture_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make discovery see the fixture packages as the built-in plugins."""
    monkeypatch.setattr(chargeback_plugins, "__path__", [str(BUILTIN)])


def external_errors(registry: PluginRegistry, root: Path) -> list[str]:
    return [e for e in registry.load_errors if str(root) in e]


def test_good_external_plugin_loads_next_to_broken_ones(fixture_builtins: None) -> None:
    registry = discover_plugins(MIXED)
    assert registry.names() == ["fixture_builtin", "fixture_good"]
    assert registry.modules["fixture_good"] == f"{PREFIX}good_plugin"
    plugin = registry.factories["fixture_good"]()
    assert plugin.ecosystem == "fixture_good"
    # The relative import inside the package worked because of submodule_search_locations.
    assert f"{PREFIX}good_plugin.plugin" in sys.modules


def test_every_broken_plugin_is_recorded_in_sorted_order(fixture_builtins: None) -> None:
    registry = discover_plugins(MIXED)
    assert external_errors(registry, MIXED) == [
        f"plugin '{MIXED / 'bad_tuple'}': register() must return (ecosystem_name: str, factory), got list",
        f"plugin '{MIXED / 'broken_syntax'}' failed to import: SyntaxError: 'return' outside function "
        "(__init__.py, line 8)",
        f"plugin '{MIXED / 'empty_name'}': register() must return (ecosystem_name: str, factory), "
        "got tuple of (str, type)",
        f"plugin '{MIXED / 'no_init'}' failed to import: no __init__.py in the directory",
        f"plugin '{MIXED / 'register_raises'}': register() raised RuntimeError: register exploded on purpose",
    ]


def test_broken_builtin_is_recorded_with_its_directory(fixture_builtins: None) -> None:
    registry = discover_plugins(None)
    assert registry.names() == ["fixture_builtin"]
    assert registry.modules["fixture_builtin"] == "chargeback_plugins.fixture_builtin"
    assert registry.load_errors == [
        f"plugin '{BUILTIN / 'broken_builtin'}' failed to import: "
        "ImportError: No module named 'kafka_fixture_dependency'"
    ]


def test_skipped_entries_are_never_imported(fixture_builtins: None) -> None:
    registry = discover_plugins(MIXED)
    for name in ("_private", ".hidden", "plain_module", "README"):
        assert f"{PREFIX}{name}" not in sys.modules
        assert not any(name in error for error in registry.load_errors)
    assert "chargeback_plugins._skipped_builtin" not in sys.modules
    assert "chargeback_plugins.plain_module" not in sys.modules


def test_failed_import_is_removed_from_sys_modules(fixture_builtins: None) -> None:
    discover_plugins(MIXED)
    assert f"{PREFIX}broken_syntax" not in sys.modules
    assert f"{PREFIX}helper_pkg" in sys.modules


def test_log_levels(fixture_builtins: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="chargeback_pipeline.loader"):
        discover_plugins(MIXED)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(warnings) == 6  # five broken external plugins and one broken built-in
    assert any("broken_syntax" in w and "SyntaxError" in w for w in warnings)
    assert any(f"{PREFIX}helper_pkg" in d and "no callable register()" in d for d in debug)
    assert not any("helper_pkg" in w for w in warnings)


def test_duplicate_ecosystem_is_a_startup_error_naming_both_modules(fixture_builtins: None) -> None:
    with pytest.raises(PluginLoadError) as info:
        discover_plugins(FIXTURES / "plugins_duplicate")
    assert str(info.value) == (
        f"ecosystem 'fixture_duplicate' is registered by two plugins: '{PREFIX}first' and '{PREFIX}second'"
    )


def test_external_plugin_clashing_with_a_builtin(fixture_builtins: None) -> None:
    with pytest.raises(PluginLoadError) as info:
        discover_plugins(FIXTURES / "plugins_clash")
    assert str(info.value) == (
        "ecosystem 'fixture_builtin' is registered by two plugins: "
        f"'chargeback_plugins.fixture_builtin' and '{PREFIX}fixture_builtin_again'"
    )


def test_plugins_path_that_is_not_a_directory(tmp_path: Path, fixture_builtins: None) -> None:
    with pytest.raises(PluginLoadError, match=r"plugins_path '.*missing' is not a directory"):
        discover_plugins(tmp_path / "missing")


def test_discovery_is_cached_per_path(fixture_builtins: None) -> None:
    first = discover_plugins(MIXED)
    assert discover_plugins(MIXED) is first
    assert discover_plugins(None) is not first
    clear_discovery_cache()
    assert discover_plugins(MIXED) is not first


def test_unknown_ecosystem_message_lists_available_names_and_load_errors(
    tmp_path: Path, fixture_builtins: None
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            plugins_path: {MIXED}
            tenants:
              acme: {{ecosystem: broken_syntax, tenant_id: acme}}
              good: {{ecosystem: fixture_good, tenant_id: good, plugin_settings: {{api: {{url: http://x}}}}}}
            """
        )
    )
    loaded = load_config(config)
    assert list(loaded.tenants) == ["good"]
    [error] = loaded.tenant_errors["acme"]
    assert error.startswith(
        f"{config}: tenant 'acme': ecosystem: unknown ecosystem 'broken_syntax'; "
        "available: fixture_builtin, fixture_good; plugin load errors: "
    )
    for name in ("bad_tuple", "broken_syntax", "empty_name", "no_init", "register_raises", "broken_builtin"):
        assert f"{name}'" in error


def test_external_plugin_settings_are_validated_and_declared_secrets_masked(
    tmp_path: Path, fixture_builtins: None
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            plugins_path: {MIXED}
            tenants:
              bad: {{ecosystem: fixture_good, tenant_id: b, plugin_settings: {{widgets: 0, api: {{url: u}}}}}}
              good:
                ecosystem: fixture_good
                tenant_id: g
                plugin_settings: {{api: {{url: http://x, access_key: literal-access-key}}}}
            """
        )
    )
    loaded = load_config(config)
    assert loaded.tenant_errors["bad"] == [
        f"{config}: tenant 'bad': plugin_settings.widgets: Input should be greater than or equal to 1"
    ]
    good = loaded.tenants["good"]
    assert good.masked_plugin_settings()["api"] == {"url": "http://x", "access_key": "**********"}
    assert loaded.warnings == [
        f"{config}: tenant 'good': plugin_settings.api.access_key: "
        "secret given literally in the file; use a ${VAR} reference"
    ]
