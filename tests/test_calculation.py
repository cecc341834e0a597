"""``calculate_date``: per-line algorithm, active fraction, retry path, merge and ordering.

Uses a tiny in-memory store and dispatch defined here, so nothing touches DuckDB.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import pytest

from chargeback_pipeline.allocation import (
    Chain,
    CostType,
    DynamicComposite,
    EvenSplit,
    Terminal,
    UsageRatio,
    default_fallback_allocator,
    line_resource_id,
    make_row,
    merged_active,
    owners,
    ratios_from_params,
    usage_by_label,
)
from chargeback_pipeline.calculation import (
    AllocationDispatch,
    DateCalculation,
    LineKey,
    PendingAllocationError,
    UsageGroup,
    UsageKey,
    active_fraction,
    calculate_date,
)
from chargeback_pipeline.errors import AllocationError
from chargeback_pipeline.models import (
    UNALLOCATED,
    AllocationContext,
    AllocationResult,
    BillingLineItem,
    ChargebackRow,
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricRow,
    Resource,
    billing_natural_key,
    overlaps,
)
from chargeback_pipeline.protocols import CostAllocator, IdentityResolver, ResolveContext, TenantStore

DAY = date(2026, 3, 1)
S = datetime(2026, 3, 1, tzinfo=UTC)
E = S + timedelta(days=1)
LOG = logging.getLogger("test_calculation")


@dataclass(frozen=True, slots=True)
class CCLine(BillingLineItem):
    """A plugin line type with an extra key field, like Confluent Cloud's."""

    env_id: str = ""


def line(
    product_type: str,
    amount: str,
    resource_id: str = "lkc-k1",
    *,
    ts: datetime = S,
    granularity: str = "daily",
    env_id: str = "env-1",
) -> CCLine:
    return CCLine(
        "confluent_cloud",
        "acme",
        ts,
        resource_id,
        "KAFKA",
        product_type,
        D(1),
        D(amount),
        D(amount),
        granularity=granularity,
        env_id=env_id,
    )


# --- Fakes ----------------------------------------------------------------------------


class FakeResources:
    def __init__(self, resources: Sequence[Resource]) -> None:
        self.items = list(resources)
        self.calls: list[tuple[datetime, datetime, Any]] = []

    def get(self, resource_id: str) -> Resource | None:
        return next((r for r in self.items if r.resource_id == resource_id), None)

    def find_active_at(self, t: datetime, resource_type: Any = None) -> list[Resource]:
        raise AssertionError("not used by the calculation")

    def find_by_period(
        self, start: datetime, end: datetime, resource_type: Any = None, metadata_filter: Any = None
    ) -> list[Resource]:
        self.calls.append((start, end, resource_type))
        types = [resource_type] if isinstance(resource_type, str) else resource_type
        found = [
            r
            for r in self.items
            if overlaps(r.created_at, r.deleted_at, start, end)
            and (types is None or r.resource_type in types)
        ]
        return sorted(found, key=lambda r: r.resource_id)


class FakeIdentities:
    def __init__(self, identities: Sequence[Identity]) -> None:
        self.items = list(identities)
        self.calls: list[tuple[datetime, datetime]] = []

    def get(self, identity_id: str) -> Identity | None:
        return next((i for i in self.items if i.identity_id == identity_id), None)

    def find_active_at(self, t: datetime, identity_types: Any = None) -> list[Identity]:
        raise AssertionError("not used by the calculation")

    def find_by_period(self, start: datetime, end: datetime, identity_types: Any = None) -> list[Identity]:
        self.calls.append((start, end))
        found = [i for i in self.items if overlaps(i.created_at, i.deleted_at, start, end)]
        return sorted(found, key=lambda i: i.identity_id)


class FakeBilling:
    def find_by_date(self, d: date) -> list[BillingLineItem]:
        return []


class FakeStore:
    def __init__(self, resources: Sequence[Resource] = (), identities: Sequence[Identity] = ()) -> None:
        self._resources = FakeResources(resources)
        self._identities = FakeIdentities(identities)

    @property
    def resources(self) -> FakeResources:
        return self._resources

    @property
    def identities(self) -> FakeIdentities:
        return self._identities

    @property
    def billing(self) -> FakeBilling:
        return FakeBilling()


Resolve = Callable[..., IdentityResolution]


class FakeHandler:
    """Resolves from a fixed ``resource_id -> (resource_active, metrics_derived)`` map."""

    service_type = "kafka"
    gathered_resource_types: Sequence[str] = ("kafka_cluster",)

    def __init__(
        self, allocators: Mapping[str, CostAllocator], people: Mapping[str, tuple[list[str], list[str]]]
    ):
        self.allocators = dict(allocators)
        self.people = dict(people)
        self.contexts: list[ResolveContext | None] = []

    @property
    def handles_product_types(self) -> Sequence[str]:
        return tuple(self.allocators)

    def resolve_identities(
        self,
        tenant_id: str,
        resource_id: str,
        billing_timestamp: datetime,
        billing_duration: timedelta,
        metrics_data: dict[str, list[MetricRow]] | None,
        store: TenantStore,
        context: ResolveContext | None = None,
    ) -> IdentityResolution:
        self.contexts.append(context)
        active, derived = self.people.get(resource_id, ([], []))
        return IdentityResolution(resource_active=ids(active), metrics_derived=ids(derived))

    def get_allocator(self, product_type: str) -> CostAllocator:
        if product_type not in self.allocators:
            raise ValueError(f"Unknown product type: {product_type}")
        return self.allocators[product_type]


@dataclass
class FakeDispatch:
    handler: FakeHandler
    tenant_id: str = "acme"
    ecosystem: str = "confluent_cloud"
    extra_key_fields: tuple[str, ...] = ("env_id",)
    billing_resource_types: tuple[str, ...] = ("environment", "kafka_cluster")
    allocator_params: Mapping[str, Any] = field(default_factory=dict)
    granularity_durations: Mapping[str, int] = field(default_factory=dict)
    allocation_retry_limit: int = 3
    fallback_allocator: CostAllocator = default_fallback_allocator
    resolver_overrides: dict[str, Callable[..., IdentityResolution]] = field(default_factory=dict)

    def handler_for(self, product_type: str) -> Any:
        return self.handler if product_type in self.handler.allocators else None

    def allocator_for(self, product_type: str) -> CostAllocator:
        return self.handler.get_allocator(product_type)

    def resolver_for(self, product_type: str) -> IdentityResolver:
        return self.resolver_overrides.get(product_type, self.handler.resolve_identities)


class FakeTracker:
    def __init__(self, counts: dict[LineKey, int] | None = None, broken: bool = False) -> None:
        self.counts: dict[LineKey, int] = dict(counts or {})
        self.errors: dict[LineKey, str] = {}
        self.broken = broken

    def record_failure(self, line_key: LineKey, error_text: str) -> int:
        if self.broken:
            raise OSError("database is locked")
        self.counts[line_key] = self.counts.get(line_key, 0) + 1
        self.errors[line_key] = error_text
        return self.counts[line_key]


def ids(names: Sequence[str]) -> IdentitySet:
    return IdentitySet(Identity("confluent_cloud", "acme", n, "service_account") for n in names)


def person(identity_id: str, identity_type: str = "service_account", **kw: Any) -> Identity:
    return Identity("confluent_cloud", "acme", identity_id, identity_type, **kw)


def cluster(resource_id: str = "lkc-k1", resource_type: str = "kafka_cluster", **kw: Any) -> Resource:
    return Resource("confluent_cloud", "acme", resource_id, resource_type, **kw)


def kafka_usage(*keys: str) -> UsageRatio:
    return UsageRatio(usage_by_label(keys, "principal_id"), usage_keys=keys)


def network(key: str) -> Chain:
    usage = kafka_usage(key)
    return Chain(
        [
            usage,
            EvenSplit(merged_active, detail=usage.fallback_detail),
            EvenSplit(owners, detail="no_active_identities_located"),
            Terminal(line_resource_id),
        ]
    )


def cku() -> DynamicComposite:
    usage = kafka_usage("bytes_in", "bytes_out")
    usage_chain = Chain(
        [
            usage,
            EvenSplit(merged_active, detail=usage.fallback_detail),
            EvenSplit(owners, detail="no_metrics_no_active_identities_located"),
            Terminal(line_resource_id),
        ]
    )
    shared_chain = Chain(
        [
            EvenSplit(merged_active),
            EvenSplit(owners, detail="no_active_identities_located"),
            Terminal(line_resource_id),
        ]
    )
    return DynamicComposite(
        ratios_from_params(
            [("kafka_cku_usage_ratio", "0.70", usage_chain), ("kafka_cku_shared_ratio", "0.30", shared_chain)]
        )
    )


def standard_handler(people: Mapping[str, tuple[list[str], list[str]]] | None = None) -> FakeHandler:
    return FakeHandler(
        {
            "KAFKA_NUM_CKU": cku(),
            "KAFKA_NETWORK_WRITE": network("bytes_in"),
            "KAFKA_NETWORK_READ": network("bytes_out"),
        },
        people or {},
    )


def run(
    lines: Sequence[BillingLineItem],
    *,
    dispatch: FakeDispatch | None = None,
    store: FakeStore | None = None,
    usage: Mapping[UsageKey, UsageGroup] | None = None,
    tracker: FakeTracker | None = None,
) -> DateCalculation:
    return calculate_date(
        dispatch or FakeDispatch(standard_handler()),
        store or FakeStore(),
        DAY,
        lines,
        usage or {},
        tracker or FakeTracker(),
        LOG,
    )


def brief(rows: Sequence[ChargebackRow]) -> list[tuple[str, str, str | None, str | None, str]]:
    return [
        (r.identity_id, r.cost_type.value, r.allocation_method, r.allocation_detail, str(r.amount))
        for r in rows
    ]


def bytes_in(*pairs: tuple[str, int]) -> dict[str, list[MetricRow]]:
    return {"bytes_in": [MetricRow(S, "bytes_in", D(v), {"principal_id": p}) for p, v in pairs]}


# --- The protocol is what runtime.py implements -----------------------------------------


def test_fake_dispatch_satisfies_protocol() -> None:
    assert isinstance(FakeDispatch(standard_handler()), AllocationDispatch)


# --- §12 examples through the whole date ----------------------------------------------


def test_e1_cku_with_usage_and_dimensions() -> None:
    usage = {
        ("lkc-k1", S, E): UsageGroup(
            {"bytes_in": [MetricRow(S, "bytes_in", D(v), {"principal_id": p}) for p, v in (("sa-x1", 300),)]}
            | {"bytes_out": [MetricRow(S, "bytes_out", D(700), {"principal_id": "sa-x2"})]}
        )
    }
    dispatch = FakeDispatch(standard_handler({"lkc-k1": ([], ["sa-x1", "sa-x2"])}))
    result = run([line("KAFKA_NUM_CKU", "100.0000")], dispatch=dispatch, usage=usage)
    assert brief(result.rows) == [
        ("sa-x1", "shared", "even_split", "even_split_allocation", "15.0000"),
        ("sa-x1", "usage", "usage_ratio", "usage_ratio_allocation", "21.0000"),
        ("sa-x2", "shared", "even_split", "even_split_allocation", "15.0000"),
        ("sa-x2", "usage", "usage_ratio", "usage_ratio_allocation", "49.0000"),
    ]
    assert all(r.dimensions == {"env_id": "env-1"} for r in result.rows)


def test_e2_equal_dimension_keys_are_summed() -> None:
    result = run([line("KAFKA_NUM_CKU", "100.0000")], store=FakeStore([cluster()]))
    assert brief(result.rows) == [("lkc-k1", "shared", "terminal", "no_identities_located", "100.0000")]
    assert result.stats.row_count == 1


@pytest.mark.parametrize(
    ("created", "inactive", "usage_part", "shared_part"),
    [(18, "75.0000", "17.5000", "7.5000"), (16, "66.6667", "23.3333", "10.0000")],
)
def test_e4_active_fraction(created: int, inactive: str, usage_part: str, shared_part: str) -> None:
    """25.0000 / 33.3333 active, split 70/30 by the CKU composite; no metrics, one active identity."""
    store = FakeStore([cluster(created_at=S + timedelta(hours=created))])
    dispatch = FakeDispatch(standard_handler({"lkc-k1": (["sa-1"], [])}))
    result = run([line("KAFKA_NUM_CKU", "100.0000")], dispatch=dispatch, store=store)
    assert brief(result.rows) == [
        ("UNALLOCATED", "shared", "terminal", "RESOURCE_INACTIVE", inactive),
        ("sa-1", "shared", "even_split", "even_split_allocation", shared_part),
        ("sa-1", "shared", "even_split", "no_metrics_located", usage_part),
    ]


def test_e5_network_write_half_day() -> None:
    store = FakeStore([cluster(created_at=S + timedelta(hours=12))])
    dispatch = FakeDispatch(standard_handler({"lkc-k1": ([], ["sa-x1", "sa-x2"])}))
    usage = {("lkc-k1", S, E): UsageGroup(bytes_in(("sa-x1", 2000), ("sa-x2", 1000)))}
    result = run([line("KAFKA_NETWORK_WRITE", "50.0000")], dispatch=dispatch, store=store, usage=usage)
    assert brief(result.rows) == [
        ("UNALLOCATED", "shared", "terminal", "RESOURCE_INACTIVE", "25.0000"),
        ("sa-x1", "usage", "usage_ratio", "usage_ratio_allocation", "16.6667"),
        ("sa-x2", "usage", "usage_ratio", "usage_ratio_allocation", "8.3333"),
    ]
    assert result.stats.unallocated_total == D("25.0000")


def test_e7_retry_limit_then_failure_row(caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any) -> IdentityResolution:
        raise RuntimeError("resolver down")

    dispatch = FakeDispatch(standard_handler(), resolver_overrides={"KAFKA_NETWORK_READ": broken})
    bad = line("KAFKA_NETWORK_READ", "12.3456")
    good = line("KAFKA_NETWORK_WRITE", "1.0000")
    # The failing line's cluster is half inactive: the failure row still replaces everything.
    store = FakeStore([cluster(created_at=S + timedelta(hours=12))])
    tracker = FakeTracker()
    key = billing_natural_key(bad, ("env_id",))
    for attempt in (1, 2):
        with pytest.raises(PendingAllocationError) as info:
            run([bad, good], dispatch=dispatch, store=store, tracker=tracker)
        assert tracker.counts == {key: attempt}
        assert "resolver down" in str(info.value) and "KAFKA_NETWORK_READ" in str(info.value)
        assert info.value.failures == [(key, attempt, "RuntimeError: resolver down")]
    with caplog.at_level(logging.WARNING, logger="test_calculation"):
        result = run([bad, good], dispatch=dispatch, store=store, tracker=tracker)
    failed = [r for r in result.rows if r.product_type == "KAFKA_NETWORK_READ"]
    assert brief(failed) == [("UNALLOCATED", "shared", "ALLOCATION_FAILED", "ALLOCATION_FAILED", "12.3456")]
    assert failed[0].dimensions == {"env_id": "env-1"}
    assert result.failed_final_line_keys == [key]
    assert result.succeeded_line_keys == [billing_natural_key(good, ("env_id",))]
    assert result.stats.allocation_failed_count == 1
    assert "Failed after 3 attempts: RuntimeError: resolver down" in caplog.text
    # A later recalculation tries once more and writes the failure row at once.
    assert run([bad, good], dispatch=dispatch, store=store, tracker=tracker).failed_final_line_keys == [key]
    assert tracker.counts[key] == 4


def test_all_lines_are_attempted_before_the_date_fails() -> None:
    def broken(*args: Any) -> IdentityResolution:
        raise RuntimeError("nope")

    dispatch = FakeDispatch(
        standard_handler(), resolver_overrides={"KAFKA_NETWORK_READ": broken, "KAFKA_NUM_CKU": broken}
    )
    tracker = FakeTracker()
    lines = [
        line("KAFKA_NUM_CKU", "1.0000"),
        line("KAFKA_NETWORK_WRITE", "1.0000"),
        line("KAFKA_NETWORK_READ", "1"),
    ]
    with pytest.raises(PendingAllocationError, match="failed for 2 line"):
        run(lines, dispatch=dispatch, tracker=tracker)
    assert sorted(k[4] for k in tracker.counts) == ["KAFKA_NETWORK_READ", "KAFKA_NUM_CKU"]


def test_counter_failure_raises_the_lines_own_error() -> None:
    def broken(*args: Any) -> IdentityResolution:
        raise RuntimeError("resolver down")

    dispatch = FakeDispatch(standard_handler(), resolver_overrides={"KAFKA_NUM_CKU": broken})
    with pytest.raises(AllocationError, match="resolver down") as info:
        run([line("KAFKA_NUM_CKU", "1.0000")], dispatch=dispatch, tracker=FakeTracker(broken=True))
    assert "database is locked" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_succeeded_lines_are_reported_for_counter_reset() -> None:
    ok = line("KAFKA_NUM_CKU", "1.0000")
    zero = line("KAFKA_NUM_CKU", "0.0000", "lkc-0")
    result = run([ok, zero], tracker=FakeTracker({billing_natural_key(ok, ("env_id",)): 2}))
    assert result.succeeded_line_keys == [billing_natural_key(x, ("env_id",)) for x in (zero, ok)]


# --- allocator output validation (check) -------------------------------------------------


def _bad(mutate: Callable[[ChargebackRow], None]) -> CostAllocator:
    def allocator(ctx: AllocationContext) -> AllocationResult:
        row = make_row(ctx, "sa-1", ctx.split_amount, CostType.SHARED, "custom", "custom")
        mutate(row)
        return AllocationResult([row])

    return allocator


def _set(name: str, value: Any) -> Callable[[ChargebackRow], None]:
    return lambda row: setattr(row, name, value)


@pytest.mark.parametrize(
    ("allocator", "message"),
    [
        (_bad(_set("amount", D("9.9999"))), "rows sum to 9.9999, expected 10.0000"),
        (_bad(_set("amount", D("10.00001"))), "more than 4 decimal places"),
        (_bad(_set("amount", 10.0)), "is a float, not a Decimal"),
        (_bad(_set("identity_id", "")), "empty or non-string identity_id"),
        (_bad(_set("cost_type", "shared")), "not a CostType"),
        (_bad(_set("resource_id", "lkc-other")), "does not carry the line's fields"),
        (_bad(_set("product_type", "OTHER")), "does not carry the line's fields"),
        (_bad(_set("timestamp", S + timedelta(hours=1))), "does not carry the line's fields"),
        (lambda ctx: [], "returned list, not an AllocationResult"),
        (lambda ctx: AllocationResult(["row"]), "row 0 is a str"),  # type: ignore[list-item]
    ],
)
def test_invalid_allocator_output_goes_to_retry_path(allocator: CostAllocator, message: str) -> None:
    handler = FakeHandler({"CUSTOM": allocator}, {})
    tracker = FakeTracker()
    result = run(
        [line("CUSTOM", "10.0000")], dispatch=FakeDispatch(handler, allocation_retry_limit=1), tracker=tracker
    )
    assert brief(result.rows) == [
        ("UNALLOCATED", "shared", "ALLOCATION_FAILED", "ALLOCATION_FAILED", "10.0000")
    ]
    (text,) = tracker.errors.values()
    assert message in text


def test_amounts_with_fewer_decimals_are_normalised() -> None:
    handler = FakeHandler({"CUSTOM": _bad(_set("amount", D(10)))}, {})
    result = run([line("CUSTOM", "10.0000")], dispatch=FakeDispatch(handler))
    assert str(result.rows[0].amount) == "10.0000"


@pytest.mark.parametrize("total", [D("1.00005"), D("NaN"), 1.5])
def test_line_total_must_be_a_4dp_decimal(total: Any) -> None:
    bad = CCLine("confluent_cloud", "acme", S, "lkc-k1", "KAFKA", "KAFKA_NUM_CKU", D(1), D(1), total)
    with pytest.raises(PendingAllocationError, match="not a Decimal with at most 4 decimal places"):
        run([bad])


def test_core_rows_have_exactly_four_decimals() -> None:
    def broken(*args: Any) -> IdentityResolution:
        raise RuntimeError("down")

    dispatch = FakeDispatch(
        standard_handler({"lkc-k1": (["a"], [])}),
        allocation_retry_limit=1,
        resolver_overrides={"KAFKA_NUM_CKU": broken},
    )
    store = FakeStore([cluster(created_at=S + timedelta(hours=12))])
    ten = CCLine("confluent_cloud", "acme", S, "lkc-k1", "KAFKA", "KAFKA_NETWORK_READ", D(1), D(1), D(10))
    failing = CCLine("confluent_cloud", "acme", S, "lkc-k1", "KAFKA", "KAFKA_NUM_CKU", D(1), D(1), D(7))
    result = run([ten, failing], dispatch=dispatch, store=store)
    assert [(r.allocation_detail, str(r.amount)) for r in result.rows] == [
        ("RESOURCE_INACTIVE", "5.0000"),
        ("no_metrics_located", "5.0000"),
        ("ALLOCATION_FAILED", "7.0000"),
    ]


def test_unknown_granularity_fails_the_line() -> None:
    tracker = FakeTracker()
    with pytest.raises(PendingAllocationError, match="unknown billing granularity 'weekly'"):
        run([line("KAFKA_NUM_CKU", "1.0000", granularity="weekly")], tracker=tracker)


def test_naive_timestamp_fails_the_line() -> None:
    with pytest.raises(PendingAllocationError, match="naive"):
        run([line("KAFKA_NUM_CKU", "1.0000", ts=datetime(2026, 3, 1))])


# --- Fallback -------------------------------------------------------------------------


def test_unknown_product_type_uses_fallback_with_full_amount(caplog: pytest.LogCaptureFixture) -> None:
    # The resource is half inactive, but the fallback gets no active fraction.
    store = FakeStore([cluster("lkc-k1", created_at=S + timedelta(hours=12))])
    with caplog.at_level(logging.WARNING):
        result = run([line("PROMO_CREDIT", "-5.0000")], store=store)
    assert brief(result.rows) == [("UNALLOCATED", "shared", "unknown", "UNKNOWN_PRODUCT_TYPE", "-5.0000")]
    assert "PROMO_CREDIT" in caplog.text


def test_plugin_fallback_receives_empty_context() -> None:
    seen: list[AllocationContext] = []

    def fallback(ctx: AllocationContext) -> AllocationResult:
        seen.append(ctx)
        return AllocationResult([make_row(ctx, "org", ctx.split_amount, CostType.SHARED, "unknown", "x")])

    dispatch = FakeDispatch(standard_handler(), fallback_allocator=fallback, allocator_params={"k": 1})
    run(
        [line("SUPPORT", "3.0000")],
        dispatch=dispatch,
        usage={("lkc-k1", S, E): UsageGroup(bytes_in(("a", 1)))},
    )
    (ctx,) = seen
    assert ctx.split_amount == D("3.0000")
    assert ctx.metrics_data is None
    assert not ctx.identities.resource_active and not ctx.identities.tenant_period
    assert ctx.params == {"k": 1}
    assert ctx.dimension_metadata == {"env_id": "env-1"}


# --- Active fraction ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created", "deleted", "expected"),
    [
        (None, None, D(1)),
        (S, None, D(1)),
        (S - timedelta(days=3), E, D(1)),
        (S + timedelta(hours=6), S + timedelta(hours=18), D("0.5")),
        (None, S + timedelta(hours=6), D("0.25")),
        (E, None, D(0)),
        (None, S, D(0)),
        (S - timedelta(days=2), S - timedelta(days=1), D(0)),
    ],
)
def test_active_fraction(created: datetime | None, deleted: datetime | None, expected: D) -> None:
    assert active_fraction(cluster(created_at=created, deleted_at=deleted), S, E) == expected


def test_active_fraction_of_empty_window_is_one() -> None:
    assert active_fraction(cluster(created_at=S + timedelta(hours=1)), S, S) == D(1)


@pytest.mark.parametrize(
    "resource",
    [
        cluster(created_at=S),  # created exactly at S
        cluster(deleted_at=S),  # deleted at S: did not exist in the window, not cached
        cluster(created_at=E),  # lifecycle after the window: not cached
        cluster(created_at=S - timedelta(days=5), deleted_at=S - timedelta(days=1)),
        cluster(resource_type="topic", created_at=S + timedelta(hours=12)),  # not a billing type
        cluster("lkc-other", created_at=S + timedelta(hours=12)),
    ],
)
def test_lines_whose_resource_is_not_partly_active_are_fully_allocated(resource: Resource) -> None:
    dispatch = FakeDispatch(standard_handler({"lkc-k1": (["sa-1"], [])}))
    result = run([line("KAFKA_NETWORK_READ", "8.0000")], dispatch=dispatch, store=FakeStore([resource]))
    assert brief(result.rows) == [("sa-1", "shared", "even_split", "no_metrics_located", "8.0000")]


def test_tiny_active_share_rounds_to_zero_and_skips_the_allocator() -> None:
    store = FakeStore([cluster(created_at=E - timedelta(microseconds=1))])
    handler = FakeHandler({"X": _bad(_set("amount", D("999")))}, {})
    result = run([line("X", "100.0000")], dispatch=FakeDispatch(handler), store=store)
    assert brief(result.rows) == [("UNALLOCATED", "shared", "terminal", "RESOURCE_INACTIVE", "100.0000")]
    assert handler.contexts == []


def test_negative_line_with_inactive_share() -> None:
    store = FakeStore([cluster(created_at=S + timedelta(hours=18))])
    dispatch = FakeDispatch(standard_handler({"lkc-k1": (["sa-1", "sa-2", "sa-3"], [])}))
    result = run([line("KAFKA_NETWORK_READ", "-100.0000")], dispatch=dispatch, store=store)
    assert brief(result.rows) == [
        ("UNALLOCATED", "shared", "terminal", "RESOURCE_INACTIVE", "-75.0000"),
        ("sa-1", "shared", "even_split", "no_metrics_located", "-8.3334"),
        ("sa-2", "shared", "even_split", "no_metrics_located", "-8.3333"),
        ("sa-3", "shared", "even_split", "no_metrics_located", "-8.3333"),
    ]


# --- Windows, resolve context, usage groups -------------------------------------------


def test_window_caches_are_built_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    people = [
        person("u-2", "user"),
        person("sa-1"),
        person(UNALLOCATED, "system"),
        person("sa-gone", deleted_at=S),
        person("sa-late", created_at=S + timedelta(hours=1, minutes=30)),
    ]
    resources = [cluster(), cluster("t-1", "topic"), cluster("env-1", "environment")]
    store = FakeStore(resources, people)
    handler = standard_handler()
    dispatch = FakeDispatch(handler)
    h0, h1 = S, S + timedelta(hours=1)
    lines = [
        line("KAFKA_NETWORK_READ", "1.0000", ts=h0, granularity="hourly"),
        line("KAFKA_NETWORK_WRITE", "1.0000", ts=h0, granularity="hourly"),
        line("KAFKA_NETWORK_READ", "1.0000", ts=h1, granularity="hourly"),
        line("KAFKA_NETWORK_READ", "1.0000", "lkc-2", ts=h1, granularity="hourly"),
    ]
    result = run(lines, dispatch=dispatch, store=store)
    windows = [(h0, h0 + timedelta(hours=1)), (h1, h1 + timedelta(hours=1))]
    assert store.identities.calls == windows
    assert store.resources.calls == [(s, e, ["environment", "kafka_cluster"]) for s, e in windows]
    first, _, third, fourth = handler.contexts
    assert first is not None and third is not None
    assert [i.identity_id for i in first["cached_identities"]] == ["sa-1", "u-2"]
    assert [i.identity_id for i in third["cached_identities"]] == ["sa-1", "sa-late", "u-2"]
    assert sorted(first["cached_resources"]) == ["env-1", "lkc-k1"]
    assert third is fourth
    # No active identities: tier 2 uses the window's tenant_period owners.
    hour0 = [r for r in result.rows if r.timestamp == h0 and r.product_type == "KAFKA_NETWORK_READ"]
    assert brief(hour0) == [
        ("sa-1", "shared", "even_split", "no_active_identities_located", "0.5000"),
        ("u-2", "shared", "even_split", "no_active_identities_located", "0.5000"),
    ]


def test_resolver_tenant_period_is_replaced_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    def sneaky(*args: Any) -> IdentityResolution:
        return IdentityResolution(tenant_period=ids(["sa-intruder"]))

    store = FakeStore(identities=[person("sa-real")])
    dispatch = FakeDispatch(standard_handler(), resolver_overrides={"KAFKA_NETWORK_READ": sneaky})
    with caplog.at_level(logging.WARNING, logger="test_calculation"):
        result = run(
            [line("KAFKA_NETWORK_READ", "1.0000"), line("KAFKA_NETWORK_READ", "1.0000", "lkc-2")],
            dispatch=dispatch,
            store=store,
        )
    assert {r.identity_id for r in result.rows} == {"sa-real"}
    assert caplog.text.count("set tenant_period") == 1


def test_override_resolver_receives_the_seven_arguments() -> None:
    calls: list[tuple[Any, ...]] = []

    def resolver(*args: Any) -> IdentityResolution:
        calls.append(args)
        return IdentityResolution(resource_active=ids(["sa-1"]))

    group = UsageGroup(bytes_in(("sa-1", 5)))
    store = FakeStore()
    dispatch = FakeDispatch(standard_handler(), resolver_overrides={"KAFKA_NETWORK_READ": resolver})
    run(
        [line("KAFKA_NETWORK_READ", "1.0000")],
        dispatch=dispatch,
        usage={("lkc-k1", S, E): group},
        store=store,
    )
    ((tenant, rid, ts, duration, metrics, got_store, context),) = calls
    assert (tenant, rid, ts, duration) == ("acme", "lkc-k1", S, timedelta(days=1))
    assert metrics is group.rows and got_store is store
    assert set(context) == {"cached_identities", "cached_resources"}


def test_failed_usage_fetch_reaches_the_allocator() -> None:
    dispatch = FakeDispatch(standard_handler({"lkc-k1": (["sa-1"], [])}))
    usage = {("lkc-k1", S, E): UsageGroup(bytes_in(("sa-1", 5)), fetch_failed=True)}
    result = run([line("KAFKA_NETWORK_WRITE", "1.0000")], dispatch=dispatch, usage=usage)
    assert brief(result.rows) == [("sa-1", "shared", "even_split", "no_metrics_located", "1.0000")]
    # The usage group of another window is not used.
    other = {("lkc-k1", S, S + timedelta(hours=1)): UsageGroup(bytes_in(("sa-9", 5)))}
    result = run([line("KAFKA_NETWORK_WRITE", "1.0000")], dispatch=dispatch, usage=other)
    assert [r.identity_id for r in result.rows] == ["sa-1"]


def test_custom_granularity_window() -> None:
    store = FakeStore([cluster(created_at=S + timedelta(hours=3))])
    dispatch = FakeDispatch(standard_handler({"lkc-k1": (["sa-1"], [])}), granularity_durations={"shift": 4})
    result = run([line("KAFKA_NETWORK_READ", "4.0000", granularity="shift")], dispatch=dispatch, store=store)
    assert [(r.identity_id, str(r.amount)) for r in result.rows] == [
        ("UNALLOCATED", "3.0000"),
        ("sa-1", "1.0000"),
    ]


# --- Merge, zero rows, ordering, stats -----------------------------------------------


def test_zero_lines_and_zero_rows_are_dropped() -> None:
    dispatch = FakeDispatch(standard_handler({"lkc-k1": (["a", "b", "c"], [])}))
    zero = line("KAFKA_NETWORK_READ", "0.0000", "lkc-zero")
    result = run([zero, line("KAFKA_NETWORK_READ", "0.0002")], dispatch=dispatch)
    assert [(r.identity_id, str(r.amount)) for r in result.rows] == [("b", "0.0001"), ("c", "0.0001")]
    assert billing_natural_key(zero, ("env_id",)) in result.succeeded_line_keys
    assert result.stats.line_count == 2


def test_rows_are_sorted_by_dimension_key_regardless_of_line_order() -> None:
    people: dict[str, tuple[list[str], list[str]]] = {
        f"lkc-{i}": ([f"sa-{j}" for j in range(i % 4 + 1)], []) for i in range(6)
    }
    dispatch = FakeDispatch(standard_handler(people))
    lines = [
        line(pt, f"{i + 1}.{i:04d}", f"lkc-{i}", env_id=env, ts=S + timedelta(hours=h), granularity="hourly")
        for i in range(6)
        for pt in ("KAFKA_NETWORK_READ", "KAFKA_NUM_CKU", "KAFKA_NETWORK_WRITE")
        for env in ("env-b", "env-a")
        for h in (1, 0)
    ]
    shuffled = list(lines)
    random.Random(7).shuffle(shuffled)
    first = run(lines, dispatch=dispatch)
    second = run(shuffled, dispatch=dispatch)
    keys = [r.dimension_key(("env_id",)) for r in first.rows]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert brief(first.rows) == brief(second.rows)
    assert [r.dimensions for r in first.rows] == [r.dimensions for r in second.rows]
    assert first.succeeded_line_keys == sorted(first.succeeded_line_keys)
    assert first.stats.allocated_total == sum(D(x.total_cost) for x in lines)


def test_merge_within_a_line_keeps_the_first_rows_metadata() -> None:
    def twice(ctx: AllocationContext) -> AllocationResult:
        half = ctx.split_amount / 2
        first = make_row(ctx, "sa-1", half, CostType.SHARED, "m", "d", {"n": 1})
        second = make_row(ctx, "sa-1", ctx.split_amount - half, CostType.SHARED, "m", "d", {"n": 2})
        return AllocationResult([first, second])

    handler = FakeHandler({"X": twice}, {})
    result = run([line("X", "5.0000")], dispatch=FakeDispatch(handler))
    (row,) = result.rows
    assert (row.amount, row.metadata) == (D("5.0000"), {"n": 1})


def test_stats() -> None:
    dispatch = FakeDispatch(standard_handler({"lkc-k1": (["sa-1"], [])}))
    store = FakeStore([cluster(created_at=S + timedelta(hours=12))])
    lines = [
        line("KAFKA_NETWORK_READ", "10.0000"),
        line("PROMO", "-2.0000", "org"),
        line("KAFKA_NUM_CKU", "0.0000"),
    ]
    stats = run(lines, dispatch=dispatch, store=store).stats
    assert stats.as_metadata() == {
        "line_count": 3,
        "row_count": 3,
        "billed_total": "8.0000",
        "allocated_total": "8.0000",
        "unallocated_total": "3.0000",
        "unallocated_share": "37.50%",
        "totals_by_detail": {
            "RESOURCE_INACTIVE": "5.0000",
            "UNKNOWN_PRODUCT_TYPE": "-2.0000",
            "no_metrics_located": "5.0000",
        },
        "allocation_failed_count": 0,
    }


def test_empty_date() -> None:
    result = run([])
    assert (result.rows, result.succeeded_line_keys, result.failed_final_line_keys) == ([], [], [])
    assert result.stats.billing_total == 0 and result.stats.line_count == 0
