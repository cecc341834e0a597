"""The test Prometheus really serves the sample series as loaded by promtool."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx

from tests.prometheus_support import PrometheusServer, load_series, series_samples, series_to_openmetrics


def _instant(server: PrometheusServer, query: str, at: datetime) -> list[dict[str, object]]:
    response = httpx.post(
        f"{server.url}/api/v1/query", data={"query": query, "time": at.isoformat()}, timeout=10
    )
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success"
    return list(body["data"]["result"])


def test_openmetrics_text_groups_by_metric_and_ends_with_eof() -> None:
    series = [
        {"labels": {"__name__": "b_metric", "x": 'a"b'}, "samples": [[10, 1.5], [20, None]]},
        {"labels": {"__name__": "a_metric"}, "start": 100, "step": 50, "values": [1, 2]},
    ]
    assert series_to_openmetrics(series) == (
        'a_metric 1 100\na_metric 2 150\nb_metric{x="a\\"b"} 1.5 10\n# EOF\n'
    )


def test_sample_series_are_queryable(sample_prometheus: PrometheusServer) -> None:
    series = load_series()
    size = next(s for s in series if s["labels"]["__name__"] == "pg_database_size_bytes")
    at = datetime(2026, 3, 3, 12, tzinfo=UTC)
    expected = dict(series_samples(size))[int(at.timestamp())]
    result = _instant(sample_prometheus, "sum(pg_database_size_bytes)", at)
    assert len(result) == 1
    value = result[0]["value"]
    assert isinstance(value, list)
    assert Decimal(value[1]) == expected
    users = _instant(sample_prometheus, "group by (user) (pg_stat_activity_count)", at)
    assert sorted(str(r["metric"]["user"]) for r in users) == [  # type: ignore[index]
        "analyst",
        "app_billing",
        "app_orders",
        "batch_job",
    ]
