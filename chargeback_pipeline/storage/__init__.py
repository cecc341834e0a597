"""One DuckDB file per tenant (spec/plugin-system.md §9, domain-model.md §13, operations.md §13).

Entry point: ``open_tenant_db`` (a context manager that holds the tenant's lock and
yields a ``TenantDatabase``). Plugins extend the layout by subclassing
``CoreStorageModule``.
"""

from chargeback_pipeline.storage.backend import StorageBackend, TenantReadView, TenantStorageBackend
from chargeback_pipeline.storage.billing import (
    BillingReplaceResult,
    BillingRepository,
    BillingRevision,
    normalise_lines,
)
from chargeback_pipeline.storage.chargebacks import ChargebackRepository, DateTotals, LineTotal
from chargeback_pipeline.storage.core_module import CoreStorageModule
from chargeback_pipeline.storage.entities import IdentityRepository, ResourceRepository
from chargeback_pipeline.storage.locking import lock_path_for, tenant_lock
from chargeback_pipeline.storage.state import (
    AllocationAttemptsRepository,
    EmissionRecord,
    EmissionStateRepository,
    GatherStateRepository,
    PipelineState,
    PipelineStateRepository,
)
from chargeback_pipeline.storage.tenant_db import TenantDatabase, open_tenant_db
from chargeback_pipeline.storage.usage import UsageGroupData, UsageMetricsRepository

__all__ = [
    "AllocationAttemptsRepository",
    "BillingReplaceResult",
    "BillingRepository",
    "BillingRevision",
    "ChargebackRepository",
    "CoreStorageModule",
    "DateTotals",
    "EmissionRecord",
    "EmissionStateRepository",
    "GatherStateRepository",
    "IdentityRepository",
    "LineTotal",
    "PipelineState",
    "PipelineStateRepository",
    "ResourceRepository",
    "StorageBackend",
    "TenantDatabase",
    "TenantReadView",
    "TenantStorageBackend",
    "UsageGroupData",
    "UsageMetricsRepository",
    "lock_path_for",
    "normalise_lines",
    "open_tenant_db",
    "tenant_lock",
]
