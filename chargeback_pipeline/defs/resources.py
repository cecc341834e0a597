"""Dagster resources: the configuration, the per-tenant plugin runtimes and the tenant stores.

Resources carry only the path of the configuration file. Secrets stay in the
environment and are substituted when the file is read inside the run, so they never
reach run configuration, the resource page of the UI, or asset metadata.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from chargeback_pipeline import clock
from chargeback_pipeline.config import LoadedConfig, TenantConfig, load_config
from chargeback_pipeline.errors import ConfigError
from chargeback_pipeline.loader import discover_plugins
from chargeback_pipeline.runtime import TenantRuntime, open_runtime
from chargeback_pipeline.steps import TenantSession
from chargeback_pipeline.storage import open_tenant_db


class ChargebackConfig(dg.ConfigurableResource):
    """The YAML configuration file every run reads (spec/config.md)."""

    config_path: str

    _loaded: LoadedConfig | None = PrivateAttr(default=None)

    def loaded(self) -> LoadedConfig:
        if self._loaded is None:
            self._loaded = load_config(Path(self.config_path))
        return self._loaded

    def tenant(self, tenant_name: str) -> TenantConfig:
        """The tenant's settings, or its validation errors as the run's failure."""
        loaded = self.loaded()
        if tenant_name in loaded.tenant_errors:
            raise ConfigError(
                f"tenant '{tenant_name}' is excluded by configuration errors:\n"
                + "\n".join(loaded.tenant_errors[tenant_name]),
                loaded.tenant_errors[tenant_name],
            )
        if tenant_name not in loaded.tenants:
            raise ConfigError(f"tenant '{tenant_name}' is not in {self.config_path}")
        return loaded.tenants[tenant_name]

    def check_date(self, tenant_name: str, d: date) -> None:
        clock.check_date_allowed(tenant_name, self.tenant(tenant_name), d, clock.utc_now().date())


class PluginRuntimes(dg.ConfigurableResource):
    """One initialised plugin per tenant for the whole run; ``close()`` at teardown."""

    config: ChargebackConfig

    _stack: contextlib.ExitStack = PrivateAttr(default_factory=contextlib.ExitStack)
    _runtimes: dict[str, TenantRuntime] = PrivateAttr(default_factory=dict)

    def for_tenant(self, tenant_name: str) -> TenantRuntime:
        if tenant_name not in self._runtimes:
            tenant = self.config.tenant(tenant_name)
            registry = discover_plugins(self.config.loaded().settings.plugins_path)
            self._runtimes[tenant_name] = self._stack.enter_context(
                open_runtime(tenant_name, tenant, registry)
            )
        return self._runtimes[tenant_name]

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._runtimes.clear()
        self._stack.close()


class TenantStorage(dg.ConfigurableResource):
    """Each tenant's DuckDB file, opened under a per-tenant lock for the length of one step."""

    config: ChargebackConfig
    lock_timeout_seconds: float = 3600.0

    @contextlib.contextmanager
    def session(self, tenant_name: str, runtimes: PluginRuntimes) -> Iterator[TenantSession]:
        tenant = self.config.tenant(tenant_name)
        runtime = runtimes.for_tenant(tenant_name)
        with open_tenant_db(
            tenant.storage_path,
            ecosystem=runtime.ecosystem,
            tenant_id=runtime.tenant_id,
            storage_module=runtime.storage_module,
            lock_timeout_s=self.lock_timeout_seconds,
        ) as db:
            yield TenantSession(name=tenant_name, config=tenant, runtime=runtime, db=db)


def build_resources(config_path: Path) -> dict[str, dg.ConfigurableResource]:
    config = ChargebackConfig(config_path=str(config_path))
    return {
        "chargeback_config": config,
        "plugin_runtimes": PluginRuntimes(config=config),
        "tenant_storage": TenantStorage(config=config),
    }
