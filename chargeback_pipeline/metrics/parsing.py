"""Turning request parameters and Prometheus bodies into what the core uses.

Kept apart from the HTTP client so the exact rules — time format, resource filter
injection, value parsing, half-open trimming — can be read and tested on their own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from chargeback_pipeline.models import MetricQuery, MetricRow, metric_row, require_utc

log = logging.getLogger(__name__)

DEFAULT_STEP_SECONDS = 3600
# Prometheus' own spelling of non-finite values; any other unparseable text is a fault.
_NON_FINITE = frozenset({"nan", "+inf", "-inf", "inf"})


# ``data.result``: series objects (matrix / vector), or a scalar's single ``[ts, "v"]`` point.
QueryResult = list[Mapping[str, Any]] | tuple[Any, ...]


class InvalidResponse(Exception):
    """The body is not JSON or not a Prometheus query result (message = the reason)."""


class PrometheusErrorBody(Exception):
    """The body says ``status: error``; the message is ``<errorType>: <error>``."""


def format_time(value: datetime, what: str) -> str:
    """``YYYY-MM-DDTHH:MM:SS+00:00``; a naive datetime is refused (it would shift days)."""
    return require_utc(value, what).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def step_seconds(step: timedelta) -> int:
    """Whole seconds of ``step``; zero or negative falls back to the 3600 s default."""
    seconds = int(step.total_seconds())
    return seconds if seconds > 0 else DEFAULT_STEP_SECONDS


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def inject_resource_filter(query: MetricQuery, resource_id_filter: str | None) -> str:
    """The expression to send: the first ``{}`` becomes the resource matcher or disappears (§4)."""
    text = query.query_expression
    if resource_id_filter is None or query.resource_label is None:
        return text.replace("{}", "", 1)
    if "{}" not in text:
        log.debug(
            "metrics query '%s' has no '{}' placeholder; resource filter %s=%r not applied",
            query.key,
            query.resource_label,
            resource_id_filter,
        )
        return text
    matcher = f'{{{query.resource_label}="{escape_label_value(resource_id_filter)}"}}'
    return text.replace("{}", matcher, 1)


# RE2 metacharacters: escaped so a resource id is matched literally inside ``=~``.
_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def regex_literal(value: str) -> str:
    """``value`` as an RE2 pattern that matches exactly that text."""
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in value)


def batch_expression(query: MetricQuery, resource_ids: Sequence[str]) -> str | None:
    """The expression asking for all of ``resource_ids`` at once, or None when it cannot.

    The ``{}`` placeholder becomes ``{label=~"id1|id2|…"}``: Prometheus anchors the
    pattern, so it selects exactly the series the per-resource ``{label="idN"}`` queries
    select together. Only for queries that declare ``batch_by_resource`` (their output
    series each come from one resource and carry its label) and non-empty ids (an empty
    alternative would also match series without the label).
    """
    label = query.resource_label
    text = query.query_expression
    if not query.batch_by_resource or label is None or "{}" not in text:
        return None
    if not resource_ids or any(not rid for rid in resource_ids):
        return None
    pattern = "|".join(regex_literal(rid) for rid in resource_ids)
    return text.replace("{}", f'{{{label}=~"{escape_label_value(pattern)}"}}', 1)


def split_by_resource(
    result: QueryResult, label: str, resource_ids: Sequence[str]
) -> dict[str, list[Mapping[str, Any]]] | None:
    """A batched answer's series per resource (in answer order), or None if one cannot be placed.

    Every series must carry ``label`` with one of the asked ids; anything else (a scalar,
    a series whose label was aggregated away) means the expression did not keep the
    resources apart, and the caller asks per resource instead.
    """
    if isinstance(result, tuple):
        return None
    parts: dict[str, list[Mapping[str, Any]]] = {rid: [] for rid in resource_ids}
    for series in result:
        value = series.get("metric", {}).get(label)
        part = parts.get(value) if isinstance(value, str) else None
        if part is None:
            return None
        part.append(series)
    return parts


def check_body(text: str) -> QueryResult:
    """Validate a body and return its ``data.result``.

    Raises :class:`PrometheusErrorBody` for ``status: error`` and :class:`InvalidResponse`
    for anything that is not a query result, so both surface before the body is cached.
    """
    try:
        body = json.loads(text, parse_float=Decimal)
    except ValueError as exc:
        raise InvalidResponse(f"body is not JSON ({exc.__class__.__name__}: {exc}): {text[:200]!r}") from None
    if not isinstance(body, dict):
        raise InvalidResponse(f"expected a JSON object, got {type(body).__name__}")
    if body.get("status") == "error":
        raise PrometheusErrorBody(f"{body.get('errorType', 'error')}: {body.get('error', '(no message)')}")
    if body.get("status") != "success":
        raise InvalidResponse(f"unexpected status {str(body.get('status'))[:50]!r}")
    data = body.get("data")
    if not isinstance(data, dict):
        raise InvalidResponse("'data' is missing or not an object")
    result_type, result = data.get("resultType"), data.get("result")
    if result_type in ("matrix", "vector"):
        if not isinstance(result, list):
            raise InvalidResponse(f"'data.result' of a {result_type} is not a list")
        for series in result:
            points_key = "values" if result_type == "matrix" else "value"
            if not isinstance(series, dict) or not isinstance(series.get(points_key), list):
                raise InvalidResponse(f"a {result_type} element lacks a '{points_key}' list")
            if not isinstance(series.get("metric", {}), dict):
                raise InvalidResponse(f"a {result_type} element's 'metric' is not an object")
        return result
    if result_type == "scalar":
        if not isinstance(result, list):
            raise InvalidResponse("'data.result' of a scalar is not a point")
        return tuple(result)
    raise InvalidResponse(f"unsupported resultType {str(result_type)[:50]!r}")


def parse_rows(
    query: MetricQuery,
    result: QueryResult,
    window: tuple[datetime, datetime] | None,
) -> list[MetricRow]:
    """Rows of one query, sorted by (labels, timestamp); ``window`` trims to ``[start, end)``.

    A day of Kafka telemetry is tens of thousands of points in a few hundred series, so
    the per-point work is kept small: a series' labels are filtered and sorted once and
    shared by its rows as one read-only mapping (the form stored usage is read back in),
    and each distinct instant is converted once. Rows are grouped by label set, the
    groups ordered by their sorted labels and each group stably by timestamp — the same
    order as one stable sort of every row by ``(sorted labels, timestamp)``.
    """
    if isinstance(result, tuple):
        series_points: list[tuple[Mapping[str, Any], Sequence[Any]]] = [({}, [list(result)])]
    else:
        series_points = [
            (s.get("metric", {}), s["values"] if "values" in s else [s["value"]]) for s in result
        ]
    instants: dict[Any, datetime] = {}
    by_labels: dict[tuple[tuple[str, str], ...], tuple[Mapping[str, str], list[MetricRow]]] = {}
    for metric, points in series_points:
        labels = {k: str(metric[k]) for k in query.label_keys if k in metric}
        label_key = tuple(sorted(labels.items()))
        found = by_labels.get(label_key)
        if found is None:
            found = by_labels[label_key] = (MappingProxyType(labels), [])
        shared, rows = found
        for point in points:
            # Fast path for the usual ``[number, "text"]`` point at an instant already
            # seen; anything else (a new instant, odd types, garbage) takes the full rules
            # of ``_parse_point``, which give the same row for every point taken here.
            try:
                ts, raw = point
                if type(raw) is not str or type(ts) is bool:
                    raise _Unusual
                value = Decimal(raw)
                timestamp = instants[ts]
            except (_Unusual, KeyError, TypeError, ValueError, ArithmeticError):
                row = _parse_point(query, point, shared, instants)
                if row is None:
                    continue
                value, timestamp = row.value, row.timestamp
            if not value.is_finite():
                continue
            if window is not None and not (window[0] <= timestamp < window[1]):
                continue
            rows.append(metric_row(timestamp, query.key, value, shared))
    ordered: list[MetricRow] = []
    for label_key in sorted(by_labels):
        rows = by_labels[label_key][1]
        rows.sort(key=_TIMESTAMP)
        ordered.extend(rows)
    return ordered


_TIMESTAMP = attrgetter("timestamp")


class _Unusual(Exception):
    """A point that is not ``[number, "text"]``: parsed by the full rules instead."""


def _parse_point(
    query: MetricQuery, point: Any, labels: Mapping[str, str], instants: dict[Any, datetime]
) -> MetricRow | None:
    try:
        ts, raw = point
        if isinstance(ts, bool) or isinstance(raw, bool):
            raise TypeError("boolean in a sample")
        text = str(raw).strip()
        if text.lower() in _NON_FINITE:
            return None
        value = Decimal(text)
        if not value.is_finite():
            return None
        timestamp = instants.get(ts)
        if timestamp is None:
            timestamp = instants[ts] = datetime.fromtimestamp(float(ts), UTC)
    except (TypeError, ValueError, InvalidOperation, OverflowError, OSError) as exc:
        log.warning(
            "metrics query '%s': skipped an unparseable sample %.100r (%s)",
            query.key,
            point,
            type(exc).__name__,
        )
        return None
    return MetricRow(timestamp, query.key, value, labels)
