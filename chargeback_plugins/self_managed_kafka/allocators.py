"""Allocation chains of the plugin (spec/allocation.md §11.1), built from core blocks."""

from __future__ import annotations

from chargeback_pipeline.allocation import (
    NO_ACTIVE_IDENTITIES_LOCATED,
    Chain,
    EvenSplit,
    Terminal,
    UsageRatio,
    metrics_derived,
    resource_active,
    usage_by_label,
)
from chargeback_pipeline.models import UNALLOCATED

PRINCIPAL_LABEL = "principal"


def smk_infra_chain() -> Chain:
    """``SMK_INFRA``: compute and storage shared by who used the cluster, else static, else UNALLOCATED."""
    return Chain(
        [
            EvenSplit(metrics_derived),
            EvenSplit(resource_active, detail=NO_ACTIVE_IDENTITIES_LOCATED),
            Terminal(UNALLOCATED),
        ]
    )


def smk_network_chain(usage_key: str) -> Chain:
    """``SMK_NETWORK``: bytes per principal, else even over static identities, else UNALLOCATED."""
    usage = UsageRatio(usage_by_label((usage_key,), PRINCIPAL_LABEL), usage_keys=(usage_key,))
    return Chain(
        [
            usage,
            EvenSplit(resource_active, detail=usage.fallback_detail),
            Terminal(UNALLOCATED),
        ]
    )
