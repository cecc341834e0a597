"""The tenant × billing-date partitions every lifecycle asset shares.

Built from the configuration at load time: one static key per tenant name and one
daily key per billing date from the oldest retained date to the newest settled one.
Dagster sorts dimensions by name, so keys read ``<date>|<tenant>``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta

import dagster as dg

TENANT_DIM = "tenant"
DATE_DIM = "date"


def build_partitions(
    tenant_names: list[str], first_date: date, last_date: date
) -> dg.MultiPartitionsDefinition:
    """``last_date`` is inclusive: the newest date any tenant may calculate."""
    dates = dg.DailyPartitionsDefinition(
        start_date=first_date.isoformat(),
        end_date=(last_date + timedelta(days=1)).isoformat(),
        timezone="UTC",
    )
    tenants = dg.StaticPartitionsDefinition(sorted(tenant_names))
    return dg.MultiPartitionsDefinition({TENANT_DIM: tenants, DATE_DIM: dates})


def partition_key(tenant: str, d: date) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({TENANT_DIM: tenant, DATE_DIM: d.isoformat()})


def split_key(key: str) -> tuple[str, date]:
    """``'2026-03-01|acme'`` → ``('acme', date(2026, 3, 1))``, for plain strings and MultiPartitionKeys."""
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims[TENANT_DIM], date.fromisoformat(dims[DATE_DIM])
    date_part, tenant = key.split("|", 1)
    return tenant, date.fromisoformat(date_part)


def dates_by_tenant(keys: list[str]) -> dict[str, list[date]]:
    """Group a run's partition keys per tenant, dates ascending (a range run may span tenants)."""
    grouped: dict[str, list[date]] = defaultdict(list)
    for key in keys:
        tenant, d = split_key(key)
        grouped[tenant].append(d)
    return {tenant: sorted(set(ds)) for tenant, ds in sorted(grouped.items())}
