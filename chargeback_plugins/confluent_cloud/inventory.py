"""Environments and Kafka clusters: the shared context of one inventory gather (§3 E1–E2, §7.1).

Several handlers need the list of environments and clusters (connectors are listed
per cluster, ksqlDB and Flink per environment), so it is fetched once per gather and
handed to every handler. Also home of the small parsing helpers every endpoint uses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chargeback_pipeline.models import Resource
from chargeback_plugins.confluent_cloud.client import CCloudClient

log = logging.getLogger(__name__)

ECOSYSTEM = "confluent_cloud"
ENVIRONMENT = "environment"
KAFKA_CLUSTER = "kafka_cluster"
ENVIRONMENTS_PATH = "/org/v2/environments"
CLUSTERS_PATH = "/cmk/v2/clusters"


def get(obj: Any, *path: str) -> Any:
    """``obj[p0][p1]…`` or ``None`` as soon as a level is missing or not an object."""
    for name in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(name)
    return obj


def text(obj: Any, *path: str) -> str | None:
    """A string field, or ``None`` when absent, empty or not a string."""
    value = get(obj, *path)
    return value if isinstance(value, str) and value else None


def lower_trim(value: Any) -> str:
    return value.strip().lower() if isinstance(value, str) else ""


def parse_created_at(value: Any, what: str) -> datetime | None:
    """ISO-8601 with ``Z``, an offset or fractions; naive = UTC; empty or invalid → ``None`` + WARNING."""
    if isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    log.warning("%s: created_at %r is empty or not an ISO-8601 instant; treated as unknown", what, value)
    return None


def created_at(item: Any, what: str) -> datetime | None:
    return parse_created_at(get(item, "metadata", "created_at"), what)


@dataclass
class SharedContext:
    """Environments (API order) and their Kafka clusters, fetched once per inventory gather."""

    environments: list[Resource] = field(default_factory=list)
    clusters: list[Resource] = field(default_factory=list)

    @property
    def env_ids(self) -> list[str]:
        return [env.resource_id for env in self.environments]

    @property
    def env_cluster_pairs(self) -> list[tuple[str, str]]:
        return [(c.parent_id or "", c.resource_id) for c in self.clusters]


def environment_resource(tenant_id: str, item: Any) -> Resource | None:
    env_id = text(item, "id")
    if env_id is None:
        log.warning("environment without id skipped")
        return None
    return Resource(
        ecosystem=ECOSYSTEM,
        tenant_id=tenant_id,
        resource_id=env_id,
        resource_type=ENVIRONMENT,
        display_name=text(item, "display_name"),
        created_at=created_at(item, f"environment {env_id}"),
    )


def cluster_resource(tenant_id: str, item: Any, env_id: str) -> Resource | None:
    cluster_id = text(item, "id")
    if cluster_id is None:
        log.warning("Kafka cluster without id in %s skipped", env_id)
        return None
    spec = get(item, "spec")
    return Resource(
        ecosystem=ECOSYSTEM,
        tenant_id=tenant_id,
        resource_id=cluster_id,
        resource_type=KAFKA_CLUSTER,
        display_name=text(spec, "display_name"),
        parent_id=text(spec, "environment", "id") or env_id,
        created_at=created_at(item, f"Kafka cluster {cluster_id}"),
        metadata={
            "cloud": lower_trim(get(spec, "cloud")),
            "region": lower_trim(get(spec, "region")),
            "provider_cloud": get(spec, "cloud"),
            "provider_region": get(spec, "region"),
            "bootstrap_endpoint": get(spec, "kafka_bootstrap_endpoint"),
        },
    )


def build_shared_context(client: CCloudClient, tenant_id: str) -> SharedContext:
    """E1, then E2 per environment in the order the API listed them. Any failure fails the gather."""
    context = SharedContext()
    for item in client.list(ENVIRONMENTS_PATH, page_size=99):
        env = environment_resource(tenant_id, item)
        if env is not None:
            context.environments.append(env)
    for env_id in context.env_ids:
        for item in client.list(CLUSTERS_PATH, {"environment": env_id}, page_size=99):
            cluster = cluster_resource(tenant_id, item, env_id)
            if cluster is not None:
                context.clusters.append(cluster)
    log.info(
        "tenant %s: %d environments, %d Kafka clusters",
        tenant_id,
        len(context.environments),
        len(context.clusters),
    )
    return context
