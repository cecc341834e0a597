"""The sample organisation (tests/data/sample-small) as tenants of a test configuration.

The expected CSVs in tests/data/expected were produced from the spec for these exact
settings (manifest.json) with the clock at the manifest's ``frozen_now``.
"""

from __future__ import annotations

import csv
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from chargeback_pipeline.models import BillingLineItem, ChargebackRow

DATA = Path(__file__).resolve().parent / "data"
MANIFEST: dict[str, Any] = json.loads((DATA / "sample-small" / "manifest.json").read_text())
FROZEN_NOW: str = MANIFEST["frozen_now"]
BILLING_DAYS = [date.fromisoformat(d) for d in MANIFEST["billing_days"]]
TENANTS = {"self_managed_kafka": "smk-small", "generic_metrics_only": "generic-small"}


def tenant_block(ecosystem: str, prometheus_url: str, **overrides: Any) -> dict[str, Any]:
    settings = {**MANIFEST[ecosystem], "metrics": {"type": "prometheus", "url": prometheus_url}}
    settings.update(overrides)
    return {
        "ecosystem": ecosystem,
        "tenant_id": TENANTS[ecosystem],
        "lookback_days": MANIFEST["lookback_days"],
        "cutoff_days": MANIFEST["cutoff_days"],
        "retention_days": 90,
        "plugin_settings": settings,
    }


def write_config(directory: Path, tenants: dict[str, dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False), encoding="utf-8")
    return path


def expected_rows(ecosystem: str, kind: str) -> list[dict[str, str]]:
    with (DATA / "expected" / f"{ecosystem}-small-{kind}.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _instant(text: str) -> str:
    return text.replace("Z", "+00:00")


def billing_key(row: dict[str, str] | BillingLineItem) -> tuple[Any, ...]:
    if isinstance(row, BillingLineItem):
        return (
            row.timestamp.isoformat(),
            row.resource_id,
            row.product_category,
            row.product_type,
            row.quantity,
            row.unit_price,
            row.total_cost,
            row.currency,
            row.granularity,
        )
    return (
        _instant(row["timestamp"]),
        row["resource_id"],
        row["product_category"],
        row["product_type"],
        Decimal(row["quantity"]),
        Decimal(row["unit_price"]),
        Decimal(row["total_cost"]),
        row["currency"],
        row["granularity"],
    )


def chargeback_key(row: dict[str, str] | ChargebackRow) -> tuple[Any, ...]:
    if isinstance(row, ChargebackRow):
        return (
            row.timestamp.isoformat(),
            row.resource_id or "",
            row.product_category,
            row.product_type,
            row.identity_id,
            str(row.cost_type),
            row.amount,
            row.allocation_method or "",
            row.allocation_detail or "",
        )
    return (
        _instant(row["timestamp"]),
        row["resource_id"],
        row["product_category"],
        row["product_type"],
        row["identity_id"],
        row["cost_type"],
        Decimal(row["amount"]),
        row["allocation_method"],
        row["allocation_detail"],
    )
