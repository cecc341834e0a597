"""The ``org_wide`` and ``default`` handlers (§6, §7.6).

Neither gathers anything nor resolves identities: organisation-wide costs (audit
logs, support) are split across every owner of the window, which the core supplies as
``tenant_period``; Tableflow and cluster-linking costs go to the billed resource.
"""

from __future__ import annotations

from chargeback_plugins.confluent_cloud import chains
from chargeback_plugins.confluent_cloud.handlers.base import HandlerBase


class OrgWideHandler(HandlerBase):
    service_type = "org_wide"

    def __init__(self) -> None:
        chain = chains.org_wide_chain()
        super().__init__({"AUDIT_LOG_READ": chain, "SUPPORT": chain})


class DefaultHandler(HandlerBase):
    service_type = "default"

    def __init__(self) -> None:
        default, linking = chains.default_allocator(), chains.cluster_linking_allocator()
        super().__init__(
            {
                "TABLEFLOW_DATA_PROCESSED": default,
                "TABLEFLOW_NUM_TOPICS": default,
                "TABLEFLOW_STORAGE": default,
                "CLUSTER_LINKING_PER_LINK": linking,
                "CLUSTER_LINKING_READ": linking,
                "CLUSTER_LINKING_WRITE": linking,
            }
        )
