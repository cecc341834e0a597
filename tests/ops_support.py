"""Helpers of the operations tests: edit a copied configuration file by tenant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def edit_config(config: Path, *, drop: tuple[str, ...] = (), **tenant_fields: dict[str, Any]) -> Path:
    """Remove tenants ``drop`` and set top-level fields of tenants (``{"postgres-prod": {...}}``).

    Comments are lost; ``${VAR}`` references are kept as text.
    """
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    for name in drop:
        del data["tenants"][name]
    for name, fields in tenant_fields.items():
        data["tenants"][name].update(fields)
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return config


def fixed_rate_demo(config: Path) -> Path:
    """The demo without its replayed Confluent Cloud tenant: the two fixed-rate services."""
    return edit_config(config, drop=("confluent-cloud",))
