"""The chargeback metric families and their text rendering (spec/emitters.md §5).

Two formats share one sample model:

* **OpenMetrics** with a timestamp on every sample and ``# EOF`` last: the history
  file, loadable with ``promtool tsdb create-blocks-from openmetrics``;
* the classic Prometheus **text exposition format** without timestamps: the
  current-state file for node_exporter's textfile collector, which refuses samples
  that carry timestamps.

Values are text built from ``Decimal`` (``18.0000``) or the literal ``1`` for
activity gauges; nothing here converts money to ``float``. Samples with the same label
set and timestamp are summed, so a family never holds duplicate series.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Literal

from chargeback_pipeline.emitters.formatting import format_amount

ValueKind = Literal["amount", "flag", "integer"]
SampleKey = tuple[tuple[str, ...], int | None]


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """A gauge family: its name, help text, label names in order and how values print."""

    name: str
    help: str
    label_names: tuple[str, ...]
    kind: ValueKind = "amount"


CHARGEBACK_AMOUNT = MetricFamily(
    "chargeback_amount",
    "Allocated cost per identity, resource and billing day.",
    (
        "tenant_id",
        "ecosystem",
        "identity_id",
        "resource_id",
        "product_type",
        "cost_type",
        "allocation_method",
    ),
)
BILLING_AMOUNT = MetricFamily(
    "chargeback_billing_amount",
    "Billed cost per resource and product type and billing day.",
    ("tenant_id", "ecosystem", "resource_id", "product_type", "product_category"),
)
RESOURCE_ACTIVE = MetricFamily(
    "chargeback_resource_active",
    "Resource active at the start of the billing day.",
    ("tenant_id", "ecosystem", "resource_id", "resource_type"),
    kind="flag",
)
IDENTITY_ACTIVE = MetricFamily(
    "chargeback_identity_active",
    "Identity active at the start of the billing day.",
    ("tenant_id", "ecosystem", "identity_id", "identity_type"),
    kind="flag",
)
# Only in the current-state file: which billing day its values describe, so a
# dashboard or alert can tell a stale file from a quiet day.
BILLING_DATE = MetricFamily(
    "chargeback_billing_date_timestamp_seconds",
    "Billing day (its 00:00 UTC in Unix seconds) that the chargeback values in this file describe.",
    ("tenant_id", "ecosystem"),
    kind="integer",
)

HISTORY_FAMILIES = (CHARGEBACK_AMOUNT, BILLING_AMOUNT, RESOURCE_ACTIVE, IDENTITY_ACTIVE)


def unix_seconds(d: date) -> int:
    """``d`` 00:00 UTC as integer Unix seconds (no float on the way)."""
    return calendar.timegm(d.timetuple())


def escape_label_value(value: str) -> str:
    """``\\`` → ``\\\\``, ``"`` → ``\\"``, newline → ``\\n`` (the exposition formats' escapes)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(slots=True)
class FamilySamples:
    """The samples of one family, keyed by label values and timestamp; equal keys sum."""

    family: MetricFamily
    _values: dict[SampleKey, Decimal] = field(default_factory=dict)

    def add(self, labels: Sequence[str | None], value: Decimal, timestamp: int | None) -> None:
        """Add ``value`` to the sample ``(labels, timestamp)``; ``None`` labels become ``""``.

        A flag family (``*_active``) records presence: adding twice keeps ``1``.
        """
        if len(labels) != len(self.family.label_names):
            raise ValueError(
                f"{self.family.name}: {len(labels)} label values for labels {self.family.label_names}"
            )
        key = (tuple("" if v is None else str(v) for v in labels), timestamp)
        if self.family.kind == "flag":
            self._values[key] = Decimal(1)
        else:
            self._values[key] = self._values.get(key, Decimal(0)) + value

    def __len__(self) -> int:
        return len(self._values)

    def at(self, timestamp: int) -> FamilySamples:
        """The samples stamped ``timestamp``, without timestamps (a current-state view)."""
        view = FamilySamples(self.family)
        view._values = {(labels, None): v for (labels, ts), v in self._values.items() if ts == timestamp}
        return view

    def sample_lines(self) -> list[str]:
        """Sample lines ordered by label values, then timestamp ascending."""
        names = self.family.label_names
        lines = []
        for (labels, timestamp), value in sorted(self._values.items(), key=_sample_order):
            rendered = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, labels, strict=True))
            text = _value_text(self.family.kind, value)
            suffix = "" if timestamp is None else f" {timestamp}"
            lines.append(f"{self.family.name}{{{rendered}}} {text}{suffix}")
        return lines


def _value_text(kind: ValueKind, value: Decimal) -> str:
    if kind == "flag":
        return "1"
    if kind == "integer":
        if value != value.to_integral_value():
            raise ValueError(f"value {value} is not an integer")
        return str(int(value))
    return format_amount(value)


def _sample_order(item: tuple[SampleKey, Decimal]) -> tuple[tuple[str, ...], int]:
    (labels, timestamp), _ = item
    return labels, -1 if timestamp is None else timestamp


def _family_lines(samples: FamilySamples) -> list[str]:
    family = samples.family
    return [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} gauge", *samples.sample_lines()]


def render_openmetrics(families: Iterable[FamilySamples]) -> str:
    """OpenMetrics text: families in the given order, each with HELP and TYPE, ``# EOF`` last."""
    lines = [line for samples in families for line in _family_lines(samples)]
    return "\n".join([*lines, "# EOF", ""])


def render_text_exposition(families: Iterable[FamilySamples]) -> str:
    """Prometheus text format 0.0.4, as node_exporter's textfile collector reads it.

    Refuses timestamped samples: the collector rejects a file that has any.
    """
    lines: list[str] = []
    for samples in families:
        if any(ts is not None for _, ts in samples._values):
            raise ValueError(f"{samples.family.name}: the text exposition file must not carry timestamps")
        lines.extend(_family_lines(samples))
    return "\n".join([*lines, ""])
