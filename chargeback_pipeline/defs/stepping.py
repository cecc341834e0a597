"""Glue between a Dagster asset invocation and the plain step functions in ``steps``.

A run covers one partition or a range (backfill policy ``single_run``): each tenant of
the run is processed in turn, its dates oldest first, and each partition gets its own
metadata on its materialisation. When a range spans several tenants, one tenant's
failure does not stop the others' work in the step; the step fails afterwards naming
the failed tenants only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date
from typing import Any

import dagster as dg

from chargeback_pipeline.defs.partitions import dates_by_tenant, key_string
from chargeback_pipeline.defs.resources import ChargebackConfig, PluginRuntimes, TenantStorage
from chargeback_pipeline.defs.tags import REFRESH_TAG
from chargeback_pipeline.steps import TenantSession

log = logging.getLogger(__name__)

# A step gets the tenant's session and the run's dates of that tenant, and returns
# metadata per date.
TenantStep = Callable[[TenantSession, list[date]], dict[date, dict[str, Any]]]


def run_step(
    context: dg.AssetExecutionContext,
    config: ChargebackConfig,
    runtimes: PluginRuntimes,
    storage: TenantStorage,
    step: TenantStep,
) -> dg.MaterializeResult:
    """Run ``step`` for every tenant of the run's partitions, refusing dates outside the window."""
    grouped = dates_by_tenant(list(context.partition_keys))
    failures: dict[str, Exception] = {}
    for tenant, dates in grouped.items():
        try:
            _run_tenant(context, config, runtimes, storage, step, tenant, dates)
        except Exception as exc:
            if len(grouped) == 1:
                named = _naming_tenant(exc, tenant)
                if named is exc:
                    raise
                raise named from exc
            log.error("tenant '%s': %s failed: %s", tenant, context.asset_key.to_user_string(), exc)
            failures[tenant] = exc
    if failures:
        raise dg.Failure(
            description="; ".join(f"tenant '{t}': {type(e).__name__}: {e}" for t, e in failures.items()),
            metadata={
                "failed_tenants": ", ".join(failures),
                "other_tenants_completed": len(grouped) - len(failures),
            },
        )
    return dg.MaterializeResult()


class TenantStepError(RuntimeError):
    """A step of one tenant failed with an error whose text did not say which tenant."""


def _naming_tenant(exc: Exception, tenant: str) -> Exception:
    """``exc`` itself when its message names the tenant, else a wrapper that does.

    Errors raised below the steps (a full disk under DuckDB, a plugin's own exception)
    know nothing of tenants; the run page and the alert must still say whose run failed.
    The original error stays attached as the cause, so its type and traceback are shown.
    """
    if f"tenant '{tenant}'" in str(exc) or f"tenant {tenant}" in str(exc):
        return exc
    return TenantStepError(f"tenant '{tenant}': {type(exc).__name__}: {exc}")


def _run_tenant(
    context: dg.AssetExecutionContext,
    config: ChargebackConfig,
    runtimes: PluginRuntimes,
    storage: TenantStorage,
    step: TenantStep,
    tenant: str,
    dates: list[date],
) -> None:
    for d in dates:
        config.check_date(tenant, d)
    with storage.session(tenant, runtimes) as session:
        for d, metadata in step(session, dates).items():
            context.add_asset_metadata(_as_metadata(metadata), partition_key=key_string(tenant, d))


def is_scheduled_refresh(context: dg.AssetExecutionContext) -> bool:
    """Runs of the refresh schedule may skip unchanged dates; manual runs never do."""
    return REFRESH_TAG in context.run.tags


def _as_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Nested values (totals per detail, lists) become JSON metadata; scalars stay as they are."""
    return {k: dg.MetadataValue.json(v) if isinstance(v, dict | list) else v for k, v in metadata.items()}
