"""The core ``StorageModule`` (spec/plugin-system.md §9), meant to be subclassed by plugins.

A plugin whose billing lines carry extra key fields (Confluent Cloud: ``env_id``)
subclasses it and sets two class attributes; the core tables then get one VARCHAR
column per field in the billing and chargeback keys, and lines are read back as the
plugin's own class::

    @dataclass(frozen=True, slots=True)
    class CCloudBillingLine(BillingLineItem):
        env_id: str = ""

    class CCloudStorageModule(CoreStorageModule):
        extra_key_fields: tuple[str, ...] = ("env_id",)
        billing_line_type = CCloudBillingLine

Plugin-owned tables go in an overridden ``register_tables`` (called after the core
tables exist, on every open, so it must be idempotent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import duckdb

from chargeback_pipeline.models import BillingLineItem
from chargeback_pipeline.storage.billing import BillingRepository
from chargeback_pipeline.storage.chargebacks import ChargebackRepository
from chargeback_pipeline.storage.entities import IdentityRepository, ResourceRepository


class CoreStorageModule:
    extra_key_fields: tuple[str, ...] = ()
    billing_line_type: ClassVar[type[BillingLineItem]] = BillingLineItem

    def register_tables(self, conn: duckdb.DuckDBPyConnection) -> None:
        """No plugin tables: the core tables are created by ``open_tenant_db`` before this hook."""

    def make_billing_line(self, fields: Mapping[str, Any]) -> BillingLineItem:
        """Build a stored line; ``fields`` holds every core field plus the extra key fields."""
        return self.billing_line_type(**fields)

    def create_billing_repository(self, conn: duckdb.DuckDBPyConnection) -> BillingRepository:
        return BillingRepository(conn, self.extra_key_fields, self.make_billing_line)

    def create_resource_repository(self, conn: duckdb.DuckDBPyConnection) -> ResourceRepository:
        return ResourceRepository(conn)

    def create_identity_repository(self, conn: duckdb.DuckDBPyConnection) -> IdentityRepository:
        return IdentityRepository(conn)

    def create_chargeback_repository(self, conn: duckdb.DuckDBPyConnection) -> ChargebackRepository:
        return ChargebackRepository(conn, self.extra_key_fields)
