"""Emitters: the registry, aggregation and the built-in ``csv`` and ``prometheus`` emitters.

Importing this package registers the core's built-in emitters, so
``from chargeback_pipeline.emitters import registry`` is all a plugin needs before
calling ``registry.register``.
"""

from __future__ import annotations

from chargeback_pipeline.emitters import registry
from chargeback_pipeline.emitters.csv_emitter import CSV_EMITTER_NAME, CsvEmitter, CsvOutput, make_csv_emitter
from chargeback_pipeline.emitters.prometheus_emitter import (
    PROMETHEUS_EMITTER_NAME,
    PrometheusEmitter,
    PrometheusOutput,
    make_prometheus_emitter,
)
from chargeback_pipeline.emitters.registry import EmitterContext

registry.register(CSV_EMITTER_NAME, make_csv_emitter)
registry.register(PROMETHEUS_EMITTER_NAME, make_prometheus_emitter)

__all__ = [
    "CSV_EMITTER_NAME",
    "PROMETHEUS_EMITTER_NAME",
    "CsvEmitter",
    "CsvOutput",
    "EmitterContext",
    "PrometheusEmitter",
    "PrometheusOutput",
    "make_csv_emitter",
    "make_prometheus_emitter",
    "registry",
]
