"""The usage step over a range: the next date's queries are in flight while a date is stored.

The equivalence with date-by-date fetching is proved end to end through Dagster with a
real Prometheus (``test_faults_prometheus_midrun.py``, ``test_plugins_sample_org.py``);
this file pins the ordering and the failure rule of ``steps.fetch_usage_dates`` itself,
on a real tenant store, with a metrics source that records what it is asked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from chargeback_pipeline import steps
from chargeback_pipeline.models import MetricQuery, MetricRow
from chargeback_pipeline.storage import TenantDatabase, open_tenant_db
from tests.metrics_fixtures import RecordedMetrics
from tests.test_storage_support import D1, ECO, T1, TENANT, line

DATES = [D1 + timedelta(days=i) for i in range(3)]
QUERY = MetricQuery("bytes_in", "sum by (principal_id) (bytes_in{})", ("principal_id",))
WAIT_S = 5.0


class RecordingSource(RecordedMetrics):
    """One row per date (its value the day of the month); ``started[d]`` is set when the
    query of date ``d`` begins."""

    def __init__(self) -> None:
        labels = {"principal_id": "sa-1"}
        rows = [
            MetricRow(T1 + timedelta(days=i), QUERY.key, Decimal(d.day), labels) for i, d in enumerate(DATES)
        ]
        super().__init__({QUERY.key: rows})
        self.started = {d: threading.Event() for d in DATES}

    def query(
        self,
        queries: Sequence[MetricQuery],
        start: datetime,
        end: datetime,
        step: timedelta,
        resource_id_filter: str | None = None,
    ) -> dict[str, list[MetricRow]]:
        self.started[start.date()].set()
        return super().query(queries, start, end, step, resource_id_filter)

    @property
    def asked(self) -> list[date]:
        return [start.date() for _, start, _ in self.calls]


class Handler:
    def get_metrics_for_product_type(self, product_type: str) -> list[MetricQuery]:
        return [QUERY]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[TenantDatabase]:
    with open_tenant_db(tmp_path / "acme.duckdb", ecosystem=ECO, tenant_id=TENANT) as opened:
        for i, d in enumerate(DATES):
            opened.billing.replace_date(d, [line("1.5", ts=T1 + timedelta(days=i))])
        yield opened


def session_for(db: TenantDatabase, source: RecordingSource) -> steps.TenantSession:
    runtime = SimpleNamespace(
        metrics_source=source,
        handler_for=lambda product_type: Handler(),
        granularity_durations={},
        settings_base=SimpleNamespace(metrics_step_seconds=3600),
    )
    config = SimpleNamespace(metrics_prefetch_workers=2)
    return steps.TenantSession(TENANT, cast(Any, config), cast(Any, runtime), db)


def stored_values(db: TenantDatabase) -> dict[date, list[Decimal]]:
    out: dict[date, list[Decimal]] = {}
    for d in DATES:
        groups = db.usage.load_date(d)
        out[d] = [r.value for g in groups.values() for rows in (g.rows or {}).values() for r in rows]
    return out


def test_the_next_date_is_asked_before_a_date_is_stored(
    db: TenantDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = RecordingSource()
    store = db.usage.replace_date
    overlapped: dict[date, bool] = {}

    def replace_date(d: date, groups: Any) -> int:
        following = d + timedelta(days=1)
        if following in source.started:
            # Date-by-date code would ask for `following` only after this store returned.
            overlapped[d] = source.started[following].wait(WAIT_S)
        return store(d, groups)

    monkeypatch.setattr(db.usage, "replace_date", replace_date)
    metadata = steps.fetch_usage_dates(session_for(db, source), DATES)

    assert overlapped == {DATES[0]: True, DATES[1]: True}
    assert source.asked == DATES
    assert list(metadata) == DATES
    assert [m["metric_rows"] for m in metadata.values()] == [1, 1, 1]
    assert stored_values(db) == {d: [Decimal(d.day)] for d in DATES}


def test_a_date_that_fails_to_store_stops_the_step_there(
    db: TenantDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = RecordingSource()
    store = db.usage.replace_date

    def replace_date(d: date, groups: Any) -> int:
        if d == DATES[1]:
            raise OSError("No space left on device")
        return store(d, groups)

    monkeypatch.setattr(db.usage, "replace_date", replace_date)
    with pytest.raises(OSError, match="No space left"):
        steps.fetch_usage_dates(session_for(db, source), DATES)

    # The first date is stored, the failed one and the one after it are not.
    assert stored_values(db) == {DATES[0]: [Decimal(DATES[0].day)], DATES[1]: [], DATES[2]: []}
    # No prefetch thread outlives the step.
    assert not [t for t in threading.enumerate() if t.name.startswith("usage-prefetch")]
