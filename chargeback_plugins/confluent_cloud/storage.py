"""Storage extension of the plugin: billing lines keyed with ``env_id`` (plugin-system.md §9).

Confluent Cloud bills the same resource and product type in different environments
as different lines, so ``env_id`` is part of the billing natural key and of every
chargeback row's dimension key (and a CSV column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from chargeback_pipeline.models import BillingLineItem
from chargeback_pipeline.storage import CoreStorageModule


@dataclass(frozen=True, slots=True)
class CCloudBillingLine(BillingLineItem):
    """A Billing API cost line; ``env_id`` is ``""`` for organisation-level costs."""

    env_id: str = ""


class CCloudStorageModule(CoreStorageModule):
    extra_key_fields: tuple[str, ...] = ("env_id",)
    billing_line_type: ClassVar[type[BillingLineItem]] = CCloudBillingLine
