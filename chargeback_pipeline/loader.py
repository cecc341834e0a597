"""Plugin discovery (plugin-system.md §2).

Built-in plugins are imported as packages; external ones are imported by file from
``plugins_path`` so that a directory of plugins works without being on ``sys.path``.
A broken plugin is logged and recorded but never stops discovery of the others: the
recorded errors are repeated where they matter, in the validation error of a tenant
whose ecosystem is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import chargeback_plugins
from chargeback_pipeline.errors import PluginLoadError
from chargeback_pipeline.protocols import PluginFactory

logger = logging.getLogger(__name__)

BUILTIN_PACKAGE = "chargeback_plugins"
EXTERNAL_PREFIX = "chargeback_external_plugin_"


@dataclass
class PluginRegistry:
    """Result of one discovery: ``ecosystem → factory`` plus what failed to load."""

    factories: dict[str, PluginFactory] = field(default_factory=dict)
    load_errors: list[str] = field(default_factory=list)
    modules: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.factories)

    def get(self, ecosystem: str) -> PluginFactory | None:
        return self.factories.get(ecosystem)

    def unknown_ecosystem_message(self, ecosystem: str) -> str:
        """Why ``ecosystem`` is unavailable, including every broken plugin (§2.2)."""
        available = ", ".join(self.names()) or "(none)"
        message = f"unknown ecosystem '{ecosystem}'; available: {available}"
        if self.load_errors:
            message += "; plugin load errors: " + " | ".join(self.load_errors)
        return message


_CACHE: dict[Path | None, PluginRegistry] = {}
_CACHE_LOCK = threading.Lock()


def discover_plugins(plugins_path: Path | None) -> PluginRegistry:
    """Discover built-in and external plugins once per process and ``plugins_path``.

    ``plugins_path`` must already be absolute (config.py resolves it against the
    config file's directory). Re-importing an external plugin would create a second
    module object and factories that no longer compare equal, hence the cache.
    """
    key = plugins_path.resolve() if plugins_path is not None else None
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            cached = _discover(key)
            _CACHE[key] = cached
        return cached


def clear_discovery_cache() -> None:
    """Forget earlier discoveries (tests that build plugin directories on the fly)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _discover(plugins_path: Path | None) -> PluginRegistry:
    registry = PluginRegistry()
    for name, location in _builtin_packages():
        module = _import_builtin(name, location, registry)
        if module is not None:
            _register_module(module, location, registry)
    if plugins_path is not None:
        for directory in _external_directories(plugins_path):
            module = _import_external(directory, registry)
            if module is not None:
                _register_module(module, str(directory), registry)
    return registry


def _builtin_packages() -> list[tuple[str, str]]:
    entries = []
    for info in pkgutil.iter_modules(chargeback_plugins.__path__):
        if info.ispkg and not info.name.startswith(("_", ".")):
            location = str(Path(getattr(info.module_finder, "path", "")) / info.name)
            entries.append((info.name, location))
    return sorted(entries)


def _import_builtin(name: str, location: str, registry: PluginRegistry) -> ModuleType | None:
    try:
        return importlib.import_module(f"{BUILTIN_PACKAGE}.{name}")
    except Exception as exc:
        _record(registry, f"plugin '{location}' failed to import: {_describe(exc)}")
        return None


def _external_directories(plugins_path: Path) -> list[Path]:
    if not plugins_path.is_dir():
        raise PluginLoadError(f"plugins_path '{plugins_path}' is not a directory")
    return [
        entry
        for entry in sorted(plugins_path.iterdir(), key=lambda p: p.name)
        if not entry.name.startswith(("_", ".")) and entry.is_dir()
    ]


def _import_external(directory: Path, registry: PluginRegistry) -> ModuleType | None:
    init_file = directory / "__init__.py"
    if not init_file.is_file():
        _record(registry, f"plugin '{directory}' failed to import: no __init__.py in the directory")
        return None
    module_name = EXTERNAL_PREFIX + directory.name
    spec = importlib.util.spec_from_file_location(
        module_name, init_file, submodule_search_locations=[str(directory)]
    )
    if spec is None or spec.loader is None:
        _record(registry, f"plugin '{directory}' failed to import: cannot build an import spec")
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        _forget_module(module_name)
        _record(registry, f"plugin '{directory}' failed to import: {_describe(exc)}")
        return None
    return module


def _forget_module(module_name: str) -> None:
    """Drop a failed plugin and any of its submodules so nothing half-initialised lingers."""
    for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
        del sys.modules[name]


def _register_module(module: ModuleType, location: str, registry: PluginRegistry) -> None:
    register = getattr(module, "register", None)
    if not callable(register):
        logger.debug("Skipping '%s' (%s): no callable register(); not a plugin", module.__name__, location)
        return
    try:
        result = register()
    except Exception as exc:
        _record(registry, f"plugin '{location}': register() raised {_describe(exc)}")
        return
    if not _is_registration(result):
        _record(
            registry,
            f"plugin '{location}': register() must return (ecosystem_name: str, factory), "
            f"got {type(result).__name__}{_tuple_shape(result)}",
        )
        return
    ecosystem, factory = result
    _add(registry, ecosystem, factory, module.__name__)


def _is_registration(result: object) -> bool:
    return (
        isinstance(result, tuple)
        and len(result) == 2
        and isinstance(result[0], str)
        and bool(result[0])
        and callable(result[1])
    )


def _tuple_shape(result: object) -> str:
    """For a wrong tuple, say which part is wrong without dumping the values."""
    if not isinstance(result, tuple):
        return ""
    return " of (" + ", ".join(type(item).__name__ for item in result) + ")"


def _add(registry: PluginRegistry, ecosystem: str, factory: PluginFactory, module_name: str) -> None:
    previous = registry.modules.get(ecosystem)
    if previous is not None:
        raise PluginLoadError(
            f"ecosystem '{ecosystem}' is registered by two plugins: '{previous}' and '{module_name}'"
        )
    registry.factories[ecosystem] = factory
    registry.modules[ecosystem] = module_name
    logger.debug("Registered ecosystem '%s' from '%s'", ecosystem, module_name)


def _record(registry: PluginRegistry, message: str) -> None:
    logger.warning(message)
    registry.load_errors.append(message)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
