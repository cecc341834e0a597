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
        """Column lists of every metric row; per-group values are computed once per group.

        A day holds tens of thousands of points, so the per-row work is kept to appends:
        a series' label set repeats on every point and is encoded once, timestamps are
        converted once per distinct instant.
        """
        cols: dict[str, list[Any]] = {name: [] for name in _ROW_COLUMNS}
        label_json: dict[tuple[tuple[str, str], ...], str] = {}
        instants: dict[datetime, int] = {}
        for key, group in groups.items():
            resource_id, ws, we = key[0], epoch_us(key[1]), epoch_us(key[2])
            for metric_key, metric_rows in (group.rows or {}).items():
                count = len(metric_rows)
                cols["resource_id"].extend([resource_id] * count)
                cols["ws"].extend([ws] * count)
                cols["we"].extend([we] * count)
                cols["metric_key"].extend([metric_key] * count)
                cols["row_no"].extend(range(count))
                for row in metric_rows:
                    _append_row(cols, key, metric_key, row, label_json, instants)
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
        """Attach the date's rows to their groups; rows arrive ordered by group, key and row number."""
        instants: dict[int, datetime] = {}
        # Rows of one series share one read-only labels mapping, decoded once.
        label_cache: dict[str, Mapping[str, str]] = {}
        current: tuple[str, int, int] | None = None
        rows: dict[str, list[MetricRow]] | None = None
        for resource_id, ws, we, metric_key, row_metric_key, t, value, labels in self._conn.execute(
            "SELECT resource_id, epoch_us(window_start), epoch_us(window_end), metric_key, row_metric_key, "
            'epoch_us("timestamp"), value, labels FROM usage_metrics WHERE billing_date = ? '
            "ORDER BY resource_id, window_start, window_end, metric_key, row_no",
            [d],
        ).fetchall():
            if current != (resource_id, ws, we):
                current = (resource_id, ws, we)
                group = groups.get((resource_id, from_epoch_us(ws), from_epoch_us(we)))
                rows = None if group is None else group.rows
            if rows is None:
                continue
            at = instants.get(t)
            if at is None:
                at = instants[t] = from_epoch_us(t)
            mapping = label_cache.get(labels)
            if mapping is None:
                mapping = label_cache[labels] = MappingProxyType(load_json(labels) or {})
            found = rows.get(metric_key)
            if found is None:
                found = rows[metric_key] = []
            found.append(MetricRow(at, row_metric_key, Decimal(value), mapping))


def _metric_keys(group: UsageGroupData) -> str | None:
    return None if group.rows is None else dump_json(list(group.rows), "metric keys")


def _append_row(
    cols: dict[str, list[Any]],
    key: UsageKey,
    metric_key: str,
    row: MetricRow,
    label_json: dict[tuple[tuple[str, str], ...], str],
    instants: dict[datetime, int],
) -> None:
    """The per-point columns of one row (the group's columns are filled by the caller)."""
    value = row.value
    if isinstance(value, float) or not isinstance(value, Decimal | int):
        raise TypeError(
            f"usage metric {metric_key} of {key[0]}: value must be a Decimal, "
            f"got {type(value).__name__} {value!r}"
        )
    cols["row_metric_key"].append(row.metric_key)
    at = instants.get(row.timestamp)
    if at is None:
        at = instants[row.timestamp] = epoch_us(
            require_utc(row.timestamp, f"usage metric {metric_key} timestamp")
        )
    cols["ts"].append(at)
    cols["value"].append(str(value))
    items = tuple(row.labels.items())
    encoded = label_json.get(items)
    if encoded is None:
        encoded = label_json[items] = dump_json(dict(items), f"labels of usage metric {metric_key}")
    cols["labels"].append(encoded)
