"""The built-in ``MetricsSource``: Prometheus' HTTP query API over httpx.

Every rule of spec/prometheus-source.md lives here or in ``parsing``: POSTed form
queries under the configured path prefix, half-open windows, bounded retries with
jittered backoff, a per-call thread pool under a process-wide cap on requests in
flight, and a response cache. Every failure becomes a ``MetricsQueryError`` so the
core's fallbacks always apply.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

import httpx

from chargeback_pipeline.errors import MetricsQueryError
from chargeback_pipeline.metrics.cache import RESPONSE_CACHE
from chargeback_pipeline.metrics.connection import MetricsConnection
from chargeback_pipeline.metrics.parsing import (
    InvalidResponse,
    PrometheusErrorBody,
    QueryResult,
    batch_expression,
    check_body,
    format_time,
    inject_resource_filter,
    parse_rows,
    split_by_resource,
    step_seconds,
)
from chargeback_pipeline.models import MetricQuery, MetricRow
from chargeback_pipeline.redaction import Redactor
from chargeback_pipeline.tls import default_tls_context

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_QUERIES_PER_CALL = 10
MAX_REQUESTS_IN_FLIGHT = 20
# A batched question (query_resources) names at most this many resources and is at most
# this long: well under the form and URL limits of Prometheus and common gateways, and
# its answer stays a few MB.
MAX_RESOURCES_PER_BATCH = 200
MAX_BATCH_EXPRESSION_CHARS = 8000
# Process-wide: many tenants and usage groups run at once, Prometheus sees at most 20.
_IN_FLIGHT = threading.BoundedSemaphore(MAX_REQUESTS_IN_FLIGHT)


class PrometheusSource:
    """Queries one Prometheus (or a gateway in front of it) for usage and cost metrics."""

    def __init__(
        self,
        connection: MetricsConnection,
    ) -> None:
        self._connection = connection
        self._timeout = connection.timeout_seconds
        self._max_attempts = connection.max_attempts
        self._backoff_base = connection.backoff_base_seconds
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        # Every spelling of the credentials a misbehaving server might echo back.
        self._redactor = _redactor_for(connection)

    def __repr__(self) -> str:
        return f"PrometheusSource(url={self._connection.url!r}, auth_type={self._connection.auth_type!r})"

    # --- MetricsSource protocol --------------------------------------------------------

    def query(
        self,
        queries: Sequence[MetricQuery],
        start: datetime,
        end: datetime,
        step: timedelta,
        resource_id_filter: str | None = None,
    ) -> dict[str, list[MetricRow]]:
        """Rows per query key for ``[start, end)``; raises the first failure in query order."""
        range_params, instant_params = _request_params(start, end, step)
        window = (start, end)
        if not queries:
            return {}

        def run(query: MetricQuery) -> list[MetricRow]:
            expression = inject_resource_filter(query, resource_id_filter)
            if query.query_mode == "instant":
                return self._fetch(query, expression, instant_params, None)
            return self._fetch(query, expression, range_params, window)

        futures = zip(queries, _run_all(queries, run), strict=True)
        results: dict[str, list[MetricRow]] = {}
        failures: list[BaseException] = []
        for query, future in futures:
            error = future.exception()
            if error is None:
                results[query.key] = future.result()
            else:
                failures.append(error)
        if failures:
            for other in failures[1:]:
                log.warning("%s", _describe(other))
            raise failures[0]
        return results

    def query_resources(
        self,
        groups: Mapping[str, Sequence[MetricQuery]],
        start: datetime,
        end: datetime,
        step: timedelta,
    ) -> dict[str, dict[str, list[MetricRow]] | Exception]:
        """``query(groups[r], start, end, step, r)`` for every resource ``r``, asked in batches.

        A query that declares ``batch_by_resource`` is asked once for up to
        ``MAX_RESOURCES_PER_BATCH`` resources with a regex matcher and its answer split
        by the resource label: a day of a large Confluent Cloud organisation took ~109
        requests (one per cluster, window and metric), each a round trip through
        Prometheus on a shared machine; batched it takes ~4. The rows are the ones the
        per-resource query gives (the same series, parsed by the same rules). A batch
        that fails or cannot be split is asked again per resource, so each resource gets
        exactly the outcome ``query`` would give it, failures included.
        """
        range_params, instant_params = _request_params(start, end, step)
        window = (start, end)

        def params_of(query: MetricQuery) -> tuple[dict[str, str], tuple[datetime, datetime] | None]:
            return (instant_params, None) if query.query_mode == "instant" else (range_params, window)

        outcomes: dict[tuple[str, int], list[MetricRow] | Exception] = {}
        singles: list[_Member] = []
        batches: dict[tuple[object, ...], list[_Member]] = {}
        for rid, queries in groups.items():
            for index, query in enumerate(queries):
                if query.batch_by_resource and query.resource_label is not None and rid:
                    identity = (
                        query.key,
                        query.query_expression,
                        query.label_keys,
                        query.resource_label,
                        query.query_mode,
                    )
                    batches.setdefault(identity, []).append((rid, index, query))
                else:
                    singles.append((rid, index, query))

        def run_single(item: _Member) -> None:
            rid, index, query = item
            params, win = params_of(query)
            try:
                outcomes[rid, index] = self._fetch(query, inject_resource_filter(query, rid), params, win)
            except Exception as exc:
                outcomes[rid, index] = exc

        retry: list[_Member] = []
        retry_lock = threading.Lock()

        def run_batch(members: list[_Member]) -> None:
            query = members[0][2]
            label = query.resource_label
            rids = [rid for rid, _, _ in members]
            expression = batch_expression(query, rids)
            parts = None
            if expression is not None and label is not None:
                params, win = params_of(query)
                try:
                    result = self._fetch_result(query, expression, params, win)
                except Exception as exc:
                    log.info(
                        "metrics query '%s': batch of %d resources failed (%s); asking per resource",
                        query.key,
                        len(rids),
                        _describe(exc),
                    )
                else:
                    parts = split_by_resource(result, label, rids)
                if parts is not None:
                    for rid, index, member in members:
                        outcomes[rid, index] = parse_rows(member, parts[rid], win)
                    return
            with retry_lock:
                retry.extend(members)

        tasks: list[Callable[[], None]] = [
            functools.partial(run_batch, chunk) for members in batches.values() for chunk in _chunks(members)
        ]
        tasks.extend(functools.partial(run_single, item) for item in singles)
        _run_tasks(tasks)
        _run_tasks([functools.partial(run_single, item) for item in retry])

        results: dict[str, dict[str, list[MetricRow]] | Exception] = {}
        for rid, queries in groups.items():
            rows: dict[str, list[MetricRow]] = {}
            failures: list[Exception] = []
            for index, query in enumerate(queries):
                outcome = outcomes[rid, index]
                if isinstance(outcome, Exception):
                    failures.append(outcome)
                else:
                    rows[query.key] = outcome
            if failures:
                for other in failures[1:]:
                    log.warning("%s", _describe(other))
                results[rid] = failures[0]
            else:
                results[rid] = rows
        return results

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # --- one query ---------------------------------------------------------------------

    def _fetch(
        self,
        query: MetricQuery,
        expression: str,
        params: dict[str, str],
        window: tuple[datetime, datetime] | None,
    ) -> list[MetricRow]:
        return parse_rows(query, self._fetch_result(query, expression, params, window), window)

    def _fetch_result(
        self,
        query: MetricQuery,
        expression: str,
        params: dict[str, str],
        window: tuple[datetime, datetime] | None,
    ) -> QueryResult:
        conn = self._connection
        endpoint = conn.instant_endpoint if window is None else conn.range_endpoint
        cache_key = (endpoint, expression, *params.values())
        text = RESPONSE_CACHE.get(cache_key)
        if text is None:
            text = self._post_with_retries(query, expression, endpoint, {"query": expression, **params})
            result = self._checked(query, expression, text)
            RESPONSE_CACHE.put(cache_key, text)
        else:
            result = self._checked(query, expression, text)
        return result

    def _checked(self, query: MetricQuery, expression: str, text: str) -> QueryResult:
        try:
            return check_body(text)
        except (PrometheusErrorBody, InvalidResponse):
            # The messages quote (and cut) the body: derive them again from the masked body,
            # so a cut can never leave the start of an echoed credential behind.
            masked = self._redactor.redact(text)
        try:
            check_body(masked)
        except PrometheusErrorBody as exc:
            raise MetricsQueryError(self._redact(str(exc)), query, None, expression) from None
        except InvalidResponse as exc:
            raise MetricsQueryError(
                f"invalid response: {self._redact(str(exc))}", query, None, expression
            ) from None
        raise MetricsQueryError("invalid response: (unreadable body)", query, None, expression)

    def _post_with_retries(
        self, query: MetricQuery, expression: str, endpoint: str, form: dict[str, str]
    ) -> str:
        last_status: int | None = None
        last_reason = ""
        for attempt in range(1, self._max_attempts + 1):
            if attempt > 1:
                delay = self._backoff_base * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                log.warning(
                    "metrics query '%s': attempt %d/%d failed (%s); retrying in %.2f s",
                    query.key,
                    attempt - 1,
                    self._max_attempts,
                    last_reason,
                    delay,
                )
                time.sleep(delay)
            client = self._http()
            try:
                with _IN_FLIGHT:
                    response = client.post(endpoint, data=form)
            except httpx.TransportError as exc:
                last_status, last_reason = None, self._redact(f"{type(exc).__name__}: {exc}")
                continue
            except httpx.HTTPError as exc:
                reason = self._redact(f"{type(exc).__name__}: {exc}")
                raise MetricsQueryError(f"invalid response: {reason}", query, None, expression) from None
            status = response.status_code
            if status in RETRYABLE_STATUS:
                last_status, last_reason = status, f"HTTP {status}"
                continue
            if status >= 400:
                snippet = self._redactor.excerpt(response.text, 200)
                raise MetricsQueryError(f"HTTP {status}: {snippet}", query, status, expression)
            if status >= 300:
                raise MetricsQueryError(
                    f"HTTP {status}: redirected; set metrics.url to the final address",
                    query,
                    status,
                    expression,
                )
            return response.text
        raise MetricsQueryError(
            f"Exhausted {self._max_attempts} attempts for {endpoint} (last: {last_reason})",
            query,
            last_status,
            expression,
        )

    def _redact(self, text: str) -> str:
        """Masks credentials in text that came from the server or the network stack."""
        return self._redactor.redact(text)

    def _http(self) -> httpx.Client:
        """The shared client, created on first use (only it and the redactor hold the credentials)."""
        with self._client_lock:
            if self._client is None:
                conn = self._connection
                auth: httpx.Auth | None = None
                # httpx asks for gzip by default; see MetricsConnection.compress_responses.
                headers: dict[str, str] = {} if conn.compress_responses else {"Accept-Encoding": "identity"}
                if conn.auth_type == "basic" and conn.username and conn.password is not None:
                    password = conn.password.get_secret_value()
                    auth = httpx.BasicAuth(conn.username, password)
                elif conn.auth_type == "bearer" and conn.bearer_token is not None:
                    token = conn.bearer_token.get_secret_value()
                    headers["Authorization"] = f"Bearer {token}"
                self._client = httpx.Client(
                    auth=auth,
                    headers=headers,
                    timeout=httpx.Timeout(self._timeout),
                    limits=httpx.Limits(max_connections=MAX_REQUESTS_IN_FLIGHT),
                    follow_redirects=False,
                    verify=default_tls_context(),
                )
            return self._client


def _run_all(
    queries: Sequence[MetricQuery], run: Callable[[MetricQuery], list[MetricRow]]
) -> list[Future[list[MetricRow]]]:
    """Each query's outcome, in query order, with at most ``MAX_QUERIES_PER_CALL`` at once.

    Up to that many queries all run at once: the calling thread runs the first itself
    (it would only wait otherwise) and a pool the others, so a single query starts no
    thread and two start one. Starting and joining a pool per call was a sixth of the
    client's CPU over the 30-day benchmark (~3,200 calls of one or two queries).
    """
    if len(queries) > MAX_QUERIES_PER_CALL:
        with ThreadPoolExecutor(max_workers=MAX_QUERIES_PER_CALL, thread_name_prefix="prometheus") as pool:
            return [pool.submit(run, q) for q in queries]
    first: Future[list[MetricRow]] = Future()
    rest: list[Future[list[MetricRow]]] = []
    with contextlib.ExitStack() as stack:
        if len(queries) > 1:
            pool = stack.enter_context(
                ThreadPoolExecutor(max_workers=len(queries) - 1, thread_name_prefix="prometheus")
            )
            rest = [pool.submit(run, q) for q in queries[1:]]
        try:
            first.set_result(run(queries[0]))
        except Exception as exc:
            first.set_exception(exc)
    return [first, *rest]


def _request_params(start: datetime, end: datetime, step: timedelta) -> tuple[dict[str, str], dict[str, str]]:
    """Form parameters of a range query over ``[start, end)`` and of an instant query at its end."""
    range_params = {
        "start": format_time(start, "metrics query start"),
        "end": format_time(end, "metrics query end"),
        "step": str(step_seconds(step)),
    }
    return range_params, {"time": range_params["end"]}


def _redactor_for(connection: MetricsConnection) -> Redactor:
    """A redactor for the connection's password (and its Basic header) or bearer token."""
    if connection.auth_type == "basic" and connection.username and connection.password is not None:
        return Redactor(basic_auth=[(connection.username, connection.password.get_secret_value())])
    if connection.auth_type == "bearer" and connection.bearer_token is not None:
        return Redactor([connection.bearer_token.get_secret_value()])
    return Redactor()


_Member = tuple[str, int, MetricQuery]


def _chunks(members: list[_Member]) -> list[list[_Member]]:
    """``members`` (resource id, index, query) cut into batches of at most
    ``MAX_RESOURCES_PER_BATCH`` ids and ``MAX_BATCH_EXPRESSION_CHARS`` of pattern (an id
    costs twice its length, every character escaped in the worst case, plus a ``|``)."""
    chunks: list[list[_Member]] = []
    current: list[_Member] = []
    size = 0
    for member in members:
        cost = 2 * len(member[0]) + 1
        if current and (len(current) >= MAX_RESOURCES_PER_BATCH or size + cost > MAX_BATCH_EXPRESSION_CHARS):
            chunks.append(current)
            current, size = [], 0
        current.append(member)
        size += cost
    if current:
        chunks.append(current)
    return chunks


def _run_tasks(tasks: Sequence[Callable[[], None]]) -> None:
    """Runs ``tasks``, at most ``MAX_QUERIES_PER_CALL`` at once, the first on the calling
    thread (as ``_run_all``); an unexpected error of any task is raised here."""
    if not tasks:
        return
    futures: list[Future[None]] = []
    with contextlib.ExitStack() as stack:
        if len(tasks) > 1:
            pool = stack.enter_context(
                ThreadPoolExecutor(
                    max_workers=min(len(tasks) - 1, MAX_QUERIES_PER_CALL), thread_name_prefix="prometheus"
                )
            )
            futures = [pool.submit(task) for task in tasks[1:]]
        tasks[0]()
    for future in futures:
        future.result()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
