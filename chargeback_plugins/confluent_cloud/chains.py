"""The Confluent Cloud allocators (spec/allocation.md §8, §11.3), built from the core's blocks.

No money maths here: each allocator is a composition of ``EvenSplit``, ``UsageRatio``,
``Terminal`` and ``Chain`` with the identity sources the catalogue names, so the 4-dp,
remainder and conservation rules of the core hold by construction.
"""

from __future__ import annotations

from collections.abc import Mapping

from chargeback_pipeline.allocation import (
    NO_ACTIVE_IDENTITIES_LOCATED,
    NO_METRICS_LOCATED,
    NO_METRICS_NO_ACTIVE_IDENTITIES_LOCATED,
    USAGE_RATIO_ALLOCATION,
    Chain,
    DynamicComposite,
    EvenSplit,
    Terminal,
    UsageRatio,
    line_resource_id,
    merged_active,
    org_owners,
    owners,
    ratios_from_params,
    usage_by_label,
    usage_from_context,
)
from chargeback_pipeline.models import UNALLOCATED, AllocationContext, CostType
from chargeback_pipeline.protocols import CostAllocator
from chargeback_plugins.confluent_cloud.identities import API_KEY_TO_OWNER, PRINCIPAL_LABEL
from chargeback_plugins.confluent_cloud.settings import CKU_SHARED_RATIO, CKU_USAGE_RATIO

BYTES_IN = "bytes_in"
BYTES_OUT = "bytes_out"
PARTITION_COUNT = "partition_count"
FLINK_CFU_PRIMARY = "flink_cfu_primary"
FLINK_CFU_FALLBACK = "flink_cfu_fallback"
STMT_OWNER_CFU = "stmt_owner_cfu"
STMT_OWNER_WEIGHTS_SOURCE = "stmt_owner_weights_source"
WEIGHTS_FROM_METRICS = "metrics"
WEIGHTS_FROM_STATEMENT_COUNT = "statement_count"

METHOD_TO_RESOURCE = "to_resource"
METHOD_DEFAULT = "default"
METHOD_CLUSTER_LINKING = "cluster_linking"
USING_DEFAULT_ALLOCATOR = "using_default_allocator"
CLUSTER_LINKING_COST = "cluster_linking_cost"


def _api_key_owners(ctx: AllocationContext) -> Mapping[str, str]:
    """Usage of an API-key principal is counted under the key's owner (§5)."""
    aliases = ctx.identities.context.get(API_KEY_TO_OWNER)
    return aliases if isinstance(aliases, Mapping) else {}


def _kafka_usage(*keys: str) -> UsageRatio:
    return UsageRatio(usage_by_label(keys, PRINCIPAL_LABEL, alias=_api_key_owners), usage_keys=keys)


def _resource_terminal() -> Terminal:
    return Terminal(line_resource_id)


def cku_usage_chain() -> Chain:
    """``CKU_USAGE`` (composite part 0): usage of bytes in + out, then merged, owners, the cluster."""
    usage = _kafka_usage(BYTES_IN, BYTES_OUT)
    return Chain(
        [
            usage,
            EvenSplit(merged_active, detail=usage.fallback_detail),
            EvenSplit(owners, detail=NO_METRICS_NO_ACTIVE_IDENTITIES_LOCATED),
            _resource_terminal(),
        ]
    )


def cku_shared_chain() -> Chain:
    """``CKU_SHARED`` (composite part 1): a fair share of capacity, never measured usage."""
    return Chain(
        [
            EvenSplit(merged_active),
            EvenSplit(owners, detail=NO_ACTIVE_IDENTITIES_LOCATED),
            _resource_terminal(),
        ]
    )


def cku_allocator() -> DynamicComposite:
    """70 % by usage, 30 % shared; ratios read from ``allocator_params`` at call time (§8)."""
    return DynamicComposite(
        ratios_from_params(
            [
                (CKU_USAGE_RATIO, "0.70", cku_usage_chain()),
                (CKU_SHARED_RATIO, "0.30", cku_shared_chain()),
            ]
        )
    )


def network_chain(usage_key: str) -> Chain:
    """``NETWORK``: usage of one key (``bytes_out``, ``bytes_in`` or ``partition_count``)."""
    usage = _kafka_usage(usage_key)
    return Chain(
        [
            usage,
            EvenSplit(merged_active, detail=usage.fallback_detail),
            EvenSplit(owners, detail=NO_ACTIVE_IDENTITIES_LOCATED),
            _resource_terminal(),
        ]
    )


def kafka_base_allocator() -> Chain:
    """``KAFKA_BASE`` (not a chain in the catalogue: its rows carry no ``chain_tier``)."""
    return Chain(
        [
            EvenSplit(merged_active),
            EvenSplit(owners, detail=NO_METRICS_NO_ACTIVE_IDENTITIES_LOCATED),
            Terminal(line_resource_id, method=METHOD_TO_RESOURCE),
        ],
        record_tier=False,
    )


def even_owners_chain() -> Chain:
    """``SR`` and ``KSQLDB``: merged active identities, else every owner, else the resource."""
    return Chain(
        [
            EvenSplit(merged_active),
            EvenSplit(owners, detail=NO_ACTIVE_IDENTITIES_LOCATED),
            _resource_terminal(),
        ]
    )


def connector_chain() -> Chain:
    """``CONNECTOR_TASKS`` / ``CONNECTOR_CAPACITY``: the connector's credential, else the connector."""
    return Chain([EvenSplit(merged_active), _resource_terminal()])


def _flink_from_metrics(ctx: AllocationContext) -> bool:
    return ctx.identities.context.get(STMT_OWNER_WEIGHTS_SOURCE) == WEIGHTS_FROM_METRICS


def _flink_cost_type(ctx: AllocationContext) -> CostType:
    """Counting running statements is not measured consumption (§7.5): shared."""
    return CostType.USAGE if _flink_from_metrics(ctx) else CostType.SHARED


def _flink_detail(ctx: AllocationContext) -> str:
    return USAGE_RATIO_ALLOCATION if _flink_from_metrics(ctx) else NO_METRICS_LOCATED


def flink_chain() -> Chain:
    """``FLINK``: statement owners' CFU (or running-statement counts), merged, owners, the pool."""
    usage = UsageRatio(
        usage_from_context(STMT_OWNER_CFU),
        detail=_flink_detail,
        cost_type=_flink_cost_type,
        usage_keys=(FLINK_CFU_PRIMARY, FLINK_CFU_FALLBACK),
    )
    return Chain(
        [
            usage,
            EvenSplit(merged_active, detail=usage.fallback_detail),
            EvenSplit(owners, detail=NO_ACTIVE_IDENTITIES_LOCATED),
            _resource_terminal(),
        ]
    )


def org_wide_chain() -> Chain:
    """``ORG_WIDE``: every service account, user and identity pool of the window, else UNALLOCATED."""
    return Chain([EvenSplit(org_owners), Terminal(UNALLOCATED)])


def default_allocator() -> CostAllocator:
    """``DEFAULT`` (Tableflow): one row to the billed resource."""
    return Terminal(line_resource_id, method=METHOD_DEFAULT, detail=USING_DEFAULT_ALLOCATOR)


def cluster_linking_allocator() -> CostAllocator:
    """``CLUSTER_LINKING``: one row to the link's resource."""
    return Terminal(line_resource_id, method=METHOD_CLUSTER_LINKING, detail=CLUSTER_LINKING_COST)
