"""The ``flink`` handler: compute pools, their statements, and CFU attribution (§3 E6–E7, §7.5).

A pool's cost is split by the CFU its statements consumed (telemetry), each statement
charged to its principal. Without telemetry, running statements are counted instead
and the rows say so (``shared`` / ``no_metrics_located``). Statements are read from the
regional Flink API with per-region credentials; pools in regions without credentials
are not allocatable and are left out.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from chargeback_pipeline.models import ZERO, IdentityResolution, IdentitySet, MetricQuery, MetricRow, Resource
from chargeback_pipeline.protocols import ResolveContext, TenantStore
from chargeback_plugins.confluent_cloud import chains, telemetry
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.handlers.base import HandlerBase, shared_context
from chargeback_plugins.confluent_cloud.identities import lookup_ignoring_lifecycle, metadata_text, sentinel
from chargeback_plugins.confluent_cloud.inventory import (
    ECOSYSTEM,
    created_at,
    get,
    lower_trim,
    text,
)
from chargeback_plugins.confluent_cloud.settings import CCloudSettings, FlinkRegion

log = logging.getLogger(__name__)

COMPUTE_POOL = "flink_compute_pool"
STATEMENT = "flink_statement"
POOLS_PATH = "/fcpm/v2/compute-pools"
STOPPED_PHASES = frozenset({"COMPLETED", "FAILED", "STOPPED"})
OWNER_UNKNOWN = "flink_stmt_owner_unknown"

FlinkClientFactory = Callable[[str, str, FlinkRegion], CCloudClient]
"""``(cloud, region, credentials) → client`` of the regional Flink API (created on demand, cached)."""


def org_id_from_crn(crn: Any) -> str:
    """The ``organization=`` segment of a CRN; missing → ``ValueError`` (fails the flink gather)."""
    if isinstance(crn, str):
        for segment in crn.split("/"):
            if segment.startswith("organization="):
                org = segment.removeprefix("organization=")
                if org:
                    return org
    raise ValueError(f"compute pool CRN {crn!r} has no organization= segment")


def statement_resource(tenant_id: str, item: Any, env_id: str, pool_id: str) -> Resource:
    name = text(item, "name")
    uid = text(item, "metadata", "uid")
    if uid is None and name is None:
        digest = hashlib.sha256(f"{pool_id}:{json.dumps(item, sort_keys=True)}".encode()).hexdigest()[:12]
        resource_id = f"flink_stmt_unknown_{digest}"
    else:
        resource_id = uid or name or ""
    phase = get(item, "status", "phase")
    return Resource(
        ecosystem=ECOSYSTEM,
        tenant_id=tenant_id,
        resource_id=resource_id,
        resource_type=STATEMENT,
        display_name=name,
        parent_id=env_id,
        owner_id=text(item, "spec", "principal"),
        created_at=None,
        metadata={
            "statement_name": name,
            "compute_pool_id": text(item, "spec", "compute_pool", "id") or pool_id,
            "is_stopped": isinstance(phase, str) and phase.upper() in STOPPED_PHASES,
        },
    )


class FlinkHandler(HandlerBase):
    service_type = "flink"
    gathered_resource_types: Sequence[str] = (COMPUTE_POOL, STATEMENT)

    def __init__(
        self, client: CCloudClient, settings: CCloudSettings, flink_client: FlinkClientFactory
    ) -> None:
        chain = chains.flink_chain()
        super().__init__({"FLINK_NUM_CFU": chain, "FLINK_NUM_CFUS": chain})
        self._client = client
        self._settings = settings
        self._flink_client = flink_client

    def get_metrics_for_product_type(self, product_type: str) -> list[MetricQuery]:
        return telemetry.queries_for(product_type)

    # --- gather --------------------------------------------------------------------------

    def gather_resources(
        self, tenant_id: str, store: TenantStore, shared_ctx: object | None = None
    ) -> Iterator[Resource]:
        shared = shared_context(shared_ctx, self.service_type)
        pools: list[tuple[str, Resource, FlinkRegion]] = []
        for env_id in shared.env_ids:
            for item in self._client.list(POOLS_PATH, {"environment": env_id}, page_size=50):
                found = self._pool(tenant_id, item, env_id)
                if found is not None:
                    pools.append((env_id, *found))
                    yield found[0]
        fetched: set[tuple[str, str, str]] = set()
        for env_id, pool, credentials in pools:
            cloud, region = pool.metadata["cloud"], pool.metadata["region"]
            if (env_id, cloud, region) in fetched:
                continue
            fetched.add((env_id, cloud, region))
            org_id = org_id_from_crn(pool.metadata.get("crn"))
            client = self._flink_client(cloud, region, credentials)
            path = f"/sql/v1/organizations/{org_id}/environments/{env_id}/statements"
            for item in client.list(path, page_size=50):
                yield statement_resource(tenant_id, item, env_id, pool.resource_id)

    def _pool(self, tenant_id: str, item: Any, env_id: str) -> tuple[Resource, FlinkRegion] | None:
        pool_id = text(item, "id")
        spec = get(item, "spec")
        cloud, region = lower_trim(get(spec, "cloud")), lower_trim(get(spec, "region"))
        if pool_id is None or not region:
            return None
        credentials = self._settings.flink_credentials_for(cloud, region)
        if credentials is None:
            log.info(
                "tenant %s: Flink compute pool %s (%s %s) has no flink[] credentials: skipped",
                tenant_id,
                pool_id,
                cloud,
                region,
            )
            return None
        resource = Resource(
            ecosystem=ECOSYSTEM,
            tenant_id=tenant_id,
            resource_id=pool_id,
            resource_type=COMPUTE_POOL,
            display_name=text(spec, "display_name"),
            parent_id=env_id,
            created_at=created_at(item, f"Flink compute pool {pool_id}"),
            metadata={
                "cloud": cloud,
                "region": region,
                "provider_cloud": get(spec, "cloud"),
                "provider_region": get(spec, "region"),
                "crn": get(item, "metadata", "resource_name"),
                "is_allocatable": True,
            },
        )
        return resource, credentials

    # --- resolve -------------------------------------------------------------------------

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
        statements = self._statements(resource_id, billing_timestamp, billing_duration, store, context)
        weights = self._weights_from_metrics(resource_id, statements, metrics_data)
        source = chains.WEIGHTS_FROM_METRICS
        if not weights:
            weights = self._weights_from_running_statements(statements)
            source = chains.WEIGHTS_FROM_STATEMENT_COUNT
        if not weights:
            return IdentityResolution()
        owners = IdentitySet(
            sentinel(tenant_id, OWNER_UNKNOWN, "flink_statement_owner", "Flink Statement Owner Unknown")
            if owner == OWNER_UNKNOWN
            else lookup_ignoring_lifecycle(tenant_id, owner, store, context)
            for owner in sorted(weights)
        )
        return IdentityResolution(
            resource_active=owners,
            context={chains.STMT_OWNER_CFU: weights, chains.STMT_OWNER_WEIGHTS_SOURCE: source},
        )

    @staticmethod
    def _statements(
        pool_id: str, start: datetime, duration: timedelta, store: TenantStore, context: ResolveContext | None
    ) -> list[Resource]:
        if context is None:
            return store.resources.find_by_period(
                start, start + duration, STATEMENT, metadata_filter={"compute_pool_id": pool_id}
            )
        return sorted(
            (
                r
                for r in context["cached_resources"].values()
                if r.resource_type == STATEMENT and r.metadata.get("compute_pool_id") == pool_id
            ),
            key=lambda r: r.resource_id,
        )

    @staticmethod
    def _weights_from_metrics(
        pool_id: str, statements: list[Resource], metrics_data: dict[str, list[MetricRow]] | None
    ) -> dict[str, Decimal]:
        """CFU per statement owner; statements nobody owns go to ``flink_stmt_owner_unknown``."""
        if not metrics_data:
            return {}
        rows = metrics_data.get(chains.FLINK_CFU_PRIMARY) or metrics_data.get(chains.FLINK_CFU_FALLBACK) or []
        by_name: dict[str, Decimal] = {}
        for row in rows:
            name = row.labels.get("flink_statement_name")
            if row.labels.get("compute_pool_id") == pool_id and name and row.value > 0:
                by_name[name] = by_name.get(name, ZERO) + row.value
        owner_of: dict[str, str] = {}
        for statement in statements:
            name = statement.display_name or metadata_text(statement.metadata, "statement_name")
            owner = statement.owner_id or metadata_text(statement.metadata, "owner_id")
            if name and owner and name not in owner_of:
                owner_of[name] = owner
        weights: dict[str, Decimal] = {}
        for name, cfu in by_name.items():
            owner = owner_of.get(name, OWNER_UNKNOWN)
            weights[owner] = weights.get(owner, ZERO) + cfu
        return weights

    @staticmethod
    def _weights_from_running_statements(statements: list[Resource]) -> dict[str, Decimal]:
        weights: dict[str, Decimal] = {}
        for statement in statements:
            if statement.metadata.get("is_stopped"):
                continue
            owner = statement.owner_id or metadata_text(statement.metadata, "owner_id")
            if owner:
                weights[owner] = weights.get(owner, ZERO) + 1
        return weights
