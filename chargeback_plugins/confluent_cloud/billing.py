"""Billing API → daily billing lines (spec/confluent-cloud.md §4, endpoint E13).

The requested range is cut into ``days_per_query`` chunks; each chunk is one
paginated listing whose rows are mapped, grouped by natural key (tiered prices and
duplicates become one line with a ``tiers`` breakdown) and then yielded. A row that
cannot be mapped is never dropped: it becomes a ``malformed_billing_<hash>`` line so its
money still reaches the fallback allocator and ``UNALLOCATED``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from chargeback_pipeline.models import ZERO, require_utc
from chargeback_pipeline.protocols import TenantStore
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.storage import CCloudBillingLine

log = logging.getLogger(__name__)

ECOSYSTEM = "confluent_cloud"
COSTS_PATH = "/billing/v1/costs"
COSTS_PAGE_SIZE = 2000
MALFORMED = "MALFORMED"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

BillingKey = tuple[datetime, str, str, str, str]


class MalformedRow(ValueError):
    """A cost row whose fields cannot be mapped (§4.3); the message becomes ``parse_error``."""


def row_hash(row: Any) -> str:
    """First 12 hex characters of SHA-256 over the raw row (an identifier, not money).

    ``row`` is exactly what ``json.loads`` returned (floats stay floats), so the same
    API row gets the same sentinel id however the date range was chunked.
    """
    return hashlib.sha256(_ROW_ENCODER.encode(row).encode("utf-8")).hexdigest()[:12]


# ``json.dumps(row, sort_keys=True)`` builds a new encoder per call; one is reused instead
# (same output), since every cost row of every gather is hashed.
_ROW_ENCODER = json.JSONEncoder(sort_keys=True)


def parse_amount(value: Any, what: str, row_id: str) -> Decimal:
    """``Decimal(str(v))``; ``null`` → 0; unparsable or non-finite → 0 with a ``WARNING``."""
    if value is None:
        return ZERO
    if isinstance(value, bool):
        parsed = None
    else:
        try:
            parsed = Decimal(str(value))
        except (InvalidOperation, ValueError):
            parsed = None
    if parsed is None or not parsed.is_finite():
        log.warning("billing row %s: %s %r is not a number; using 0", row_id, what, value)
        return ZERO
    return parsed


def parse_day(value: Any) -> datetime:
    """``YYYY-MM-DD`` strictly, as 00:00 UTC of that day."""
    if not isinstance(value, str):
        raise MalformedRow(f"start_date is {type(value).__name__}, not a string")
    if not _DAY.match(value):
        raise MalformedRow(f"start_date {value[:40]!r} is not YYYY-MM-DD")
    try:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)
    except ValueError:
        raise MalformedRow(f"start_date {value[:40]!r} is not a valid date") from None


@dataclass(slots=True)
class _Line:
    """A mapped row before grouping (raw, un-quantised amounts)."""

    timestamp: datetime
    resource_id: str
    product_category: str
    product_type: str
    env_id: str
    quantity: Decimal
    unit_price: Decimal
    total_cost: Decimal
    metadata: dict[str, Any] = field(default_factory=dict)
    original_amount: Decimal | None = None

    @property
    def key(self) -> BillingKey:
        return (self.timestamp, self.resource_id, self.product_type, self.product_category, self.env_id)


def map_row(row: Any, chunk_start: datetime) -> _Line:
    """One API row → one line (§4.2), or a sentinel line when the row is malformed (§4.3)."""
    digest = row_hash(row)
    try:
        return _map_well_formed(row, digest)
    except MalformedRow as exc:
        return _map_malformed(row, digest, chunk_start, str(exc))


def _map_well_formed(row: Any, digest: str) -> _Line:
    if not isinstance(row, dict):
        raise MalformedRow(f"row is a {type(row).__name__}, not an object")
    timestamp = parse_day(row.get("start_date"))
    resource = _object_or_none(row.get("resource"), "resource")
    environment = _object_or_none(resource.get("environment"), "resource.environment") if resource else None
    resource_id = resource.get("id") if resource else None
    line_type = row.get("line_type")
    if line_type is not None and not isinstance(line_type, str):
        raise MalformedRow(f"line_type is {type(line_type).__name__}, not a string")
    product = row.get("product")
    env_id = environment.get("id") if environment else None
    metadata: dict[str, Any] = {}
    display = resource.get("display_name") if resource else None
    if display:
        metadata["resource_name"] = display
    original = (
        parse_amount(row["original_amount"], "original_amount", digest) if "original_amount" in row else None
    )
    if original is not None:
        metadata["original_amount"] = original
    _warn_foreign_currency(row, digest)
    return _Line(
        timestamp=timestamp,
        resource_id=resource_id
        if isinstance(resource_id, str) and resource_id
        else f"unresolved_billing_{digest}",
        product_category=product if isinstance(product, str) else "",
        product_type=line_type or "",
        env_id=env_id if isinstance(env_id, str) else "",
        quantity=parse_amount(row.get("quantity"), "quantity", digest),
        unit_price=parse_amount(row.get("price"), "price", digest),
        total_cost=parse_amount(row.get("amount"), "amount", digest),
        metadata=metadata,
        original_amount=original,
    )


def _warn_foreign_currency(row: Mapping[str, Any], digest: str) -> None:
    """Lines are USD (§4.2); a row that says otherwise is still taken as USD, but visibly.

    The billing API reports the organisation's billing currency, which is USD, and has
    no currency field in its documented rows. Converting is out of scope; dropping the
    row would lose money, so the amount is kept and the mismatch is logged.
    """
    currency = row.get("currency")
    if currency is not None and currency != "USD":
        log.warning("billing row %s: currency %r is not USD; amounts are taken as USD", digest, currency)


def _object_or_none(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedRow(f"{what} is a {type(value).__name__}, not an object")
    return value


def _map_malformed(row: Any, digest: str, chunk_start: datetime, error: str) -> _Line:
    fields: Mapping[str, Any] = row if isinstance(row, dict) else {}
    try:
        timestamp = parse_day(fields.get("start_date"))
    except MalformedRow:
        timestamp = chunk_start
    resource = fields.get("resource")
    environment = resource.get("environment") if isinstance(resource, dict) else None
    env_id = environment.get("id") if isinstance(environment, dict) else None
    product, line_type = fields.get("product"), fields.get("line_type")
    log.warning("billing row %s is malformed (%s); kept as malformed_billing_%s", digest, error, digest)
    return _Line(
        timestamp=timestamp,
        resource_id=f"malformed_billing_{digest}",
        product_category=str(product) if product is not None else MALFORMED,
        product_type=str(line_type) if line_type is not None else MALFORMED,
        env_id=env_id if isinstance(env_id, str) else "",
        quantity=parse_amount(fields.get("quantity"), "quantity", digest),
        unit_price=parse_amount(fields.get("price"), "price", digest),
        total_cost=parse_amount(fields.get("amount"), "amount", digest),
        metadata={"malformed": True, "parse_error": error},
    )


def aggregate(lines: list[_Line]) -> list[_Line]:
    """Group a chunk's lines by natural key; several rows become one line with ``tiers`` (§4.4).

    Amounts are summed raw; the core quantises the total once when it stores the line.
    Groups keep the order in which their first row arrived.
    """
    groups: dict[BillingKey, list[_Line]] = {}
    for line in lines:
        groups.setdefault(line.key, []).append(line)
    merged: list[_Line] = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        first = group[0]
        metadata = dict(first.metadata)
        metadata["tiers"] = [
            {"price": str(x.unit_price), "quantity": str(x.quantity), "cost": str(x.total_cost)}
            for x in group
        ]
        originals = [x.original_amount for x in group if x.original_amount is not None]
        if originals:
            metadata["original_amount"] = sum(originals, ZERO)
        merged.append(
            _Line(
                timestamp=first.timestamp,
                resource_id=first.resource_id,
                product_category=first.product_category,
                product_type=first.product_type,
                env_id=first.env_id,
                quantity=sum((x.quantity for x in group), ZERO),
                unit_price=ZERO,
                total_cost=sum((x.total_cost for x in group), ZERO),
                metadata=metadata,
            )
        )
    return merged


def chunks(start: datetime, end: datetime, days_per_query: int) -> Iterator[tuple[datetime, datetime]]:
    """``[start, end)`` in windows of ``days_per_query`` days; the last one ends at ``end``."""
    step = timedelta(days=days_per_query)
    cursor = start
    while cursor < end:
        upper = min(cursor + step, end)
        yield cursor, upper
        cursor = upper


def utc_midnight(value: datetime, what: str) -> datetime:
    aware = require_utc(value, what)
    return datetime.combine(aware.date(), datetime.min.time(), tzinfo=UTC)


class CCloudCostInput:
    """The plugin's ``CostInput``: one paginated E13 listing per chunk of days."""

    def __init__(self, client: CCloudClient, days_per_query: int) -> None:
        self._client = client
        self._days_per_query = days_per_query

    def gather(
        self, tenant_id: str, start: datetime, end: datetime, store: TenantStore
    ) -> Iterator[CCloudBillingLine]:
        start, end = utc_midnight(start, "start"), utc_midnight(end, "end")
        for chunk_start, chunk_end in chunks(start, end, self._days_per_query):
            params = {"start_date": chunk_start.date().isoformat(), "end_date": chunk_end.date().isoformat()}
            rows = list(self._client.list(COSTS_PATH, params, page_size=COSTS_PAGE_SIZE))
            lines = aggregate([map_row(row, chunk_start) for row in rows])
            log.info(
                "tenant %s: billing %s .. %s: %d cost rows, %d lines",
                tenant_id,
                params["start_date"],
                params["end_date"],
                len(rows),
                len(lines),
            )
            for line in lines:
                yield CCloudBillingLine(
                    ecosystem=ECOSYSTEM,
                    tenant_id=tenant_id,
                    timestamp=line.timestamp,
                    resource_id=line.resource_id,
                    product_category=line.product_category,
                    product_type=line.product_type,
                    quantity=line.quantity,
                    unit_price=line.unit_price,
                    total_cost=line.total_cost,
                    metadata=line.metadata,
                    env_id=line.env_id,
                )
