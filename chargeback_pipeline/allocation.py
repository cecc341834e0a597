"""The money maths and the allocation building blocks (spec/allocation.md §1, §4-§8, §11).

This is the only module that divides money. Plugins decide *who* is charged and *by
which rule* by composing the blocks below; every amount they produce comes out of
``distribute`` so the 4-dp, conservation and sign rules hold by construction.

Reading guide for chain authors::

    network = UsageRatio(usage_by_label(("bytes_in",), "principal_id"), usage_keys=("bytes_in",))
    chain = Chain([
        network,                                                     # T0: measured usage
        EvenSplit(merged_active, detail=network.fallback_detail),    # T1: why T0 declined
        EvenSplit(owners, detail="no_active_identities_located"),
        Terminal(resource),
    ])

``fallback_detail`` (equivalently ``after_usage("bytes_in")``) writes
``no_metrics_located`` when the declining tier's own usage keys have no rows (or the
fetch failed) and ``no_usage_for_active_identities`` when rows exist but the usage
total is ≤ 0.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol, runtime_checkable

from chargeback_pipeline.errors import AllocationError
from chargeback_pipeline.models import (
    ORG_OWNER_IDENTITY_TYPES,
    OWNER_IDENTITY_TYPES,
    QUANTUM,
    UNALLOCATED,
    ZERO,
    AllocationContext,
    AllocationResult,
    ChargebackRow,
    CostType,
    q4,
)
from chargeback_pipeline.protocols import CostAllocator

logger = logging.getLogger(__name__)

UNIT = QUANTUM
ONE = Decimal(1)
RATIO_TOLERANCE = Decimal("0.0001")

# allocation_method values (domain-model.md §8)
METHOD_EVEN_SPLIT = "even_split"
METHOD_USAGE_RATIO = "usage_ratio"
METHOD_TERMINAL = "terminal"
METHOD_DIRECT_OWNER = "direct_owner"
METHOD_UNKNOWN = "unknown"
METHOD_ALLOCATION_FAILED = "ALLOCATION_FAILED"

# allocation_detail codes (domain-model.md §9)
EVEN_SPLIT_ALLOCATION = "even_split_allocation"
USAGE_RATIO_ALLOCATION = "usage_ratio_allocation"
DIRECT_OWNER_ALLOCATION = "direct_owner_allocation"
NO_IDENTITIES_LOCATED = "no_identities_located"
NO_ACTIVE_IDENTITIES_LOCATED = "no_active_identities_located"
NO_METRICS_LOCATED = "no_metrics_located"
NO_USAGE_FOR_ACTIVE_IDENTITIES = "no_usage_for_active_identities"
NO_METRICS_NO_ACTIVE_IDENTITIES_LOCATED = "no_metrics_no_active_identities_located"
RESOURCE_INACTIVE = "RESOURCE_INACTIVE"
UNKNOWN_PRODUCT_TYPE = "UNKNOWN_PRODUCT_TYPE"
ALLOCATION_FAILED = "ALLOCATION_FAILED"

Detail = str | Callable[[AllocationContext], str]
"""A detail code, or a function of the context (for tiers whose code depends on why a tier declined)."""

CostTypeSpec = CostType | Callable[[AllocationContext], CostType]
IdentitySource = Callable[[AllocationContext], Sequence[str]]
UsageSource = Callable[[AllocationContext], Mapping[str, Decimal]]
OwnerSource = Callable[[AllocationContext], str | None]
IdentitySpec = str | Callable[[AllocationContext], str]


# --- Pure money maths (§4-§6) -----------------------------------------------------------


def distribute(ids_sorted: Sequence[str], amounts: list[Decimal], target: Decimal) -> list[Decimal]:
    """Push the rounding remainder onto ``amounts`` one unit at a time, round-robin in id order.

    Never moves a ``0.0000`` further toward zero, which is what keeps the sign rule.
    ``amounts`` is modified in place and returned.
    """
    if len(ids_sorted) != len(amounts):
        raise AllocationError(f"distribute: {len(ids_sorted)} ids but {len(amounts)} amounts")
    diff = target - sum(amounts, ZERO)
    if diff == 0:
        return amounts
    if not amounts:
        raise AllocationError(f"cannot distribute {target} over no identities")
    step = UNIT if diff > 0 else -UNIT
    toward_zero = (target >= 0 and step < 0) or (target < 0 and step > 0)
    size = len(amounts)
    i = guard = 0
    while diff != 0:
        if not (toward_zero and amounts[i] == 0):
            amounts[i] += step
            diff -= step
        i = (i + 1) % size
        guard += 1
        if guard > 2 * size:
            raise AllocationError("remainder did not converge")
    return amounts


def even_split(ids: Iterable[str], target: Decimal) -> list[tuple[str, Decimal]]:
    """Equal 4-dp shares of ``target``; the first ids (sorted) absorb the remainder."""
    ordered = sorted(set(ids))
    if not ordered:
        raise AllocationError(f"cannot split {target} evenly over no identities")
    base = q4(target / len(ordered))
    return list(zip(ordered, distribute(ordered, [base] * len(ordered), target), strict=True))


def usage_ratio(usage: Mapping[str, Decimal], target: Decimal) -> list[tuple[str, Decimal, float]]:
    """Shares of ``target`` proportional to strictly positive usage: ``(id, amount, ratio)``.

    The ratio is informational (row metadata), hence a float; the amount is exact.
    """
    ordered = sorted(usage)
    if not ordered:
        raise AllocationError(f"cannot split {target} by usage: no usage")
    values = [usage[i] for i in ordered]
    if any(v <= 0 for v in values):
        raise AllocationError("usage_ratio needs strictly positive usage values")
    total = sum(values, ZERO)
    provisional = [(target * v / total).quantize(QUANTUM, rounding=ROUND_HALF_UP) for v in values]
    amounts = distribute(ordered, provisional, target)
    return [(i, a, float(v / total)) for i, a, v in zip(ordered, amounts, values, strict=True)]


# --- Row building -----------------------------------------------------------------------


def make_row(
    ctx: AllocationContext,
    identity_id: str,
    amount: Decimal,
    cost_type: CostType,
    method: str | None,
    detail: str | None,
    metadata: dict[str, Any] | None = None,
) -> ChargebackRow:
    """One row carrying the line's fields and the context's dimensions (every block uses this shape)."""
    line = ctx.billing_line
    return ChargebackRow(
        line.ecosystem,
        line.tenant_id,
        line.timestamp,
        line.resource_id,
        line.product_category,
        line.product_type,
        identity_id,
        cost_type,
        amount,
        method,
        detail,
        dict(ctx.dimension_metadata),
        {} if metadata is None else metadata,
    )


def _rows_for(
    ctx: AllocationContext,
    shares: Iterable[tuple[str, Decimal]],
    cost_type: CostType,
    method: str,
    detail: str,
) -> list[ChargebackRow]:
    """Bulk version of ``make_row``: the hot path builds ~40 rows per line, so locals are hoisted.

    The rows of one call share one (identical) ``dimensions`` dict; treat it as read-only.
    """
    line = ctx.billing_line
    eco, tenant, ts = line.ecosystem, line.tenant_id, line.timestamp
    rid, cat, ptype = line.resource_id, line.product_category, line.product_type
    dims = dict(ctx.dimension_metadata)
    return [
        ChargebackRow(eco, tenant, ts, rid, cat, ptype, ident, cost_type, amount, method, detail, dims, {})
        for ident, amount in shares
    ]


def _detail(detail: Detail, ctx: AllocationContext) -> str:
    return detail if isinstance(detail, str) else detail(ctx)


def _cost_type(spec: CostTypeSpec, ctx: AllocationContext) -> CostType:
    return spec if isinstance(spec, CostType) else spec(ctx)


def unallocated_result(ctx: AllocationContext, method: str, detail: str) -> AllocationResult:
    """The single ``UNALLOCATED`` / shared row a block writes when used standalone and it has nobody."""
    return AllocationResult([make_row(ctx, UNALLOCATED, ctx.split_amount, CostType.SHARED, method, detail)])


# --- Identity and usage sources (§7.1, §11) ---------------------------------------------


def metrics_derived(ctx: AllocationContext) -> list[str]:
    return sorted(ctx.identities.metrics_derived.ids())


def resource_active(ctx: AllocationContext) -> list[str]:
    return sorted(ctx.identities.resource_active.ids())


def merged_active(ctx: AllocationContext) -> list[str]:
    # Same ids as ``resolution.merged_active`` without copying the identity objects.
    res = ctx.identities
    return sorted(res.resource_active.ids() | res.metrics_derived.ids())


def owners(ctx: AllocationContext) -> list[str]:
    return sorted(ctx.identities.tenant_period.ids_by_type(*OWNER_IDENTITY_TYPES))


def org_owners(ctx: AllocationContext) -> list[str]:
    return sorted(ctx.identities.tenant_period.ids_by_type(*ORG_OWNER_IDENTITY_TYPES))


def resource(ctx: AllocationContext) -> list[str]:
    return [ctx.billing_line.resource_id]


def line_resource_id(ctx: AllocationContext) -> str:
    """Terminal identity of the Confluent Cloud chains: the billed resource itself."""
    return ctx.billing_line.resource_id


def usage_by_label(
    keys: Sequence[str],
    label: str,
    alias: Callable[[AllocationContext], Mapping[str, str]] | None = None,
) -> UsageSource:
    """Usage per label value: Σ of row values under ``keys``, non-empty labels and values > 0 only.

    ``alias`` maps a label value to the identity it is charged to (Confluent Cloud counts
    an API key's traffic under its owner).
    """
    key_tuple = tuple(keys)

    def source(ctx: AllocationContext) -> dict[str, Decimal]:
        """The hot loop of usage splits (~10^6 rows a month).

        Consecutive rows of one series share one labels mapping (``UsageRepository``
        and the fetchers build them so), so the label and its alias are looked up once
        per run of equal mappings, and a run's total is kept in a local. The additions
        are the same, in the same order, as ``usage[who] += value`` row by row, so
        the sums are identical to the digit.
        """
        data = ctx.metrics_data or {}
        names = alias(ctx) if alias is not None else {}
        usage: dict[str, Decimal] = {}
        for key in key_tuple:
            labels: object = None
            who: str | None = None
            total: Decimal | None = None  # None: nothing counted for ``who`` yet
            for row in data.get(key) or ():
                if row.labels is not labels:
                    if total is not None and who is not None:
                        usage[who] = total
                    labels = row.labels
                    raw = row.labels.get(label)
                    who = names.get(raw, raw) if raw else None
                    total = None if who is None else usage.get(who)
                if who is not None and row.value > 0:
                    total = (ZERO if total is None else total) + row.value
            if total is not None and who is not None:
                usage[who] = total
        return usage

    return source


def usage_from_context(key: str) -> UsageSource:
    """Usage weights a resolver left in ``resolution.context[key]`` (e.g. Flink's ``stmt_owner_cfu``)."""

    def source(ctx: AllocationContext) -> dict[str, Decimal]:
        raw = ctx.identities.context.get(key) or {}
        return {str(k): _as_decimal(v, f"context[{key!r}][{k!r}]") for k, v in raw.items()}

    return source


def _as_decimal(value: object, what: str) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(str(value))
    raise AllocationError(f"{what} must be a number, got {type(value).__name__}")


def usage_decline_detail(ctx: AllocationContext, usage_keys: Sequence[str] | None) -> str:
    """Why a usage tier found nothing: no data for its own keys, or data with no usable usage.

    ``usage_keys=None`` means "any metric row of the line counts".
    """
    data = ctx.metrics_data
    if ctx.metrics_fetch_failed or not data:
        return NO_METRICS_LOCATED
    keys = data.keys() if usage_keys is None else usage_keys
    if any(data.get(k) for k in keys):
        return NO_USAGE_FOR_ACTIVE_IDENTITIES
    return NO_METRICS_LOCATED


def after_usage(*usage_keys: str) -> Callable[[AllocationContext], str]:
    """Detail for the tier after a declining usage tier that reads ``usage_keys``."""
    keys: tuple[str, ...] | None = usage_keys or None

    def detail(ctx: AllocationContext) -> str:
        return usage_decline_detail(ctx, keys)

    return detail


# --- Building blocks (§7) ---------------------------------------------------------------


@runtime_checkable
class Tier(Protocol):
    """Anything usable as a chain tier or composite part: may decline with ``None``."""

    def allocate(self, ctx: AllocationContext) -> AllocationResult | None: ...


class Block(ABC):
    """A tier that is also a standalone ``CostAllocator`` (which never declines)."""

    __slots__ = ()

    @abstractmethod
    def allocate(self, ctx: AllocationContext) -> AllocationResult | None: ...

    @abstractmethod
    def declined(self, ctx: AllocationContext) -> AllocationResult:
        """The standalone result when ``allocate`` would decline."""

    def __call__(self, ctx: AllocationContext) -> AllocationResult:
        result = self.allocate(ctx)
        return result if result is not None else self.declined(ctx)


class EvenSplit(Block):
    __slots__ = ("cost_type", "detail", "method", "source")

    def __init__(
        self,
        source: IdentitySource,
        cost_type: CostType = CostType.SHARED,
        detail: Detail = EVEN_SPLIT_ALLOCATION,
        method: str = METHOD_EVEN_SPLIT,
    ) -> None:
        self.source = source
        self.cost_type = cost_type
        self.detail = detail
        self.method = method

    def allocate(self, ctx: AllocationContext) -> AllocationResult | None:
        ids = self.source(ctx)
        if not ids:
            return None
        shares = even_split(ids, ctx.split_amount)
        return AllocationResult(
            _rows_for(ctx, shares, self.cost_type, self.method, _detail(self.detail, ctx))
        )

    def declined(self, ctx: AllocationContext) -> AllocationResult:
        return unallocated_result(ctx, self.method, NO_IDENTITIES_LOCATED)


class UsageRatio(Block):
    """Split by measured usage; declines on a failed fetch or when no positive usage is found.

    ``usage_keys`` are the metric keys this tier reads; they decide the detail written by
    the next tier (``fallback_detail``) and by the standalone decline row.
    ``cost_type`` / ``detail`` may be functions of the context (Flink labels weights
    derived from statement counts as ``shared`` / ``no_metrics_located``).
    """

    __slots__ = ("cost_type", "detail", "usage_keys", "usage_source")

    def __init__(
        self,
        usage_source: UsageSource,
        detail: Detail = USAGE_RATIO_ALLOCATION,
        cost_type: CostTypeSpec = CostType.USAGE,
        usage_keys: Sequence[str] | None = None,
    ) -> None:
        self.usage_source = usage_source
        self.detail = detail
        self.cost_type = cost_type
        self.usage_keys: tuple[str, ...] | None = None if usage_keys is None else tuple(usage_keys)

    def allocate(self, ctx: AllocationContext) -> AllocationResult | None:
        if ctx.metrics_fetch_failed:
            return None
        usage = {k: v for k, v in self.usage_source(ctx).items() if k and v > 0}
        if not usage:
            return None
        shares = usage_ratio(usage, ctx.split_amount)
        rows = _rows_for(
            ctx,
            ((i, a) for i, a, _ in shares),
            _cost_type(self.cost_type, ctx),
            METHOD_USAGE_RATIO,
            _detail(self.detail, ctx),
        )
        for row, (_, _, ratio) in zip(rows, shares, strict=True):
            row.metadata["ratio"] = ratio
        return AllocationResult(rows)

    def declined(self, ctx: AllocationContext) -> AllocationResult:
        return unallocated_result(ctx, METHOD_USAGE_RATIO, usage_decline_detail(ctx, self.usage_keys))

    @property
    def fallback_detail(self) -> Callable[[AllocationContext], str]:
        """Detail for the next tier: ``no_metrics_located`` or ``no_usage_for_active_identities``."""
        return after_usage(*self.usage_keys) if self.usage_keys else after_usage()


class Terminal(Block):
    """Last tier of every chain: the whole amount to one fixed or line-derived identity."""

    __slots__ = ("cost_type", "detail", "identity", "method")

    def __init__(
        self,
        identity: IdentitySpec,
        cost_type: CostType = CostType.SHARED,
        detail: Detail = NO_IDENTITIES_LOCATED,
        method: str = METHOD_TERMINAL,
    ) -> None:
        self.identity = identity
        self.cost_type = cost_type
        self.detail = detail
        self.method = method

    def allocate(self, ctx: AllocationContext) -> AllocationResult:
        ident = self.identity if isinstance(self.identity, str) else self.identity(ctx)
        if not ident:
            raise AllocationError(f"terminal identity is empty for resource {ctx.billing_line.resource_id!r}")
        detail = _detail(self.detail, ctx)
        return AllocationResult([make_row(ctx, ident, ctx.split_amount, self.cost_type, self.method, detail)])

    def declined(self, ctx: AllocationContext) -> AllocationResult:
        return self.allocate(ctx)


class DirectOwner(Block):
    __slots__ = ("cost_type", "detail", "owner_source")

    def __init__(
        self,
        owner_source: OwnerSource,
        cost_type: CostType = CostType.USAGE,
        detail: Detail = DIRECT_OWNER_ALLOCATION,
    ) -> None:
        self.owner_source = owner_source
        self.cost_type = cost_type
        self.detail = detail

    def allocate(self, ctx: AllocationContext) -> AllocationResult | None:
        owner = self.owner_source(ctx)
        if not owner:
            return None
        detail = _detail(self.detail, ctx)
        return AllocationResult(
            [make_row(ctx, owner, ctx.split_amount, self.cost_type, METHOD_DIRECT_OWNER, detail)]
        )

    def declined(self, ctx: AllocationContext) -> AllocationResult:
        return unallocated_result(ctx, METHOD_DIRECT_OWNER, NO_IDENTITIES_LOCATED)


class Chain(Block):
    """Tiers tried in order; the first that does not decline wins.

    Ending in a ``Terminal`` is enforced at construction so a chain can never run out of
    options at allocation time. ``record_tier=False`` builds the step-wise non-chain
    allocators of the catalogue (e.g. Kafka base) that carry no ``chain_tier``.
    """

    __slots__ = ("record_tier", "tiers")

    def __init__(self, tiers: Sequence[Tier], *, record_tier: bool = True) -> None:
        tiers = list(tiers)
        if not tiers:
            raise ValueError("Chain needs at least one tier")
        if not isinstance(tiers[-1], Terminal):
            raise ValueError(f"Chain must end in a Terminal tier, got {type(tiers[-1]).__name__}")
        for index, tier in enumerate(tiers):
            if not isinstance(tier, Tier):
                raise TypeError(f"Chain tier {index} ({type(tier).__name__}) has no allocate(ctx) method")
        self.tiers = tuple(tiers)
        self.record_tier = record_tier

    def allocate(self, ctx: AllocationContext) -> AllocationResult:
        for index, tier in enumerate(self.tiers):
            result = tier.allocate(ctx)
            if result is None:
                continue
            if self.record_tier:
                for row in result.rows:
                    row.metadata["chain_tier"] = index
                result.metadata["chain_tier"] = index
            return result
        raise AllocationError("chain ran out of tiers")  # unreachable: the last tier is a Terminal

    def declined(self, ctx: AllocationContext) -> AllocationResult:
        return self.allocate(ctx)


def _validate_ratios(parts: Sequence[tuple[Decimal, object]]) -> None:
    if not parts:
        raise ValueError("Composite needs at least one part")
    for index, (ratio, _) in enumerate(parts):
        if not isinstance(ratio, Decimal) or not ratio.is_finite():
            raise ValueError(f"Composite ratio {index} must be a finite Decimal, got {ratio!r}")
        if ratio < 0 or ratio > 1:
            raise ValueError(f"Composite ratio {index} must be within [0, 1], got {ratio}")
    total = sum((r for r, _ in parts), ZERO)
    if abs(total - ONE) > RATIO_TOLERANCE:
        raise ValueError(f"Composite ratios must sum to 1 within {RATIO_TOLERANCE}, got {total}")


def _run_part(block: Tier | CostAllocator, ctx: AllocationContext) -> AllocationResult | None:
    if isinstance(block, Tier):
        return block.allocate(ctx)
    return block(ctx)


class Composite(Block):
    """Fixed-ratio parts (CKU 70/30), each allocated by its own block (§8).

    The last part takes ``S - sum(other parts)`` so the parts always add up exactly.
    """

    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[tuple[Decimal, Tier | CostAllocator]]) -> None:
        _validate_ratios(parts)
        self.parts = tuple(parts)

    def allocate(self, ctx: AllocationContext) -> AllocationResult:
        rows: list[ChargebackRow] = []
        for index, ((ratio, block), amount) in enumerate(
            zip(self.parts, self.amounts(ctx.split_amount), strict=True)
        ):
            if amount == 0:
                continue
            result = _run_part(block, replace(ctx, split_amount=amount))
            if result is None:
                raise AllocationError(
                    f"composite part {index} ({type(block).__name__}) declined for resource "
                    f"{ctx.billing_line.resource_id!r}"
                )
            for row in result.rows:
                row.metadata["composition_index"] = index
                row.metadata["composition_ratio"] = float(ratio)
            rows.extend(result.rows)
        return AllocationResult(rows)

    def amounts(self, split_amount: Decimal) -> list[Decimal]:
        """Part amounts: ``Q4(S * r_i)`` for all but the last part, which gets the exact rest."""
        head = [q4(split_amount * ratio) for ratio, _ in self.parts[:-1]]
        return [*head, split_amount - sum(head, ZERO)]

    def declined(self, ctx: AllocationContext) -> AllocationResult:
        return self.allocate(ctx)


RatioSource = Callable[[AllocationContext], Sequence[tuple[Decimal, Tier | CostAllocator]]]


class DynamicComposite(Block):
    """A composite whose ratios are read from the context (e.g. ``allocator_params``) at call time."""

    __slots__ = ("ratio_source",)

    def __init__(self, ratio_source: RatioSource) -> None:
        self.ratio_source = ratio_source

    def allocate(self, ctx: AllocationContext) -> AllocationResult:
        return Composite(self.ratio_source(ctx)).allocate(ctx)

    def declined(self, ctx: AllocationContext) -> AllocationResult:
        return self.allocate(ctx)


def ratios_from_params(parts: Sequence[tuple[str, object, Tier | CostAllocator]]) -> RatioSource:
    """Ratio source reading ``ctx.params[name]`` (else the default) as ``Decimal(str(value))``.

    ``parts`` is ``[(param_name, default, block), ...]``; e.g. the CKU model
    ``[("kafka_cku_usage_ratio", "0.70", cku_usage), ("kafka_cku_shared_ratio", "0.30", cku_shared)]``.
    """
    spec = tuple(parts)

    def source(ctx: AllocationContext) -> list[tuple[Decimal, Tier | CostAllocator]]:
        out: list[tuple[Decimal, Tier | CostAllocator]] = []
        for name, default, block in spec:
            value = ctx.params.get(name, default)
            if isinstance(value, bool):
                raise ValueError(f"allocator_params.{name} must be a number, got a boolean")
            try:
                out.append((Decimal(str(value)), block))
            except ArithmeticError as exc:
                raise ValueError(f"allocator_params.{name} is not a number: {value!r}") from exc
        return out

    return source


# --- Fallback and ready-made chains -----------------------------------------------------


class DefaultFallbackAllocator:
    """Core fallback for product types no handler claims: never drop the cost, park it on UNALLOCATED."""

    __slots__ = ("log",)

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.log = log or logger

    def __call__(self, ctx: AllocationContext) -> AllocationResult:
        line = ctx.billing_line
        self.log.warning(
            "tenant %s: no handler for product type %r (resource %r, date %s); %s charged to %s",
            line.tenant_id,
            line.product_type,
            line.resource_id,
            line.timestamp.date().isoformat(),
            ctx.split_amount,
            UNALLOCATED,
        )
        return unallocated_result(ctx, METHOD_UNKNOWN, UNKNOWN_PRODUCT_TYPE)


default_fallback_allocator = DefaultFallbackAllocator()


def generic_even_chain() -> Chain:
    """``GENERIC_EVEN`` (§11.2): even over merged active identities, else UNALLOCATED."""
    return Chain([EvenSplit(merged_active), Terminal(UNALLOCATED)])


def generic_usage_chain(usage_key: str, label: str) -> Chain:
    """``GENERIC_USAGE`` (§11.2): usage ratio over ``usage_key`` by ``label``, else even, else UNALLOCATED."""
    usage = UsageRatio(usage_by_label((usage_key,), label), usage_keys=(usage_key,))
    return Chain(
        [
            usage,
            EvenSplit(merged_active, detail=usage.fallback_detail),
            Terminal(UNALLOCATED),
        ]
    )
