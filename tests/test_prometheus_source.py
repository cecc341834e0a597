"""The Prometheus metrics source against a real HTTP server on 127.0.0.1 (spec/prometheus-source.md).

The stub server answers what a test scripts — including the faults a real Prometheus
cannot be made to produce (5xx storms, NaN bodies, garbage JSON, slow answers) — and
records every request byte for byte. httpx is not patched.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import pickle
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import quote_plus

import pytest
from pydantic import SecretStr, ValidationError

from chargeback_pipeline.errors import ChargebackError
from chargeback_pipeline.metrics import (
    MetricsConnection,
    MetricsQueryError,
    PrometheusSource,
    clear_response_cache,
)
from chargeback_pipeline.metrics.cache import ResponseCache
from chargeback_pipeline.metrics.parsing import inject_resource_filter
from chargeback_pipeline.models import MetricQuery, MetricRow, metric_row
from tests.prometheus_stub import Received, Reply, StubPrometheus, matrix, running_stub, success

DAY = datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + timedelta(days=1)
T0 = int(DAY.timestamp())  # 1772323200
HOUR = timedelta(hours=1)
BYTES = MetricQuery(key="bytes", query_expression="sum(x)")


@pytest.fixture
def stub() -> Iterator[StubPrometheus]:
    clear_response_cache()
    with running_stub() as server:
        yield server
    clear_response_cache()


def source_for(url: str, **kwargs: object) -> PrometheusSource:
    options: dict[str, object] = {"backoff_base_seconds": 0.01, "timeout_seconds": 5.0}
    options.update(kwargs)
    return PrometheusSource(MetricsConnection(url=url, **options))  # type: ignore[arg-type]


def hours(n: int, value: str = "1") -> list[tuple[float, str]]:
    return [(T0 + 3600 * i, value) for i in range(n)]


# --- request shape ----------------------------------------------------------------------


def test_range_query_is_a_form_post_under_the_path_prefix(stub: StubPrometheus) -> None:
    source = source_for(stub.url + "/prom/")
    assert source.query([BYTES], DAY, NEXT, HOUR) == {"bytes": []}
    (req,) = stub.requests
    assert req.method == "POST"
    assert req.path == "/prom/api/v1/query_range"
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in req.headers
    assert req.form == {
        "query": ["sum(x)"],
        "start": ["2026-03-01T00:00:00+00:00"],
        "end": ["2026-03-02T00:00:00+00:00"],
        "step": ["3600"],
    }
    # "+" must travel encoded, or the server would read a space.
    assert b"start=2026-03-01T00%3A00%3A00%2B00%3A00" in req.body


def test_times_are_converted_to_utc_and_steps_are_whole_seconds(stub: StubPrometheus) -> None:
    from zoneinfo import ZoneInfo

    source = source_for(stub.url)
    start = datetime(2026, 3, 1, 1, 0, 0, 999_000, tzinfo=ZoneInfo("Europe/Paris"))
    source.query([BYTES], start, start + timedelta(hours=2), timedelta(seconds=90.7))
    source.query([MetricQuery("zero", "a")], DAY, NEXT, timedelta(0))
    source.query([MetricQuery("negative", "b")], DAY, NEXT, timedelta(seconds=-5))
    first, zero, negative = stub.requests
    assert first.param("start") == "2026-03-01T00:00:00+00:00"
    assert first.param("end") == "2026-03-01T02:00:00+00:00"
    assert first.param("step") == "90"
    assert zero.param("step") == "3600"
    assert negative.param("step") == "3600"


def test_naive_datetimes_are_refused_before_any_request(stub: StubPrometheus) -> None:
    source = source_for(stub.url)
    with pytest.raises(ValueError, match="naive"):
        source.query([BYTES], datetime(2026, 3, 1), NEXT, HOUR)
    with pytest.raises(ValueError, match="naive"):
        source.query([BYTES], DAY, datetime(2026, 3, 2), HOUR)
    assert stub.requests == []


def test_basic_auth_sends_the_credentials_as_an_authorization_header(stub: StubPrometheus) -> None:
    source = source_for(stub.url, auth_type="basic", username="svc", password=SecretStr("pa:ss"))
    source.query([BYTES], DAY, NEXT, HOUR)
    assert stub.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"svc:pa:ss").decode()


def test_bearer_auth_sends_the_token(stub: StubPrometheus) -> None:
    source = source_for(stub.url, auth_type="bearer", bearer_token=SecretStr("tok-123"))
    source.query([BYTES], DAY, NEXT, HOUR)
    assert stub.requests[0].headers["authorization"] == "Bearer tok-123"


def test_answers_are_asked_uncompressed_unless_configured(stub: StubPrometheus) -> None:
    source_for(stub.url).query([BYTES], DAY, NEXT, HOUR)
    source_for(stub.url, compress_responses=True).query([BYTES], DAY, NEXT + HOUR, HOUR)
    plain, compressed = stub.requests
    assert plain.headers["accept-encoding"] == "identity"
    assert "gzip" in compressed.headers["accept-encoding"]


def test_no_queries_sends_nothing(stub: StubPrometheus) -> None:
    assert source_for(stub.url).query([], DAY, NEXT, HOUR) == {}
    assert stub.requests == []


# --- windows ---------------------------------------------------------------------------


def test_range_results_are_trimmed_to_the_half_open_day(stub: StubPrometheus) -> None:
    points = [
        (T0 - 3600, "9"),
        *[(T0 + 3600 * i, str(i)) for i in range(25)],
    ]  # 23:00 the day before … next 00:00
    stub.script(matrix(({"__name__": "x"}, points)))
    rows = source_for(stub.url).query([BYTES], DAY, NEXT, HOUR)["bytes"]
    assert [r.timestamp for r in rows] == [DAY + i * HOUR for i in range(24)]
    assert [r.value for r in rows] == [Decimal(i) for i in range(24)]
    assert rows[0] == MetricRow(timestamp=DAY, metric_key="bytes", value=Decimal(0), labels={})


def test_instant_mode_evaluates_at_the_window_end_and_keeps_the_sample(stub: StubPrometheus) -> None:
    query = MetricQuery(
        key="size", query_expression="sum by (db) (size)", label_keys=("db",), query_mode="instant"
    )
    stub.script(success([{"metric": {"db": "orders"}, "value": [T0 + 86400, "42.5"]}], "vector"))
    rows = source_for(stub.url + "/gw").query([query], DAY, NEXT, HOUR)["size"]
    (req,) = stub.requests
    assert req.path == "/gw/api/v1/query"
    assert req.form == {"query": ["sum by (db) (size)"], "time": ["2026-03-02T00:00:00+00:00"]}
    assert rows == [
        MetricRow(timestamp=NEXT, metric_key="size", value=Decimal("42.5"), labels={"db": "orders"})
    ]


def test_a_scalar_result_is_one_unlabelled_row(stub: StubPrometheus) -> None:
    query = MetricQuery(key="one", query_expression="1+1", label_keys=("x",), query_mode="instant")
    stub.script(
        Reply(body=json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [T0, "2"]}}))
    )
    assert source_for(stub.url).query([query], DAY, NEXT, HOUR)["one"] == [
        MetricRow(timestamp=DAY, metric_key="one", value=Decimal(2), labels={})
    ]


# --- resource filter injection ------------------------------------------------------------


def test_the_resource_filter_replaces_the_first_placeholder(stub: StubPrometheus) -> None:
    query = MetricQuery(
        key="bytes",
        query_expression="sum by (p) (increase(bytes_total{}[1h])) / on() group_left sum(other{})",
        resource_label="kafka_id",
    )
    source_for(stub.url).query([query], DAY, NEXT, HOUR, resource_id_filter='lkc-"a\\b\nc')
    assert stub.requests[0].param("query") == (
        'sum by (p) (increase(bytes_total{kafka_id="lkc-\\"a\\\\b\\nc"}[1h])) / on() group_left sum(other{})'
    )


@pytest.mark.parametrize(
    ("expression", "resource_label", "resource_filter", "sent"),
    [
        ("sum(x{})", None, "lkc-1", "sum(x)"),
        ("sum(x{})", "kafka_id", None, "sum(x)"),
        ("sum(x{}) + sum(y{})", None, None, "sum(x) + sum(y{})"),
        ("sum(x)", "kafka_id", "lkc-1", "sum(x)"),
        ("sum(x{})", "kafka_id", "lkc-1", 'sum(x{kafka_id="lkc-1"})'),
    ],
)
def test_filter_injection_cases(
    expression: str, resource_label: str | None, resource_filter: str | None, sent: str
) -> None:
    query = MetricQuery(key="k", query_expression=expression, resource_label=resource_label)
    assert inject_resource_filter(query, resource_filter) == sent


def test_a_query_without_placeholder_is_sent_unchanged_with_a_debug_note(
    stub: StubPrometheus, caplog: pytest.LogCaptureFixture
) -> None:
    query = MetricQuery(key="k", query_expression="sum(x)", resource_label="kafka_id")
    with caplog.at_level(logging.DEBUG, logger="chargeback_pipeline.metrics"):
        source_for(stub.url).query([query], DAY, NEXT, HOUR, resource_id_filter="lkc-1")
    assert stub.requests[0].param("query") == "sum(x)"
    assert any(r.levelno == logging.DEBUG and "no '{}' placeholder" in r.getMessage() for r in caplog.records)


# --- parsing ---------------------------------------------------------------------------


def test_labels_are_filtered_values_exact_and_rows_sorted(stub: StubPrometheus) -> None:
    query = MetricQuery(key="bytes", query_expression="q", label_keys=("principal_id", "absent"))
    stub.script(
        matrix(
            ({"principal_id": "sa-2", "kafka_id": "lkc-1"}, [(T0 + 3600, "0.1"), (T0, "1e3")]),
            (
                {"principal_id": "sa-1", "kafka_id": "lkc-1"},
                [(T0 + 7200.5, "12345678901234567890.123456789")],
            ),
            ({"kafka_id": "lkc-1"}, [(T0, "7")]),
        )
    )
    rows = source_for(stub.url).query([query], DAY, NEXT, HOUR)["bytes"]
    assert [(r.labels, r.timestamp, r.value) for r in rows] == [
        ({}, DAY, Decimal(7)),
        (
            {"principal_id": "sa-1"},
            DAY + timedelta(hours=2, milliseconds=500),
            Decimal("12345678901234567890.123456789"),
        ),
        ({"principal_id": "sa-2"}, DAY, Decimal("1E+3")),
        ({"principal_id": "sa-2"}, DAY + HOUR, Decimal("0.1")),
    ]
    assert str(rows[-1].value) == "0.1"


def test_nan_and_infinities_are_skipped_and_garbage_points_warned(
    stub: StubPrometheus, caplog: pytest.LogCaptureFixture
) -> None:
    stub.script(
        matrix(
            (
                {},
                [
                    (T0, "NaN"),
                    (T0 + 3600, "+Inf"),
                    (T0 + 7200, "-Inf"),
                    (T0 + 10800, "5"),
                    (T0 + 14400, "not-a-number"),
                    ("yesterday", "6"),  # type: ignore[list-item]
                ],
            )
        )
    )
    with caplog.at_level(logging.WARNING):
        rows = source_for(stub.url).query([BYTES], DAY, NEXT, HOUR)["bytes"]
    assert [(r.timestamp, r.value) for r in rows] == [(DAY + 3 * HOUR, Decimal(5))]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("metrics query 'bytes': skipped an unparseable sample" in w for w in warnings)


def test_series_with_equal_filtered_labels_merge_by_time_and_odd_points_follow_the_rules(
    stub: StubPrometheus, caplog: pytest.LogCaptureFixture
) -> None:
    # Points at an instant already seen take the fast path; garbage, a boolean timestamp
    # and a numeric value there must still get the full rules (warn, warn, accept).
    query = MetricQuery(key="bytes", query_expression="q", label_keys=("principal_id",))
    stub.script(
        matrix(
            ({"principal_id": "sa-1", "kafka_id": "lkc-1"}, [(T0 + 3600, "2"), (T0, "1")]),
            (
                {"principal_id": "sa-1", "kafka_id": "lkc-2"},
                [(T0, "bad"), (T0 + 3600, "NaN"), (True, "3"), (T0, 4)],  # type: ignore[list-item]
            ),
        )
    )
    with caplog.at_level(logging.WARNING):
        rows = source_for(stub.url).query([query], DAY, NEXT, HOUR)["bytes"]
    assert [(dict(r.labels), r.timestamp, r.value) for r in rows] == [
        ({"principal_id": "sa-1"}, DAY, Decimal(1)),
        ({"principal_id": "sa-1"}, DAY, Decimal(4)),
        ({"principal_id": "sa-1"}, DAY + HOUR, Decimal(2)),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "'bad'" in warnings[0] and "True" in warnings[1]


def test_metric_row_fast_constructor_builds_the_same_frozen_row() -> None:
    fast = metric_row(DAY, "bytes", Decimal("1.50"), {"principal_id": "sa-1"})
    assert type(fast) is MetricRow
    assert fast == MetricRow(DAY, "bytes", Decimal("1.50"), {"principal_id": "sa-1"})
    assert repr(fast) == repr(MetricRow(DAY, "bytes", Decimal("1.50"), {"principal_id": "sa-1"}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.value = Decimal(2)  # type: ignore[misc]


def test_an_empty_result_gives_an_empty_list_for_every_query(stub: StubPrometheus) -> None:
    stub.script(success([]))
    queries = [MetricQuery(f"q{i}", f"missing_metric_{i}") for i in range(3)]
    assert source_for(stub.url).query(queries, DAY, NEXT, HOUR) == {"q0": [], "q1": [], "q2": []}


# --- retries and errors ----------------------------------------------------------------


def test_retryable_answers_are_retried_until_success(stub: StubPrometheus) -> None:
    stub.script(Reply(503, "busy"), Reply(429, "slow down"), matrix(({}, hours(2))))
    started = time.monotonic()
    rows = source_for(stub.url).query([BYTES], DAY, NEXT, HOUR)["bytes"]
    elapsed = time.monotonic() - started
    assert len(rows) == 2
    assert len(stub.requests) == 3
    # Waits of 0.01 × 2^k × U(0.8, 1.2) for k = 1, 2: never shorter than 0.8 × (0.02 + 0.04).
    assert elapsed >= 0.048


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_retryable_statuses_exhaust_after_max_attempts(stub: StubPrometheus, status: int) -> None:
    stub.script(Reply(status, "nope"))
    with pytest.raises(MetricsQueryError) as caught:
        source_for(stub.url).query([BYTES], DAY, NEXT, HOUR)
    err = caught.value
    assert len(stub.requests) == 4
    assert err.message.startswith(f"Exhausted 4 attempts for {stub.url}/api/v1/query_range")
    assert err.status_code == status
    assert err.query == BYTES
    assert str(err).startswith("metrics query 'bytes' (sum(x)): Exhausted 4 attempts")


def test_max_attempts_is_configurable(stub: StubPrometheus) -> None:
    stub.script(Reply(500, "down"))
    with pytest.raises(MetricsQueryError, match="Exhausted 2 attempts"):
        source_for(stub.url, max_attempts=2).query([BYTES], DAY, NEXT, HOUR)
    assert len(stub.requests) == 2


def test_other_client_errors_fail_at_once_with_a_body_snippet(stub: StubPrometheus) -> None:
    body = "E" * 150 + "F" * 150
    stub.script(Reply(400, body, content_type="text/plain"))
    with pytest.raises(MetricsQueryError) as caught:
        source_for(stub.url).query([BYTES], DAY, NEXT, HOUR)
    assert len(stub.requests) == 1
    assert caught.value.status_code == 400
    assert caught.value.message == "HTTP 400: " + "E" * 150 + "F" * 50


def test_an_error_body_names_the_error_type(stub: StubPrometheus) -> None:
    stub.script(
        Reply(body=json.dumps({"status": "error", "errorType": "execution", "error": "too many samples"}))
    )
    with pytest.raises(MetricsQueryError) as caught:
        source_for(stub.url).query([BYTES], DAY, NEXT, HOUR)
    assert caught.value.message == "execution: too many samples"
    assert caught.value.status_code is None
    assert len(stub.requests) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("<html>gateway says hi</html>", "invalid response: body is not JSON"),
        ("[1, 2]", "invalid response: expected a JSON object, got list"),
        ('{"status": "success"}', "invalid response: 'data' is missing or not an object"),
        ('{"status": "success", "data": {"resultType": "matrix", "result": {}}}', "is not a list"),
        (
            '{"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}}]}}',
            "lacks a 'values'",
        ),
        (
            '{"status": "success", "data": {"resultType": "string", "result": [1, "a"]}}',
            "unsupported resultType",
        ),
        ('{"status": "pending"}', "unexpected status 'pending'"),
    ],
)
def test_bodies_that_are_not_query_results_are_invalid_responses(
    stub: StubPrometheus, body: str, reason: str
) -> None:
    stub.script(Reply(body=body))
    with pytest.raises(MetricsQueryError) as caught:
        source_for(stub.url).query([BYTES], DAY, NEXT, HOUR)
    assert caught.value.message.startswith("invalid response: ")
    assert reason in caught.value.message
    assert len(stub.requests) == 1


def test_a_redirect_is_an_error_not_a_silent_empty_result(stub: StubPrometheus) -> None:
    stub.script(Reply(302, ""))
    with pytest.raises(MetricsQueryError, match="HTTP 302: redirected") as caught:
        source_for(stub.url).query([BYTES], DAY, NEXT, HOUR)
    assert caught.value.status_code == 302


def test_a_slow_server_times_out_and_is_retried(stub: StubPrometheus) -> None:
    stub.script(
        Reply(
            delay=1.0, body=json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}})
        )
    )
    with pytest.raises(MetricsQueryError) as caught:
        source_for(stub.url, timeout_seconds=0.2, max_attempts=2).query([BYTES], DAY, NEXT, HOUR)
    assert len(stub.requests) == 2
    assert caught.value.status_code is None
    assert "Exhausted 2 attempts" in caught.value.message
    assert "ReadTimeout" in caught.value.message


def test_a_closed_port_exhausts_with_a_transport_error() -> None:
    from tests.prometheus_support import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MetricsQueryError) as caught:
        source_for(url).query([BYTES], DAY, NEXT, HOUR)
    assert caught.value.message.startswith(
        f"Exhausted 4 attempts for {url}/api/v1/query_range (last: ConnectError"
    )
    assert caught.value.status_code is None
    assert isinstance(caught.value, ChargebackError)


def test_every_query_is_awaited_and_the_first_failure_in_query_order_is_raised(
    stub: StubPrometheus, caplog: pytest.LogCaptureFixture
) -> None:
    def respond(req: Received) -> Reply:
        q = req.param("query")
        if q == "ok":
            return matrix(({}, hours(1)))
        if q == "late_bad":
            return Reply(400, "bad late", delay=0.3)
        return Reply(503, "down")

    stub.respond = respond
    queries = [MetricQuery("a", "ok"), MetricQuery("b", "late_bad"), MetricQuery("c", "down")]
    with caplog.at_level(logging.WARNING), pytest.raises(MetricsQueryError) as caught:
        source_for(stub.url).query(queries, DAY, NEXT, HOUR)
    assert caught.value.query == queries[1]
    assert caught.value.message == "HTTP 400: bad late"
    sent = sorted(r.param("query") for r in stub.requests)
    assert sent == ["down"] * 4 + ["late_bad", "ok"]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        m.startswith("MetricsQueryError: metrics query 'c' (down): Exhausted 4 attempts") for m in logged
    )


def test_the_error_survives_pickling() -> None:
    err = MetricsQueryError("HTTP 400: x", BYTES, 400, 'sum(x{a="b"})')
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.message, copy.query, copy.status_code, str(copy)) == (err.message, BYTES, 400, str(err))


# --- cache -----------------------------------------------------------------------------


def test_identical_requests_are_answered_from_the_cache(stub: StubPrometheus) -> None:
    stub.script(matrix(({"p": "a"}, hours(3))))
    source = source_for(stub.url)
    labelled = MetricQuery("other_key", "sum(x)", label_keys=("p",))
    first = source.query([BYTES], DAY, NEXT, HOUR)
    second = source_for(stub.url).query([labelled], DAY, NEXT, HOUR)  # same URL and expression
    assert len(stub.requests) == 1
    assert [r.value for r in first["bytes"]] == [r.value for r in second["other_key"]]
    assert second["other_key"][0].labels == {"p": "a"} and first["bytes"][0].labels == {}
    source.query([BYTES], DAY, NEXT, timedelta(minutes=30))  # other step
    source.query([BYTES], DAY, NEXT + HOUR, HOUR)  # other end
    source.query([BYTES], DAY, NEXT, HOUR, resource_id_filter="r1")  # same final expression: no {}
    source_for(stub.url + "/").query([BYTES], DAY, NEXT, HOUR)  # same endpoint after rstrip
    assert len(stub.requests) == 3
    clear_response_cache()
    source.query([BYTES], DAY, NEXT, HOUR)
    assert len(stub.requests) == 4


def test_failures_are_not_cached(stub: StubPrometheus) -> None:
    stub.script(
        Reply(400, "bad"),
        Reply(body=json.dumps({"status": "error", "errorType": "timeout", "error": "x"})),
        Reply(body="not json"),
        matrix(({}, hours(1))),
    )
    source = source_for(stub.url)
    for _ in range(3):
        with pytest.raises(MetricsQueryError):
            source.query([BYTES], DAY, NEXT, HOUR)
    assert len(source.query([BYTES], DAY, NEXT, HOUR)["bytes"]) == 1
    assert len(source.query([BYTES], DAY, NEXT, HOUR)["bytes"]) == 1
    assert len(stub.requests) == 4


def test_the_cache_is_an_lru_with_a_time_to_live() -> None:
    now = [0.0]
    cache = ResponseCache(max_entries=2, ttl_seconds=3600, clock=lambda: now[0])
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("c", "C")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    now[0] = 3599.9
    assert cache.get("a") == "A"
    now[0] = 3600.0
    assert cache.get("a") is None and cache.get("c") is None
    assert len(cache) == 0


def test_the_cache_keeps_its_texts_within_a_size_budget() -> None:
    cache = ResponseCache(max_entries=10, ttl_seconds=3600, max_chars=10)
    cache.put("a", "aaaa")
    cache.put("b", "bbbb")
    cache.put("c", "cccc")  # 12 chars: a goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, "bbbb", "cccc")
    cache.put("b", "bb")  # replacing counts the new text only
    cache.put("d", "dddd")
    assert (cache.get("b"), cache.get("c"), cache.get("d")) == ("bb", "cccc", "dddd")
    cache.put("huge", "x" * 11)  # larger than the whole budget: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 3


# --- concurrency -----------------------------------------------------------------------


def test_one_call_runs_at_most_ten_queries_at_once(stub: StubPrometheus) -> None:
    stub.respond = lambda req: Reply(delay=0.3, body=matrix(({}, hours(1))).body)
    queries = [MetricQuery(f"q{i}", f"metric_{i}") for i in range(15)]
    result = source_for(stub.url).query(queries, DAY, NEXT, HOUR)
    assert sorted(result) == sorted(q.key for q in queries)
    assert all(len(rows) == 1 for rows in result.values())
    assert stub.max_in_flight == 10


def test_the_process_never_has_more_than_twenty_requests_in_flight(stub: StubPrometheus) -> None:
    stub.respond = lambda req: Reply(delay=0.4, body=matrix(({}, hours(1))).body)
    errors: list[BaseException] = []

    def one_caller(n: int) -> None:
        try:
            queries = [MetricQuery(f"q{i}", f"metric_{n}_{i}") for i in range(10)]
            assert len(source_for(stub.url).query(queries, DAY, NEXT, HOUR)) == 10
        except BaseException as exc:
            errors.append(exc)

    callers = [threading.Thread(target=one_caller, args=(n,)) for n in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert errors == []
    assert len(stub.requests) == 30
    assert stub.max_in_flight == 20


# --- connection settings and secrets -------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"auth_type": "basic", "username": "u"}, "auth_type 'basic' needs username and password"),
        ({"auth_type": "basic", "password": "p"}, "auth_type 'basic' needs username and password"),
        (
            {"auth_type": "basic", "username": "u", "password": ""},
            "auth_type 'basic' needs username and password",
        ),
        ({"auth_type": "bearer"}, "auth_type 'bearer' needs bearer_token"),
        ({"password": "p"}, "credentials given but auth_type is 'none'"),
        ({"bearer_token": "t"}, "credentials given but auth_type is 'none'"),
        ({"url": "ftp://prom:9090"}, "must be an http:// or https:// URL with a host"),
        ({"url": "prom:9090"}, "must be an http:// or https:// URL with a host"),
        ({"url": "http://u:hunter2@prom:9090"}, "must not contain credentials"),
        ({"url": "http://prom:9090/api?x=1"}, "must not contain a query string"),
        ({"type": "graphite"}, "Input should be 'prometheus'"),
        ({"tls": True}, "Extra inputs are not permitted"),
    ],
)
def test_connection_settings_are_validated(fields: dict[str, object], message: str) -> None:
    raw = {"url": "http://prom:9090", **fields}
    with pytest.raises(ValidationError) as caught:
        MetricsConnection.model_validate(raw)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_valid_connections_and_their_endpoints() -> None:
    plain = MetricsConnection(url="https://gw.example:8443/prometheus/")
    assert plain.range_endpoint == "https://gw.example:8443/prometheus/api/v1/query_range"
    assert plain.instant_endpoint == "https://gw.example:8443/prometheus/api/v1/query"
    basic = MetricsConnection.model_validate(
        {"url": "http://p:9090", "auth_type": "basic", "username": "u", "password": "p4ss"}
    )
    assert isinstance(basic.password, SecretStr)
    assert "p4ss" not in repr(basic) and "p4ss" not in str(basic)
    assert (
        MetricsConnection(url="http://p:9090", auth_type="bearer", bearer_token=SecretStr("t")).auth_type
        == "bearer"
    )


def test_credentials_never_reach_messages_or_logs(
    stub: StubPrometheus, caplog: pytest.LogCaptureFixture
) -> None:
    password, token = "pw-Zq81-secret", "tok-Yx42-secret"
    basic_header = base64.b64encode(f"svc:{password}".encode()).decode()
    secrets = (password, token, basic_header)

    def echo(req: Received) -> Reply:  # a misbehaving gateway that echoes the request headers
        auth = req.headers.get("authorization", "")
        q = req.param("query")
        if q == "retry":
            return Reply(503, auth)
        if q == "garbage":
            return Reply(200, f"<html>{auth}</html>")
        return Reply(401, f"denied for {auth}")

    stub.respond = echo
    basic = source_for(stub.url, auth_type="basic", username="svc", password=SecretStr(password))
    bearer = source_for(stub.url, auth_type="bearer", bearer_token=SecretStr(token))
    messages: list[str] = [repr(basic), repr(bearer)]
    with caplog.at_level(logging.DEBUG):
        for source in (basic, bearer):
            for expression in ("retry", "garbage", "denied"):
                with pytest.raises(MetricsQueryError) as caught:
                    source.query([MetricQuery("k", expression)], DAY, NEXT, HOUR)
                messages += [str(caught.value), caught.value.message, repr(caught.value)]
    assert {r.headers["authorization"] for r in stub.requests} == {f"Basic {basic_header}", f"Bearer {token}"}
    assert any("denied for Bearer **********" in m for m in messages)
    assert any("denied for Basic **********" in m for m in messages)
    logged = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert len(caplog.records) > 0
    for text in messages + logged:
        for secret in secrets:
            assert secret not in text


@pytest.mark.outcome("secret-echoed-by-vendor")
def test_an_echoed_credential_is_masked_before_the_body_is_cut(stub: StubPrometheus) -> None:
    password = "pw/Zq81+secret=&long-enough"
    header = base64.b64encode(f"svc:{password}".encode()).decode()
    answers = {
        "cut": Reply(401, "x" * 190 + password),  # the 200-character excerpt cuts the password
        "cut-header": Reply(403, "y" * 185 + f"Basic {header}"),
        "encoded": Reply(401, f"bad form: password={quote_plus(password)}"),
        "not-json": Reply(200, "z" * 180 + password),  # quoted (and cut) by the parser's message
        "error-body": Reply(200, json.dumps({"status": "error", "errorType": "auth", "error": password})),
    }
    stub.respond = lambda req: answers[req.param("query")]
    source = source_for(stub.url, auth_type="basic", username="svc", password=SecretStr(password))
    forms = (password, header, quote_plus(password), password[:10], header[:10])
    for expression in answers:
        with pytest.raises(MetricsQueryError) as caught:
            source.query([MetricQuery("k", expression)], DAY, NEXT, HOUR)
        text = str(caught.value)
        assert "*****" in text, (expression, text)  # the mask (the cut may shorten it)
        assert [form for form in forms if form in text] == [], (expression, text)


def test_close_releases_the_client_and_the_source_still_works_after(stub: StubPrometheus) -> None:
    source = source_for(stub.url)
    source.query([BYTES], DAY, NEXT, HOUR)
    source.close()
    source.close()
    source.query([MetricQuery("again", "sum(y)")], DAY, NEXT, HOUR)
    assert len(stub.requests) == 2


# --- many resources in one question ----------------------------------------------------

PER_CLUSTER = MetricQuery(
    key="bytes",
    query_expression="sum by (kafka_id, principal_id) (b{})",
    label_keys=("kafka_id", "principal_id"),
    resource_label="kafka_id",
    batch_by_resource=True,
)


def test_a_batchable_query_is_asked_once_for_all_resources_and_split(stub: StubPrometheus) -> None:
    stub.respond = lambda req: matrix(
        ({"kafka_id": "lkc-2", "principal_id": "sa-1"}, hours(2, "3")),
        ({"kafka_id": "lkc-1", "principal_id": "sa-9"}, hours(1, "5")),
    )
    source = source_for(stub.url)
    answers = source.query_resources(
        {"lkc-1": [PER_CLUSTER], "lkc-2": [PER_CLUSTER], "lkc.3": [PER_CLUSTER]}, DAY, NEXT, HOUR
    )
    (req,) = stub.requests
    assert req.param("query") == 'sum by (kafka_id, principal_id) (b{kafka_id=~"lkc-1|lkc-2|lkc\\\\.3"})'
    assert answers == {
        "lkc-1": {
            "bytes": [MetricRow(DAY, "bytes", Decimal(5), {"kafka_id": "lkc-1", "principal_id": "sa-9"})]
        },
        "lkc-2": {
            "bytes": [
                MetricRow(DAY + i * HOUR, "bytes", Decimal(3), {"kafka_id": "lkc-2", "principal_id": "sa-1"})
                for i in range(2)
            ]
        },
        "lkc.3": {"bytes": []},
    }


def test_an_answer_that_mixes_resources_is_asked_again_per_resource(stub: StubPrometheus) -> None:
    def respond(req: Received) -> Reply:
        if "=~" in req.param("query"):
            return matrix(({"principal_id": "sa-1"}, hours(1)))  # kafka_id aggregated away
        return matrix(({"kafka_id": req.param("query").split('"')[1], "principal_id": "sa-1"}, hours(1)))

    stub.respond = respond
    answers = source_for(stub.url).query_resources(
        {"lkc-1": [PER_CLUSTER], "lkc-2": [PER_CLUSTER]}, DAY, NEXT, HOUR
    )
    assert len(stub.requests) == 3
    assert answers == {
        rid: {"bytes": [MetricRow(DAY, "bytes", Decimal(1), {"kafka_id": rid, "principal_id": "sa-1"})]}
        for rid in ("lkc-1", "lkc-2")
    }


def test_a_failed_batch_gives_each_resource_its_own_outcome(stub: StubPrometheus) -> None:
    def respond(req: Received) -> Reply:
        query = req.param("query")
        if "=~" in query or "lkc-bad" in query:
            return Reply(status=400, body='{"status":"error","errorType":"bad_data","error":"nope"}')
        return matrix()

    stub.respond = respond
    unbatched = MetricQuery(key="other", query_expression="sum(o{})", resource_label="kafka_id")
    answers = source_for(stub.url).query_resources(
        {"lkc-ok": [PER_CLUSTER, unbatched], "lkc-bad": [PER_CLUSTER, unbatched]}, DAY, NEXT, HOUR
    )
    assert answers["lkc-ok"] == {"bytes": [], "other": []}
    failure = answers["lkc-bad"]
    assert isinstance(failure, MetricsQueryError)
    assert 'kafka_id="lkc-bad"' in str(failure.expression)
    # One batch, then per resource: two batchable and two plain queries.
    assert len(stub.requests) == 5


def test_queries_without_batch_by_resource_are_asked_per_resource(stub: StubPrometheus) -> None:
    plain = dataclasses.replace(PER_CLUSTER, batch_by_resource=False)
    source_for(stub.url).query_resources({"lkc-1": [plain], "lkc-2": [plain]}, DAY, NEXT, HOUR)
    assert sorted(r.param("query") for r in stub.requests) == [
        'sum by (kafka_id, principal_id) (b{kafka_id="lkc-1"})',
        'sum by (kafka_id, principal_id) (b{kafka_id="lkc-2"})',
    ]
