from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chargeback_pipeline.models import Identity, Resource, ResourceStatus
from chargeback_pipeline.protocols import TenantStore
from chargeback_pipeline.storage import TenantDatabase, open_tenant_db
from tests.test_storage_support import ECO, TENANT

S = datetime(2026, 3, 1, tzinfo=UTC)
E = S + timedelta(days=1)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[TenantDatabase]:
    with open_tenant_db(tmp_path / "acme.duckdb", ecosystem=ECO, tenant_id=TENANT) as opened:
        yield opened


def res(rid: str, rtype: str = "kafka_cluster", **kw: object) -> Resource:
    return Resource(ecosystem=ECO, tenant_id=TENANT, resource_id=rid, resource_type=rtype, **kw)  # type: ignore[arg-type]


def ident(iid: str, itype: str = "service_account", **kw: object) -> Identity:
    return Identity(ecosystem=ECO, tenant_id=TENANT, identity_id=iid, identity_type=itype, **kw)  # type: ignore[arg-type]


def boundary_resources() -> list[Resource]:
    """One resource per lifecycle edge case around the window [S, E)."""
    return [
        res("always"),
        res("created_at_start", created_at=S),
        res("created_before_end", created_at=E - timedelta(seconds=1)),
        res("created_at_end", created_at=E),
        res("deleted_at_start", deleted_at=S),
        res("deleted_after_start", deleted_at=S + timedelta(seconds=1)),
        res("deleted_at_end", deleted_at=E),
        res("before_window", created_at=S - timedelta(days=2), deleted_at=S - timedelta(days=1)),
    ]


def test_find_by_period_uses_strict_start_and_exclusive_end(db: TenantDatabase) -> None:
    db.resources.upsert_many(boundary_resources())
    found = [r.resource_id for r in db.resources.find_by_period(S, E)]
    assert found == [
        "always",
        "created_at_start",
        "created_before_end",
        "deleted_after_start",
        "deleted_at_end",
    ]


def test_find_active_at_includes_created_at_t_and_excludes_deleted_at_t(db: TenantDatabase) -> None:
    db.resources.upsert_many(boundary_resources())
    assert [r.resource_id for r in db.resources.find_active_at(S)] == [
        "always",
        "created_at_start",
        "deleted_after_start",
        "deleted_at_end",
    ]


def test_type_filter_string_list_and_empty_list(db: TenantDatabase) -> None:
    db.resources.upsert_many([res("c1"), res("t1", "topic"), res("b1", "broker")])
    assert [r.resource_id for r in db.resources.find_active_at(S, "topic")] == ["t1"]
    assert [r.resource_id for r in db.resources.find_active_at(S, ["topic", "broker"])] == ["b1", "t1"]
    assert db.resources.find_active_at(S, []) == []
    assert db.resources.find_by_period(S, E, []) == []
    assert [r.resource_id for r in db.resources.find_by_period(S, E, ("kafka_cluster",))] == ["c1"]


def test_metadata_filter_is_key_value_equality(db: TenantDatabase) -> None:
    db.resources.upsert_many(
        [
            res("a", metadata={"env": "e1", "cloud": "aws"}),
            res("b", metadata={"env": "e2", "cloud": "aws"}),
            res("c", metadata={"cloud": "aws"}),
        ]
    )
    assert [r.resource_id for r in db.resources.find_by_period(S, E, metadata_filter={"env": "e1"})] == ["a"]
    assert [r.resource_id for r in db.resources.find_by_period(S, E, None, {"cloud": "aws"})] == [
        "a",
        "b",
        "c",
    ]
    assert db.resources.find_by_period(S, E, None, {"env": None}) == []


def test_round_trip_of_every_resource_field(db: TenantDatabase) -> None:
    original = res(
        "lkc-1",
        display_name="orders",
        parent_id="env-1",
        owner_id="sa-1",
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC),
        metadata={"cloud": "aws", "region": "eu-west-1", "nested": {"n": 1}},
    )
    seen = datetime(2026, 3, 1, 6, tzinfo=UTC)
    db.resources.upsert_many([original], seen)
    stored = db.resources.get("lkc-1")
    assert stored == res(
        "lkc-1",
        display_name="orders",
        parent_id="env-1",
        owner_id="sa-1",
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC),
        last_seen_at=seen,
        metadata={"cloud": "aws", "region": "eu-west-1", "nested": {"n": 1}},
    )
    cloud_region = db.conn.execute(
        "SELECT cloud, region FROM resources WHERE resource_id = 'lkc-1'"
    ).fetchone()
    assert cloud_region == ("aws", "eu-west-1")


def test_mark_deleted_then_gather_revives(db: TenantDatabase) -> None:
    db.resources.upsert_many([res("a", created_at=S - timedelta(days=5)), res("b")])
    at = S + timedelta(hours=3)
    assert db.resources.mark_deleted(["a", "missing"], at) == 1
    deleted = db.resources.get("a")
    assert deleted is not None
    assert (deleted.status, deleted.deleted_at) == (ResourceStatus.DELETED, at)
    assert db.resources.mark_deleted(["a"], at + timedelta(days=1)) == 0
    assert db.resources.get("a").deleted_at == at  # type: ignore[union-attr]
    assert [r.resource_id for r in db.resources.find_active_at(at)] == ["b"]
    db.resources.upsert_many([res("a", created_at=None)], at + timedelta(days=2))
    revived = db.resources.get("a")
    assert revived is not None
    assert (revived.status, revived.deleted_at, revived.created_at) == (ResourceStatus.ACTIVE, None, None)


def test_duplicate_ids_in_one_upsert_last_wins(db: TenantDatabase) -> None:
    assert db.resources.upsert_many([res("a", display_name="one"), res("a", display_name="two")]) == 1
    assert db.resources.get("a").display_name == "two"  # type: ignore[union-attr]


def test_naive_datetimes_are_refused(db: TenantDatabase) -> None:
    with pytest.raises(ValueError, match="resource a created_at must be timezone-aware"):
        db.resources.upsert_many([res("a", created_at=datetime(2026, 3, 1))])
    with pytest.raises(ValueError, match="timezone-aware"):
        db.resources.find_active_at(datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        db.identities.find_by_period(datetime(2026, 3, 1), E)


def test_unallocated_exists_and_system_type_can_be_excluded(db: TenantDatabase) -> None:
    db.identities.upsert_many([ident("sa-2"), ident("u-1", "user", created_at=S + timedelta(hours=1))])
    assert [i.identity_id for i in db.identities.find_active_at(S)] == ["UNALLOCATED", "sa-2"]
    assert [i.identity_id for i in db.identities.find_by_period(S, E)] == ["UNALLOCATED", "sa-2", "u-1"]
    assert [i.identity_id for i in db.identities.find_by_period(S, E, include_system=False)] == [
        "sa-2",
        "u-1",
    ]
    assert [i.identity_id for i in db.identities.find_active_at(S, ["user"])] == []
    assert [i.identity_id for i in db.identities.find_by_period(S, E, ["user"])] == ["u-1"]


def test_system_identity_is_never_marked_deleted(db: TenantDatabase) -> None:
    db.identities.upsert_many([ident("sa-1")])
    assert db.identities.mark_deleted(["UNALLOCATED", "sa-1"], S) == 1
    assert db.identities.get("UNALLOCATED").deleted_at is None  # type: ignore[union-attr]
    assert db.identities.get("sa-1").is_deleted  # type: ignore[union-attr]


def test_read_view_satisfies_tenant_store_and_has_no_writes(db: TenantDatabase) -> None:
    db.resources.upsert_many([res("a")])
    view = db.read_view()
    assert isinstance(view, TenantStore)
    assert [r.resource_id for r in view.resources.find_by_period(S, E)] == ["a"]
    assert view.identities.get("UNALLOCATED") is not None
    assert view.billing.find_by_date(S.date()) == []
    for repo in (view.resources, view.identities, view.billing):
        assert not any(hasattr(repo, name) for name in ("upsert_many", "mark_deleted", "replace_date"))
