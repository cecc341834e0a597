"""The ``csv`` emitter (spec/emitters.md §4)."""

from __future__ import annotations

import os
import random
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback_pipeline.emitters import EmitterContext, registry
from chargeback_pipeline.emitters import files as files_module
from chargeback_pipeline.emitters.csv_emitter import (
    PLACEHOLDERS,
    CsvEmitter,
    CsvOutput,
    format_amount,
    make_csv_emitter,
    neutralise_formula,
    render_csv,
    validate_csv_params,
)
from chargeback_pipeline.emitters.files import template_problem
from chargeback_pipeline.models import ChargebackRow, CostType

FEB1 = date(2026, 2, 1)
MIDNIGHT = datetime(2026, 2, 1, tzinfo=UTC)
SMK = EmitterContext(tenant_name="acme-onprem", ecosystem="self_managed_kafka")
CCLOUD = EmitterContext(tenant_name="acme-cloud", ecosystem="confluent_cloud", extra_key_fields=("env_id",))

E6_CSV = (
    "ecosystem,tenant_id,timestamp,resource_id,product_category,product_type,identity_id,cost_type,amount,"
    "allocation_method,allocation_detail\r\n"
    "self_managed_kafka,acme,2026-02-01T00:00:00+00:00,kafka-prod,kafka,SELF_KAFKA_COMPUTE,alice,shared,"
    "18.0000,even_split,even_split_allocation\r\n"
    "self_managed_kafka,acme,2026-02-01T00:00:00+00:00,kafka-prod,kafka,SELF_KAFKA_COMPUTE,bob,shared,"
    "18.0000,even_split,even_split_allocation\r\n"
    "self_managed_kafka,acme,2026-02-01T00:00:00+00:00,kafka-prod,kafka,SELF_KAFKA_NETWORK_EGRESS,UNALLOCATED,"
    "shared,0.9000,terminal,no_identities_located\r\n"
    "self_managed_kafka,acme,2026-02-01T00:00:00+00:00,kafka-prod,kafka,SELF_KAFKA_NETWORK_INGRESS,alice,usage,"
    "0.3500,usage_ratio,usage_ratio_allocation\r\n"
    "self_managed_kafka,acme,2026-02-01T00:00:00+00:00,kafka-prod,kafka,SELF_KAFKA_NETWORK_INGRESS,bob,usage,"
    "0.1500,usage_ratio,usage_ratio_allocation\r\n"
    "self_managed_kafka,acme,2026-02-01T00:00:00+00:00,kafka-prod,kafka,SELF_KAFKA_STORAGE,alice,shared,"
    "0.1220,even_split,even_split_allocation\r\n"
    "self_managed_kafka,acme,2026-02-01T00:00:00+00:00,kafka-prod,kafka,SELF_KAFKA_STORAGE,bob,shared,"
    "0.1220,even_split,even_split_allocation\r\n"
)


def smk_row(
    product_type: str, identity: str, cost_type: str, amount: str, method: str, detail: str
) -> ChargebackRow:
    return ChargebackRow(
        ecosystem="self_managed_kafka",
        tenant_id="acme",
        timestamp=MIDNIGHT,
        resource_id="kafka-prod",
        product_category="kafka",
        product_type=product_type,
        identity_id=identity,
        cost_type=CostType(cost_type),
        amount=Decimal(amount),
        allocation_method=method,
        allocation_detail=detail,
    )


def e6_rows() -> list[ChargebackRow]:
    rows = [
        smk_row("SELF_KAFKA_COMPUTE", "alice", "shared", "18.0000", "even_split", "even_split_allocation"),
        smk_row("SELF_KAFKA_COMPUTE", "bob", "shared", "18.0000", "even_split", "even_split_allocation"),
        smk_row("SELF_KAFKA_STORAGE", "alice", "shared", "0.1220", "even_split", "even_split_allocation"),
        smk_row("SELF_KAFKA_STORAGE", "bob", "shared", "0.1220", "even_split", "even_split_allocation"),
        smk_row(
            "SELF_KAFKA_NETWORK_INGRESS", "alice", "usage", "0.3500", "usage_ratio", "usage_ratio_allocation"
        ),
        smk_row(
            "SELF_KAFKA_NETWORK_INGRESS", "bob", "usage", "0.1500", "usage_ratio", "usage_ratio_allocation"
        ),
        smk_row(
            "SELF_KAFKA_NETWORK_EGRESS",
            "UNALLOCATED",
            "shared",
            "0.9000",
            "terminal",
            "no_identities_located",
        ),
    ]
    random.Random(7).shuffle(rows)
    return rows


def cc_row(
    identity: str = "sa-1",
    amount: str = "1.0000",
    *,
    env: str | None = "env-a",
    resource_id: str | None = "lkc-1",
    ts: datetime = MIDNIGHT,
    method: str | None = "even_split",
    detail: str | None = "even_split_allocation",
) -> ChargebackRow:
    return ChargebackRow(
        ecosystem="confluent_cloud",
        tenant_id="acme",
        timestamp=ts,
        resource_id=resource_id,
        product_category="KAFKA",
        product_type="KAFKA_NUM_CKU",
        identity_id=identity,
        cost_type=CostType.SHARED,
        amount=Decimal(amount),
        allocation_method=method,
        allocation_detail=detail,
        dimensions={} if env is None else {"env_id": env},
    )


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# --- exact output ----------------------------------------------------------------------


def test_spec_example_bytes(tmp_path: Path) -> None:
    emitter = make_csv_emitter(str(tmp_path), emitter_context=SMK)
    emitter("acme", FEB1, e6_rows())
    path = tmp_path / "acme_2026-02-01.csv"
    assert path.read_bytes() == E6_CSV.encode("utf-8")
    assert emitter.last_output == CsvOutput(path=path, row_count=7, bytes_written=len(E6_CSV))
    assert listing(tmp_path) == ["acme_2026-02-01.csv"]


def test_emitting_twice_is_idempotent_and_rewrites_completely(tmp_path: Path) -> None:
    emitter = make_csv_emitter(str(tmp_path))
    emitter("acme", FEB1, e6_rows())
    emitter("acme", FEB1, e6_rows())
    path = tmp_path / "acme_2026-02-01.csv"
    assert path.read_bytes() == E6_CSV.encode()
    emitter("acme", FEB1, e6_rows()[:1])
    assert path.read_bytes().count(b"\r\n") == 2


def test_amount_formatting() -> None:
    assert format_amount(Decimal("0E-8")) == "0.0000"
    assert format_amount(Decimal("-0.0000")) == "0.0000"
    assert format_amount(Decimal("-0E-10")) == "0.0000"
    assert format_amount(Decimal("36.000")) == "36.0000"
    assert format_amount(Decimal("18")) == "18.0000"
    assert format_amount(Decimal("-1.25")) == "-1.2500"
    assert format_amount(Decimal("1E+3")) == "1000.0000"
    assert format_amount(Decimal("1.2000E+7")) == "12000000.0000"
    assert format_amount(Decimal("123456789012.3456")) == "123456789012.3456"


@pytest.mark.parametrize(
    ("amount", "error", "message"),
    [
        (Decimal("0.00001"), ValueError, "more than four decimal places"),
        (Decimal("NaN"), ValueError, "not a finite number"),
        (Decimal("Infinity"), ValueError, "not a finite number"),
        (Decimal("1E+30"), ValueError, "too large"),
        (1.5, TypeError, "must be Decimal, got float"),
    ],
)
def test_amount_formatting_refuses_what_it_cannot_write_exactly(
    amount: Decimal, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        format_amount(amount)


def test_unstable_decimal_forms_in_a_file(tmp_path: Path) -> None:
    rows = [cc_row("a", "0E-8"), cc_row("b", "-0.0000"), cc_row("c", "36.000"), cc_row("d", "-1.25")]
    content = render_csv(rows, ("env_id",))
    amounts = [line.split(",")[8] for line in content.split("\r\n")[1:-1]]
    assert amounts == ["0.0000", "0.0000", "36.0000", "-1.2500"]


def test_unwritable_amount_names_the_row() -> None:
    with pytest.raises(
        ValueError, match=r"cannot write chargeback row \(tenant 'acme', resource 'lkc-1'.*'sa-9'"
    ):
        render_csv([cc_row("sa-9", "0.12345")], ("env_id",))


def test_row_order_and_extra_key_columns() -> None:
    later = datetime(2026, 2, 1, 5, tzinfo=UTC)
    rows = [
        cc_row("sa-1", "1.0000", env="env-b"),
        cc_row("sa-1", "2.0000", env="env-a"),
        cc_row("sa-1", "3.0000", ts=later),
        cc_row("sa-1", "4.0000", resource_id=None),
        cc_row("sa-0", "5.0000", method=None, detail=None),
        cc_row("sa-0", "6.0000", method="even_split", detail=None),
        cc_row("sa-2", "7.0000", env=None),
    ]
    lines = render_csv(rows, ("env_id",)).split("\r\n")
    assert lines[0].endswith(",allocation_method,allocation_detail,env_id")
    body = [
        (cells[2], cells[3], cells[6], cells[8], cells[9], cells[10], cells[11])
        for cells in (line.split(",") for line in lines[1:-1])
    ]
    assert body == [
        ("2026-02-01T00:00:00+00:00", "", "sa-1", "4.0000", "even_split", "even_split_allocation", "env-a"),
        ("2026-02-01T00:00:00+00:00", "lkc-1", "sa-0", "5.0000", "", "", "env-a"),
        ("2026-02-01T00:00:00+00:00", "lkc-1", "sa-0", "6.0000", "even_split", "", "env-a"),
        (
            "2026-02-01T00:00:00+00:00",
            "lkc-1",
            "sa-1",
            "2.0000",
            "even_split",
            "even_split_allocation",
            "env-a",
        ),
        (
            "2026-02-01T00:00:00+00:00",
            "lkc-1",
            "sa-1",
            "1.0000",
            "even_split",
            "even_split_allocation",
            "env-b",
        ),
        ("2026-02-01T00:00:00+00:00", "lkc-1", "sa-2", "7.0000", "even_split", "even_split_allocation", ""),
        (
            "2026-02-01T05:00:00+00:00",
            "lkc-1",
            "sa-1",
            "3.0000",
            "even_split",
            "even_split_allocation",
            "env-a",
        ),
    ]
    assert lines[-1] == ""


def test_non_utc_timestamp_is_written_in_utc_and_naive_is_refused() -> None:
    from datetime import timedelta, timezone

    cet = datetime(2026, 2, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    assert "2026-02-01T00:00:00+00:00" in render_csv([cc_row(ts=cet)], ("env_id",))
    with pytest.raises(ValueError, match="timezone-aware"):
        render_csv([cc_row(ts=datetime(2026, 2, 1))], ("env_id",))


def test_formula_injection_is_neutralised_in_text_cells_only() -> None:
    assert [neutralise_formula(v) for v in ["=1+1", "+1", "-x", "@SUM(A1)", "\tx", "\rx", "a=b", ""]] == [
        "'=1+1",
        "'+1",
        "'-x",
        "'@SUM(A1)",
        "'\tx",
        "'\rx",
        "a=b",
        "",
    ]
    content = render_csv([cc_row('=HYPERLINK("http://x","y")', "-1.2500", resource_id="@lkc")], ("env_id",))
    assert content.split("\r\n")[1] == (
        "confluent_cloud,acme,2026-02-01T00:00:00+00:00,'@lkc,KAFKA,KAFKA_NUM_CKU,"
        '"\'=HYPERLINK(""http://x"",""y"")",shared,-1.2500,even_split,even_split_allocation,env-a'
    )


def test_minimal_quoting_and_utf8_without_bom(tmp_path: Path) -> None:
    emitter = make_csv_emitter(str(tmp_path))
    emitter("acme", FEB1, [cc_row('jürgen, the "admin"', env=None)])
    data = (tmp_path / "acme_2026-02-01.csv").read_bytes()
    assert data.startswith(b"ecosystem,tenant_id,")
    assert ',"j\xc3\xbcrgen, the ""admin""",shared,1.0000,' in data.decode("latin-1")


# --- no rows ---------------------------------------------------------------------------


def test_no_rows_removes_existing_file_and_writes_nothing(tmp_path: Path) -> None:
    emitter = make_csv_emitter(str(tmp_path))
    emitter("acme", FEB1, e6_rows())
    emitter("acme", date(2026, 2, 2), e6_rows())
    emitter("acme", FEB1, [])
    assert listing(tmp_path) == ["acme_2026-02-02.csv"]
    assert emitter.last_output == CsvOutput(
        path=tmp_path / "acme_2026-02-01.csv", row_count=0, bytes_written=0, removed=True
    )
    emitter("acme", FEB1, [])
    assert emitter.last_output is not None and emitter.last_output.removed is False
    assert listing(tmp_path) == ["acme_2026-02-02.csv"]


# --- atomic write ----------------------------------------------------------------------


def test_failure_mid_write_keeps_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    emitter = make_csv_emitter(str(tmp_path))
    emitter("acme", FEB1, e6_rows())
    broken = [*e6_rows(), smk_row("SELF_KAFKA_STORAGE", "zed", "shared", "0.00001", "x", "y")]
    with pytest.raises(ValueError, match="more than four decimal places"):
        emitter("acme", FEB1, broken)
    assert (tmp_path / "acme_2026-02-01.csv").read_bytes() == E6_CSV.encode()
    assert listing(tmp_path) == ["acme_2026-02-01.csv"]


def test_failure_at_rename_keeps_previous_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emitter = make_csv_emitter(str(tmp_path))
    emitter("acme", FEB1, e6_rows())

    def failing_replace(src: str, dst: str) -> None:
        assert Path(src).read_bytes().startswith(b"ecosystem,"), "temp file must be complete before rename"
        raise OSError("disk went away")

    monkeypatch.setattr(files_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk went away"):
        emitter("acme", FEB1, e6_rows()[:2])
    assert (tmp_path / "acme_2026-02-01.csv").read_bytes() == E6_CSV.encode()
    assert listing(tmp_path) == ["acme_2026-02-01.csv"]


def test_written_file_is_fsynced_before_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(files_module.os, "fsync", fsync)
    monkeypatch.setattr(files_module.os, "replace", replace)
    make_csv_emitter(str(tmp_path))("acme", FEB1, e6_rows())
    assert events[:2] == ["fsync", "replace"]


def test_new_file_is_readable_and_existing_mode_is_kept(tmp_path: Path) -> None:
    emitter = make_csv_emitter(str(tmp_path))
    emitter("acme", FEB1, e6_rows())
    path = tmp_path / "acme_2026-02-01.csv"
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o640)
    emitter("acme", FEB1, e6_rows())
    assert path.stat().st_mode & 0o777 == 0o640


# --- paths and templates ---------------------------------------------------------------


def test_output_dir_created_with_parents_and_subdirectory_template(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    emitter = make_csv_emitter(str(out), "{ecosystem}/{tenant_name}/{date}.csv", emitter_context=SMK)
    emitter("acme", FEB1, e6_rows())
    path = out / "self_managed_kafka" / "acme-onprem" / "2026-02-01.csv"
    assert path.read_bytes() == E6_CSV.encode()


def test_monthly_date_names_the_first_of_month(tmp_path: Path) -> None:
    emitter = make_csv_emitter(str(tmp_path))
    assert emitter.path_for("acme", date(2026, 2, 1)) == tmp_path / "acme_2026-02-01.csv"


def test_relative_output_dir_follows_config_dir(tmp_path: Path) -> None:
    context = EmitterContext("acme-onprem", "self_managed_kafka", config_dir=tmp_path / "conf")
    emitter = make_csv_emitter("out/csv", emitter_context=context)
    assert emitter.output_dir == tmp_path / "conf" / "out" / "csv"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{tenant}_{date}.csv", r"unknown placeholder \{tenant\}; allowed: \{date\}, \{ecosystem\}"),
        ("{0}.csv", r"unknown placeholder \{0\}"),
        ("{}.csv", r"unknown placeholder \{\}"),
        ("{tenant_id.upper}.csv", r"unknown placeholder \{tenant_id.upper\}"),
        ("{date:%Y}.csv", r"may not have a conversion or format spec"),
        ("{date!r}.csv", r"may not have a conversion or format spec"),
        ("{date.csv", r"is malformed"),
        ("/tmp/{date}.csv", r"is an absolute path"),
        ("\\\\server\\{date}.csv", r"is an absolute path"),
        ("C:/out/{date}.csv", r"is an absolute path \(has a drive\)"),
        ("../{date}.csv", r"contains a '\.\.' path component"),
        ("reports/../../{date}.csv", r"contains a '\.\.' path component"),
        ("reports\\..\\{date}.csv", r"contains a '\.\.' path component"),
        ("{date}/", r"does not end in a file name"),
        ("", r"is empty"),
        ("{date}\n.csv", r"contains the control character U\+000A"),
        ("\x1b[31m{date}.csv", r"contains the control character U\+001B"),
        ("{date}\x85.csv", r"contains the control character U\+0085"),
    ],
)
def test_bad_templates_are_validation_errors(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"params\.filename_template: .*" + message):
        registry.validate_spec("csv", {"output_dir": "out", "filename_template": template})
    with pytest.raises(ValueError, match=message):
        make_csv_emitter("out", template, emitter_context=SMK)


@pytest.mark.parametrize(
    "template",
    [
        "{tenant_id}_{date}.csv",
        "{tenant_name}/{date}.csv",
        "x/{ecosystem}-{date}",
        "a..b_{date}.csv",
        "{{literal}}_{date}.csv",
    ],
)
def test_good_templates(template: str) -> None:
    assert template_problem(template, PLACEHOLDERS) is None
    registry.validate_spec("csv", {"output_dir": "out", "filename_template": template})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, r"params\.output_dir: required parameter of emitter 'csv' is missing"),
        ({"output_dir": 3}, r"params\.output_dir: must be a string, got int"),
        ({"output_dir": "  "}, r"params\.output_dir: must not be empty"),
        (
            {"output_dir": "o", "filename_template": None},
            r"params\.filename_template: must be a string, got NoneType",
        ),
        ({"output_dir": "o", "port": 9}, r"params\.port: unknown parameter for emitter 'csv'"),
    ],
)
def test_bad_params(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_csv_params(params)
    with pytest.raises(ValueError, match=message):
        registry.get("csv", params, None, context=SMK)


def test_context_placeholders_need_a_context() -> None:
    with pytest.raises(ValueError, match=r"\{tenant_name\} needs an EmitterContext"):
        make_csv_emitter("out", "{tenant_name}_{date}.csv")
    with pytest.raises(ValueError, match="Emitter 'csv' needs an EmitterContext"):
        registry.get("csv", {"output_dir": "out"}, None)


@pytest.mark.parametrize("tenant_id", ["../evil", "a/b", "a\\b", "..", ".", ""])
def test_tenant_id_cannot_escape_or_create_paths(tmp_path: Path, tenant_id: str) -> None:
    out = tmp_path / "out"
    emitter = make_csv_emitter(str(out))
    rows = [cc_row(env=None)]
    for row in rows:
        row.tenant_id = tenant_id
    with pytest.raises(ValueError, match=r"\{tenant_id\} value .* cannot be used in a file name"):
        emitter(tenant_id, FEB1, rows)
    assert listing(tmp_path) == []


def test_symlink_out_of_output_dir_is_refused(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    emitter = make_csv_emitter(str(out), "link/{tenant_id}_{date}.csv")
    with pytest.raises(ValueError, match="outside output directory"):
        emitter("acme", FEB1, e6_rows())
    assert listing(outside) == []


# --- guards ----------------------------------------------------------------------------


def test_extra_key_fields_from_context_are_written(tmp_path: Path) -> None:
    emitter = make_csv_emitter(str(tmp_path), emitter_context=CCLOUD)
    emitter("acme", FEB1, [cc_row("sa-1", env="env-b"), cc_row("sa-1", env="env-a")])
    lines = (tmp_path / "acme_2026-02-01.csv").read_text(encoding="utf-8").splitlines()
    assert [line.rsplit(",", 1)[1] for line in lines] == ["env_id", "env-a", "env-b"]


def test_rows_with_undeclared_dimensions_are_refused(tmp_path: Path) -> None:
    no_fields = EmitterContext(tenant_name="acme-cloud", ecosystem="confluent_cloud")
    emitter = make_csv_emitter(str(tmp_path), emitter_context=no_fields)
    with pytest.raises(
        ValueError, match=r"dimension\(s\) env_id that are not among the extra key fields \(none\)"
    ):
        emitter("acme", FEB1, [cc_row()])
    assert listing(tmp_path) == []


def test_rows_of_another_tenant_or_ecosystem_are_refused(tmp_path: Path) -> None:
    emitter = make_csv_emitter(str(tmp_path), emitter_context=CCLOUD)
    with pytest.raises(ValueError, match="row of tenant_id 'acme' handed to the CSV emitter for 'globex'"):
        emitter("globex", FEB1, [cc_row()])
    with pytest.raises(
        ValueError, match="row of ecosystem 'self_managed_kafka' handed to the CSV emitter of tenant"
    ):
        emitter("acme", FEB1, e6_rows())
    assert listing(tmp_path) == []


def test_emitter_is_an_emitter() -> None:
    from chargeback_pipeline.protocols import Emitter

    emitter = make_csv_emitter("out")
    assert isinstance(emitter, CsvEmitter)
    assert isinstance(emitter, Emitter)


def test_a_data_tool_reads_numbers_as_numbers_and_formulas_as_text(tmp_path: Path) -> None:
    """pandas (as a spreadsheet would) infers ``amount`` as a number, negative credits
    included, while every formula-like text cell arrives as inert text."""
    import pandas as pd

    rows = [
        cc_row("=cmd|' /C calc'!A0", "-1.2500"),
        cc_row("+SUM(1,2)", "3.0000", resource_id="-lkc"),
        cc_row("@evil", "0.0001", env="\tenv"),
        cc_row("sa-plain", "12.3400"),
    ]
    make_csv_emitter(str(tmp_path), emitter_context=CCLOUD)("acme", FEB1, rows)
    frame = pd.read_csv(tmp_path / "acme_2026-02-01.csv", keep_default_na=False)
    assert str(frame["amount"].dtype) == "float64"
    raw = pd.read_csv(tmp_path / "acme_2026-02-01.csv", dtype=str, keep_default_na=False)
    assert sum(Decimal(v) for v in raw["amount"]) == Decimal("14.0901")
    assert sorted(raw["identity_id"]) == ["'+SUM(1,2)", "'=cmd|' /C calc'!A0", "'@evil", "sa-plain"]
    assert set(raw["resource_id"]) == {"lkc-1", "'-lkc"}
    assert set(raw["env_id"]) == {"env-a", "'\tenv"}
    assert all(
        not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
        for col in raw
        if col != "amount"
        for cell in raw[col]
    )


def test_fast_writer_matches_the_row_by_row_definition() -> None:
    """write_csv caches cells and joins lines itself; it must equal csv.writer over
    csv_record in csv_sort_key order, for awkward text, zones, None keys and -0."""
    import csv
    import io
    from datetime import timedelta, timezone

    from chargeback_pipeline.emitters.csv_emitter import csv_header, csv_record, csv_sort_key

    rnd = random.Random(7)
    pieces = ["a", "b,c", 'q"t', "=SUM(A1)", "+1", "-x", "@y", "\tz", "\rw", "line\nbreak", "", " sp ", "é€"]
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]

    def text() -> str:
        return "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 3)))

    for _ in range(200):
        rows = [
            ChargebackRow(
                "eco",
                "t1",
                datetime(2026, 3, rnd.randint(1, 3), rnd.randint(0, 23), tzinfo=rnd.choice(zones)),
                rnd.choice([None, text()]),
                text(),
                text(),
                text() or "id",
                rnd.choice(list(CostType)),
                Decimal(rnd.choice(["0", "-0.0000", "1.5", "-2.25", "123456789.1234", "0.0001"])),
                rnd.choice([None, text()]),
                rnd.choice([None, text()]),
                {"env_id": text()} if rnd.random() < 0.8 else {},
                {},
            )
            for _ in range(rnd.randint(0, 30))
        ]
        expected = io.StringIO(newline="")
        writer = csv.writer(expected, delimiter=",", quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        writer.writerow(csv_header(("env_id",)))
        for row in sorted(rows, key=lambda r: csv_sort_key(r, ("env_id",))):
            writer.writerow(csv_record(row, ("env_id",)))
        assert render_csv(rows, ("env_id",)) == expected.getvalue()
