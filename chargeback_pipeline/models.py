"""Domain model of the chargeback engine (spec/domain-model.md).

Plain dataclasses with no Dagster types, so that plugins can build and return them
without depending on the orchestrator. Money is always ``Decimal``.
"""

from __future__ import annotations

import calendar
import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

QUANTUM = Decimal("0.0001")
ZERO = Decimal(0)

UNALLOCATED = "UNALLOCATED"
SYSTEM_IDENTITY_TYPE = "system"
OWNER_IDENTITY_TYPES = ("service_account", "user", "identity_pool", "principal")
ORG_OWNER_IDENTITY_TYPES = ("service_account", "user", "identity_pool")


def q4(value: Decimal) -> Decimal:
    """Quantise to the money quantum, half away from zero (the only rounding rule)."""
    return value.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def require_utc(value: datetime, what: str = "datetime") -> datetime:
    """Reject naive datetimes and normalise aware ones to UTC.

    A naive datetime reaching storage or a plugin boundary is a bug that silently
    shifts whole days, so it is refused loudly.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware UTC, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def day_start(d: date) -> datetime:
    return datetime.combine(d, time(0), tzinfo=UTC)


def day_window(d: date) -> tuple[datetime, datetime]:
    start = day_start(d)
    return start, start + timedelta(days=1)


class CostType(enum.StrEnum):
    USAGE = "usage"
    SHARED = "shared"


class ResourceStatus(enum.StrEnum):
    ACTIVE = "active"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class BillingLineItem:
    """One priced item from a cost input. ``total_cost`` is allocated as is."""

    ecosystem: str
    tenant_id: str
    timestamp: datetime
    resource_id: str
    product_category: str
    product_type: str
    quantity: Decimal
    unit_price: Decimal
    total_cost: Decimal
    currency: str = "USD"
    granularity: str = "daily"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Resource:
    ecosystem: str
    tenant_id: str
    resource_id: str
    resource_type: str
    display_name: str | None = None
    parent_id: str | None = None
    owner_id: str | None = None
    status: ResourceStatus = ResourceStatus.ACTIVE
    created_at: datetime | None = None
    deleted_at: datetime | None = None
    last_seen_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Identity:
    ecosystem: str
    tenant_id: str
    identity_id: str
    identity_type: str
    display_name: str | None = None
    created_at: datetime | None = None
    deleted_at: datetime | None = None
    last_seen_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None


def unallocated_identity(ecosystem: str, tenant_id: str) -> Identity:
    return Identity(
        ecosystem=ecosystem,
        tenant_id=tenant_id,
        identity_id=UNALLOCATED,
        identity_type=SYSTEM_IDENTITY_TYPE,
        display_name="Unallocated Costs",
    )


def active_at(created_at: datetime | None, deleted_at: datetime | None, t: datetime) -> bool:
    return (created_at is None or created_at <= t) and (deleted_at is None or deleted_at > t)


def overlaps(
    created_at: datetime | None, deleted_at: datetime | None, start: datetime, end: datetime
) -> bool:
    """Strict at the start: an entity deleted exactly at ``start`` did not exist in the window."""
    return (created_at is None or created_at < end) and (deleted_at is None or deleted_at > start)


class IdentitySet:
    """Identities keyed by id, in insertion order. Never used to order money."""

    __slots__ = ("_items",)

    def __init__(self, identities: Iterable[Identity] = ()) -> None:
        self._items: dict[str, Identity] = {}
        for identity in identities:
            self.add(identity)

    def add(self, identity: Identity) -> None:
        self._items[identity.identity_id] = identity

    def get(self, identity_id: str) -> Identity | None:
        return self._items.get(identity_id)

    def copy(self) -> IdentitySet:
        """A new set with the same identities in the same order (one dict copy, no re-adding)."""
        copied = IdentitySet()
        copied._items = dict(self._items)
        return copied

    def ids(self) -> frozenset[str]:
        return frozenset(self._items)

    def ids_by_type(self, *types: str) -> frozenset[str]:
        return frozenset(i for i, ident in self._items.items() if ident.identity_type in types)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Identity]:
        return iter(self._items.values())

    def __contains__(self, identity_id: object) -> bool:
        return identity_id in self._items

    def __bool__(self) -> bool:
        return bool(self._items)

    def __repr__(self) -> str:
        return f"IdentitySet({sorted(self._items)!r})"


@dataclass(slots=True)
class IdentityResolution:
    resource_active: IdentitySet = field(default_factory=IdentitySet)
    metrics_derived: IdentitySet = field(default_factory=IdentitySet)
    tenant_period: IdentitySet = field(default_factory=IdentitySet)
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def merged_active(self) -> IdentitySet:
        merged = IdentitySet(self.resource_active)
        for identity in self.metrics_derived:
            merged.add(identity)
        return merged


@dataclass(frozen=True, slots=True)
class MetricQuery:
    key: str
    query_expression: str
    label_keys: tuple[str, ...] = ()
    resource_label: str | None = None
    query_mode: Literal["range", "instant"] = "range"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # True when the expression computes every output series from one resource's series
    # and keeps ``resource_label`` on it (e.g. ``sum by (kafka_id, …) (x{})``): a source
    # may then ask once for many resources (``{kafka_id=~"a|b|…"}``) and split the answer
    # by that label, with the same rows as one query per resource. Off by default: an
    # expression that compares resources (``topk``, a ratio to a total) must not be batched.
    batch_by_resource: bool = False


@dataclass(frozen=True, slots=True)
class MetricRow:
    timestamp: datetime
    metric_key: str
    value: Decimal
    labels: Mapping[str, str] = field(default_factory=dict)


_SET_METRIC_ROW_FIELDS = tuple(
    getattr(MetricRow, name).__set__ for name in ("timestamp", "metric_key", "value", "labels")
)


def metric_row(timestamp: datetime, metric_key: str, value: Decimal, labels: Mapping[str, str]) -> MetricRow:
    """``MetricRow(timestamp, metric_key, value, labels)`` for bulk readers.

    The same frozen object, with its slots filled directly instead of through the
    generated ``__init__`` (which goes through ``object.__setattr__`` per field): half
    the time, and a day of Kafka telemetry is ~45,000 rows, built when fetched and again
    when read back from storage.
    """
    row = object.__new__(MetricRow)
    set_timestamp, set_metric_key, set_value, set_labels = _SET_METRIC_ROW_FIELDS
    set_timestamp(row, timestamp)
    set_metric_key(row, metric_key)
    set_value(row, value)
    set_labels(row, labels)
    return row


@dataclass(slots=True)
class ChargebackRow:
    ecosystem: str
    tenant_id: str
    timestamp: datetime
    resource_id: str | None
    product_category: str
    product_type: str
    identity_id: str
    cost_type: CostType
    amount: Decimal
    allocation_method: str | None = None
    allocation_detail: str | None = None
    dimensions: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def dimension_key(self, extra_key_fields: tuple[str, ...] = ()) -> tuple[Any, ...]:
        """The key rows are merged and ordered by; ``None`` sorts as ``""``."""
        return (
            self.ecosystem,
            self.tenant_id,
            self.timestamp,
            self.resource_id or "",
            self.product_category,
            self.product_type,
            self.identity_id,
            str(self.cost_type),
            self.allocation_method or "",
            self.allocation_detail or "",
            *(self.dimensions.get(name, "") for name in extra_key_fields),
        )


@dataclass(frozen=True, slots=True)
class AllocationContext:
    timeslice: datetime
    billing_line: BillingLineItem
    identities: IdentityResolution
    split_amount: Decimal = ZERO
    metrics_data: dict[str, list[MetricRow]] | None = None
    metrics_fetch_failed: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)
    dimension_metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class AllocationResult:
    rows: list[ChargebackRow]
    metadata: dict[str, Any] = field(default_factory=dict)


def billing_natural_key(line: BillingLineItem, extra_key_fields: tuple[str, ...] = ()) -> tuple[Any, ...]:
    return (
        line.ecosystem,
        line.tenant_id,
        line.timestamp,
        line.resource_id,
        line.product_type,
        line.product_category,
        *(str(getattr(line, name, "") or "") for name in extra_key_fields),
    )


FIXED_GRANULARITY_HOURS = {"hourly": 1, "daily": 24}


def billing_window(
    line: BillingLineItem, granularity_durations: Mapping[str, int] | None = None
) -> tuple[datetime, datetime]:
    """The half-open window ``[timestamp, timestamp + duration)`` a line was billed for."""
    start = require_utc(line.timestamp, "billing line timestamp")
    granularity = line.granularity
    if granularity in FIXED_GRANULARITY_HOURS:
        hours = FIXED_GRANULARITY_HOURS[granularity]
    elif granularity == "monthly":
        hours = 24 * calendar.monthrange(start.year, start.month)[1]
    elif granularity_durations and granularity in granularity_durations:
        hours = granularity_durations[granularity]
    else:
        raise ValueError(f"unknown billing granularity {granularity!r} on line {line.resource_id}")
    return start, start + timedelta(hours=hours)
