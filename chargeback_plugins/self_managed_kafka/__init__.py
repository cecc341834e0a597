"""Built-in plugin ``self_managed_kafka``: price a self-run Kafka cluster from its JMX metrics."""

from __future__ import annotations

from chargeback_plugins.self_managed_kafka.plugin import SelfManagedKafkaPlugin


def register() -> tuple[str, type[SelfManagedKafkaPlugin]]:
    return SelfManagedKafkaPlugin.ecosystem, SelfManagedKafkaPlugin
