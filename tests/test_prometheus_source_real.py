"""The Prometheus metrics source against a real Prometheus loaded with the sample series.

Expected values are computed independently from ``tests/data`` (the series file) for
plain gauges sampled exactly at the hour, where Prometheus' answer is the stored
sample itself: no lookback, interpolation or extrapolation is involved.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback_pipeline.metrics import (
    MetricsConnection,
    MetricsQueryError,
    PrometheusSource,
    clear_response_cache,
)
from chargeback_pipeline.models import MetricQuery
from tests.prometheus_support import (
    PrometheusServer,
    free_port,
    load_series,
    series_samples,
    series_to_openmetrics,
    start_prometheus,
)

DAY = datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + timedelta(days=1)
HOUR = timedelta(hours=1)
LOG_SIZE = "kafka_log_log_size"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_response_cache()
    yield
    clear_response_cache()


@pytest.fixture(scope="module")
def log_size_series() -> list[tuple[dict[str, str], dict[int, Decimal]]]:
    """Every ``kafka_log_log_size`` series of the sample as (labels, {unix_s: value})."""
    return [
        (dict(s["labels"]), dict(series_samples(s)))
        for s in load_series()
        if s["labels"]["__name__"] == LOG_SIZE
    ]


def source_for(url: str, **kwargs: float) -> PrometheusSource:
    return PrometheusSource(MetricsConnection(url=url, backoff_base_seconds=0.01, **kwargs))  # type: ignore[arg-type]


def day_hours() -> list[datetime]:
    return [DAY + i * HOUR for i in range(24)]


def expected_sum(
    series: list[tuple[dict[str, str], dict[int, Decimal]]], at: datetime, **match: str
) -> Decimal:
    ts = int(at.timestamp())
    picked = [samples[ts] for labels, samples in series if all(labels[k] == v for k, v in match.items())]
    assert picked, f"no sample series matches {match}"
    return sum(picked, Decimal(0))


def test_a_day_of_a_gauge_is_exactly_24_hourly_samples(
    sample_prometheus: PrometheusServer, log_size_series: list[tuple[dict[str, str], dict[int, Decimal]]]
) -> None:
    query = MetricQuery(key="log_size", query_expression=f"sum({LOG_SIZE})")
    rows = source_for(sample_prometheus.url).query([query], DAY, NEXT, HOUR)["log_size"]
    assert [r.timestamp for r in rows] == day_hours()
    assert [r.value for r in rows] == [expected_sum(log_size_series, t) for t in day_hours()]
    assert all(r.metric_key == "log_size" and r.labels == {} for r in rows)


def test_label_keys_split_rows_per_label_value(
    sample_prometheus: PrometheusServer, log_size_series: list[tuple[dict[str, str], dict[int, Decimal]]]
) -> None:
    query = MetricQuery(
        key="per_topic", query_expression=f"sum by (topic, job) ({LOG_SIZE})", label_keys=("topic",)
    )
    rows = source_for(sample_prometheus.url).query([query], DAY, NEXT, HOUR)["per_topic"]
    topics = sorted({labels["topic"] for labels, _ in log_size_series})
    assert len(topics) > 1
    assert [(r.labels, r.timestamp, r.value) for r in rows] == [
        ({"topic": topic}, t, expected_sum(log_size_series, t, topic=topic))
        for topic in topics
        for t in day_hours()
    ]


def test_the_resource_filter_selects_one_series_set(
    sample_prometheus: PrometheusServer, log_size_series: list[tuple[dict[str, str], dict[int, Decimal]]]
) -> None:
    topic = sorted({labels["topic"] for labels, _ in log_size_series})[0]
    query = MetricQuery(key="one_topic", query_expression=f"sum({LOG_SIZE}{{}})", resource_label="topic")
    rows = source_for(sample_prometheus.url).query([query], DAY, NEXT, HOUR, resource_id_filter=topic)
    assert [r.value for r in rows["one_topic"]] == [
        expected_sum(log_size_series, t, topic=topic) for t in day_hours()
    ]
    nobody = source_for(sample_prometheus.url).query([query], DAY, NEXT, HOUR, resource_id_filter='no"such')
    assert nobody == {"one_topic": []}


def test_instant_mode_reads_the_sample_at_the_window_end(
    sample_prometheus: PrometheusServer, log_size_series: list[tuple[dict[str, str], dict[int, Decimal]]]
) -> None:
    query = MetricQuery(key="now", query_expression=f"sum({LOG_SIZE})", query_mode="instant")
    rows = source_for(sample_prometheus.url).query([query], DAY, NEXT, HOUR)["now"]
    assert [(r.timestamp, r.value) for r in rows] == [(NEXT, expected_sum(log_size_series, NEXT))]


def test_a_finer_step_gives_every_five_minute_sample_of_the_day(
    sample_prometheus: PrometheusServer, log_size_series: list[tuple[dict[str, str], dict[int, Decimal]]]
) -> None:
    query = MetricQuery(key="fine", query_expression=f"sum({LOG_SIZE})")
    rows = source_for(sample_prometheus.url).query([query], DAY, NEXT, timedelta(minutes=5))["fine"]
    times = [DAY + timedelta(minutes=5 * i) for i in range(288)]
    assert [r.timestamp for r in rows] == times
    assert [r.value for r in rows] == [expected_sum(log_size_series, t) for t in times]


def test_a_missing_metric_and_a_missing_label_give_empty_results(sample_prometheus: PrometheusServer) -> None:
    missing = MetricQuery(key="missing", query_expression="sum(metric_that_does_not_exist)")
    unlabelled = MetricQuery(
        key="unlabelled", query_expression=f"sum by (principal) ({LOG_SIZE})", label_keys=("principal",)
    )
    result = source_for(sample_prometheus.url).query([missing, unlabelled], DAY, NEXT, HOUR)
    assert result["missing"] == []
    assert len(result["unlabelled"]) == 24
    assert all(r.labels == {} for r in result["unlabelled"])


def test_invalid_promql_names_the_query_and_prometheus_error_type(
    sample_prometheus: PrometheusServer,
) -> None:
    bad = MetricQuery(key="broken", query_expression="sum(rate(kafka_log_log_size[1h])")
    good = MetricQuery(key="fine", query_expression=f"sum({LOG_SIZE})")
    with pytest.raises(MetricsQueryError) as caught:
        source_for(sample_prometheus.url).query([good, bad], DAY, NEXT, HOUR)
    err = caught.value
    assert err.query == bad
    assert err.status_code == 400
    assert err.message.startswith('HTTP 400: {"status":"error","errorType":"bad_data"')
    assert str(err).startswith("metrics query 'broken' (sum(rate(kafka_log_log_size[1h])): HTTP 400:")


def test_a_wrong_port_exhausts_the_attempts_with_a_transport_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MetricsQueryError) as caught:
        source_for(url).query([MetricQuery("k", f"sum({LOG_SIZE})")], DAY, NEXT, HOUR)
    assert caught.value.message.startswith(f"Exhausted 4 attempts for {url}/api/v1/query_range")
    assert "ConnectError" in caught.value.message
    assert caught.value.status_code is None


def test_a_stopped_server_fails_uncached_queries_and_recovers_on_restart(tmp_path: Path) -> None:
    # A small server of our own: the session fixture must never be stopped.
    series = [s for s in load_series() if s["labels"]["__name__"] == "pg_database_size_bytes"]
    expected = [dict(series_samples(series[0]))[int(t.timestamp())] for t in day_hours()]
    query = MetricQuery(key="db", query_expression="sum(pg_database_size_bytes)")
    other = MetricQuery(key="db_max", query_expression="max(pg_database_size_bytes)")
    with start_prometheus(tmp_path / "own", series_to_openmetrics(series)) as server:
        source = source_for(server.url)
        assert [r.value for r in source.query([query], DAY, NEXT, HOUR)["db"]] == expected
        server.stop()
        with pytest.raises(MetricsQueryError) as caught:
            source.query([other], DAY, NEXT, HOUR)
        assert caught.value.message.startswith(f"Exhausted 4 attempts for {server.url}/api/v1/query_range")
        assert caught.value.status_code is None
        # A response fetched before the outage is still served from the cache.
        assert [r.value for r in source.query([query], DAY, NEXT, HOUR)["db"]] == expected
        server.start()
        assert [r.value for r in source.query([other], DAY, NEXT, HOUR)["db_max"]] == expected
    source.close()


def test_batched_resources_give_the_rows_of_one_query_per_resource(
    sample_prometheus: PrometheusServer, log_size_series: list[tuple[dict[str, str], dict[int, Decimal]]]
) -> None:
    topics = sorted({labels["topic"] for labels, _ in log_size_series})
    batched = MetricQuery(
        key="per_topic",
        query_expression=f"sum by (topic, job) ({LOG_SIZE}{{}})",
        label_keys=("topic", "job"),
        resource_label="topic",
        batch_by_resource=True,
    )
    plain = MetricQuery(key="total", query_expression=f"sum({LOG_SIZE}{{}})", resource_label="topic")
    # Ids with regex metacharacters and quotes select nothing, and must not break the batch.
    resources = [*topics, 'no"such', "a.b|c*"]
    source = source_for(sample_prometheus.url)
    groups = {rid: [batched, plain] for rid in resources}
    answers = source.query_resources(groups, DAY, NEXT, HOUR)
    clear_response_cache()
    expected = {
        rid: source.query([batched, plain], DAY, NEXT, HOUR, resource_id_filter=rid) for rid in resources
    }
    assert answers == expected
    assert all(answers[t]["per_topic"] for t in topics)  # type: ignore[index]
    assert answers['no"such'] == {"per_topic": [], "total": []}
