"""Brokers and topics from the Kafka Admin API (``resource_source.source: admin_api``).

``kafka-python`` is an optional dependency (the ``kafka`` extra): most users discover
brokers and topics from Prometheus and should not need a Kafka client installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from chargeback_pipeline.models import Resource
from chargeback_plugins.self_managed_kafka.cost_input import ECOSYSTEM
from chargeback_plugins.self_managed_kafka.settings import ResourceSource


def create_admin_client(settings: ResourceSource) -> Any:
    """A ``kafka.KafkaAdminClient``; creation errors propagate so ``initialize`` fails loudly."""
    try:
        kafka = importlib.import_module("kafka")
    except ImportError:
        raise ImportError(
            "resource_source.source 'admin_api' needs the optional dependency kafka-python: "
            "pip install 'chargeback-pipeline[kafka]'"
        ) from None
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kafka.KafkaAdminClient(**options)


class AdminInventory:
    """Maps the admin client's cluster description and topic list to resources (spec §5)."""

    def __init__(self, client: Any, cluster_id: str) -> None:
        self._client = client
        self._cluster_id = cluster_id

    def resources(self, tenant_id: str) -> Iterator[Resource]:
        try:
            brokers = list(self._client.describe_cluster()["brokers"])
            topics = sorted(str(t) for t in self._client.list_topics())
        except Exception as exc:
            raise RuntimeError(f"Kafka admin API failed: {type(exc).__name__}: {exc}") from exc
        for broker in brokers:
            broker_id = _broker_id(broker)
            yield self._resource(tenant_id, "broker", broker_id, _broker_display(broker, broker_id))
        for topic in topics:
            yield self._resource(tenant_id, "topic", topic, topic)

    def close(self) -> None:
        self._client.close()

    def _resource(self, tenant_id: str, kind: str, name: str, display: str) -> Resource:
        metadata: dict[str, Any] = {"cluster_id": self._cluster_id}
        if kind == "broker":
            metadata["broker_id"] = name
        return Resource(
            ecosystem=ECOSYSTEM,
            tenant_id=tenant_id,
            resource_id=f"{self._cluster_id}:{kind}:{name}",
            resource_type=kind,
            display_name=display,
            parent_id=self._cluster_id,
            metadata=metadata,
        )


def _broker_id(broker: Mapping[str, Any]) -> str:
    for key in ("node_id", "id"):
        if broker.get(key) is not None:
            return str(broker[key])
    return "unknown"


def _broker_display(broker: Mapping[str, Any], broker_id: str) -> str:
    host, port = broker.get("host"), broker.get("port")
    return f"{host}:{port}" if host and port else broker_id
