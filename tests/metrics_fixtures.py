"""An in-memory ``MetricsSource`` for plugin unit tests.

It answers with given rows trimmed to the half-open window, like the real source.
Integration tests use the real Prometheus (tests/prometheus_support.py); this one
lets the spec's worked examples feed exact, hand-picked samples to a plugin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from chargeback_pipeline.errors import MetricsQueryError
from chargeback_pipeline.models import MetricQuery, MetricRow


class RecordedMetrics:
    def __init__(self, rows: Mapping[str, Sequence[MetricRow]], failing: Sequence[str] = ()) -> None:
        self.rows = {key: list(values) for key, values in rows.items()}
        self.failing = set(failing)
        self.calls: list[tuple[tuple[str, ...], datetime, datetime]] = []
        self.closed = False

    def query(
        self,
        queries: Sequence[MetricQuery],
        start: datetime,
        end: datetime,
        step: timedelta,
        resource_id_filter: str | None = None,
    ) -> dict[str, list[MetricRow]]:
        self.calls.append((tuple(q.key for q in queries), start, end))
        for query in queries:
            if query.key in self.failing:
                raise MetricsQueryError("HTTP 503: unavailable", query, 503)
        return {q.key: [r for r in self.rows.get(q.key, []) if start <= r.timestamp < end] for q in queries}

    def close(self) -> None:
        self.closed = True
