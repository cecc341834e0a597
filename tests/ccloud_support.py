"""Test support for the Confluent Cloud plugin: the sample organisation and a tenant config.

The organisation is served by the plugin's stand-in — a real HTTP server on 127.0.0.1
with real pagination and Basic auth — so tests exercise the client exactly as it talks
to the vendor. Expected outputs are the shared acceptance files copied into tests/data.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from chargeback_pipeline.models import BillingLineItem, ChargebackRow

DATA = Path(__file__).resolve().parent / "data"
SAMPLE_ORG = DATA / "sample-small" / "ccloud"
MANIFEST = json.loads((DATA / "sample-small" / "manifest.json").read_text(encoding="utf-8"))
EXPECTED_BILLING = DATA / "expected" / "confluent_cloud-small-billing.csv"
EXPECTED_CHARGEBACKS = DATA / "expected" / "confluent_cloud-small-chargebacks.csv"

TENANT = "ccloud-small"
FROZEN_NOW = MANIFEST["frozen_now"]
DAYS = [date.fromisoformat(d) for d in MANIFEST["billing_days"]]
ORG_ID = MANIFEST["org_id"]
API_KEY = "CCLOUDKEY42"
API_SECRET = "ccloud-secret-Zq9-NEVER-SHOWN"
FLINK_KEY = "FLINKKEY"
FLINK_SECRET = "flink-secret-Wx7-NEVER-SHOWN"
CREDENTIALS = [(API_KEY, API_SECRET), (FLINK_KEY, FLINK_SECRET)]


def day_range(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def tenant_yaml(
    base_url: str,
    *,
    metrics_url: str | None = None,
    tenant: str = TENANT,
    extra_api: str = "request_interval_seconds: 0",
    emitters: str = "[{type: csv, params: {output_dir: out}}]",
) -> str:
    """A config file with one Confluent Cloud tenant; secrets come from the environment."""
    metrics = f"      metrics: {{type: prometheus, url: '{metrics_url}'}}\n" if metrics_url else ""
    return f"""
tenants:
  {tenant}:
    ecosystem: confluent_cloud
    tenant_id: {tenant}
    lookback_days: {MANIFEST["lookback_days"]}
    cutoff_days: {MANIFEST["cutoff_days"]}
    plugin_settings:
      ccloud_api:
        key: ${{CCLOUD_API_KEY}}
        secret: ${{CCLOUD_API_SECRET}}
        base_url: '{base_url}'
        flink_base_url: '{base_url}/__host/flink.{{region}}.{{cloud}}.confluent.cloud'
        {extra_api}
      billing_api: {{days_per_query: {MANIFEST["ccloud"]["days_per_query"]}}}
      flink:
        - region_id: us-east-1
          key: ${{FLINK_KEY}}
          secret: ${{FLINK_SECRET}}
{metrics}      emitters: {emitters}
"""


def credentials_env() -> dict[str, str]:
    return {
        "CCLOUD_API_KEY": API_KEY,
        "CCLOUD_API_SECRET": API_SECRET,
        "FLINK_KEY": FLINK_KEY,
        "FLINK_SECRET": FLINK_SECRET,
    }


def plugin_settings(base_url: str, **overrides: Any) -> dict[str, Any]:
    """``plugin_settings`` as ``initialize`` receives them (plain dict, secrets as strings)."""
    settings: dict[str, Any] = {
        "ccloud_api": {
            "key": API_KEY,
            "secret": API_SECRET,
            "base_url": base_url,
            "flink_base_url": base_url + "/__host/flink.{region}.{cloud}.confluent.cloud",
            "request_interval_seconds": 0,
        },
        "billing_api": {"days_per_query": 15},
        "flink": [{"region_id": "us-east-1", "key": FLINK_KEY, "secret": FLINK_SECRET}],
    }
    settings.update(overrides)
    return settings


# --- comparing with the expected files ------------------------------------------------------

BillingKey = tuple[str, str, str, str, str, str, str]
RowKey = tuple[str, ...]


def _ts(text: str) -> str:
    return text.replace("Z", "+00:00")


def expected_billing(days: Sequence[date] = DAYS) -> dict[BillingKey, tuple[Decimal, Decimal, Decimal]]:
    wanted = {d.isoformat() for d in days}
    out = {}
    with EXPECTED_BILLING.open(encoding="utf-8", newline="") as handle:
        for r in csv.DictReader(handle):
            if r["timestamp"][:10] in wanted:
                key = (
                    r["tenant_id"],
                    _ts(r["timestamp"]),
                    r["resource_id"],
                    r["product_category"],
                    r["product_type"],
                    r["env_id"],
                    r["ecosystem"],
                )
                out[key] = (Decimal(r["quantity"]), Decimal(r["unit_price"]), Decimal(r["total_cost"]))
    return out


def actual_billing(lines: Iterable[BillingLineItem]) -> dict[BillingKey, tuple[Decimal, Decimal, Decimal]]:
    out = {}
    for line in lines:
        key = (
            line.tenant_id,
            line.timestamp.isoformat(),
            line.resource_id,
            line.product_category,
            line.product_type,
            str(getattr(line, "env_id", "")),
            line.ecosystem,
        )
        out[key] = (line.quantity, line.unit_price, line.total_cost)
    return out


def expected_chargebacks(days: Sequence[date] = DAYS) -> dict[RowKey, Decimal]:
    wanted = {d.isoformat() for d in days}
    out: defaultdict[RowKey, Decimal] = defaultdict(Decimal)
    with EXPECTED_CHARGEBACKS.open(encoding="utf-8", newline="") as handle:
        for r in csv.DictReader(handle):
            if r["timestamp"][:10] in wanted:
                key = (
                    r["ecosystem"],
                    r["tenant_id"],
                    _ts(r["timestamp"]),
                    r["resource_id"],
                    r["product_category"],
                    r["product_type"],
                    r["identity_id"],
                    r["cost_type"],
                    r["allocation_method"],
                    r["allocation_detail"],
                    r["env_id"],
                )
                out[key] += Decimal(r["amount"])
    return dict(out)


def actual_chargebacks(rows: Iterable[ChargebackRow]) -> dict[RowKey, Decimal]:
    out: defaultdict[RowKey, Decimal] = defaultdict(Decimal)
    for r in rows:
        key = (
            r.ecosystem,
            r.tenant_id,
            r.timestamp.isoformat(),
            r.resource_id or "",
            r.product_category,
            r.product_type,
            r.identity_id,
            str(r.cost_type),
            r.allocation_method or "",
            r.allocation_detail or "",
            r.dimensions.get("env_id", ""),
        )
        out[key] += r.amount
    return dict(out)


def csv_chargebacks(paths: Iterable[Path]) -> dict[RowKey, Decimal]:
    """Rows of CSV emitter files, keyed like ``expected_chargebacks``."""
    out: defaultdict[RowKey, Decimal] = defaultdict(Decimal)
    for path in paths:
        with path.open(encoding="utf-8", newline="") as handle:
            for r in csv.DictReader(handle):
                key = (
                    r["ecosystem"],
                    r["tenant_id"],
                    _ts(r["timestamp"]),
                    r["resource_id"],
                    r["product_category"],
                    r["product_type"],
                    r["identity_id"],
                    r["cost_type"],
                    r["allocation_method"],
                    r["allocation_detail"],
                    r["env_id"],
                )
                out[key] += Decimal(r["amount"])
    return dict(out)


def differences(expected: dict[Any, Any], actual: dict[Any, Any], limit: int = 20) -> list[str]:
    """Readable list of keys whose values differ (empty when equal)."""
    lines = []
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) != actual.get(key):
            lines.append(f"{key}: expected {expected.get(key)}, got {actual.get(key)}")
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])
