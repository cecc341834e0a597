"""Built-in plugin ``confluent_cloud``: the Billing API bill split by who used what.

See spec/confluent-cloud.md and the README's "Confluent Cloud" section.
"""

from __future__ import annotations

from chargeback_plugins.confluent_cloud.plugin import ConfluentCloudPlugin


def register() -> tuple[str, type[ConfluentCloudPlugin]]:
    return ConfluentCloudPlugin.ecosystem, ConfluentCloudPlugin
