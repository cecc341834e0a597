"""The built-in metrics source: Prometheus (spec/prometheus-source.md).

Plugins declare ``metrics: MetricsConnection`` in their settings and hand it to
``PrometheusSource``; every failure surfaces as ``MetricsQueryError``.
"""

from chargeback_pipeline.errors import MetricsQueryError
from chargeback_pipeline.metrics.cache import clear_response_cache
from chargeback_pipeline.metrics.connection import MetricsConnection
from chargeback_pipeline.metrics.prometheus import PrometheusSource

__all__ = ["MetricsConnection", "MetricsQueryError", "PrometheusSource", "clear_response_cache"]
