"""The plugin contract (spec/plugin-system.md §1).

Every protocol is runtime-checkable: the core checks plugin objects with
``isinstance`` when a tenant starts, so a plugin missing a member fails at start-up
with a message naming the plugin and the member instead of deep inside a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, runtime_checkable

from chargeback_pipeline.models import (
    AllocationContext,
    AllocationResult,
    BillingLineItem,
    ChargebackRow,
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricQuery,
    MetricRow,
    Resource,
)

if TYPE_CHECKING:
    import duckdb


class ResolveContext(TypedDict):
    """Per-window caches handed to ``resolve_identities`` so handlers need not query the store per line."""

    cached_identities: IdentitySet
    cached_resources: dict[str, Resource]


# --- What plugins may read from a tenant's store (plugin-system.md §1.2) -----------------


@runtime_checkable
class ResourceReader(Protocol):
    def get(self, resource_id: str) -> Resource | None: ...
    def find_active_at(
        self, t: datetime, resource_type: str | Sequence[str] | None = None
    ) -> list[Resource]: ...
    def find_by_period(
        self,
        start: datetime,
        end: datetime,
        resource_type: str | Sequence[str] | None = None,
        metadata_filter: Mapping[str, Any] | None = None,
    ) -> list[Resource]: ...


@runtime_checkable
class IdentityReader(Protocol):
    def get(self, identity_id: str) -> Identity | None: ...
    def find_active_at(self, t: datetime, identity_types: Sequence[str] | None = None) -> list[Identity]: ...
    def find_by_period(
        self, start: datetime, end: datetime, identity_types: Sequence[str] | None = None
    ) -> list[Identity]: ...


@runtime_checkable
class BillingReader(Protocol):
    def find_by_date(self, d: date) -> list[BillingLineItem]: ...


@runtime_checkable
class TenantStore(Protocol):
    """Read-only view of one tenant's database handed to handlers and cost inputs."""

    @property
    def resources(self) -> ResourceReader: ...
    @property
    def identities(self) -> IdentityReader: ...
    @property
    def billing(self) -> BillingReader: ...


# --- Plugin protocols ------------------------------------------------------------------


@runtime_checkable
class CostAllocator(Protocol):
    def __call__(self, ctx: AllocationContext) -> AllocationResult: ...


@runtime_checkable
class IdentityResolver(Protocol):
    def __call__(
        self,
        tenant_id: str,
        resource_id: str,
        billing_timestamp: datetime,
        billing_duration: timedelta,
        metrics_data: dict[str, list[MetricRow]] | None,
        store: TenantStore,
        context: ResolveContext | None = None,
    ) -> IdentityResolution: ...


@runtime_checkable
class ServiceHandler(Protocol):
    @property
    def service_type(self) -> str: ...
    @property
    def handles_product_types(self) -> Sequence[str]: ...
    @property
    def gathered_resource_types(self) -> Sequence[str]: ...
    def gather_resources(
        self, tenant_id: str, store: TenantStore, shared_ctx: object | None = None
    ) -> Iterable[Resource]: ...
    def gather_identities(self, tenant_id: str, store: TenantStore) -> Iterable[Identity]: ...
    def resolve_identities(
        self,
        tenant_id: str,
        resource_id: str,
        billing_timestamp: datetime,
        billing_duration: timedelta,
        metrics_data: dict[str, list[MetricRow]] | None,
        store: TenantStore,
        context: ResolveContext | None = None,
    ) -> IdentityResolution: ...
    def get_metrics_for_product_type(self, product_type: str) -> list[MetricQuery]: ...
    def get_allocator(self, product_type: str) -> CostAllocator: ...


@runtime_checkable
class CostInput(Protocol):
    def gather(
        self, tenant_id: str, start: datetime, end: datetime, store: TenantStore
    ) -> Iterable[BillingLineItem]: ...


@runtime_checkable
class ReportsCostGaps(Protocol):
    """Optional for a cost input: the cost types that had no data on a day it gathered.

    Metric-derived costs yield no line on a day whose series are empty; saying which
    ones lets the billing step's metadata show a gap instead of a silently smaller bill.
    """

    def cost_types_without_data(self, d: date) -> Sequence[str]: ...


@runtime_checkable
class MetricsSource(Protocol):
    def query(
        self,
        queries: Sequence[MetricQuery],
        start: datetime,
        end: datetime,
        step: timedelta,
        resource_id_filter: str | None = None,
    ) -> dict[str, list[MetricRow]]: ...
    def close(self) -> None: ...


@runtime_checkable
class ResourceBatchingMetricsSource(MetricsSource, Protocol):
    """A source that answers one window for many resources at once.

    ``query_resources(groups, …)[r]`` must equal ``query(groups[r], …, resource_id_filter=r)``
    — the rows, or the exception that call would raise — for every resource ``r``; the
    source may ask fewer questions to get there (a day of a large organisation is
    ~100 resources × the same few queries). The core uses it when a source offers it.
    """

    def query_resources(
        self,
        groups: Mapping[str, Sequence[MetricQuery]],
        start: datetime,
        end: datetime,
        step: timedelta,
    ) -> dict[str, dict[str, list[MetricRow]] | Exception]: ...


@runtime_checkable
class StorageModule(Protocol):
    """Plugin-supplied tables and repositories (e.g. billing keyed with ``env_id``)."""

    extra_key_fields: tuple[str, ...]

    def register_tables(self, conn: duckdb.DuckDBPyConnection) -> None: ...
    def create_billing_repository(self, conn: duckdb.DuckDBPyConnection) -> Any: ...
    def create_resource_repository(self, conn: duckdb.DuckDBPyConnection) -> Any: ...
    def create_identity_repository(self, conn: duckdb.DuckDBPyConnection) -> Any: ...
    def create_chargeback_repository(self, conn: duckdb.DuckDBPyConnection) -> Any: ...


@runtime_checkable
class Emitter(Protocol):
    def __call__(self, tenant_id: str, date: date, rows: Sequence[ChargebackRow]) -> None: ...


@runtime_checkable
class EcosystemPlugin(Protocol):
    @property
    def ecosystem(self) -> str: ...
    def initialize(self, config: dict[str, Any]) -> None: ...
    def get_service_handlers(self) -> dict[str, ServiceHandler]: ...
    def get_cost_input(self) -> CostInput: ...
    def get_metrics_source(self) -> MetricsSource | None: ...
    def get_storage_module(self) -> StorageModule: ...
    def get_fallback_allocator(self) -> CostAllocator | None: ...
    def build_shared_context(self, tenant_id: str) -> object | None: ...
    def close(self) -> None: ...


PluginFactory = Callable[[], EcosystemPlugin]
EmitterFactory = Callable[..., Emitter]

# Members checked by name when a tenant starts, so the error can name what is missing.
PROTOCOL_MEMBERS: dict[type, tuple[str, ...]] = {
    EcosystemPlugin: (
        "ecosystem",
        "initialize",
        "get_service_handlers",
        "get_cost_input",
        "get_metrics_source",
        "get_storage_module",
        "get_fallback_allocator",
        "build_shared_context",
        "close",
    ),
    ServiceHandler: (
        "service_type",
        "handles_product_types",
        "gathered_resource_types",
        "gather_resources",
        "gather_identities",
        "resolve_identities",
        "get_metrics_for_product_type",
        "get_allocator",
    ),
    CostInput: ("gather",),
    MetricsSource: ("query", "close"),
    StorageModule: (
        "extra_key_fields",
        "register_tables",
        "create_billing_repository",
        "create_resource_repository",
        "create_identity_repository",
        "create_chargeback_repository",
    ),
}


def missing_members(obj: object, protocol: type) -> list[str]:
    """Names of the protocol members ``obj`` lacks (empty when it conforms)."""
    return [name for name in PROTOCOL_MEMBERS.get(protocol, ()) if not hasattr(obj, name)]
