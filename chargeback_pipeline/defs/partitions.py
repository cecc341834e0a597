"""The tenant × billing-date partitions every lifecycle asset shares.

Built from the configuration at load time: one static key per tenant name and one
daily key per billing date from the oldest retained date to the newest settled one.
Dagster sorts dimensions by name, so keys read ``<date>|<tenant>``.

The newest date moves with the wall clock (``end_offset``), so a ``dagster dev`` left
running for days offers each newly settled date without a reload. Only when the clock
is pinned (``CHARGEBACK_NOW``) is the end fixed, because Dagster's own notion of "now"
cannot be pinned the same way.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta

import dagster as dg

TENANT_DIM = "tenant"
DATE_DIM = "date"


def build_partitions(
    tenant_names: list[str], first_date: date, last_date: date, *, today: date, moving: bool
) -> dg.MultiPartitionsDefinition:
    """``last_date`` is inclusive: the newest date any tenant may calculate on ``today``.

    With ``moving`` the end is expressed as an offset from the current day instead:
    Dagster's last daily partition is yesterday at offset 0, so the newest settled date
    ``today - k`` needs ``end_offset = 1 - k``.
    """
    if moving:
        dates = dg.DailyPartitionsDefinition(
            start_date=first_date.isoformat(),
            end_offset=1 - (today - last_date).days,
            timezone="UTC",
        )
    else:
        dates = dg.DailyPartitionsDefinition(
            start_date=first_date.isoformat(),
            end_date=(last_date + timedelta(days=1)).isoformat(),
            timezone="UTC",
        )
    tenants = dg.StaticPartitionsDefinition(sorted(tenant_names))
    return dg.MultiPartitionsDefinition({TENANT_DIM: tenants, DATE_DIM: dates})


def partition_key(tenant: str, d: date) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({TENANT_DIM: tenant, DATE_DIM: d.isoformat()})


def key_string(tenant: str, d: date) -> str:
    """The plain string form Dagster shows and stores: ``'2026-03-01|acme'``."""
    return f"{d.isoformat()}|{tenant}"


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
