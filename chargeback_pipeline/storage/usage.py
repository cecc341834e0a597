"""Stored usage metrics per (resource, billing window) of a date (operations.md §6).

Stored so the chargebacks step can be re-run from exactly the inputs it used. Values
are kept as the exact decimal strings; the distinction between "nothing fetched"
(``None``), "fetched, no rows" and "fetch failed" survives the round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from operator import attrgetter
from types import MappingProxyType
from typing import Any, NamedTuple

import duckdb
import numpy as np

from chargeback_pipeline.errors import StorageError
from chargeback_pipeline.models import MetricRow, metric_row, require_utc
from chargeback_pipeline.storage.codec import (
    EPOCH_US_TO_TIMESTAMPTZ_SQL,
    dump_json,
    epoch_us,
    frame,
    from_epoch_us,
    gc_paused,
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
        """Column lists of every metric row, built a whole series list at a time.

        A day holds tens of thousands of points, so nothing is done per row in Python
        beyond what ``map`` does in C: values are type-checked per distinct type, each
        distinct instant is checked and converted once, and each distinct label mapping
        (rows of one series share one) is encoded once.
        """
        cols: dict[str, list[Any]] = {name: [] for name in _ROW_COLUMNS}
        instants: dict[datetime, int] = {}
        encoder = _LabelEncoder()
        for key, group in groups.items():
            resource_id, ws, we = key[0], epoch_us(key[1]), epoch_us(key[2])
            for metric_key, metric_rows in (group.rows or {}).items():
                count = len(metric_rows)
                if not count:
                    continue
                values = list(map(_VALUE, metric_rows))
                _check_values(values, key, metric_key)
                stamps = list(map(_TIMESTAMP, metric_rows))
                for stamp in set(stamps).difference(instants):
                    instants[stamp] = epoch_us(require_utc(stamp, f"usage metric {metric_key} timestamp"))
                cols["resource_id"].extend([resource_id] * count)
                cols["ws"].extend([ws] * count)
                cols["we"].extend([we] * count)
                cols["metric_key"].extend([metric_key] * count)
                cols["row_no"].extend(range(count))
                cols["row_metric_key"].extend(map(_METRIC_KEY, metric_rows))
                cols["ts"].extend(map(instants.__getitem__, stamps))
                cols["value"].extend(map(str, values))
                cols["labels"].extend(encoder.encode(list(map(_LABELS, metric_rows)), metric_key))
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
        with gc_paused():
            self._load_rows(d, groups)
        return groups

    def _load_rows(self, d: date, groups: dict[UsageKey, UsageGroupData]) -> None:
        """Attach the date's rows to their groups, a (group, metric key) segment at a time.

        Two ordered reads: the segments with their row counts, then the per-row columns
        only, converted column-wise (each distinct instant and label text once; rows of
        one series share one read-only labels mapping), so a day of tens of thousands of
        points costs little more than building its ``MetricRow``s.
        """
        segments = self._conn.execute(
            "SELECT resource_id, epoch_us(window_start), epoch_us(window_end), metric_key, count(*) "
            "FROM usage_metrics WHERE billing_date = ? GROUP BY ALL ORDER BY 1, 2, 3, 4",
            [d],
        ).fetchall()
        if not segments:
            return
        columns = self._conn.execute(
            'SELECT row_metric_key, epoch_us("timestamp") AS ts, value, labels FROM usage_metrics '
            "WHERE billing_date = ? ORDER BY resource_id, window_start, window_end, metric_key, row_no",
            [d],
        ).fetchnumpy()
        metric_keys, stamps, values, labels = (
            columns[name].tolist() for name in ("row_metric_key", "ts", "value", "labels")
        )
        if len(stamps) != sum(segment[4] for segment in segments):
            raise StorageError(f"usage metrics of {d} changed while they were read")
        instants = {t: from_epoch_us(t) for t in set(stamps)}
        mappings = {text: MappingProxyType(load_json(text) or {}) for text in set(labels)}
        at = 0
        for resource_id, ws, we, metric_key, count in segments:
            lo, at = at, at + count
            group = groups.get((resource_id, from_epoch_us(ws), from_epoch_us(we)))
            if group is None or group.rows is None:
                continue
            group.rows.setdefault(metric_key, []).extend(
                map(
                    metric_row,
                    map(instants.__getitem__, stamps[lo:at]),
                    metric_keys[lo:at],
                    map(Decimal, values[lo:at]),
                    map(mappings.__getitem__, labels[lo:at]),
                )
            )


def _metric_keys(group: UsageGroupData) -> str | None:
    return None if group.rows is None else dump_json(list(group.rows), "metric keys")


_VALUE = attrgetter("value")
_TIMESTAMP = attrgetter("timestamp")
_METRIC_KEY = attrgetter("metric_key")
_LABELS = attrgetter("labels")


def _check_values(values: list[Any], key: UsageKey, metric_key: str) -> None:
    """Values are stored as exact text: ``Decimal`` or ``int`` only, never ``float``."""
    for kind in set(map(type, values)):
        if issubclass(kind, float) or not issubclass(kind, Decimal | int):
            value = next(v for v in values if type(v) is kind)
            raise TypeError(
                f"usage metric {metric_key} of {key[0]}: value must be a Decimal, "
                f"got {kind.__name__} {value!r}"
            )


class _LabelEncoder:
    """JSON text of label mappings, encoded once per distinct mapping object and content."""

    def __init__(self) -> None:
        self._by_content: dict[tuple[tuple[str, str], ...], str] = {}

    def encode(self, mappings: list[Mapping[str, str]], metric_key: str) -> list[str]:
        # Keyed by id() only within this call, while ``mappings`` keeps every object alive.
        ids = list(map(id, mappings))
        by_id: dict[int, str] = {}
        for key, mapping in dict(zip(ids, mappings, strict=True)).items():
            items = tuple(mapping.items())
            text = self._by_content.get(items)
            if text is None:
                text = self._by_content[items] = dump_json(
                    dict(items), f"labels of usage metric {metric_key}"
                )
            by_id[key] = text
        return list(map(by_id.__getitem__, ids))
