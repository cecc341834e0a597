"""Property tests of the money rules (allocation.md §1, §10) over random amounts, ids and usage.

For every input: rows sum exactly to the amount, every row has 4 decimal places, no row
has the opposite sign of the amount, and the result does not depend on input order.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from chargeback_pipeline.allocation import (
    Chain,
    Composite,
    EvenSplit,
    Terminal,
    UsageRatio,
    even_split,
    line_resource_id,
    merged_active,
    usage_by_label,
    usage_ratio,
)
from chargeback_pipeline.calculation import UsageGroup, calculate_date
from chargeback_pipeline.models import (
    QUANTUM,
    UNALLOCATED,
    AllocationContext,
    BillingLineItem,
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricRow,
    Resource,
    overlaps,
)

S = datetime(2026, 3, 1, tzinfo=UTC)
E = S + timedelta(days=1)

# 4-dp amounts up to 1e12 in size, with extra weight on tiny values where rounding bites.
amounts = st.one_of(
    st.integers(-(10**16), 10**16),
    st.integers(-60, 60),
    st.sampled_from([0, 1, -1, 2, 5, 10**16, -(10**16)]),
).map(lambda n: Decimal(n).scaleb(-4))
ids = st.text(alphabet="abcXYZ-_019é", min_size=1, max_size=6)
id_lists = st.lists(ids, min_size=1, max_size=25, unique=True)
usage_values = st.one_of(
    st.integers(1, 10**15).map(Decimal),
    st.decimals(min_value=Decimal("1e-9"), max_value=Decimal("1e6"), allow_nan=False, allow_infinity=False),
)
usage_maps = st.dictionaries(ids, usage_values, min_size=1, max_size=25)


def assert_money_rules(parts: list[Decimal], total: Decimal) -> None:
    assert sum(parts, Decimal(0)) == total
    for part in parts:
        assert part == part.quantize(QUANTUM)
        assert part >= 0 if total >= 0 else part <= 0


@settings(max_examples=300, deadline=None)
@given(total=amounts, people=id_lists, seed=st.randoms(use_true_random=False))
def test_even_split_properties(total: Decimal, people: list[str], seed: Any) -> None:
    result = even_split(people, total)
    assert_money_rules([a for _, a in result], total)
    assert [i for i, _ in result] == sorted(people)
    shuffled = list(people)
    seed.shuffle(shuffled)
    assert even_split(shuffled, total) == result
    # Shares differ by at most one unit.
    values = [a for _, a in result]
    assert max(values) - min(values) <= QUANTUM


@settings(max_examples=300, deadline=None)
@given(total=amounts, usage=usage_maps)
def test_usage_ratio_properties(total: Decimal, usage: dict[str, Decimal]) -> None:
    result = usage_ratio(usage, total)
    assert_money_rules([a for _, a, _ in result], total)
    reversed_usage = dict(reversed(list(usage.items())))
    assert usage_ratio(reversed_usage, total) == result


@settings(max_examples=200, deadline=None)
@given(total=amounts, usage_share=st.integers(0, 100), people=st.lists(ids, max_size=6, unique=True))
def test_two_part_composite_properties(total: Decimal, usage_share: int, people: list[str]) -> None:
    ratio = Decimal(usage_share) / 100
    composite = Composite(
        [
            (ratio, Chain([EvenSplit(merged_active), Terminal(line_resource_id)])),
            (1 - ratio, Chain([EvenSplit(merged_active), Terminal(UNALLOCATED)])),
        ]
    )
    line = BillingLineItem("eco", "t", S, "r-1", "cat", "PT", Decimal(1), total, total)
    resolution = IdentityResolution(
        resource_active=IdentitySet(Identity("eco", "t", p, "user") for p in people)
    )
    ctx = AllocationContext(timeslice=S, billing_line=line, identities=resolution, split_amount=total)
    assert_money_rules([r.amount for r in composite(ctx).rows], total)


# --- Whole dates ----------------------------------------------------------------------


class _Store:
    def __init__(self, resources: list[Resource], identities: list[Identity]) -> None:
        self.resources = _Finder(resources)
        self.identities = _Finder(identities)
        self.billing = None


class _Finder:
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def find_by_period(self, start: datetime, end: datetime, *args: Any) -> list[Any]:
        return [i for i in self.items if overlaps(i.created_at, i.deleted_at, start, end)]


class _Handler:
    def __init__(self, people: dict[str, list[str]]) -> None:
        self.people = people

    def resolve_identities(self, tenant_id: str, resource_id: str, *rest: Any) -> IdentityResolution:
        names = self.people.get(resource_id, [])
        return IdentityResolution(resource_active=IdentitySet(Identity("eco", "t", n, "user") for n in names))


class _Dispatch:
    tenant_id = "t"
    ecosystem = "eco"
    extra_key_fields: tuple[str, ...] = ()
    billing_resource_types = ("cluster",)
    allocator_params: dict[str, Any] = {}
    granularity_durations: dict[str, int] = {}
    allocation_retry_limit = 3

    def __init__(self, people: dict[str, list[str]]) -> None:
        self.handler = _Handler(people)
        usage = UsageRatio(usage_by_label(("u",), "who"), usage_keys=("u",))
        self.chains = {
            "EVEN": Chain([EvenSplit(merged_active), Terminal(UNALLOCATED)]),
            "USAGE": Chain(
                [usage, EvenSplit(merged_active, detail=usage.fallback_detail), Terminal(line_resource_id)]
            ),
        }
        self.fallback_allocator = self.chains["EVEN"]

    def handler_for(self, product_type: str) -> Any:
        return self.handler if product_type in self.chains else None

    def allocator_for(self, product_type: str) -> Any:
        return self.chains[product_type]

    def resolver_for(self, product_type: str) -> Any:
        return self.handler.resolve_identities


class _Tracker:
    def record_failure(self, line_key: Any, error_text: str) -> int:
        raise AssertionError(f"no line may fail: {error_text}")


line_specs = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(["EVEN", "USAGE", "OTHER"]), amounts),
    max_size=12,
    unique_by=lambda t: (t[0], t[1]),
)


@settings(max_examples=60, deadline=None)
@given(
    specs=line_specs,
    people=st.dictionaries(st.integers(0, 5).map(lambda i: f"r{i}"), id_lists, max_size=6),
    usage=st.dictionaries(st.integers(0, 5).map(lambda i: f"r{i}"), usage_maps, max_size=6),
    created_hours=st.dictionaries(st.integers(0, 5).map(lambda i: f"r{i}"), st.integers(-30, 30), max_size=6),
    seed=st.randoms(use_true_random=False),
)
def test_calculate_date_properties(
    specs: list[tuple[int, str, Decimal]],
    people: dict[str, list[str]],
    usage: dict[str, dict[str, Decimal]],
    created_hours: dict[str, int],
    seed: Any,
) -> None:
    lines = [
        BillingLineItem("eco", "t", S, f"r{r}", "cat", pt, Decimal(1), amount, amount)
        for r, pt, amount in specs
    ]
    resources = [
        Resource("eco", "t", rid, "cluster", created_at=S + timedelta(hours=h))
        for rid, h in created_hours.items()
    ]
    groups = {
        (rid, S, E): UsageGroup({"u": [MetricRow(S, "u", v, {"who": w}) for w, v in per.items()]})
        for rid, per in usage.items()
    }
    first = calculate_date(
        _Dispatch(people),
        cast(Any, _Store(resources, [])),
        date(2026, 3, 1),
        lines,
        groups,
        _Tracker(),
        logging.getLogger(),
    )
    per_line: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for row in first.rows:
        assert row.amount != 0
        assert row.amount.as_tuple().exponent == -4
        per_line[(row.resource_id or "", row.product_type)].append(row.amount)
    for line in lines:
        parts = per_line.get((line.resource_id, line.product_type), [])
        assert_money_rules(parts, line.total_cost)
    # Same result whatever the order of lines, identities and usage series.
    seed.shuffle(lines)
    shuffled_people = {k: list(reversed(v)) for k, v in reversed(list(people.items()))}
    shuffled_groups = {k: UsageGroup({"u": list(reversed(g.rows["u"]))}) for k, g in groups.items() if g.rows}
    second = calculate_date(
        _Dispatch(shuffled_people),
        cast(Any, _Store(list(reversed(resources)), [])),
        date(2026, 3, 1),
        lines,
        shuffled_groups,
        _Tracker(),
        logging.getLogger(),
    )
    assert [(r.dimension_key(), r.amount) for r in first.rows] == [
        (r.dimension_key(), r.amount) for r in second.rows
    ]
