"""Inventory gathering and identity resolution of the seven handlers (spec/confluent-cloud.md §3, §6–§8).

The sample organisation is gathered from the stand-in server into a real tenant
database; resolution runs against that database and the window caches the core
builds, so every lookup path (context or store) is the production one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chargeback_pipeline.models import (
    AllocationContext,
    CostType,
    Identity,
    IdentityResolution,
    IdentitySet,
    MetricRow,
    Resource,
    day_window,
)
from chargeback_pipeline.protocols import ResolveContext, ServiceHandler
from chargeback_pipeline.storage import TenantDatabase, open_tenant_db
from chargeback_plugins.confluent_cloud.billing import ECOSYSTEM
from chargeback_plugins.confluent_cloud.handlers.connector import ConnectorHandler
from chargeback_plugins.confluent_cloud.handlers.flink import FlinkHandler, org_id_from_crn
from chargeback_plugins.confluent_cloud.handlers.ksqldb import KsqldbHandler
from chargeback_plugins.confluent_cloud.plugin import ConfluentCloudPlugin
from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation
from chargeback_plugins.confluent_cloud.standin import StandInServer
from chargeback_plugins.confluent_cloud.storage import CCloudBillingLine, CCloudStorageModule
from tests.ccloud_support import CREDENTIALS, ORG_ID, SAMPLE_ORG, TENANT, plugin_settings

GATHERED_AT = datetime(2026, 3, 9, tzinfo=UTC)
MARCH_1 = date(2026, 3, 1)
POOL = "lfcp-r9yk8"
AXI3P_OWNERS = ["sa-0x88n", "sa-6he96", "sa-a783l", "sa-o2bc0", "sa-ow71r", "u-t0f17"]


@dataclass
class Gathered:
    server: StandInServer
    plugin: ConfluentCloudPlugin
    db: TenantDatabase
    resources: list[Resource]
    identities: list[Identity]
    log: str

    def handler(self, service_type: str) -> ServiceHandler:
        return self.plugin.get_service_handlers()[service_type]

    def context(self, day: date) -> ResolveContext:
        """The caches the core builds for a daily window (plugin-system.md §6)."""
        start, end = day_window(day)
        view = self.db.read_view()
        types = sorted(
            {t for h in self.plugin.get_service_handlers().values() for t in h.gathered_resource_types}
        )
        resources = {r.resource_id: r for r in view.resources.find_by_period(start, end, types)}
        people = IdentitySet(
            i for i in view.identities.find_by_period(start, end) if i.identity_type != "system"
        )
        return ResolveContext(cached_identities=people, cached_resources=resources)

    def resolve(
        self,
        service_type: str,
        resource_id: str,
        day: date = MARCH_1,
        metrics: dict[str, list[MetricRow]] | None = None,
        use_context: bool = True,
    ) -> IdentityResolution:
        start, end = day_window(day)
        return self.handler(service_type).resolve_identities(
            TENANT,
            resource_id,
            start,
            end - start,
            metrics,
            self.db.read_view(),
            self.context(day) if use_context else None,
        )


@pytest.fixture(scope="module")
def gathered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gathered]:
    caplog_handler = _ListHandler()
    logging.getLogger("chargeback_plugins").addHandler(caplog_handler)
    logging.getLogger("chargeback_plugins").setLevel(logging.INFO)
    organisation = RecordedOrganisation.from_dir(SAMPLE_ORG)
    path = tmp_path_factory.mktemp("handlers") / "ccloud.duckdb"
    with (
        StandInServer(organisation, credentials=CREDENTIALS) as server,
        open_tenant_db(
            path, ecosystem=ECOSYSTEM, tenant_id=TENANT, storage_module=CCloudStorageModule()
        ) as db,
    ):
        plugin = ConfluentCloudPlugin()
        plugin.initialize(plugin_settings(server.url))
        shared = plugin.build_shared_context(TENANT)
        resources: list[Resource] = []
        identities: list[Identity] = []
        for handler in plugin.get_service_handlers().values():
            resources.extend(handler.gather_resources(TENANT, db.read_view(), shared))
            identities.extend(handler.gather_identities(TENANT, db.read_view()))
        with db.transaction():
            db.resources.upsert_many(resources, GATHERED_AT)
            db.identities.upsert_many(identities, GATHERED_AT)
        try:
            yield Gathered(server, plugin, db, resources, identities, "\n".join(caplog_handler.messages))
        finally:
            plugin.close()
            logging.getLogger("chargeback_plugins").removeHandler(caplog_handler)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.getMessage()}")


def by_id(items: list[Any], attr: str = "resource_id") -> dict[str, Any]:
    return {getattr(x, attr): x for x in items}


# --- gathering ----------------------------------------------------------------------------------


def test_one_gather_calls_the_endpoints_in_the_specified_order(gathered: Gathered) -> None:
    paths = gathered.server.paths()
    host = "/__host/flink.us-east-1.aws.confluent.cloud"
    flink = f"{host}/sql/v1/organizations/{ORG_ID}/environments/env-ttjvt/statements"
    assert paths == [
        "/org/v2/environments",
        "/cmk/v2/clusters",
        "/cmk/v2/clusters",
        "/iam/v2/service-accounts",
        "/iam/v2/users",
        "/iam/v2/api-keys",
        "/iam/v2/identity-providers",
        "/iam/v2/identity-providers/op-yha1z/identity-pools",
        "/srcm/v3/clusters",
        "/srcm/v3/clusters",
        # per (env, cluster) in the order the API listed environments, then clusters
        "/connect/v1/environments/env-ttjvt/clusters/lkc-e0v2i/connectors",
        "/connect/v1/environments/env-9svye/clusters/lkc-axi3p/connectors",
        "/connect/v1/environments/env-9svye/clusters/lkc-g3tys/connectors",
        "/ksqldbcm/v2/clusters",
        "/ksqldbcm/v2/clusters",
        "/fcpm/v2/compute-pools",
        "/fcpm/v2/compute-pools",
        flink,
    ]
    envs = [r.params.get("environment") for r in gathered.server.requests if r.path == "/cmk/v2/clusters"]
    assert envs == ["env-ttjvt", "env-9svye"]  # the order of /org/v2/environments
    sizes = {r.path: r.params.get("page_size") for r in gathered.server.requests}
    assert sizes["/srcm/v3/clusters"] == "50" and sizes["/ksqldbcm/v2/clusters"] == "100"
    assert sizes["/iam/v2/api-keys"] == "100" and sizes["/fcpm/v2/compute-pools"] == "50"
    assert sizes[flink] == "50" and sizes["/org/v2/environments"] == "99"
    connectors = [r for r in gathered.server.requests if r.path.startswith("/connect/")]
    assert all(r.params == {"expand": "info,status,id"} for r in connectors)
    assert all(r.authorized for r in gathered.server.requests)


def test_gathered_counts_match_the_manifest(gathered: Gathered) -> None:
    types = [r.resource_type for r in gathered.resources]
    assert {t: types.count(t) for t in set(types)} == {
        "environment": 2,
        "kafka_cluster": 3,
        "schema_registry": 2,
        "connector": 3,
        "ksqldb_cluster": 1,
        "flink_compute_pool": 1,  # the eu-west-1 pool has no flink[] credentials
        "flink_statement": 3,
    }
    kinds = [i.identity_type for i in gathered.identities]
    assert {t: kinds.count(t) for t in set(kinds)} == {
        "service_account": 12,
        "user": 3,
        "api_key": 19,
        "identity_provider": 1,
        "identity_pool": 1,
    }
    assert (
        "INFO tenant ccloud-small: Flink compute pool lfcp-r6azq (aws eu-west-1) has no flink[] credentials"
        in (gathered.log)
    )


def test_resource_fields(gathered: Gathered) -> None:
    resources = by_id(gathered.resources)
    cluster = resources["lkc-g3tys"]
    assert (cluster.resource_type, cluster.parent_id, cluster.display_name) == (
        "kafka_cluster",
        "env-9svye",
        cluster.display_name,
    )
    assert cluster.created_at == datetime(2026, 3, 4, 14, tzinfo=UTC)
    assert cluster.metadata["cloud"] == "azure" and cluster.metadata["provider_cloud"] == "AZURE"
    assert cluster.metadata["region"] == "eastus" and "bootstrap_endpoint" in cluster.metadata
    registry = resources["lsrc-ab0h1"]
    assert registry.metadata["crn"].endswith("schema-registry=lsrc-ab0h1")
    assert registry.metadata["cloud"] == "aws" and registry.metadata["provider_cloud"] == "AWS"
    masked = resources["lcc-v21tj"]  # no kafka.auth.mode, key "****…": mode inferred from the key
    assert masked.metadata == {
        "kafka_auth_mode": "KAFKA_API_KEY",
        "connector_class": "DatagenSource",
        "env_id": "env-9svye",
        "kafka_api_key": "****************",
    }
    assert (masked.parent_id, masked.created_at, masked.display_name) == ("lkc-g3tys", None, "connector-002")
    assert resources["lcc-gjg9p"].metadata["kafka_service_account_id"] == "sa-b29kp"
    ksql = resources["lksqlc-qm8xv"]
    assert (ksql.owner_id, ksql.metadata) == ("u-e52rh", {"kafka_cluster_id": "lkc-e0v2i", "csu_count": 4})
    pool = resources[POOL]
    assert pool.metadata["is_allocatable"] is True and pool.metadata["region"] == "us-east-1"
    statements = [r for r in gathered.resources if r.resource_type == "flink_statement"]
    assert {
        (s.display_name, s.owner_id, s.metadata["compute_pool_id"], s.metadata["is_stopped"])
        for s in statements
    } == {
        ("stmt-pool-0-0", "sa-b29kp", POOL, False),
        ("stmt-pool-0-1", "u-t0f17", POOL, False),
        ("stmt-pool-0-2", "sa-q45b7", POOL, True),
    }


def test_identity_fields(gathered: Gathered) -> None:
    identities = by_id(gathered.identities, "identity_id")
    key = identities["ECXSOLZZMX2RCGR0"]
    assert key.identity_type == "api_key"
    assert key.metadata == {"owner_id": "sa-a783l", "resource_id": "lkc-axi3p"}
    assert key.display_name == "key for sa-a783l on lkc-axi3p"
    assert identities["sa-mu6r1"].created_at == datetime(2026, 3, 5, 9, tzinfo=UTC)
    assert identities["u-e52rh"].metadata["crn"].endswith("/user=u-e52rh")
    assert identities["pool-rten8"].metadata["provider_id"] == "op-yha1z"
    assert "sa-a783l" not in identities  # deleted, but still owns a key


# --- Kafka / Schema Registry resolution -----------------------------------------------------------


def rows(key: str, *points: tuple[str, str]) -> list[MetricRow]:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    return [MetricRow(at, key, Decimal(v), {"kafka_id": "lkc-axi3p", "principal_id": p}) for p, v in points]


@pytest.mark.parametrize("use_context", [True, False])
def test_kafka_resource_active_are_the_owners_of_keys_scoped_to_the_cluster(
    gathered: Gathered, use_context: bool
) -> None:
    resolution = gathered.resolve("kafka", "lkc-axi3p", use_context=use_context)
    assert sorted(resolution.resource_active.ids()) == AXI3P_OWNERS
    gone = resolution.resource_active.get("sa-a783l")
    assert gone is not None and (gone.identity_type, gone.display_name) == (
        "service_account",
        "Unknown service_account",
    )
    assert not resolution.metrics_derived and not resolution.tenant_period
    assert resolution.context == {"api_key_to_owner": {}}


def test_kafka_keys_created_later_are_not_candidates_yet(gathered: Gathered) -> None:
    # lkc-g3tys's keys were created on 2026-03-04 at 15:00/16:00.
    assert not gathered.resolve("kafka", "lkc-g3tys", day=date(2026, 3, 3)).resource_active
    assert len(gathered.resolve("kafka", "lkc-g3tys", day=date(2026, 3, 4)).resource_active) == 4


def test_kafka_metrics_principals_map_keys_to_owners_and_unknown_ids_to_sentinels(gathered: Gathered) -> None:
    metrics = {
        "bytes_in": rows("bytes_in", ("UUE97WR2831LP4S8", "10"), ("sa-x2wsw", "0"), ("", "99")),
        "bytes_out": rows("bytes_out", ("pool-rten8", "5"), ("u-qbkn8", "1"), ("TM6K60G7VEFC8M47", "2")),
    }
    resolution = gathered.resolve("kafka", "lkc-axi3p", metrics=metrics)
    derived = resolution.metrics_derived
    assert sorted(derived.ids()) == ["pool-rten8", "sa-6he96", "sa-x2wsw", "u-qbkn8"]
    assert derived.get("sa-x2wsw").display_name == "Unknown service_account"  # type: ignore[union-attr]
    assert derived.get("pool-rten8").identity_type == "identity_pool"  # type: ignore[union-attr]
    assert resolution.context["api_key_to_owner"] == {
        "UUE97WR2831LP4S8": "sa-6he96",
        "TM6K60G7VEFC8M47": "u-qbkn8",
    }


def test_an_api_key_principal_without_owner_is_dropped(gathered: Gathered) -> None:
    context = gathered.context(MARCH_1)
    people = IdentitySet(context["cached_identities"])
    people.add(
        Identity(
            ECOSYSTEM, TENANT, "ORPHANKEY", "api_key", metadata={"owner_id": None, "resource_id": "lkc-axi3p"}
        )
    )
    start, end = day_window(MARCH_1)
    resolution = gathered.handler("kafka").resolve_identities(
        TENANT,
        "lkc-axi3p",
        start,
        end - start,
        {"bytes_in": rows("bytes_in", ("ORPHANKEY", "5"))},
        gathered.db.read_view(),
        ResolveContext(cached_identities=people, cached_resources=context["cached_resources"]),
    )
    assert not resolution.metrics_derived
    assert sorted(resolution.resource_active.ids()) == AXI3P_OWNERS


def test_schema_registry_lines_resolve_to_registry_key_owners(gathered: Gathered) -> None:
    resolution = gathered.resolve("schema_registry", "lsrc-ab0h1")
    assert sorted(resolution.resource_active.ids()) == ["sa-b29kp", "sa-ow71r"]
    assert gathered.handler("schema_registry").get_metrics_for_product_type("SCHEMA_REGISTRY") == []


# --- connectors -------------------------------------------------------------------------------------


def connector(resource_id: str, **metadata: Any) -> Resource:
    return Resource(ECOSYSTEM, TENANT, resource_id, "connector", metadata=metadata)


@pytest.mark.parametrize(
    ("metadata", "identity", "kind", "display"),
    [
        (None, "connector_credentials_masked", "connector_credentials", "Connector Credentials Masked"),
        (
            {"kafka_auth_mode": "SERVICE_ACCOUNT", "kafka_service_account_id": "sa-b29kp"},
            "sa-b29kp",
            "service_account",
            None,
        ),
        (
            {"kafka_auth_mode": "SERVICE_ACCOUNT", "kafka_service_account_id": "sa-gone1"},
            "sa-gone1",
            "service_account",
            "Unknown service_account",
        ),
        (
            {"kafka_auth_mode": "SERVICE_ACCOUNT"},
            "connector_credentials_unknown",
            "connector_credentials",
            "Connector Credentials Unknown",
        ),
        (
            {"kafka_auth_mode": "KAFKA_API_KEY", "kafka_api_key": "*****"},
            "connector_api_key_masked",
            "connector_credentials",
            "Connector Credentials Masked",
        ),
        (
            {"kafka_auth_mode": "KAFKA_API_KEY", "kafka_api_key": "NOSUCHKEY"},
            "connector_api_key_not_found",
            "connector_credentials",
            "Connector Credentials Unknown",
        ),
        (
            {"kafka_auth_mode": "KAFKA_API_KEY", "kafka_api_key": "UUE97WR2831LP4S8"},
            "sa-6he96",
            "service_account",
            None,
        ),
        (
            {"kafka_auth_mode": "KAFKA_API_KEY", "kafka_api_key": "ECXSOLZZMX2RCGR0"},
            "sa-a783l",
            "service_account",
            "Unknown service_account",
        ),
        (
            {"kafka_auth_mode": "KAFKA_API_KEY", "kafka_api_key": ""},
            "connector_credentials_unknown",
            "connector_credentials",
            "Connector Credentials Unknown",
        ),
        ({"kafka_auth_mode": "UNKNOWN"}, "lcc-test", "connector_credentials", None),
        ({"kafka_auth_mode": "OAUTH"}, "lcc-test", "connector_credentials", None),
    ],
)
def test_connector_credentials_table(
    gathered: Gathered, metadata: dict[str, Any] | None, identity: str, kind: str, display: str | None
) -> None:
    context = gathered.context(MARCH_1)
    resources = dict(context["cached_resources"])
    if metadata is not None:
        resources["lcc-test"] = connector("lcc-test", **metadata)
    handler = gathered.handler("connector")
    start, end = day_window(MARCH_1)
    resolution = handler.resolve_identities(
        TENANT,
        "lcc-test",
        start,
        end - start,
        None,
        gathered.db.read_view(),
        ResolveContext(cached_identities=context["cached_identities"], cached_resources=resources),
    )
    (found,) = list(resolution.resource_active)
    assert (found.identity_id, found.identity_type) == (identity, kind)
    if display is not None:
        assert found.display_name == display


def test_connectors_of_the_sample(gathered: Gathered) -> None:
    assert gathered.resolve("connector", "lcc-3m6eb").resource_active.ids() == {"sa-6he96"}
    assert gathered.resolve("connector", "lcc-v21tj").resource_active.ids() == {"connector_api_key_masked"}
    assert gathered.resolve("connector", "lcc-gjg9p").resource_active.ids() == {"sa-b29kp"}
    # Billed but never listed (deleted before the gather): not in the store.
    assert gathered.resolve("connector", "lcc-6c90a").resource_active.ids() == {
        "connector_credentials_masked"
    }
    # Without context the store is queried, lifecycle ignored.
    assert gathered.resolve("connector", "lcc-3m6eb", use_context=False).resource_active.ids() == {"sa-6he96"}


# --- ksqlDB ---------------------------------------------------------------------------------------


def test_ksqldb_owner_table(gathered: Gathered) -> None:
    handler = gathered.handler("ksqldb")
    assert isinstance(handler, KsqldbHandler)
    assert gathered.resolve("ksqldb", "lksqlc-qm8xv").resource_active.ids() == {"u-e52rh"}
    (deleted,) = list(gathered.resolve("ksqldb", "lksqlc-gone").resource_active)
    assert (deleted.identity_id, deleted.identity_type, deleted.display_name) == (
        "ksqldb_deleted_when_calc_started",
        "ksqldb_credentials",
        "ksqlDB Deleted When Calculation Started",
    )
    context = gathered.context(MARCH_1)
    start, end = day_window(MARCH_1)
    for owner, expected in [
        (None, ("ksqldb_owner_unknown", "ksqldb_credentials")),
        ("ksqldb_owner_unknown", ("ksqldb_owner_unknown", "unknown")),
        ("sa-elsewhere", ("sa-elsewhere", "service_account")),
    ]:
        resources = {"lksqlc-x": Resource(ECOSYSTEM, TENANT, "lksqlc-x", "ksqldb_cluster", owner_id=owner)}
        resolution = handler.resolve_identities(
            TENANT,
            "lksqlc-x",
            start,
            end - start,
            None,
            gathered.db.read_view(),
            ResolveContext(cached_identities=context["cached_identities"], cached_resources=resources),
        )
        (found,) = list(resolution.resource_active)
        assert (found.identity_id, found.identity_type) == expected


# --- Flink --------------------------------------------------------------------------------------


def cfu(key: str, *points: tuple[str, str], pool: str = POOL) -> list[MetricRow]:
    at = datetime(2026, 3, 1, 5, tzinfo=UTC)
    return [
        MetricRow(at, key, Decimal(v), {"compute_pool_id": pool, "flink_statement_name": name})
        for name, v in points
    ]


def test_flink_weights_from_primary_cfu_metrics(gathered: Gathered) -> None:
    metrics = {
        "flink_cfu_primary": cfu(
            "flink_cfu_primary",
            ("stmt-pool-0-0", "1.5"),
            ("stmt-pool-0-0", "0.5"),
            ("stmt-pool-0-2", "3"),
            ("orphan", "0.25"),
            ("stmt-pool-0-1", "0"),
            ("", "7"),
        )
        + cfu("flink_cfu_primary", ("stmt-pool-0-1", "9"), pool="lfcp-other"),
        "flink_cfu_fallback": cfu("flink_cfu_fallback", ("stmt-pool-0-1", "100")),
    }
    resolution = gathered.resolve("flink", POOL, metrics=metrics)
    assert resolution.context == {
        "stmt_owner_cfu": {
            "sa-b29kp": Decimal("2.0"),
            "sa-q45b7": Decimal(3),
            "flink_stmt_owner_unknown": Decimal("0.25"),
        },
        "stmt_owner_weights_source": "metrics",
    }
    unknown = resolution.resource_active.get("flink_stmt_owner_unknown")
    assert unknown is not None and unknown.identity_type == "flink_statement_owner"
    assert unknown.display_name == "Flink Statement Owner Unknown"


def test_flink_fallback_metric_is_used_only_when_the_primary_is_empty(gathered: Gathered) -> None:
    metrics = {
        "flink_cfu_primary": [],
        "flink_cfu_fallback": cfu("flink_cfu_fallback", ("stmt-pool-0-1", "4")),
    }
    resolution = gathered.resolve("flink", POOL, metrics=metrics)
    assert resolution.context["stmt_owner_cfu"] == {"u-t0f17": Decimal(4)}


def test_flink_without_metrics_counts_running_statements(gathered: Gathered) -> None:
    empty: dict[str, list[MetricRow]] = {"flink_cfu_primary": [], "flink_cfu_fallback": []}
    for metrics in (None, empty):
        resolution = gathered.resolve("flink", POOL, metrics=metrics)
        assert resolution.context == {
            "stmt_owner_cfu": {"sa-b29kp": Decimal(1), "u-t0f17": Decimal(1)},  # stmt-pool-0-2 is COMPLETED
            "stmt_owner_weights_source": "statement_count",
        }
        assert sorted(resolution.resource_active.ids()) == ["sa-b29kp", "u-t0f17"]
    store_only = gathered.resolve("flink", POOL, use_context=False)
    assert store_only.context["stmt_owner_cfu"] == {"sa-b29kp": Decimal(1), "u-t0f17": Decimal(1)}


def test_flink_pool_without_statements_resolves_to_nobody(gathered: Gathered) -> None:
    resolution = gathered.resolve("flink", "lfcp-r6azq")
    assert not resolution.resource_active and resolution.context == {}


def test_flink_rows_from_statement_counts_are_shared(gathered: Gathered) -> None:
    resolution = gathered.resolve("flink", POOL)
    resolution.tenant_period = gathered.context(MARCH_1)["cached_identities"]
    line = CCloudBillingLine(
        ECOSYSTEM,
        TENANT,
        datetime(2026, 3, 1, tzinfo=UTC),
        POOL,
        "FLINK",
        "FLINK_NUM_CFU",
        Decimal(1),
        Decimal(1),
        Decimal("10.0000"),
        env_id="env-ttjvt",
    )
    ctx = AllocationContext(line.timestamp, line, resolution, Decimal("10.0000"), None)
    result = gathered.handler("flink").get_allocator("FLINK_NUM_CFU")(ctx)
    assert [
        (r.identity_id, r.amount, r.cost_type, r.allocation_method, r.allocation_detail) for r in result.rows
    ] == [
        ("sa-b29kp", Decimal("5.0000"), CostType.SHARED, "usage_ratio", "no_metrics_located"),
        ("u-t0f17", Decimal("5.0000"), CostType.SHARED, "usage_ratio", "no_metrics_located"),
    ]
    failed = AllocationContext(
        line.timestamp, line, resolution, Decimal("10.0000"), None, metrics_fetch_failed=True
    )
    result = gathered.handler("flink").get_allocator("FLINK_NUM_CFU")(failed)
    assert {(r.allocation_method, r.allocation_detail) for r in result.rows} == {
        ("even_split", "no_metrics_located")
    }


def test_flink_gather_fails_on_a_pool_crn_without_organization_after_yielding_pools(
    tmp_path: Path,
) -> None:
    organisation = RecordedOrganisation.from_dir(SAMPLE_ORG)
    pools = organisation.responses["/fcpm/v2/compute-pools?environment=env-ttjvt"]
    pools["data"][0]["metadata"]["resource_name"] = (
        "crn://confluent.cloud/environment=env-ttjvt/compute-pool=lfcp-r9yk8"
    )
    pools["data"].append({"id": "lfcp-noregion", "spec": {"cloud": "AWS", "region": ""}, "metadata": {}})
    with StandInServer(organisation, credentials=CREDENTIALS) as server:
        plugin = ConfluentCloudPlugin()
        plugin.initialize(plugin_settings(server.url))
        try:
            handler = plugin.get_service_handlers()["flink"]
            assert isinstance(handler, FlinkHandler)
            shared = plugin.build_shared_context(TENANT)
            yielded: list[Resource] = []
            with pytest.raises(ValueError, match="no organization= segment"):
                for resource in handler.gather_resources(TENANT, None, shared):  # type: ignore[arg-type]
                    yielded.append(resource)
        finally:
            plugin.close()
    assert [r.resource_id for r in yielded] == [POOL]


def test_org_id_from_crn() -> None:
    assert org_id_from_crn(f"crn://confluent.cloud/organization={ORG_ID}/environment=env-1") == ORG_ID
    with pytest.raises(ValueError):
        org_id_from_crn(None)


# --- dispatch tables ----------------------------------------------------------------------------------

SPEC_PRODUCT_TYPES = {
    "kafka": {
        "KAFKA_NUM_CKU",
        "KAFKA_NUM_CKUS",
        "KAFKA_NETWORK_READ",
        "KAFKA_NETWORK_WRITE",
        "KAFKA_PARTITION",
        "KAFKA_BASE",
        "KAFKA_STORAGE",
    },
    "schema_registry": {"SCHEMA_REGISTRY", "GOVERNANCE_BASE", "NUM_RULES"},
    "connector": {
        "CONNECT_NUM_TASKS",
        "CONNECT_THROUGHPUT",
        "CUSTOM_CONNECT_NUM_TASKS",
        "CUSTOM_CONNECT_THROUGHPUT",
        "CONNECT_CAPACITY",
        "CUSTOM_CONNECT_PLUGIN",
    },
    "ksqldb": {"KSQL_NUM_CSU", "KSQL_NUM_CSUS"},
    "flink": {"FLINK_NUM_CFU", "FLINK_NUM_CFUS"},
    "org_wide": {"AUDIT_LOG_READ", "SUPPORT"},
    "default": {
        "TABLEFLOW_DATA_PROCESSED",
        "TABLEFLOW_NUM_TOPICS",
        "TABLEFLOW_STORAGE",
        "CLUSTER_LINKING_PER_LINK",
        "CLUSTER_LINKING_READ",
        "CLUSTER_LINKING_WRITE",
    },
}


def test_handlers_product_types_and_unknown_types(gathered: Gathered) -> None:
    handlers = gathered.plugin.get_service_handlers()
    assert list(handlers) == [
        "kafka",
        "schema_registry",
        "connector",
        "ksqldb",
        "flink",
        "org_wide",
        "default",
    ]
    assert {name: set(h.handles_product_types) for name, h in handlers.items()} == SPEC_PRODUCT_TYPES
    for name, handler in handlers.items():
        with pytest.raises(ValueError, match="Unknown product type: KAFKA_REST_PRODUCE"):
            handler.get_allocator("KAFKA_REST_PRODUCE")
        other = next(iter(SPEC_PRODUCT_TYPES["flink" if name != "flink" else "kafka"]))
        with pytest.raises(ValueError, match=f"Unknown product type: {other}"):
            handler.get_allocator(other)
    assert isinstance(handlers["connector"], ConnectorHandler)


@pytest.mark.parametrize(
    ("product_type", "keys"),
    [
        ("KAFKA_NETWORK_READ", ["bytes_out"]),
        ("KAFKA_NETWORK_WRITE", ["bytes_in"]),
        ("KAFKA_NUM_CKU", ["bytes_in", "bytes_out"]),
        ("KAFKA_NUM_CKUS", ["bytes_in", "bytes_out"]),
        ("KAFKA_PARTITION", []),
        ("KAFKA_BASE", []),
        ("FLINK_NUM_CFU", ["flink_cfu_primary", "flink_cfu_fallback"]),
    ],
)
def test_metric_queries_per_product_type(gathered: Gathered, product_type: str, keys: list[str]) -> None:
    handler = gathered.handler("flink" if product_type.startswith("FLINK") else "kafka")
    queries = handler.get_metrics_for_product_type(product_type)
    assert [q.key for q in queries] == keys
    for query in queries:
        assert "{}" in query.query_expression
        assert query.resource_label in ("kafka_id", "compute_pool_id")


def test_fallback_allocator_sends_unknown_types_to_unallocated(
    gathered: Gathered, caplog: pytest.LogCaptureFixture
) -> None:
    line = CCloudBillingLine(
        ECOSYSTEM,
        TENANT,
        datetime(2026, 3, 2, tzinfo=UTC),
        "lkc-e0v2i",
        "QUANTUM_STREAMS",
        "QUANTUM_STREAMS_QUBIT_HOURS",
        Decimal(1),
        Decimal(1),
        Decimal("4.2000"),
        env_id="env-ttjvt",
    )
    fallback = gathered.plugin.get_fallback_allocator()
    assert fallback is not None
    with caplog.at_level(logging.WARNING):
        result = fallback(AllocationContext(line.timestamp, line, IdentityResolution(), Decimal("4.2000")))
    ((who, amount, ctype, method, detail),) = [
        (r.identity_id, r.amount, r.cost_type, r.allocation_method, r.allocation_detail) for r in result.rows
    ]
    assert (who, amount, ctype, method, detail) == (
        "UNALLOCATED",
        Decimal("4.2000"),
        CostType.SHARED,
        "unknown",
        "UNKNOWN_PRODUCT_TYPE",
    )
    message = caplog.records[-1].getMessage()
    assert caplog.records[-1].levelname == "WARNING"
    for part in (TENANT, "QUANTUM_STREAMS_QUBIT_HOURS", "lkc-e0v2i", "2026-03-02"):
        assert part in message


def test_lines_keep_env_id_in_the_storage_key() -> None:
    module = CCloudStorageModule()
    assert module.extra_key_fields == ("env_id",)
    fields: dict[str, Any] = {
        "ecosystem": ECOSYSTEM,
        "tenant_id": TENANT,
        "timestamp": datetime(2026, 3, 2, tzinfo=UTC),
        "resource_id": "lkc-1",
        "product_category": "KAFKA",
        "product_type": "KAFKA_BASE",
        "quantity": Decimal(1),
        "unit_price": Decimal(1),
        "total_cost": Decimal(1),
        "currency": "USD",
        "granularity": "daily",
        "metadata": {},
    }
    assert CCloudBillingLine(**fields).env_id == ""
    line = module.make_billing_line({**fields, "env_id": "env-1"})
    assert isinstance(line, CCloudBillingLine) and line.env_id == "env-1"
