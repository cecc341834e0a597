"""Exceptions raised inside plugin code, re-raised naming the tenant, plugin, object and method.

A plugin's own exception ("KeyError: 'id'", "RuntimeError: vendor API unavailable") says
nothing about where it came from; in a deployment with several tenants and plugins the
operator must see at once which tenant's run failed and in which plugin method. The
runtime wraps every object a plugin hands to the core in a :class:`Guarded` proxy (and
every allocator in a :class:`GuardedCallable`); a method that raises an unexpected
exception becomes a :class:`PluginCallError` with the original as its cause (the
plugin's own ``ChargebackError`` subclasses pass through: they already say what
failed). The core's handling is unchanged: it catches ``Exception`` wherever it
tolerates a plugin failure (a failed handler gather, a failed usage query, a failed
line allocation), so only the message gains its context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from chargeback_pipeline.errors import ChargebackError


class PluginCallError(ChargebackError):
    """A plugin method raised; ``args[0]`` names tenant, plugin, object and method."""

    def __init__(self, message: str, method: str) -> None:
        super().__init__(message)
        self.method = method


def call_error(where: str, method: str, exc: BaseException) -> PluginCallError:
    return PluginCallError(f"{where} {method}() raised {type(exc).__name__}: {exc}", method)


def guarded_call(where: str, method: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with an unexpected exception re-raised as a :class:`PluginCallError`.

    A ``ChargebackError`` (``MetricsQueryError``, a vendor client's API error, an
    ``AllocationError``) is the plugin's deliberate, documented report and already says
    what failed (the query, the endpoint, the line); it passes through unchanged, so its
    documented text stays as it is and the step adds the tenant. Anything else — a bare
    ``RuntimeError``, a ``KeyError`` from a bug — says nothing about where it came from
    and is wrapped.
    """
    try:
        return fn(*args, **kwargs)
    except ChargebackError:
        raise
    except Exception as exc:
        raise call_error(where, method, exc) from exc


def _guarded_iteration(where: str, method: str, items: Iterator[Any]) -> Iterator[Any]:
    """Items of a plugin generator; an exception raised while iterating is named too."""
    try:
        yield from items
    except ChargebackError:
        raise
    except Exception as exc:
        raise call_error(where, method, exc) from exc


class Guarded:
    """Proxy for a plugin object: listed methods are guarded, everything else passes through.

    Attribute access is delegated, so ``isinstance`` against the runtime-checkable
    protocols and optional members (``cost_types_without_data``) behave as on the
    plugin's own object. A guarded method returning an iterator is guarded while it is
    consumed (gathers are generators that fail half-way). ``wrap_results`` names
    methods whose result is itself an allocator to guard (``get_allocator``).
    """

    __slots__ = ("_methods", "_target", "_where", "_wrap_results")

    def __init__(
        self, target: Any, where: str, methods: frozenset[str], wrap_results: frozenset[str] = frozenset()
    ) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_where", where)
        object.__setattr__(self, "_methods", methods)
        object.__setattr__(self, "_wrap_results", wrap_results)

    @property
    def plugin_object(self) -> Any:
        """The plugin's own object (for its type name in metadata)."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name not in self._methods or not callable(value):
            return value
        where = self._where
        wrap_result = name in self._wrap_results

        def method(*args: Any, **kwargs: Any) -> Any:
            result = guarded_call(where, name, value, *args, **kwargs)
            if wrap_result and callable(result):
                label = f"{where} allocator from {name}({', '.join(map(repr, args))})"
                return GuardedCallable(result, label)
            if isinstance(result, Iterator):
                return _guarded_iteration(where, name, result)
            return result

        method.__name__ = name
        method.__wrapped__ = value  # type: ignore[attr-defined]
        return method

    def __repr__(self) -> str:
        return f"Guarded({self._target!r})"


class GuardedCallable:
    """A plugin allocator whose exceptions name where it came from (``__call__``)."""

    __slots__ = ("__name__", "_target", "_where")

    def __init__(self, target: Callable[..., Any], where: str) -> None:
        self._target = target
        self._where = where
        self.__name__ = getattr(target, "__name__", type(target).__name__)

    @property
    def plugin_object(self) -> Callable[..., Any]:
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return guarded_call(self._where, "__call__", self._target, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def __repr__(self) -> str:
        return f"GuardedCallable({self._target!r})"


def unwrap(obj: Any) -> Any:
    """The plugin's own object behind a guard (a guarded method: the plugin's bound method)."""
    if isinstance(obj, Guarded):
        return obj.plugin_object
    if isinstance(obj, GuardedCallable):
        return obj.plugin_object
    return getattr(obj, "__wrapped__", obj)


def plugin_type_name(obj: object) -> str:
    """Type name of a plugin object, seen through a guard."""
    return type(unwrap(obj)).__name__
