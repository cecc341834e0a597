"""Read-only views of an open tenant database: ``TenantStore`` for plugins and
``StorageBackend`` for emitters (spec/plugin-system.md §1.2 and §10).

Both only delegate to the repositories; they exist so that a plugin or emitter
holding them has no write method within reach.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from chargeback_pipeline.models import (
    SYSTEM_IDENTITY_TYPE,
    BillingLineItem,
    ChargebackRow,
    Identity,
    Resource,
)

if TYPE_CHECKING:
    from chargeback_pipeline.storage.chargebacks import Bucket
    from chargeback_pipeline.storage.tenant_db import TenantDatabase


class ResourceReadView:
    def __init__(self, repo: Any) -> None:
        self._repo = repo

    def get(self, resource_id: str) -> Resource | None:
        result: Resource | None = self._repo.get(resource_id)
        return result

    def find_active_at(self, t: datetime, resource_type: str | Sequence[str] | None = None) -> list[Resource]:
        return list(self._repo.find_active_at(t, resource_type))

    def find_by_period(
        self,
        start: datetime,
        end: datetime,
        resource_type: str | Sequence[str] | None = None,
        metadata_filter: Mapping[str, Any] | None = None,
    ) -> list[Resource]:
        return list(self._repo.find_by_period(start, end, resource_type, metadata_filter))


class IdentityReadView:
    def __init__(self, repo: Any) -> None:
        self._repo = repo

    def get(self, identity_id: str) -> Identity | None:
        result: Identity | None = self._repo.get(identity_id)
        return result

    def find_active_at(
        self, t: datetime, identity_types: Sequence[str] | None = None, *, include_system: bool = True
    ) -> list[Identity]:
        return _without_system(self._repo.find_active_at(t, identity_types), include_system)

    def find_by_period(
        self,
        start: datetime,
        end: datetime,
        identity_types: Sequence[str] | None = None,
        *,
        include_system: bool = True,
    ) -> list[Identity]:
        return _without_system(self._repo.find_by_period(start, end, identity_types), include_system)


def _without_system(identities: Iterable[Identity], include_system: bool = False) -> list[Identity]:
    """Filtered here rather than in SQL so that a plugin's own identity repository works too."""
    return [i for i in identities if include_system or i.identity_type != SYSTEM_IDENTITY_TYPE]


class BillingReadView:
    def __init__(self, repo: Any) -> None:
        self._repo = repo

    def find_by_date(self, d: date) -> list[BillingLineItem]:
        return list(self._repo.find_by_date(d))


@dataclass(frozen=True, slots=True)
class TenantReadView:
    """Satisfies ``protocols.TenantStore``."""

    resources: ResourceReadView
    identities: IdentityReadView
    billing: BillingReadView


@runtime_checkable
class StorageBackend(Protocol):
    """What an emitter with ``needs_storage_backend = True`` receives."""

    def chargeback_dates(self) -> list[date]: ...
    def chargebacks_for_date(self, d: date) -> list[ChargebackRow]: ...
    def chargebacks_aggregated(self, start: date, end: date, bucket: Bucket) -> list[ChargebackRow]: ...
    def billing_for_date(self, d: date) -> list[BillingLineItem]: ...
    def resources_active_at(
        self, t: datetime, resource_types: str | Sequence[str] | None = None
    ) -> list[Resource]: ...
    def identities_active_at(self, t: datetime) -> list[Identity]: ...
    def calculation_id(self, d: date) -> str | None: ...


class TenantStorageBackend:
    """``StorageBackend`` over one open ``TenantDatabase``; valid while that database is open."""

    def __init__(self, db: TenantDatabase) -> None:
        self._db = db

    @property
    def tenant_id(self) -> str:
        return self._db.tenant_id

    @property
    def extra_key_fields(self) -> tuple[str, ...]:
        return self._db.extra_key_fields

    def chargeback_dates(self) -> list[date]:
        """Dates with committed chargebacks, including calculated dates that produced no rows."""
        return sorted(set(self._db.chargebacks.dates()) | set(self._db.pipeline_state.calculated_dates()))

    def chargebacks_for_date(self, d: date) -> list[ChargebackRow]:
        return list(self._db.chargebacks.find_by_date(d))

    def chargebacks_aggregated(self, start: date, end: date, bucket: Bucket) -> list[ChargebackRow]:
        """Billing dates ``[start, end)`` aggregated per ``day`` or ``month`` (emitters.md §3)."""
        return list(self._db.chargebacks.aggregate(start, end, bucket))

    def billing_for_date(self, d: date) -> list[BillingLineItem]:
        return list(self._db.billing.find_by_date(d))

    def resources_active_at(
        self, t: datetime, resource_types: str | Sequence[str] | None = None
    ) -> list[Resource]:
        return list(self._db.resources.find_active_at(t, resource_types))

    def identities_active_at(self, t: datetime) -> list[Identity]:
        """Type ``system`` (``UNALLOCATED``) excluded: it is not a real identity of the tenant."""
        return _without_system(self._db.identities.find_active_at(t))

    def calculation_id(self, d: date) -> str | None:
        return self._db.pipeline_state.get(d).calculation_id
