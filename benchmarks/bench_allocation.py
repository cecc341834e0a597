"""Benchmark of one synthetic tenant-day through ``calculate_date`` and the DuckDB commit.

Usage::

    .venv/bin/python benchmarks/bench_allocation.py [--lines 20000 --identities 2000 --per-line 40]

Builds a deterministic tenant-day (seeded), times the in-memory calculation and the
commit into a DuckDB file in a temporary directory, then verifies the output: exact
conservation per line, 4 decimal places, sign rule, dimension-key order, and — for a
sample of lines — equality with a reference computed directly from ``even_split`` /
``usage_ratio`` and the active-fraction rule. Exits 1 when verification fails, and
with ``--strict`` also when the time or memory target is missed.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from chargeback_pipeline.allocation import (
    Chain,
    EvenSplit,
    Terminal,
    UsageRatio,
    default_fallback_allocator,
    even_split,
    line_resource_id,
    merged_active,
    usage_by_label,
    usage_ratio,
)
from chargeback_pipeline.calculation import DateCalculation, UsageGroup, UsageKey, calculate_date
from chargeback_pipeline.models import (
    QUANTUM,
    UNALLOCATED,
    BillingLineItem,
    ChargebackRow,
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricRow,
    Resource,
    overlaps,
    q4,
)
from chargeback_pipeline.protocols import CostAllocator, ResolveContext

ECOSYSTEM = "bench"
TENANT = "bench-tenant"
DAY = date(2026, 3, 1)
START = datetime(2026, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)
EVEN_TYPES = tuple(f"EVEN_{i}" for i in range(5))
USAGE_TYPES = tuple(f"USAGE_{i}" for i in range(5))
USAGE_KEY = "bytes"
LABEL = "principal"
TARGET_SECONDS = 10.0
TARGET_RSS_MIB = 1024.0


# --- Synthetic tenant-day --------------------------------------------------------------


@dataclass
class Scenario:
    lines: list[BillingLineItem]
    resources: list[Resource]
    identities: list[Identity]
    people: dict[str, IdentitySet]
    usage: dict[UsageKey, UsageGroup]


def build_scenario(n_lines: int, n_identities: int, per_line: int, seed: int) -> Scenario:
    """A day of ``n_lines`` lines: 10 product types per resource, half even-split, half usage."""
    rng = random.Random(seed)
    identities = [Identity(ECOSYSTEM, TENANT, f"sa-{i:05d}", "service_account") for i in range(n_identities)]
    identities.append(Identity(ECOSYSTEM, TENANT, UNALLOCATED, "system"))
    real = identities[:-1]
    types = EVEN_TYPES + USAGE_TYPES
    n_resources = -(-n_lines // len(types))
    resources: list[Resource] = []
    people: dict[str, IdentitySet] = {}
    usage: dict[UsageKey, UsageGroup] = {}
    lines: list[BillingLineItem] = []
    for r in range(n_resources):
        rid = f"lkc-{r:05d}"
        resources.append(_resource(rid, rng))
        members = _members(real, per_line, rng)
        people[rid] = IdentitySet(members)
        usage[(rid, START, END)] = _usage(members, rng)
        for product_type in types[: n_lines - len(lines)]:
            lines.append(_line(rid, product_type, rng))
    rng.shuffle(lines)
    return Scenario(lines, resources, identities, people, usage)


def _resource(rid: str, rng: random.Random) -> Resource:
    created = START + timedelta(minutes=rng.randrange(1, 24 * 60)) if rng.random() < 0.10 else None
    return Resource(ECOSYSTEM, TENANT, rid, "cluster", created_at=created)


def _members(real: Sequence[Identity], per_line: int, rng: random.Random) -> list[Identity]:
    if rng.random() < 0.03:
        return []
    k = max(1, min(len(real), per_line + rng.randint(-per_line // 4, per_line // 4)))
    return rng.sample(list(real), k)


def _usage(members: list[Identity], rng: random.Random) -> UsageGroup:
    roll = rng.random()
    if roll < 0.02:
        return UsageGroup(None, fetch_failed=True)
    if roll < 0.07:
        return UsageGroup({})
    rows = [
        MetricRow(
            START,
            USAGE_KEY,
            Decimal(0 if rng.random() < 0.1 else rng.randrange(1, 10**9)),
            {LABEL: m.identity_id},
        )
        for m in members
    ]
    return UsageGroup({USAGE_KEY: rows})


def _line(rid: str, product_type: str, rng: random.Random) -> BillingLineItem:
    cents = rng.randrange(0, 10**8)
    amount = Decimal(-cents if rng.random() < 0.02 else cents).scaleb(-4)
    return BillingLineItem(ECOSYSTEM, TENANT, START, rid, "kafka", product_type, Decimal(1), amount, amount)


# --- Plugin side: handler, dispatch, attempts -----------------------------------------


class BenchHandler:
    """Resolution is a dictionary lookup, so the timing measures the core, not a plugin."""

    service_type = "bench"
    handles_product_types = EVEN_TYPES + USAGE_TYPES
    gathered_resource_types = ("cluster",)

    def __init__(self, people: Mapping[str, IdentitySet]) -> None:
        self.people = people
        usage = UsageRatio(usage_by_label((USAGE_KEY,), LABEL), usage_keys=(USAGE_KEY,))
        self.even: CostAllocator = Chain([EvenSplit(merged_active), Terminal(UNALLOCATED)])
        self.by_usage: CostAllocator = Chain(
            [usage, EvenSplit(merged_active, detail=usage.fallback_detail), Terminal(line_resource_id)]
        )

    def resolve_identities(
        self,
        tenant_id: str,
        resource_id: str,
        billing_timestamp: datetime,
        billing_duration: timedelta,
        metrics_data: dict[str, list[MetricRow]] | None,
        store: Any,
        context: ResolveContext | None = None,
    ) -> IdentityResolution:
        return IdentityResolution(resource_active=self.people.get(resource_id, IdentitySet()))

    def get_allocator(self, product_type: str) -> CostAllocator:
        return self.even if product_type in EVEN_TYPES else self.by_usage


@dataclass
class BenchDispatch:
    handler: BenchHandler
    tenant_id: str = TENANT
    ecosystem: str = ECOSYSTEM
    extra_key_fields: tuple[str, ...] = ()
    billing_resource_types: tuple[str, ...] = ("cluster",)
    allocator_params: Mapping[str, Any] = field(default_factory=dict)
    granularity_durations: Mapping[str, int] = field(default_factory=dict)
    allocation_retry_limit: int = 3
    fallback_allocator: CostAllocator = default_fallback_allocator

    def handler_for(self, product_type: str) -> Any:
        return self.handler

    def allocator_for(self, product_type: str) -> CostAllocator:
        return self.handler.get_allocator(product_type)

    def resolver_for(self, product_type: str) -> Any:
        return self.handler.resolve_identities


class MemoryStore:
    def __init__(self, resources: list[Resource], identities: list[Identity]) -> None:
        self.resources = _Finder(resources)
        self.identities = _Finder(identities)
        self.billing = None


class _Finder:
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def find_by_period(self, start: datetime, end: datetime, *args: Any) -> list[Any]:
        return [i for i in self.items if overlaps(i.created_at, i.deleted_at, start, end)]


class NoFailures:
    def record_failure(self, line_key: Any, error_text: str) -> int:
        raise RuntimeError(f"benchmark line failed: {error_text}")


class QuietLog:
    def warning(self, msg: str, *args: Any) -> None:
        print("WARNING", msg % args, file=sys.stderr)

    def info(self, msg: str, *args: Any) -> None:
        pass


# --- Verification ---------------------------------------------------------------------


RowBrief = tuple[str, str, str, str, Decimal]


def verify(scenario: Scenario, calc: DateCalculation, sample: int, seed: int) -> list[str]:
    """Problems found (empty when the output is right)."""
    problems: list[str] = []
    per_line: dict[tuple[str, str], list[ChargebackRow]] = defaultdict(list)
    keys = [r.dimension_key() for r in calc.rows]
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        problems.append("rows are not strictly sorted by dimension key")
    for row in calc.rows:
        per_line[(row.resource_id or "", row.product_type)].append(row)
    for line in scenario.lines:
        problems.extend(_check_line(line, per_line.get((line.resource_id, line.product_type), [])))
    rng = random.Random(seed + 1)
    for line in rng.sample(scenario.lines, min(sample, len(scenario.lines))):
        got = sorted(_brief(r) for r in per_line.get((line.resource_id, line.product_type), []))
        want = sorted(reference_rows(scenario, line))
        if got != want:
            problems.append(f"{line.resource_id}/{line.product_type}: rows differ from the reference")
    return problems


def _check_line(line: BillingLineItem, rows: list[ChargebackRow]) -> list[str]:
    total = sum((r.amount for r in rows), Decimal(0))
    out = []
    if total != line.total_cost:
        out.append(f"{line.resource_id}/{line.product_type}: rows sum to {total}, line is {line.total_cost}")
    for r in rows:
        if r.amount != r.amount.quantize(QUANTUM) or (r.amount < 0) != (line.total_cost < 0) or r.amount == 0:
            out.append(f"{line.resource_id}/{line.product_type}: bad amount {r.amount} for {r.identity_id}")
    return out


def _brief(row: ChargebackRow) -> RowBrief:
    return (
        row.identity_id,
        row.cost_type.value,
        row.allocation_method or "",
        row.allocation_detail or "",
        row.amount,
    )


def reference_rows(scenario: Scenario, line: BillingLineItem) -> list[RowBrief]:
    """The line's rows by the plain rules of allocation.md §2, §3, §5, §6, §11 — no chains involved."""
    res = next(r for r in scenario.resources if r.resource_id == line.resource_id)
    amount = line.total_cost
    fraction = Decimal(1)
    if res.created_at is not None:
        fraction = Decimal((END - res.created_at) // timedelta(microseconds=1)) / Decimal(86_400_000_000)
    active = q4(amount * fraction)
    rows: list[RowBrief] = []
    if active != 0:
        rows = _reference_active(scenario, line, active)
    if amount - active != 0:
        rows.append((UNALLOCATED, "shared", "terminal", "RESOURCE_INACTIVE", amount - active))
    return [r for r in rows if r[4] != 0]


def _reference_active(scenario: Scenario, line: BillingLineItem, active: Decimal) -> list[RowBrief]:
    ids = sorted(scenario.people[line.resource_id].ids())
    detail = "even_split_allocation"
    if line.product_type in USAGE_TYPES:
        group = scenario.usage[(line.resource_id, START, END)]
        rows = [] if group.fetch_failed or not group.rows else group.rows.get(USAGE_KEY, [])
        per: dict[str, Decimal] = defaultdict(Decimal)
        for m in rows:
            if m.value > 0:
                per[m.labels[LABEL]] += m.value
        if per:
            return [
                (i, "usage", "usage_ratio", "usage_ratio_allocation", a)
                for i, a, _ in usage_ratio(per, active)
            ]
        detail = "no_usage_for_active_identities" if rows else "no_metrics_located"
        if not ids:
            return [(line.resource_id, "shared", "terminal", "no_identities_located", active)]
    if not ids:
        return [(UNALLOCATED, "shared", "terminal", "no_identities_located", active)]
    return [(i, "shared", "even_split", detail, a) for i, a in even_split(ids, active)]


# --- Commit ---------------------------------------------------------------------------


def commit(rows: list[ChargebackRow], directory: Path) -> tuple[float, int]:
    """Seconds to replace the date's rows in a fresh DuckDB file, and the stored row count."""
    from chargeback_pipeline.storage import open_tenant_db

    with open_tenant_db(directory / "bench.duckdb", ecosystem=ECOSYSTEM, tenant_id=TENANT) as db:
        started = time.perf_counter()
        with db.transaction():
            db.chargebacks.replace_date(DAY, rows, str(uuid.uuid4()))
        seconds = time.perf_counter() - started
        stored = db.chargebacks.count(DAY)
    return seconds, stored


# --- Main -----------------------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--identities", type=int, default=2_000)
    parser.add_argument("--per-line", type=int, default=44, help="average identities per line")
    parser.add_argument("--seed", type=int, default=20260301)
    parser.add_argument("--sample", type=int, default=500, help="lines recomputed by the reference rules")
    parser.add_argument("--no-commit", action="store_true", help="skip the DuckDB commit")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    scenario = build_scenario(args.lines, args.identities, args.per_line, args.seed)
    t_build = time.perf_counter() - t0

    dispatch = BenchDispatch(BenchHandler(scenario.people))
    store: Any = MemoryStore(scenario.resources, scenario.identities)
    t1 = time.perf_counter()
    calc = calculate_date(dispatch, store, DAY, scenario.lines, scenario.usage, NoFailures(), QuietLog())
    t_calc = time.perf_counter() - t1
    rss_calc = peak_rss_mib()

    t_commit, stored = 0.0, -1
    if not args.no_commit:
        with tempfile.TemporaryDirectory(prefix="bench-allocation-") as tmp:
            t_commit, stored = commit(calc.rows, Path(tmp))

    t2 = time.perf_counter()
    problems = verify(scenario, calc, args.sample, args.seed)
    if stored not in (-1, len(calc.rows)):
        problems.append(f"stored {stored} rows, calculated {len(calc.rows)}")
    t_verify = time.perf_counter() - t2
    return report(args, calc, (t_build, t_calc, t_commit, t_verify), rss_calc, problems)


def report(
    args: argparse.Namespace,
    calc: DateCalculation,
    seconds: tuple[float, float, float, float],
    rss_calc: float,
    problems: list[str],
) -> int:
    t_build, t_calc, t_commit, t_verify = seconds
    rows = len(calc.rows)
    total = t_calc + t_commit
    rss = peak_rss_mib()
    print(f"lines               {calc.stats.line_count:>12,}")
    print(f"rows                {rows:>12,}")
    print(f"billing total       {calc.stats.billing_total:>12}")
    print(f"unallocated total   {calc.stats.unallocated_total:>12}")
    print(f"build scenario  s   {t_build:>12.2f}")
    print(f"calculate_date  s   {t_calc:>12.2f}   ({rows / t_calc:,.0f} rows/s)")
    print(f"commit (DuckDB) s   {t_commit:>12.2f}" + ("   (skipped)" if args.no_commit else ""))
    print(f"verify          s   {t_verify:>12.2f}   ({args.sample} lines against the reference)")
    print(f"calc + commit   s   {total:>12.2f}   target <= {TARGET_SECONDS:.0f}")
    print(f"peak RSS      MiB   {rss_calc:>12.0f}   after calculate_date")
    print(f"peak RSS      MiB   {rss:>12.0f}   overall, target <= {TARGET_RSS_MIB:.0f}")
    for problem in problems[:20]:
        print("PROBLEM", problem)
    ok_targets = total <= TARGET_SECONDS and rss <= TARGET_RSS_MIB
    print("verification", "FAILED" if problems else "passed", "| targets", "met" if ok_targets else "MISSED")
    if problems:
        return 1
    return 1 if args.strict and not ok_targets else 0


if __name__ == "__main__":
    raise SystemExit(main())
