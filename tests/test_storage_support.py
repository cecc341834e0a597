"""Builders shared by the storage tests (no tests here).

Also the target of the multi-process lock tests: worker functions must live in an
importable module so that ``spawn`` children can find them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from chargeback_pipeline.models import BillingLineItem, ChargebackRow, CostType
from chargeback_pipeline.storage import CoreStorageModule, open_tenant_db

ECO = "eco"
TENANT = "acme"
D1 = date(2026, 3, 1)
T1 = datetime(2026, 3, 1, tzinfo=UTC)


def line(
    total: str,
    *,
    resource_id: str = "lkc-1",
    product_type: str = "KAFKA_NUM_CKU",
    product_category: str = "KAFKA",
    ts: datetime = T1,
    quantity: str = "1",
    unit_price: str = "0.5",
    metadata: dict[str, Any] | None = None,
) -> BillingLineItem:
    return BillingLineItem(
        ecosystem=ECO,
        tenant_id=TENANT,
        timestamp=ts,
        resource_id=resource_id,
        product_category=product_category,
        product_type=product_type,
        quantity=Decimal(quantity),
        unit_price=Decimal(unit_price),
        total_cost=Decimal(total),
        metadata=metadata or {},
    )


def row(
    identity_id: str,
    amount: str,
    *,
    resource_id: str | None = "lkc-1",
    product_type: str = "KAFKA_NUM_CKU",
    product_category: str = "KAFKA",
    ts: datetime = T1,
    cost_type: CostType = CostType.USAGE,
    method: str | None = "usage_ratio",
    detail: str | None = "usage_ratio_allocation",
    dimensions: dict[str, str] | None = None,
) -> ChargebackRow:
    return ChargebackRow(
        ecosystem=ECO,
        tenant_id=TENANT,
        timestamp=ts,
        resource_id=resource_id,
        product_category=product_category,
        product_type=product_type,
        identity_id=identity_id,
        cost_type=cost_type,
        amount=Decimal(amount),
        allocation_method=method,
        allocation_detail=detail,
        dimensions=dimensions or {},
    )


@dataclass(frozen=True, slots=True)
class EnvLine(BillingLineItem):
    """A plugin line type with one extra key field, like Confluent Cloud's."""

    env_id: str = ""


class EnvStorageModule(CoreStorageModule):
    extra_key_fields: tuple[str, ...] = ("env_id",)
    billing_line_type = EnvLine


def env_line(total: str, env_id: str, **kwargs: Any) -> EnvLine:
    base = line(total, **kwargs)
    return EnvLine(**{f: getattr(base, f) for f in base.__dataclass_fields__}, env_id=env_id)


# --- multi-process workers --------------------------------------------------------------


def hold_and_write(
    db_path: str,
    tenant_id: str,
    d: date,
    hold_s: float,
    events: dict[str, Any],
    wait_for: tuple[str, ...] = (),
) -> None:
    """Open the tenant, signal, keep the lock, write one billing line.

    The lock is kept until every ``wait_for`` key is in ``events["times"]`` (other
    processes reached that point; at most 60 s), then ``hold_s`` seconds more: ordering
    by events, not by guessing how long a spawned process takes on a loaded machine.
    """
    started = time.time()
    with open_tenant_db(Path(db_path), ecosystem=ECO, tenant_id=tenant_id, lock_timeout_s=60) as db:
        events["acquired"].set()
        events["times"]["holder_acquired"] = time.time()
        deadline = time.monotonic() + 60
        while any(key not in events["times"] for key in wait_for) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(hold_s)
        db.billing.replace_date(d, [line("1.0000", ts=datetime.combine(d, datetime.min.time(), UTC))])
        events["times"]["holder_released"] = time.time()
    events["times"]["holder_started"] = started


def write_once(db_path: str, tenant_id: str, d: date, label: str, times: dict[str, float]) -> None:
    """Open the tenant (waiting if needed) and write one billing line; record when."""
    times[f"{label}_started"] = time.time()
    with open_tenant_db(Path(db_path), ecosystem=ECO, tenant_id=tenant_id, lock_timeout_s=60) as db:
        times[f"{label}_acquired"] = time.time()
        db.billing.replace_date(d, [line("2.0000", ts=datetime.combine(d, datetime.min.time(), UTC))])
    times[f"{label}_done"] = time.time()


def day(offset: int) -> date:
    return D1 + timedelta(days=offset)
