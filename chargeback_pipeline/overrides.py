"""Allocator and identity-resolver overrides (plugin-system.md §7-§8).

An override is named in the config as ``"package.module:attribute"``. Loading checks
the shape of the callable up front (positional parameter count) so that a wrong
override fails at tenant start-up with the config key in the message, not on the first
billing line of a run.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from chargeback_pipeline.errors import ConfigError
from chargeback_pipeline.protocols import CostAllocator, IdentityResolver

logger = logging.getLogger(__name__)

ALLOCATOR_KEY = "plugin_settings.allocator_overrides"
RESOLVER_KEY = "plugin_settings.identity_resolution_overrides"
ALLOCATOR_PARAMS = 1
RESOLVER_PARAMS = 7

E = TypeVar("E", bound=Exception)


def load_allocator(path: str, where: str = "") -> CostAllocator:
    """Load a ``CostAllocator`` override: a callable taking one positional ``ctx``."""
    return cast(CostAllocator, load_callable(path, ALLOCATOR_PARAMS, "allocator", where))


def load_resolver(path: str, where: str = "") -> IdentityResolver:
    """Load an ``IdentityResolver`` override: seven positional parameters, ``context`` included."""
    return cast(IdentityResolver, load_callable(path, RESOLVER_PARAMS, "identity resolver", where))


def load_callable(path: object, expected: int, kind: str, where: str = "") -> Callable[..., Any]:
    """Import ``module:attr`` and check it is a non-class callable with ``expected`` positionals.

    ``where`` (e.g. ``"tenant 'acme': plugin_settings.allocator_overrides.X"``) prefixes
    every error; the exception type tells the kind of problem (§8 table).
    """
    module_name, attribute = _split(path, where)
    module = _import(module_name, where)
    obj = _attribute(module, module_name, attribute, where)
    _check_shape(obj, f"{module_name}:{attribute}", expected, kind, where)
    return cast(Callable[..., Any], obj)


def _prefixed(exc_type: type[E], where: str, message: str) -> E:
    return exc_type(f"{where}: {message}" if where else message)


def _split(path: object, where: str) -> tuple[str, str]:
    if not isinstance(path, str) or ":" not in path:
        raise _prefixed(ValueError, where, f"expected 'module.path:attribute', got {path!r}")
    module_name, _, attribute = path.partition(":")
    module_name, attribute = module_name.strip(), attribute.strip()
    if not module_name or not attribute:
        raise _prefixed(ValueError, where, f"expected 'module.path:attribute', got {path!r}")
    return module_name, attribute


def _import(module_name: str, where: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        error = _prefixed(
            ImportError, where, f"cannot import module '{module_name}': {type(exc).__name__}: {exc}"
        )
        error.name = module_name
        raise error from exc


def _attribute(module: Any, module_name: str, attribute: str, where: str) -> object:
    obj: object = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise _prefixed(AttributeError, where, f"module '{module_name}' has no attribute '{attribute}'")
        obj = getattr(obj, part)
    return obj


def _check_shape(obj: object, name: str, expected: int, kind: str, where: str) -> None:
    if inspect.isclass(obj):
        raise _prefixed(TypeError, where, f"'{name}' is a class; the {kind} override must be a callable")
    if not callable(obj):
        raise _prefixed(TypeError, where, f"'{name}' is not callable ({type(obj).__name__})")
    actual = _positional_count(obj, name, where)
    if actual is not None and actual != expected:
        raise _prefixed(
            TypeError,
            where,
            f"'{name}' takes {actual} positional parameter(s); an {kind} must take {expected}",
        )


def _positional_count(obj: Callable[..., Any], name: str, where: str) -> int | None:
    """Number of positional parameters, or ``None`` for ``*args`` (accepts any count)."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError) as exc:
        raise _prefixed(TypeError, where, f"cannot inspect the signature of '{name}': {exc}") from exc
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


# --- Binding overrides to a tenant's dispatch table --------------------------------------


@dataclass
class TenantOverrides:
    """Overrides in force for one tenant, keyed by product type."""

    allocators: dict[str, CostAllocator] = field(default_factory=dict)
    resolvers: dict[str, IdentityResolver] = field(default_factory=dict)
    unused_allocator_keys: list[str] = field(default_factory=list)


def bind_overrides(
    tenant_name: str,
    allocator_paths: Mapping[str, str],
    resolver_paths: Mapping[str, str],
    product_types: Mapping[str, str],
    service_types: Mapping[str, Sequence[str]],
) -> TenantOverrides:
    """Load and key the tenant's overrides by product type.

    ``product_types`` maps each claimed product type to its handler's service type;
    ``service_types`` maps each service type to its product types.
    """
    bound = TenantOverrides()
    _bind_allocators(tenant_name, allocator_paths, product_types, bound)
    _bind_resolvers(tenant_name, resolver_paths, product_types, service_types, bound)
    return bound


def _where(tenant_name: str, key: str, entry: str) -> str:
    return f"tenant '{tenant_name}': {key}.{entry}"


def _bind_allocators(
    tenant_name: str,
    paths: Mapping[str, str],
    product_types: Mapping[str, str],
    bound: TenantOverrides,
) -> None:
    for product_type, path in paths.items():
        where = _where(tenant_name, ALLOCATOR_KEY, product_type)
        allocator = load_allocator(path, where)
        if product_type not in product_types:
            logger.warning(
                "%s: no handler claims product type '%s'; the allocator override is unused",
                where,
                product_type,
            )
            bound.unused_allocator_keys.append(product_type)
            continue
        bound.allocators[product_type] = allocator


def _bind_resolvers(
    tenant_name: str,
    paths: Mapping[str, str],
    product_types: Mapping[str, str],
    service_types: Mapping[str, Sequence[str]],
    bound: TenantOverrides,
) -> None:
    loaded = {key: load_resolver(path, _where(tenant_name, RESOLVER_KEY, key)) for key, path in paths.items()}
    for key, resolver in loaded.items():
        if key in product_types:
            bound.resolvers[key] = resolver
        elif key in service_types:
            for product_type in service_types[key]:
                # Product-type keys win over the service-type key of their handler.
                if product_type not in loaded:
                    bound.resolvers[product_type] = resolver
        else:
            raise ConfigError(
                f"{_where(tenant_name, RESOLVER_KEY, key)}: '{key}' is neither a product type nor a "
                f"service type of this plugin (product types: {', '.join(sorted(product_types)) or '-'}; "
                f"service types: {', '.join(sorted(service_types)) or '-'})"
            )
