"""Built-in plugin ``generic_metrics_only``: price any service from configured rates."""

from __future__ import annotations

from chargeback_plugins.generic_metrics_only.plugin import GenericMetricsPlugin


def register() -> tuple[str, type[GenericMetricsPlugin]]:
    return GenericMetricsPlugin.ecosystem, GenericMetricsPlugin
