"""The ``prometheus`` emitter (spec/emitters.md §5): exact OpenMetrics text from real
DuckDB storage, aggregation, lookback, the current-state file, atomic replacement,
and both files checked by Prometheus' own tools (``promtool``)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chargeback_pipeline.emitters import EmitterContext, registry
from chargeback_pipeline.emitters.openmetrics import escape_label_value, unix_seconds
from chargeback_pipeline.emitters.prometheus_emitter import (
    PrometheusEmitter,
    make_prometheus_emitter,
    render_history,
    validate_prometheus_params,
)
from chargeback_pipeline.models import BillingLineItem, ChargebackRow, CostType, Identity, Resource
from chargeback_pipeline.storage import TenantDatabase, open_tenant_db
from tests.prometheus_support import require_binary

ECO = "self_managed_kafka"
FEB1, FEB2, MAR1 = date(2026, 2, 1), date(2026, 2, 2), date(2026, 3, 1)
TS_FEB1, TS_FEB2, TS_MAR1 = "1769904000", "1769990400", "1772323200"
CONTEXT = EmitterContext("acme-onprem", ECO, tenant_id="acme", billing_resource_types=("kafka_cluster",))

AMOUNT_HEAD = (
    "# HELP chargeback_amount Allocated cost per identity, resource and billing day.\n"
    "# TYPE chargeback_amount gauge\n"
)
BILLING_HEAD = (
    "# HELP chargeback_billing_amount Billed cost per resource and product type and billing day.\n"
    "# TYPE chargeback_billing_amount gauge\n"
)
RESOURCE_HEAD = (
    "# HELP chargeback_resource_active Resource active at the start of the billing day.\n"
    "# TYPE chargeback_resource_active gauge\n"
)
IDENTITY_HEAD = (
    "# HELP chargeback_identity_active Identity active at the start of the billing day.\n"
    "# TYPE chargeback_identity_active gauge\n"
)


def at(d: date, hour: int = 0) -> datetime:
    return datetime.combine(d, time(hour), tzinfo=UTC)


def cb(
    identity: str,
    amount: str,
    product_type: str = "SELF_KAFKA_COMPUTE",
    cost_type: str = "shared",
    method: str | None = "even_split",
    detail: str | None = "even_split_allocation",
    *,
    d: date = FEB1,
    hour: int = 0,
    resource_id: str | None = "kafka-prod",
    category: str = "kafka",
) -> ChargebackRow:
    return ChargebackRow(
        ecosystem=ECO,
        tenant_id="acme",
        timestamp=at(d, hour),
        resource_id=resource_id,
        product_category=category,
        product_type=product_type,
        identity_id=identity,
        cost_type=CostType(cost_type),
        amount=Decimal(amount),
        allocation_method=method,
        allocation_detail=detail,
    )


def e6_rows(d: date = FEB1) -> list[ChargebackRow]:
    """Example E6 of allocation.md (the CSV example of emitters.md §4)."""
    return [
        cb("alice", "18.0000", d=d),
        cb("bob", "18.0000", d=d),
        cb("alice", "0.1220", "SELF_KAFKA_STORAGE", d=d),
        cb("bob", "0.1220", "SELF_KAFKA_STORAGE", d=d),
        cb(
            "alice",
            "0.3500",
            "SELF_KAFKA_NETWORK_INGRESS",
            "usage",
            "usage_ratio",
            "usage_ratio_allocation",
            d=d,
        ),
        cb(
            "bob",
            "0.1500",
            "SELF_KAFKA_NETWORK_INGRESS",
            "usage",
            "usage_ratio",
            "usage_ratio_allocation",
            d=d,
        ),
        cb(
            "UNALLOCATED",
            "0.9000",
            "SELF_KAFKA_NETWORK_EGRESS",
            "shared",
            "terminal",
            "no_identities_located",
            d=d,
        ),
    ]


def bill(product_type: str, total: str, d: date = FEB1) -> BillingLineItem:
    return BillingLineItem(
        ecosystem=ECO,
        tenant_id="acme",
        timestamp=at(d),
        resource_id="kafka-prod",
        product_category="kafka",
        product_type=product_type,
        quantity=Decimal(1),
        unit_price=Decimal(total),
        total_cost=Decimal(total),
    )


def e6_billing(d: date = FEB1) -> list[BillingLineItem]:
    return [
        bill("SELF_KAFKA_COMPUTE", "36.0000", d),
        bill("SELF_KAFKA_STORAGE", "0.2440", d),
        bill("SELF_KAFKA_NETWORK_INGRESS", "0.5000", d),
        bill("SELF_KAFKA_NETWORK_EGRESS", "0.9000", d),
    ]


def commit(db: TenantDatabase, d: date, rows: list[ChargebackRow], calculation_id: str) -> None:
    with db.transaction():
        db.chargebacks.replace_date(d, rows, calculation_id)
        db.state.mark_calculated(d, calculation_id, at(d + timedelta(days=1)))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[TenantDatabase]:
    with open_tenant_db(tmp_path / "acme.duckdb", ecosystem=ECO, tenant_id="acme") as opened:
        seen = at(FEB1, 6)
        opened.resources.upsert_many(
            [
                Resource(ECO, "acme", "kafka-prod", "kafka_cluster"),
                Resource(ECO, "acme", "broker-1", "broker"),  # not a billing resource type
                Resource(ECO, "acme", "old-cluster", "kafka_cluster", deleted_at=at(date(2026, 1, 15))),
                Resource(ECO, "acme", "new-cluster", "kafka_cluster", created_at=at(FEB1, 6)),
            ],
            seen,
        )
        opened.identities.upsert_many(
            [
                Identity(ECO, "acme", "alice", "principal"),
                Identity(ECO, "acme", "bob", "principal"),
                Identity(ECO, "acme", "carol", "principal", deleted_at=at(date(2026, 1, 20))),
                Identity(ECO, "acme", "dave", "principal", created_at=at(FEB2)),
            ],
            seen,
        )
        yield opened


def emitter_for(
    db: TenantDatabase, out: Path, context: EmitterContext = CONTEXT, **params: Any
) -> PrometheusEmitter:
    emitter = registry.get(
        "prometheus", {"output_dir": str(out), **params}, db.storage_backend(), context=context
    )
    assert isinstance(emitter, PrometheusEmitter)
    return emitter


def amount_line(identity: str, product_type: str, cost_type: str, method: str, value: str, ts: str) -> str:
    return (
        f'chargeback_amount{{tenant_id="acme",ecosystem="{ECO}",identity_id="{identity}",resource_id="kafka-prod",'
        f'product_type="{product_type}",cost_type="{cost_type}",allocation_method="{method}"}} {value} {ts}\n'
    )


def billing_line(product_type: str, value: str, ts: str) -> str:
    return (
        f'chargeback_billing_amount{{tenant_id="acme",ecosystem="{ECO}",resource_id="kafka-prod",'
        f'product_type="{product_type}",product_category="kafka"}} {value} {ts}\n'
    )


def identity_line(identity: str, ts: str) -> str:
    return (
        f'chargeback_identity_active{{tenant_id="acme",ecosystem="{ECO}",identity_id="{identity}",'
        f'identity_type="principal"}} 1 {ts}\n'
    )


def resource_line(ts: str, resource_id: str = "kafka-prod") -> str:
    return (
        f'chargeback_resource_active{{tenant_id="acme",ecosystem="{ECO}",resource_id="{resource_id}",'
        f'resource_type="kafka_cluster"}} 1 {ts}\n'
    )


E6_HISTORY = (
    AMOUNT_HEAD
    + amount_line("UNALLOCATED", "SELF_KAFKA_NETWORK_EGRESS", "shared", "terminal", "0.9000", TS_FEB1)
    + amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "18.0000", TS_FEB1)
    + amount_line("alice", "SELF_KAFKA_NETWORK_INGRESS", "usage", "usage_ratio", "0.3500", TS_FEB1)
    + amount_line("alice", "SELF_KAFKA_STORAGE", "shared", "even_split", "0.1220", TS_FEB1)
    + amount_line("bob", "SELF_KAFKA_COMPUTE", "shared", "even_split", "18.0000", TS_FEB1)
    + amount_line("bob", "SELF_KAFKA_NETWORK_INGRESS", "usage", "usage_ratio", "0.1500", TS_FEB1)
    + amount_line("bob", "SELF_KAFKA_STORAGE", "shared", "even_split", "0.1220", TS_FEB1)
    + BILLING_HEAD
    + billing_line("SELF_KAFKA_COMPUTE", "36.0000", TS_FEB1)
    + billing_line("SELF_KAFKA_NETWORK_EGRESS", "0.9000", TS_FEB1)
    + billing_line("SELF_KAFKA_NETWORK_INGRESS", "0.5000", TS_FEB1)
    + billing_line("SELF_KAFKA_STORAGE", "0.2440", TS_FEB1)
    + RESOURCE_HEAD
    + resource_line(TS_FEB1)
    + IDENTITY_HEAD
    + identity_line("alice", TS_FEB1)
    + identity_line("bob", TS_FEB1)
    + "# EOF\n"
)


# --- exact history ---------------------------------------------------------------------


def test_e6_history_is_exact_and_contains_the_spec_example_line(db: TenantDatabase, tmp_path: Path) -> None:
    db.billing.replace_date(FEB1, e6_billing())
    commit(db, FEB1, e6_rows(), "calc-1")
    out = tmp_path / "metrics"
    emitter = emitter_for(db, out)
    emitter("acme", FEB1, db.chargebacks.find_by_date(FEB1))
    text = (out / "acme.om").read_text(encoding="utf-8")
    assert text == E6_HISTORY
    # emitters.md §5 "Example line", verbatim:
    assert (
        'chargeback_amount{tenant_id="acme",ecosystem="self_managed_kafka",identity_id="alice",'
        'resource_id="kafka-prod",product_type="SELF_KAFKA_COMPUTE",cost_type="shared",'
        'allocation_method="even_split"} 18.0000 1769904000\n'
    ) in text
    # Resources: broker (not a billing type), old-cluster (deleted), new-cluster (created
    # after midnight) are not active; identities: carol deleted, dave created later,
    # UNALLOCATED is a system identity.
    assert "broker-1" not in text and "old-cluster" not in text and "new-cluster" not in text
    assert "carol" not in text and "dave" not in text
    assert emitter.last_output is not None
    assert emitter.last_output.bytes_written == len(E6_HISTORY.encode())
    assert (emitter.last_output.samples, emitter.last_output.dates_rendered) == (14, 1)


def test_full_history_every_date_at_its_own_midnight(db: TenantDatabase, tmp_path: Path) -> None:
    commit(db, FEB1, [cb("alice", "1.0000")], "c1")
    commit(db, FEB2, [cb("alice", "2.5000", d=FEB2), cb("dave", "0.0001", d=FEB2)], "c2")
    text = render_history(db.storage_backend(), CONTEXT)
    assert text.startswith(
        AMOUNT_HEAD
        + amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "1.0000", TS_FEB1)
        + amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "2.5000", TS_FEB2)
        + amount_line("dave", "SELF_KAFKA_COMPUTE", "shared", "even_split", "0.0001", TS_FEB2)
        + BILLING_HEAD
        + RESOURCE_HEAD
        + resource_line(TS_FEB1)
        + resource_line(TS_FEB2)
        + resource_line(TS_FEB2, "new-cluster")  # created on Feb 1 at 06:00
        + IDENTITY_HEAD
        + identity_line("alice", TS_FEB1)
        + identity_line("alice", TS_FEB2)
        + identity_line("bob", TS_FEB1)
        + identity_line("bob", TS_FEB2)
        + identity_line("dave", TS_FEB2)
    )
    # A recalculation replaces the day's samples; the other day is untouched.
    commit(db, FEB1, [cb("bob", "7.0000")], "c3")
    text = render_history(db.storage_backend(), CONTEXT)
    amounts = [line for line in text.splitlines() if line.startswith("chargeback_amount{")]
    assert amounts == [
        amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "2.5000", TS_FEB2).strip(),
        amount_line("bob", "SELF_KAFKA_COMPUTE", "shared", "even_split", "7.0000", TS_FEB1).strip(),
        amount_line("dave", "SELF_KAFKA_COMPUTE", "shared", "even_split", "0.0001", TS_FEB2).strip(),
    ]


def test_equal_label_sets_are_summed_and_labels_escaped(db: TenantDatabase) -> None:
    odd = 'we"ird\\name\nx'
    commit(
        db,
        FEB1,
        [
            # Same labels, different detail and category: one sample of 19.0001.
            cb("alice", "18.0000"),
            cb("alice", "1.0001", detail="no_active_identities_located", category="other"),
            cb(odd, "-1.2500", resource_id=None, method=None, detail=None),
        ],
        "c1",
    )
    db.billing.replace_date(
        FEB1, [bill("SELF_KAFKA_COMPUTE", "10.0000"), bill("SELF_KAFKA_COMPUTE", "0.0000")]
    )
    text = render_history(db.storage_backend(), CONTEXT)
    assert escape_label_value(odd) == 'we\\"ird\\\\name\\nx'
    assert text.startswith(
        AMOUNT_HEAD
        + amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "19.0001", TS_FEB1)
        + f'chargeback_amount{{tenant_id="acme",ecosystem="{ECO}",identity_id="we\\"ird\\\\name\\nx",'
        'resource_id="",product_type="SELF_KAFKA_COMPUTE",cost_type="shared",allocation_method=""} -1.2500 '
        f"{TS_FEB1}\n" + BILLING_HEAD + billing_line("SELF_KAFKA_COMPUTE", "10.0000", TS_FEB1)
    )


def test_unix_seconds_are_midnight_utc() -> None:
    assert unix_seconds(FEB1) == 1769904000 == int(at(FEB1).timestamp())
    assert str(unix_seconds(MAR1)) == TS_MAR1


# --- aggregation -----------------------------------------------------------------------


def _amounts(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("chargeback_amount{")]


def test_hourly_rows_collapse_into_their_days_midnight(db: TenantDatabase) -> None:
    commit(db, FEB1, [cb("alice", "1.0000", hour=1), cb("alice", "2.0000", hour=2)], "c1")
    for aggregation in (None, "hourly"):
        context = EmitterContext("acme-onprem", ECO, tenant_id="acme", aggregation=aggregation)
        assert _amounts(render_history(db.storage_backend(), context)) == [
            amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "3.0000", TS_FEB1).strip()
        ]


def test_daily_takes_the_greatest_method_and_monthly_stamps_the_first(db: TenantDatabase) -> None:
    commit(db, FEB1, [cb("alice", "1.0000"), cb("alice", "2.0000", method="usage_ratio", detail="x")], "c1")
    commit(db, FEB2, [cb("alice", "4.0000", d=FEB2)], "c2")
    commit(db, MAR1, [cb("alice", "8.0000", d=MAR1)], "c3")
    db.billing.replace_date(FEB1, [bill("SELF_KAFKA_COMPUTE", "3.0000")])
    db.billing.replace_date(FEB2, [bill("SELF_KAFKA_COMPUTE", "4.0000", FEB2)])

    daily = render_history(db.storage_backend(), EmitterContext("t", ECO, aggregation="daily"))
    # Ordered by label values (even_split < usage_ratio), then time.
    assert _amounts(daily) == [
        amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "4.0000", TS_FEB2).strip(),
        amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "8.0000", TS_MAR1).strip(),
        amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "usage_ratio", "3.0000", TS_FEB1).strip(),
    ]
    monthly = render_history(db.storage_backend(), EmitterContext("t", ECO, aggregation="monthly"))
    assert _amounts(monthly) == [
        amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "8.0000", TS_MAR1).strip(),
        amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "usage_ratio", "7.0000", TS_FEB1).strip(),
    ]
    # Billing and activity stay per day whatever the aggregation.
    assert billing_line("SELF_KAFKA_COMPUTE", "4.0000", TS_FEB2) in monthly
    assert identity_line("alice", TS_FEB2) in monthly


def test_lookback_limits_history_and_current_state_is_the_newest_day(
    db: TenantDatabase, tmp_path: Path
) -> None:
    commit(db, FEB1, [cb("alice", "1.0000")], "c1")
    commit(db, FEB2, [cb("alice", "2.0000", d=FEB2), cb("bob", "0.5000", d=FEB2)], "c2")
    context = EmitterContext(
        "acme-onprem", ECO, tenant_id="acme", earliest_date=FEB2, billing_resource_types=()
    )
    out = tmp_path / "m"
    emitter_for(db, out, context)("acme", FEB2, [])
    history = (out / "acme.om").read_text(encoding="utf-8")
    assert TS_FEB1 not in history and TS_FEB2 in history
    assert "chargeback_resource_active{" not in history  # no billing resource types → none
    assert (out / "acme.prom").read_text(encoding="utf-8") == (
        AMOUNT_HEAD
        + amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "2.0000", "").replace(
            " \n", "\n"
        )
        + amount_line("bob", "SELF_KAFKA_COMPUTE", "shared", "even_split", "0.5000", "").replace(" \n", "\n")
        + BILLING_HEAD
        + RESOURCE_HEAD
        + IDENTITY_HEAD
        + identity_line("alice", "").replace(" \n", "\n")
        + identity_line("bob", "").replace(" \n", "\n")
        + identity_line("dave", "").replace(" \n", "\n")
        + "# HELP chargeback_billing_date_timestamp_seconds Billing day (its 00:00 UTC in Unix seconds) that "
        "the chargeback values in this file describe.\n"
        "# TYPE chargeback_billing_date_timestamp_seconds gauge\n"
        f'chargeback_billing_date_timestamp_seconds{{tenant_id="acme",ecosystem="{ECO}"}} {TS_FEB2}\n'
    )


def test_monthly_current_state_is_the_month_so_far(db: TenantDatabase, tmp_path: Path) -> None:
    commit(db, FEB1, [cb("alice", "1.0000")], "c1")
    commit(db, FEB2, [cb("alice", "2.0000", d=FEB2)], "c2")
    context = EmitterContext("acme-onprem", ECO, tenant_id="acme", aggregation="monthly")
    out = tmp_path / "m"
    emitter_for(db, out, context)("acme", FEB1, [])
    current = (out / "acme.prom").read_text(encoding="utf-8")
    assert amount_line("alice", "SELF_KAFKA_COMPUTE", "shared", "even_split", "3.0000", "").replace(
        " \n", "\n"
    ) in (current)
    assert f"}} {TS_FEB2}\n" in current  # the billing date gauge names the newest day


# --- files: atomic, batched, safe names -----------------------------------------------


class CountingBackend:
    """A real storage backend that counts how often the emitter reads the date list."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads = 0
        self.fail = False

    def chargeback_dates(self) -> list[date]:
        self.reads += 1
        if self.fail:
            raise RuntimeError("storage went away")
        return list(self.inner.chargeback_dates())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_batch_renders_once_and_a_failed_render_keeps_the_previous_files(
    db: TenantDatabase, tmp_path: Path
) -> None:
    commit(db, FEB1, e6_rows(), "c1")
    commit(db, FEB2, e6_rows(FEB2), "c2")
    backend = CountingBackend(db.storage_backend())
    out = tmp_path / "m"
    emitter = make_prometheus_emitter(str(out), storage_backend=backend, emitter_context=CONTEXT)
    with emitter.batch():
        emitter("acme", FEB1, [])
        emitter("acme", FEB2, [])
        assert backend.reads == 0 and not out.exists()
    assert backend.reads == 1
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["acme.om", "acme.prom"]

    commit(db, FEB2, [cb("alice", "99.0000", d=FEB2)], "c3")
    backend.fail = True
    with pytest.raises(RuntimeError, match="storage went away"):
        emitter("acme", FEB2, [])
    with pytest.raises(ValueError, match="boom"), emitter.batch():
        emitter("acme", FEB2, [])
        raise ValueError("boom")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files, nothing replaced
    backend.fail = False
    emitter("acme", FEB2, [])
    assert "99.0000" in (out / "acme.om").read_text(encoding="utf-8")


def test_rows_of_another_tenant_are_refused(db: TenantDatabase, tmp_path: Path) -> None:
    emitter = emitter_for(db, tmp_path / "m")
    with pytest.raises(
        ValueError, match="row of tenant_id 'acme' handed to the Prometheus emitter for 'globex'"
    ):
        emitter("globex", FEB1, [cb("alice", "1.0000")])


@pytest.mark.parametrize("tenant_id", ["../evil", "a/b", "..", ""])
def test_tenant_id_cannot_escape_output_dir(db: TenantDatabase, tmp_path: Path, tenant_id: str) -> None:
    out = tmp_path / "m"
    emitter = emitter_for(db, out)
    with pytest.raises(ValueError, match=r"\{tenant_id\} value .* cannot be used in a file name"):
        emitter(tenant_id, FEB1, [])
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("acme.duckdb")] == []


def test_templates_and_subdirectories(db: TenantDatabase, tmp_path: Path) -> None:
    commit(db, FEB1, [cb("alice", "1.0000")], "c1")
    out = tmp_path / "m"
    emitter = emitter_for(
        db,
        out,
        filename_template="{ecosystem}/{tenant_name}.om",
        current_state_template="textfile/{tenant_id}.prom",
    )
    emitter("acme", FEB1, [])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == [
        "self_managed_kafka/acme-onprem.om",
        "textfile/acme.prom",
    ]
    no_current = emitter_for(db, tmp_path / "n", current_state_template=None)
    no_current("acme", FEB1, [])
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["acme.om"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"colour": "red"}, r"params\.colour: unknown parameter for emitter 'prometheus'"),
        ({"port": True}, r"params\.port: must be an integer or null, got bool"),
        ({"port": 70000}, r"params\.port: must be between 1 and 65535, got 70000"),
        ({"output_dir": 5}, r"params\.output_dir: must be a string, got int"),
        ({"filename_template": "{date}.om"}, r"params\.filename_template: .*unknown placeholder \{date\}"),
        ({"filename_template": "../{tenant_id}.om"}, r"params\.filename_template: .*'\.\.' path component"),
        (
            {"current_state_template": "/etc/{tenant_id}.prom"},
            r"params\.current_state_template: .*absolute path",
        ),
        ({"current_state_template": "{tenant_id}.om"}, r"must differ from filename_template"),
    ],
)
def test_bad_params_are_validation_errors(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_prometheus_params(params)
    with pytest.raises(ValueError, match=message):
        registry.validate_spec("prometheus", params)


def test_factory_matches_the_spec_signature_and_port_is_accepted(db: TenantDatabase, tmp_path: Path) -> None:
    factory = registry._lookup("prometheus")
    assert getattr(factory, "needs_storage_backend", None) is True
    emitter = make_prometheus_emitter(
        str(tmp_path / "m"), "{tenant_id}.om", 9091, storage_backend=db.storage_backend()
    )
    emitter("acme", FEB1, [])
    assert (tmp_path / "m" / "acme.om").read_text(encoding="utf-8").endswith("# EOF\n")
    with pytest.raises(ValueError, match=r"\{tenant_name\} needs an EmitterContext"):
        make_prometheus_emitter(str(tmp_path), "{tenant_name}.om", storage_backend=db.storage_backend())


def test_relative_default_output_dir_follows_the_config_dir(db: TenantDatabase, tmp_path: Path) -> None:
    context = EmitterContext("acme-onprem", ECO, tenant_id="acme", config_dir=tmp_path / "conf")
    emitter = registry.get("prometheus", {}, db.storage_backend(), context=context)
    assert isinstance(emitter, PrometheusEmitter)
    assert emitter.output_dir == tmp_path / "conf" / "metrics"


# --- Prometheus' own tools accept both files --------------------------------------------


def test_promtool_loads_the_history_and_checks_the_current_state(db: TenantDatabase, tmp_path: Path) -> None:
    db.billing.replace_date(FEB1, e6_billing())
    commit(db, FEB1, e6_rows(), "c1")
    commit(db, FEB2, e6_rows(FEB2), "c2")
    out = tmp_path / "m"
    emitter = emitter_for(db, out)
    emitter("acme", FEB2, [])
    promtool = require_binary("promtool")
    loaded = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(out / "acme.om"), str(tmp_path / "tsdb")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    blocks = [
        line.split() for line in loaded.stdout.splitlines() if line[:1].isalnum() and "BLOCK" not in line
    ]
    # One block per day (the history spans 24 h); NUM SAMPLES is the 5th column.
    assert [int(b[1]) for b in blocks] == [unix_seconds(FEB1) * 1000, unix_seconds(FEB2) * 1000]
    # Feb 1: 7 amounts, 4 billing lines, 1 resource, 2 identities;
    # Feb 2: 7 amounts, no billing, 2 resources (new-cluster), 3 identities (dave).
    assert emitter.last_output is not None and emitter.last_output.samples == 26
    assert sum(int(b[4]) for b in blocks) == 26
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=(out / "acme.prom").read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0 and checked.stdout == "" and checked.stderr == "", checked
