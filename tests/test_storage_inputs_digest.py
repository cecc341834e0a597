"""The calculation-input digest: what a scheduled refresh compares before recalculating a date.

Every stored input the allocation of a date reads must move the digest, nothing else may:
a change the digest misses would keep a stale allocation, a spurious change only costs
a recalculation (the end-to-end skip is tested in test_refresh_schedule.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback_pipeline.models import Identity, MetricRow, Resource
from chargeback_pipeline.storage import TenantDatabase, open_tenant_db
from tests.test_storage_support import D1, ECO, T1, TENANT, line

END = T1 + timedelta(days=1)
SEEN = datetime(2026, 3, 2, 6, tzinfo=UTC)


def resource(**changes: object) -> Resource:
    base = Resource(ECO, TENANT, "lkc-1", "kafka_cluster", display_name="orders", metadata={"tier": "gold"})
    return replace(base, **changes)  # type: ignore[arg-type]


def identity(identity_id: str = "sa-1", **changes: object) -> Identity:
    base = Identity(ECO, TENANT, identity_id, "service_account", display_name="payments")
    return replace(base, **changes)  # type: ignore[arg-type]


def usage(value: str = "10", principal: str = "sa-1") -> dict[tuple[str, datetime, datetime], object]:
    rows = [MetricRow(T1, "bytes_in", Decimal(value), {"principal_id": principal})]
    return {("lkc-1", T1, END): ({"bytes_in": rows}, False)}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[TenantDatabase]:
    with open_tenant_db(tmp_path / "acme.duckdb", ecosystem=ECO, tenant_id=TENANT) as opened:
        opened.billing.replace_date(D1, [line("1.5")])
        opened.resources.upsert_many([resource()], SEEN)
        opened.identities.upsert_many([identity(), identity("sa-2")], SEEN)
        opened.usage.replace_date(D1, usage())
        yield opened


def digest(db: TenantDatabase) -> str:
    return db.calculation_inputs_digest(D1, T1, END)


CHANGES: dict[str, Callable[[TenantDatabase], object]] = {
    "billing amount": lambda db: db.billing.replace_date(D1, [line("1.6")]),
    "billing metadata": lambda db: db.billing.replace_date(D1, [line("1.5", metadata={"note": "x"})]),
    "extra billing line": lambda db: db.billing.replace_date(
        D1, [line("1.5"), line("1", resource_id="lkc-2")]
    ),
    "usage value": lambda db: db.usage.replace_date(D1, usage("11")),
    "usage labels": lambda db: db.usage.replace_date(D1, usage(principal="sa-2")),
    "usage fetch failed": lambda db: db.usage.replace_date(D1, {("lkc-1", T1, END): (None, True)}),
    "resource metadata": lambda db: db.resources.upsert_many([resource(metadata={"tier": "silver"})]),
    "resource owner": lambda db: db.resources.upsert_many([resource(owner_id="sa-2")]),
    "resource deleted in the window": lambda db: db.resources.mark_deleted(
        ["lkc-1"], T1 + timedelta(hours=5)
    ),
    "identity metadata": lambda db: db.identities.upsert_many([identity(metadata={"team": "x"})]),
    "identity name": lambda db: db.identities.upsert_many([identity(display_name="billing")]),
    "identity created in the window": lambda db: db.identities.upsert_many(
        [identity("sa-3", created_at=T1 + timedelta(hours=1))]
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_input_of_the_calculation_moves_the_digest(db: TenantDatabase, change: str) -> None:
    before = digest(db)
    CHANGES[change](db)
    assert digest(db) != before


def test_what_the_calculation_does_not_read_leaves_the_digest(db: TenantDatabase) -> None:
    before = digest(db)
    # A later gather bumps last_seen_at only; rewriting the same inputs changes nothing.
    db.resources.upsert_many([resource()], SEEN + timedelta(hours=1))
    db.identities.upsert_many([identity(), identity("sa-2")], SEEN + timedelta(hours=1))
    db.billing.replace_date(D1, [line("1.5")])
    db.usage.replace_date(D1, usage())
    # Other dates and entities outside the windows are not inputs of D1.
    db.billing.replace_date(D1 + timedelta(days=1), [line("9", ts=END)])
    db.identities.upsert_many([identity("sa-later", created_at=END + timedelta(hours=1))])
    db.identities.upsert_many([identity("sa-gone", deleted_at=T1 - timedelta(days=1))])
    assert digest(db) == before


def test_the_digest_does_not_depend_on_storage_order(tmp_path: Path) -> None:
    digests = []
    for name, order in (("a", ["sa-1", "sa-2"]), ("b", ["sa-2", "sa-1"])):
        with open_tenant_db(tmp_path / f"{name}.duckdb", ecosystem=ECO, tenant_id=TENANT) as db:
            for identity_id in order:
                db.identities.upsert_many([identity(identity_id)], SEEN)
            digests.append(digest(db))
    assert digests[0] == digests[1]


def test_an_empty_text_and_a_missing_one_digest_differently(tmp_path: Path) -> None:
    digests = []
    for name, display_name in (("a", None), ("b", "")):
        with open_tenant_db(tmp_path / f"{name}.duckdb", ecosystem=ECO, tenant_id=TENANT) as db:
            db.identities.upsert_many([identity(display_name=display_name)], SEEN)
            digests.append(digest(db))
    assert digests[0] != digests[1]
