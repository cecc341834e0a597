"""The process-wide emitter registry (spec/plugin-system.md §10, emitters.md §1-§2).

Factories are registered by name while the process starts (the core's built-ins when
``chargeback_pipeline.emitters`` is imported, plugin emitters when their package is
imported or from their ``register()``). The sink step later builds one emitter per
configured spec with :func:`get`.

Two values are injected by the core rather than configured, each behind an opt-in flag
on the factory so that factories written against the seed document keep working:

* ``needs_storage_backend = True`` → ``storage_backend=<tenant StorageBackend>``
  (the contract of plugin-system.md §10);
* ``needs_emitter_context = True`` → ``emitter_context=EmitterContext(...)``: the tenant
  name, ecosystem and the plugin's extra key fields. The emitter call itself only
  carries ``(tenant_id, date, rows)``, yet file names may use ``{tenant_name}`` /
  ``{ecosystem}`` and CSV files must carry columns such as ``env_id`` even for dates
  without rows, so the core hands these over once at construction time.

Neither name may appear in a spec's ``params``: users configure only the emitter's own
options, never what the core supplies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from chargeback_pipeline.protocols import Emitter, EmitterFactory

STORAGE_BACKEND_PARAM = "storage_backend"
EMITTER_CONTEXT_PARAM = "emitter_context"
RESERVED_PARAMS = (STORAGE_BACKEND_PARAM, EMITTER_CONTEXT_PARAM)

ParamsValidator = Callable[[Mapping[str, Any]], None]
ContextValidator = Callable[[Mapping[str, Any], "EmitterContext"], None]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class EmitterContext:
    """Tenant facts an emitter needs beyond ``(tenant_id, date, rows)``.

    ``extra_key_fields`` is the plugin's ``StorageModule.extra_key_fields`` in declared
    order (Confluent Cloud: ``("env_id",)``). ``config_dir`` is the directory of the
    configuration file; relative output paths are resolved against it (config.md §1).

    The remaining fields describe the emitter spec, for emitters that read storage
    themselves (the ``prometheus`` emitter renders whole history): ``tenant_id`` is the
    label written into rows (known at config validation, before any row exists),
    ``aggregation`` the spec's aggregation, ``earliest_date`` the oldest date its
    ``lookback_days`` still emits (``None`` = all dates) and ``billing_resource_types``
    the resource types the plugin's handlers gather (``None`` = every type).
    """

    tenant_name: str
    ecosystem: str
    extra_key_fields: tuple[str, ...] = ()
    config_dir: Path | None = None
    tenant_id: str | None = None
    aggregation: str | None = None
    earliest_date: date | None = None
    billing_resource_types: tuple[str, ...] | None = None


_FACTORIES: dict[str, EmitterFactory] = {}


def emitter_factory(
    *,
    needs_storage_backend: bool = False,
    needs_emitter_context: bool = False,
    validate_params: ParamsValidator | None = None,
    validate_context: ContextValidator | None = None,
) -> Callable[[F], F]:
    """Decorator setting the registry's flag attributes on a factory function.

    Equivalent to assigning ``factory.needs_storage_backend = True`` by hand (which
    still works, as in the seed document) but keeps type checkers quiet.
    ``validate_params(params)`` checks the spec on its own; ``validate_context(params,
    context)`` checks it against one tenant (file names built from its tenant id, an
    output directory it cannot write) so that such problems are configuration errors.
    """
    attributes: dict[str, object] = {
        "needs_storage_backend": needs_storage_backend,
        "needs_emitter_context": needs_emitter_context,
    }
    if validate_params is not None:
        attributes["validate_params"] = validate_params
    if validate_context is not None:
        attributes["validate_context"] = validate_context

    def mark(factory: F) -> F:
        for attribute, value in attributes.items():
            setattr(factory, attribute, value)
        return factory

    return mark


def register(name: str, factory: EmitterFactory) -> None:
    """Make ``factory`` available as emitter type ``name``.

    Re-registering the very same object is harmless (a module imported twice, a plugin
    calling ``register`` from both import time and ``register()``), and so is a fresh
    copy of the same function from a plugin that was imported again (same module and
    qualified name; the newer one wins). A different factory under a taken name is
    refused so one plugin cannot silently replace another's emitter.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Emitter type name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise ValueError(f"Emitter factory for '{name}' is not callable: {factory!r}")
    existing = _FACTORIES.get(name)
    if existing is None or _same_definition(existing, factory):
        _FACTORIES[name] = factory
    elif existing is not factory:
        raise ValueError(
            f"Emitter type '{name}' is already registered with a different factory "
            f"({_describe(existing)}); refusing to replace it with {_describe(factory)}"
        )


def _same_definition(a: object, b: object) -> bool:
    """True for two objects created by the same source definition (a re-imported plugin)."""
    key = ("__module__", "__qualname__")
    return all(getattr(a, k, None) is not None and getattr(a, k, None) == getattr(b, k, None) for k in key)


def unregister(name: str) -> None:
    """Remove a registration; meant for tests that register throw-away emitters."""
    _FACTORIES.pop(name, None)


def names() -> list[str]:
    """Registered emitter type names, sorted."""
    return sorted(_FACTORIES)


def validate_spec(name: str, params: Mapping[str, Any], context: EmitterContext | None = None) -> None:
    """Check an emitter spec without building it (for ``validate-config``).

    With ``context`` the spec is also checked against that tenant. Raises
    ``ValueError`` with a message the config layer prefixes with file, tenant and
    emitter entry.
    """
    factory = _lookup(name)
    _check_params(name, factory, params, context)


_TYPE_WORDS = {str: "a string", int: "an integer", bool: "a boolean", type(None): "null"}


def check_param_types(
    emitter_type: str,
    params: Mapping[str, Any],
    types: Mapping[str, tuple[type, ...]],
    required: tuple[str, ...] = (),
) -> None:
    """The common shape checks of a built-in emitter's params: no unknown, none missing,
    every value of an allowed type (``bool`` never passes for ``int``)."""
    unknown = sorted(set(params) - set(types))
    if unknown:
        raise ValueError(
            f"params.{unknown[0]}: unknown parameter for emitter '{emitter_type}' "
            f"(allowed: {', '.join(types)})"
        )
    for key in required:
        if key not in params:
            raise ValueError(f"params.{key}: required parameter of emitter '{emitter_type}' is missing")
    for key, allowed in types.items():
        if key not in params:
            continue
        value = params[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            words = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in allowed)
            raise ValueError(f"params.{key}: must be {words}, got {type(value).__name__}")


def get(
    name: str,
    params: Mapping[str, Any],
    storage_backend: object | None = None,
    *,
    context: EmitterContext | None = None,
) -> Emitter:
    """Build the emitter for one spec, injecting what its factory declares it needs."""
    factory = _lookup(name)
    _check_params(name, factory, params, context)
    kwargs = dict(params)
    if _flag(factory, "needs_storage_backend"):
        if storage_backend is None:
            raise ValueError(f"Emitter '{name}' needs a storage backend but none was supplied")
        kwargs[STORAGE_BACKEND_PARAM] = storage_backend
    if _flag(factory, "needs_emitter_context"):
        if context is None:
            raise ValueError(f"Emitter '{name}' needs an EmitterContext but none was supplied")
        kwargs[EMITTER_CONTEXT_PARAM] = context
    return _build(name, factory, kwargs)


def _lookup(name: str) -> EmitterFactory:
    factory = _FACTORIES.get(name)
    if factory is None:
        available = ", ".join(names()) or "(none)"
        raise ValueError(f"Unknown emitter type '{name}'. Available: {available}")
    return factory


def _check_params(
    name: str, factory: EmitterFactory, params: Mapping[str, Any], context: EmitterContext | None = None
) -> None:
    if not isinstance(params, Mapping):
        raise ValueError(f"Emitter '{name}': params must be a mapping, got {type(params).__name__}")
    for reserved in RESERVED_PARAMS:
        if reserved in params:
            raise ValueError(
                f"Emitter '{name}': params.{reserved} is supplied by the pipeline and must not be configured"
            )
    validator = getattr(factory, "validate_params", None)
    if callable(validator):
        validator(params)
    context_validator = getattr(factory, "validate_context", None)
    if context is not None and callable(context_validator):
        context_validator(params, context)


def _build(name: str, factory: EmitterFactory, kwargs: dict[str, Any]) -> Emitter:
    try:
        emitter = factory(**kwargs)
    except TypeError as exc:
        # Typically an unexpected or missing keyword: report it against the emitter spec.
        raise ValueError(f"Emitter '{name}': invalid params: {exc}") from exc
    if not callable(emitter):
        raise ValueError(f"Emitter factory for '{name}' returned a non-callable {type(emitter).__name__}")
    return emitter


def _flag(factory: object, attribute: str) -> bool:
    """Only the literal ``True`` opts in, as the contract says (``is True``)."""
    return getattr(factory, attribute, False) is True


def _describe(factory: object) -> str:
    module = getattr(factory, "__module__", "?")
    qualname = getattr(factory, "__qualname__", type(factory).__qualname__)
    return f"{module}.{qualname}"
