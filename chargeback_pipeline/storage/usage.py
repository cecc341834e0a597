"""Stored usage metrics per (resource, billing window) of a date (operations.md §6).

Stored so the chargebacks step can be re-run from exactly the inputs it used. Values
are kept as the exact decimal strings; the distinction between "nothing fetched"
(``None``), "fetched, no rows" and "fetch failed" survives the round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

import duckdb
import numpy as np

from chargeback_pipeline.models import MetricRow, require_utc
from chargeback_pipeline.storage.codec import (
    EPOCH_US_TO_TIMESTAMPTZ_SQL,
    dump_json,
    epoch_us,
    frame,
    from_epoch_us,
    insert_frame,
    load_json,
    require_date,
)
from chargeback_pipeline.storage.transactions import atomic

UsageKey = tuple[str, datetime, datetime]
_ROW_COLUMNS = ("resource_id", "ws", "we", "metric_key", "row_no", "row_metric_key", "ts", "value", "labels")


class UsageGroupData(NamedTuple):
    """One group's data: unpacks as ``(rows, fetch_failed)`` and reads as attributes."""

    rows: dict[str, list[MetricRow]] | None
    fetch_failed: bool


def _as_group(key: UsageKey, value: Any) -> UsageGroupData:
    if hasattr(value, "rows") and hasattr(value, "fetch_failed"):
        return UsageGroupData(value.rows, bool(value.fetch_failed))
    try:
        rows, failed = value
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"usage group {key[0]}: expected (rows, fetch_failed), got {type(value).__name__}"
        ) from exc
    return UsageGroupData(rows, bool(failed))


def _check_key(key: UsageKey) -> UsageKey:
    resource_id, start, end = key
    return (
        str(resource_id),
        require_utc(start, f"usage window start of {resource_id}"),
        require_utc(end, f"usage window end of {resource_id}"),
    )


class UsageMetricsRepository:
    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self._conn = conn

    def replace_date(self, d: date, groups: Mapping[UsageKey, Any]) -> int:
        """Replace the date's stored usage by ``groups``; returns the number of metric rows."""
        require_date(d, "billing date")
        checked = {_check_key(k): _as_group(k, v) for k, v in groups.items()}
        group_df = self._groups_frame(checked)
        rows_df = self._rows_frame(checked)
        with atomic(self._conn):
            self._conn.execute("DELETE FROM usage_metrics WHERE billing_date = ?", [d])
            self._conn.execute("DELETE FROM usage_metric_groups WHERE billing_date = ?", [d])
            if checked:
                insert_frame(
                    self._conn,
                    "_usage_group_stage",
                    group_df,
                    "INSERT INTO usage_metric_groups SELECT ?::DATE, resource_id, "
                    "CAST(window_start AS TIMESTAMPTZ), CAST(window_end AS TIMESTAMPTZ), "
                    "fetch_failed, metric_keys "
                    "FROM _usage_group_stage",
                    [d],
                )
            if len(rows_df):
                insert_frame(self._conn, "_usage_row_stage", rows_df, self._rows_sql(), [d])
        return len(rows_df)

    @staticmethod
    def _groups_frame(groups: Mapping[UsageKey, UsageGroupData]) -> Any:
        keys = list(groups)
        return frame(
            {
                "resource_id": [k[0] for k in keys],
                "window_start": [k[1].isoformat() for k in keys],
                "window_end": [k[2].isoformat() for k in keys],
                "fetch_failed": [g.fetch_failed for g in groups.values()],
                "metric_keys": [_metric_keys(g) for g in groups.values()],
            }
        )

    @staticmethod
    def _rows_frame(groups: Mapping[UsageKey, UsageGroupData]) -> Any:
        cols: dict[str, list[Any]] = {name: [] for name in _ROW_COLUMNS}
        # A series' label set repeats on every point (24 a day at a 1 h step): encode it once.
        label_json: dict[tuple[tuple[str, str], ...], str] = {}
        for key, group in groups.items():
            for metric_key, metric_rows in (group.rows or {}).items():
                for i, row in enumerate(metric_rows):
                    _append_row(cols, key, metric_key, i, row, label_json)
        data: dict[str, Any] = dict(cols)
        for name in ("ws", "we", "ts"):
            data[name] = np.array(cols[name], dtype=np.int64)
        data["row_no"] = np.array(cols["row_no"], dtype=np.int64)
        return frame(data)

    @staticmethod
    def _rows_sql() -> str:
        ts = EPOCH_US_TO_TIMESTAMPTZ_SQL
        return (
            "INSERT INTO usage_metrics SELECT ?::DATE, resource_id, "
            f"{ts.format(col='ws')}, {ts.format(col='we')}, metric_key, CAST(row_no AS INTEGER), "
            "row_metric_key, "
            f"{ts.format(col='ts')}, value, labels FROM _usage_row_stage"
        )

    def load_date(self, d: date) -> dict[UsageKey, UsageGroupData]:
        """The stored groups of ``d`` sorted by key; values are exact ``Decimal``s."""
        require_date(d, "billing date")
        groups: dict[UsageKey, UsageGroupData] = {}
        for resource_id, ws, we, failed, keys in self._conn.execute(
            "SELECT resource_id, window_start, window_end, fetch_failed, metric_keys "
            "FROM usage_metric_groups WHERE billing_date = ? ORDER BY resource_id, window_start, window_end",
            [d],
        ).fetchall():
            names = load_json(keys)
            rows: dict[str, list[MetricRow]] | None = None if names is None else {name: [] for name in names}
            groups[(resource_id, ws.astimezone(UTC), we.astimezone(UTC))] = UsageGroupData(rows, bool(failed))
        self._load_rows(d, groups)
        return groups

    def _load_rows(self, d: date, groups: dict[UsageKey, UsageGroupData]) -> None:
        cache: dict[int, datetime] = {}
        # Rows of one series share one read-only labels mapping, decoded once.
        label_cache: dict[str, Mapping[str, str]] = {}

        def labels_of(text: str) -> Mapping[str, str]:
            found = label_cache.get(text)
            if found is None:
                found = label_cache[text] = MappingProxyType(load_json(text) or {})
            return found

        def ts(us: int) -> datetime:
            value = cache.get(us)
            if value is None:
                value = cache[us] = from_epoch_us(us)
            return value

        for resource_id, ws, we, metric_key, row_metric_key, t, value, labels in self._conn.execute(
            "SELECT resource_id, epoch_us(window_start), epoch_us(window_end), metric_key, row_metric_key, "
            'epoch_us("timestamp"), value, labels FROM usage_metrics WHERE billing_date = ? '
            "ORDER BY resource_id, window_start, window_end, metric_key, row_no",
            [d],
        ).fetchall():
            group = groups.get((resource_id, ts(ws), ts(we)))
            if group is None or group.rows is None:
                continue
            row = MetricRow(ts(t), row_metric_key, Decimal(value), labels_of(labels))
            group.rows.setdefault(metric_key, []).append(row)


def _metric_keys(group: UsageGroupData) -> str | None:
    return None if group.rows is None else dump_json(list(group.rows), "metric keys")


def _append_row(
    cols: dict[str, list[Any]],
    key: UsageKey,
    metric_key: str,
    i: int,
    row: MetricRow,
    label_json: dict[tuple[tuple[str, str], ...], str],
) -> None:
    value = row.value
    if isinstance(value, float) or not isinstance(value, Decimal | int):
        raise TypeError(
            f"usage metric {metric_key} of {key[0]}: value must be a Decimal, "
            f"got {type(value).__name__} {value!r}"
        )
    cols["resource_id"].append(key[0])
    cols["ws"].append(epoch_us(key[1]))
    cols["we"].append(epoch_us(key[2]))
    cols["metric_key"].append(metric_key)
    cols["row_no"].append(i)
    cols["row_metric_key"].append(row.metric_key)
    cols["ts"].append(epoch_us(require_utc(row.timestamp, f"usage metric {metric_key} timestamp")))
    cols["value"].append(str(value))
    items = tuple(row.labels.items())
    encoded = label_json.get(items)
    if encoded is None:
        encoded = label_json[items] = dump_json(dict(items), f"labels of usage metric {metric_key}")
    cols["labels"].append(encoded)
