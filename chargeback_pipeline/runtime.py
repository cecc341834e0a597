"""One initialised plugin for one tenant run (plugin-system.md §3, §4, §12).

:func:`open_runtime` performs the start-up sequence in the documented order and checks
every object the plugin hands back against its protocol, so a broken plugin fails at
start-up with a message naming the plugin and the missing member. The plugin is
closed exactly once when the context exits, also when start-up itself failed after
``initialize`` was called.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from chargeback_pipeline.allocation import default_fallback_allocator
from chargeback_pipeline.config import PluginSettingsBase, TenantConfig, pydantic_issues
from chargeback_pipeline.errors import ConfigError, PluginConfigError, PluginLoadError
from chargeback_pipeline.loader import PluginRegistry
from chargeback_pipeline.overrides import TenantOverrides, bind_overrides
from chargeback_pipeline.plugin_guard import Guarded, GuardedCallable, guarded_call
from chargeback_pipeline.protocols import (
    CostAllocator,
    CostInput,
    EcosystemPlugin,
    IdentityResolver,
    MetricsSource,
    ServiceHandler,
    StorageModule,
    missing_members,
)

logger = logging.getLogger(__name__)

# The plugin methods the core calls after start-up, guarded so a failure names them.
HANDLER_METHODS = frozenset(
    {
        "gather_resources",
        "gather_identities",
        "resolve_identities",
        "get_metrics_for_product_type",
        "get_allocator",
    }
)
ALLOCATORS = frozenset({"get_allocator"})
COST_INPUT_METHODS = frozenset({"gather", "cost_types_without_data"})
METRICS_SOURCE_METHODS = frozenset({"query", "query_resources"})
STORAGE_MODULE_METHODS = frozenset(
    {
        "register_tables",
        "create_billing_repository",
        "create_resource_repository",
        "create_identity_repository",
        "create_chargeback_repository",
    }
)


@dataclass
class TenantRuntime:
    """The tenant's plugin, its dispatch table and overrides (implements ``AllocationDispatch``)."""

    tenant_name: str
    settings: TenantConfig
    plugin: EcosystemPlugin
    ecosystem: str
    handlers: dict[str, ServiceHandler]
    cost_input: CostInput
    metrics_source: MetricsSource | None
    storage_module: StorageModule
    fallback_allocator: CostAllocator
    billing_resource_types: tuple[str, ...]
    overrides: TenantOverrides = field(default_factory=TenantOverrides)
    allocator_params: Mapping[str, Any] = field(default_factory=dict)
    _dispatch: dict[str, ServiceHandler] = field(default_factory=dict)
    _allocators: dict[str, CostAllocator] = field(default_factory=dict)

    @property
    def tenant_id(self) -> str:
        return self.settings.tenant_id

    def build_shared_context(self) -> object | None:
        """The plugin's per-gather context; a failure names tenant, plugin and method."""
        where = f"tenant '{self.tenant_name}': plugin '{self.settings.ecosystem}'"
        return guarded_call(where, "build_shared_context", self.plugin.build_shared_context, self.tenant_id)

    @property
    def settings_base(self) -> PluginSettingsBase:
        return self.settings.plugin_settings

    @property
    def extra_key_fields(self) -> tuple[str, ...]:
        return tuple(self.storage_module.extra_key_fields)

    @property
    def granularity_durations(self) -> Mapping[str, int]:
        return self.settings.plugin_settings.granularity_durations

    @property
    def allocation_retry_limit(self) -> int:
        return self.settings.allocation_retry_limit

    def product_types(self) -> list[str]:
        """Every product type a handler claims, sorted."""
        return sorted(self._dispatch)

    def handler_for(self, product_type: str) -> ServiceHandler | None:
        return self._dispatch.get(product_type)

    def allocator_for(self, product_type: str) -> CostAllocator:
        """Override, else the handler's allocator; unclaimed product types get the fallback.

        Handler allocators are cached per product type: the calculation asks once per
        billing line and handlers may build a fresh chain on every call.
        """
        override = self.overrides.allocators.get(product_type)
        if override is not None:
            return override
        handler = self._dispatch.get(product_type)
        if handler is None:
            return self.fallback_allocator
        if product_type not in self._allocators:
            self._allocators[product_type] = handler.get_allocator(product_type)
        return self._allocators[product_type]

    def resolver_for(self, product_type: str) -> IdentityResolver:
        override = self.overrides.resolvers.get(product_type)
        if override is not None:
            return override
        handler = self._dispatch.get(product_type)
        if handler is None:
            raise ValueError(
                f"tenant '{self.tenant_name}': no handler claims product type '{product_type}'; "
                "lines of unclaimed product types go to the fallback allocator without resolution"
            )
        return handler.resolve_identities


@contextmanager
def open_runtime(tenant_name: str, tenant: TenantConfig, registry: PluginRegistry) -> Iterator[TenantRuntime]:
    """Build the tenant's runtime; ``plugin.close()`` runs exactly once on exit."""
    plugin = _create_plugin(tenant_name, tenant, registry)
    try:
        _initialize(tenant_name, tenant, plugin)
        runtime = _build_runtime(tenant_name, tenant, plugin)
        yield runtime
    finally:
        _close(tenant_name, tenant.ecosystem, plugin)


def _create_plugin(tenant_name: str, tenant: TenantConfig, registry: PluginRegistry) -> EcosystemPlugin:
    factory = registry.get(tenant.ecosystem)
    if factory is None:
        raise ConfigError(f"tenant '{tenant_name}': {registry.unknown_ecosystem_message(tenant.ecosystem)}")
    try:
        plugin = factory()
    except Exception as exc:
        raise PluginLoadError(
            f"tenant '{tenant_name}': plugin '{tenant.ecosystem}' factory failed: {type(exc).__name__}: {exc}"
        ) from exc
    _require_members(tenant_name, plugin, EcosystemPlugin, f"plugin '{tenant.ecosystem}'")
    return plugin


def _require_members(tenant_name: str, obj: object, protocol: type, what: str) -> None:
    missing = missing_members(obj, protocol)
    if missing:
        raise PluginLoadError(
            f"tenant '{tenant_name}': {what} ({type(obj).__name__}) does not implement "
            f"{protocol.__name__}: missing member(s) {', '.join(missing)}"
        )


def _initialize(tenant_name: str, tenant: TenantConfig, plugin: EcosystemPlugin) -> None:
    """``initialize`` with settings errors re-raised under the tenant's name."""
    try:
        plugin.initialize(tenant.plugin_settings_dict())
    except PluginConfigError as exc:
        raise _prefixed_config_error(tenant_name, exc.field, exc.reason) from None
    except ValidationError as exc:
        path, message = pydantic_issues(exc)[0]
        raise _prefixed_config_error(tenant_name, path, message) from None
    except Exception as exc:
        # Any other failure (unreachable vendor, rejected credentials) fails this tenant's
        # runs only; the message must say which tenant and plugin.
        raise PluginLoadError(
            f"tenant '{tenant_name}': plugin '{tenant.ecosystem}' failed to initialise: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _prefixed_config_error(tenant_name: str, field_path: str, reason: str) -> PluginConfigError:
    error = PluginConfigError(field_path, reason)
    error.args = (f"tenant '{tenant_name}': {error}",)
    return error


def _build_runtime(tenant_name: str, tenant: TenantConfig, plugin: EcosystemPlugin) -> TenantRuntime:
    name = f"plugin '{tenant.ecosystem}'"
    where = f"tenant '{tenant_name}': {name}"
    handlers = _handlers(tenant_name, plugin, name)
    _dispatch_table(handlers)  # a product type claimed twice fails before anything else is asked
    cost_input = _get(tenant_name, plugin, name, "get_cost_input")
    _require_members(tenant_name, cost_input, CostInput, f"{name} cost input")
    metrics_source = _get(tenant_name, plugin, name, "get_metrics_source")
    if metrics_source is not None:
        _require_members(tenant_name, metrics_source, MetricsSource, f"{name} metrics source")
    storage_module = _get(tenant_name, plugin, name, "get_storage_module")
    _require_members(tenant_name, storage_module, StorageModule, f"{name} storage module")
    fallback = _fallback(tenant_name, plugin, name)
    # From here on every call into the plugin's objects names tenant, plugin and method on failure.
    handlers = {
        service_type: Guarded(handler, f"{where} handler '{service_type}'", HANDLER_METHODS, ALLOCATORS)
        for service_type, handler in handlers.items()
    }
    dispatch = _dispatch_table(handlers)
    cost_input = Guarded(cost_input, f"{where} cost input", COST_INPUT_METHODS)
    if metrics_source is not None:
        metrics_source = Guarded(metrics_source, f"{where} metrics source", METRICS_SOURCE_METHODS)
    storage_module = Guarded(storage_module, f"{where} storage module", STORAGE_MODULE_METHODS)
    if fallback is not default_fallback_allocator:
        fallback = GuardedCallable(fallback, f"{where} fallback allocator")
    overrides = _overrides(tenant_name, tenant.plugin_settings, handlers, dispatch)
    return TenantRuntime(
        tenant_name=tenant_name,
        settings=tenant,
        plugin=plugin,
        ecosystem=_ecosystem(plugin, tenant),
        handlers=handlers,
        cost_input=cost_input,
        metrics_source=metrics_source,
        storage_module=storage_module,
        fallback_allocator=fallback,
        billing_resource_types=_billing_resource_types(handlers),
        overrides=overrides,
        allocator_params=exact_params(tenant.plugin_settings.allocator_params),
        _dispatch=dispatch,
    )


def _get(tenant_name: str, plugin: EcosystemPlugin, name: str, method: str) -> Any:
    """``plugin.<method>()`` at start-up; an exception fails the tenant naming the method."""
    try:
        return getattr(plugin, method)()
    except Exception as exc:
        raise PluginLoadError(
            f"tenant '{tenant_name}': {name} {method}() raised {type(exc).__name__}: {exc}"
        ) from exc


def _handlers(tenant_name: str, plugin: EcosystemPlugin, name: str) -> dict[str, ServiceHandler]:
    handlers = _get(tenant_name, plugin, name, "get_service_handlers")
    if not isinstance(handlers, Mapping):
        raise PluginLoadError(
            f"tenant '{tenant_name}': {name} get_service_handlers() must return a dict, "
            f"got {type(handlers).__name__}"
        )
    for service_type, handler in handlers.items():
        _require_members(tenant_name, handler, ServiceHandler, f"{name} handler '{service_type}'")
    return dict(handlers)


def _dispatch_table(handlers: Mapping[str, ServiceHandler]) -> dict[str, ServiceHandler]:
    """``product_type → handler``; a product type claimed twice is a start-up error (§4)."""
    dispatch: dict[str, ServiceHandler] = {}
    owner: dict[str, str] = {}
    for service_type, handler in handlers.items():
        for product_type in handler.handles_product_types:
            previous = owner.get(product_type)
            if previous is not None and previous != service_type:
                raise PluginLoadError(
                    f"product type '{product_type}' is claimed by handlers '{previous}' and '{service_type}'"
                )
            owner[product_type] = service_type
            dispatch[product_type] = handler
    return dispatch


def _billing_resource_types(handlers: Mapping[str, ServiceHandler]) -> tuple[str, ...]:
    types = {t for handler in handlers.values() for t in handler.gathered_resource_types}
    return tuple(sorted(types))


def _fallback(tenant_name: str, plugin: EcosystemPlugin, name: str) -> CostAllocator:
    fallback = _get(tenant_name, plugin, name, "get_fallback_allocator")
    if fallback is None:
        return default_fallback_allocator
    if not callable(fallback):
        raise PluginLoadError(
            f"tenant '{tenant_name}': {name} get_fallback_allocator() returned a non-callable "
            f"{type(fallback).__name__}"
        )
    return fallback


def _overrides(
    tenant_name: str,
    settings: PluginSettingsBase,
    handlers: Mapping[str, ServiceHandler],
    dispatch: Mapping[str, ServiceHandler],
) -> TenantOverrides:
    owners = {pt: st for st, h in handlers.items() for pt in h.handles_product_types if dispatch.get(pt) is h}
    by_service = {st: list(h.handles_product_types) for st, h in handlers.items()}
    return bind_overrides(
        tenant_name, settings.allocator_overrides, settings.identity_resolution_overrides, owners, by_service
    )


def _ecosystem(plugin: EcosystemPlugin, tenant: TenantConfig) -> str:
    """The label written into data: the plugin's own ``ecosystem``, else the configured name."""
    label = plugin.ecosystem
    if isinstance(label, str) and label:
        return label
    return tenant.ecosystem


def exact_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Allocator params with YAML floats turned into exact decimals (``0.7`` → ``Decimal("0.7")``).

    Ratios multiply money, so allocators receive ``Decimal`` and never need to touch a
    float; ``Decimal(str(x))`` keeps the number exactly as written in the file.
    """
    exact = {k: Decimal(str(v)) if isinstance(v, float) else v for k, v in params.items()}
    return MappingProxyType(exact)


def _close(tenant_name: str, ecosystem: str, plugin: EcosystemPlugin) -> None:
    """Close the plugin; a failing ``close`` is logged, never raised over the run's outcome."""
    try:
        plugin.close()
    except Exception as exc:
        logger.warning(
            "tenant '%s': plugin '%s' close() failed: %s: %s", tenant_name, ecosystem, type(exc).__name__, exc
        )
