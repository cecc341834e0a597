"""The built-in ``prometheus`` emitter (spec/emitters.md §5).

Dashboards need chargebacks over time, not only the last day, so every call renders the
tenant's **whole history** from storage (limited to the spec's ``lookback_days``) as one
OpenMetrics file whose samples are stamped at their billing day's midnight. The file is
replaced atomically; a recalculated day therefore replaces its samples wherever they
are loaded from this file.

It also writes a **current-state** file in the classic text format (no timestamps):
the newest billing day's values, for node_exporter's textfile collector. That gives a
live scrape target next to the history, with
``chargeback_billing_date_timestamp_seconds`` saying which day the values describe.

Design notes:

* The emitter reads storage itself (``needs_storage_backend``); the ``rows`` argument
  is only checked for the tenant. It needs the spec's aggregation, lookback and the
  plugin's billing resource types, which the core hands over in ``EmitterContext``.
* A run that emits several dates renders once: the core wraps its calls in
  :meth:`PrometheusEmitter.batch`, and the file is written when the batch ends. Called
  on its own (outside a batch) every call writes, as the emitter protocol expects.
* ``port`` is accepted for configurations written for older versions; nothing is
  served. Any static HTTP server (or the textfile collector) can expose the files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from chargeback_pipeline.emitters.aggregation import Bucket, bucket_date, bucket_range
from chargeback_pipeline.emitters.files import (
    atomic_write,
    check_output_location,
    context_path_values,
    render_path,
    resolve_output_dir,
    template_placeholders,
    template_problem,
)
from chargeback_pipeline.emitters.openmetrics import (
    BILLING_AMOUNT,
    BILLING_DATE,
    CHARGEBACK_AMOUNT,
    IDENTITY_ACTIVE,
    RESOURCE_ACTIVE,
    FamilySamples,
    render_openmetrics,
    render_text_exposition,
    unix_seconds,
)
from chargeback_pipeline.emitters.registry import EmitterContext, check_param_types, emitter_factory
from chargeback_pipeline.models import ChargebackRow, day_start
from chargeback_pipeline.storage.backend import StorageBackend

PROMETHEUS_EMITTER_NAME = "prometheus"
DEFAULT_OUTPUT_DIR = "metrics"
DEFAULT_FILENAME_TEMPLATE = "{tenant_id}.om"
DEFAULT_CURRENT_STATE_TEMPLATE = "{tenant_id}.prom"
PLACEHOLDERS = ("ecosystem", "tenant_id", "tenant_name")
CONTEXT_PLACEHOLDERS = ("ecosystem", "tenant_name")
PROMETHEUS_PARAMS: dict[str, tuple[type, ...]] = {
    "output_dir": (str,),
    "filename_template": (str,),
    "current_state_template": (str, type(None)),
    "port": (int, type(None)),
}


# --- parameters --------------------------------------------------------------------------


def _templates(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(param name, template)`` of every file the emitter writes."""
    found = [("filename_template", params.get("filename_template", DEFAULT_FILENAME_TEMPLATE))]
    current = params.get("current_state_template", DEFAULT_CURRENT_STATE_TEMPLATE)
    if current is not None:
        found.append(("current_state_template", current))
    return found


def validate_prometheus_params(params: Mapping[str, Any]) -> None:
    """Reject unknown, wrong-typed or unsafe ``prometheus`` params."""
    check_param_types(PROMETHEUS_EMITTER_NAME, params, PROMETHEUS_PARAMS)
    if not params.get("output_dir", DEFAULT_OUTPUT_DIR).strip():
        raise ValueError("params.output_dir: must not be empty")
    port = params.get("port")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"params.port: must be between 1 and 65535, got {port}")
    templates = _templates(params)
    for key, template in templates:
        problem = template_problem(template, PLACEHOLDERS)
        if problem is not None:
            raise ValueError(f"params.{key}: {template!r} {problem}")
    if len(templates) == 2 and templates[0][1] == templates[1][1]:
        raise ValueError("params.current_state_template: must differ from filename_template")


def validate_prometheus_context(params: Mapping[str, Any], context: EmitterContext) -> None:
    """Refuse, at validation, a tenant whose files could not be written where configured."""
    templates = [template for _, template in _templates(params)]
    check_output_location(params.get("output_dir", DEFAULT_OUTPUT_DIR), templates, context)


# --- reading history from storage --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class History:
    """Every family's samples plus the newest rendered billing day (``None`` if none)."""

    families: tuple[FamilySamples, ...]
    latest: date | None
    dates: int


def collect_history(
    backend: StorageBackend,
    *,
    aggregation: str | None = None,
    earliest_date: date | None = None,
    resource_types: Sequence[str] | None = None,
) -> History:
    """All samples of the four families for every committed date ``>= earliest_date``.

    ``chargeback_amount`` follows the aggregation (emitters.md §3): ``null``/``hourly``
    keep ``allocation_method`` per row, ``daily`` takes each day's aggregated rows and
    ``monthly`` stamps whole calendar months at their first day. The other families
    are always per billing day.
    """
    dates = [d for d in backend.chargeback_dates() if earliest_date is None or d >= earliest_date]
    amounts = FamilySamples(CHARGEBACK_AMOUNT)
    billing = FamilySamples(BILLING_AMOUNT)
    resources = FamilySamples(RESOURCE_ACTIVE)
    identities = FamilySamples(IDENTITY_ACTIVE)
    for row, bucket_day in _amount_rows(backend, dates, aggregation):
        amounts.add(_amount_labels(row), row.amount, unix_seconds(bucket_day))
    types = None if resource_types is None else list(resource_types)
    for d in dates:
        stamp = unix_seconds(d)
        for line in backend.billing_for_date(d):
            billing.add(
                (line.tenant_id, line.ecosystem, line.resource_id, line.product_type, line.product_category),
                line.total_cost,
                stamp,
            )
        midnight = day_start(d)
        for r in backend.resources_active_at(midnight, types):
            resources.add((r.tenant_id, r.ecosystem, r.resource_id, r.resource_type), Decimal(1), stamp)
        for i in backend.identities_active_at(midnight):
            identities.add((i.tenant_id, i.ecosystem, i.identity_id, i.identity_type), Decimal(1), stamp)
    return History((amounts, billing, resources, identities), dates[-1] if dates else None, len(dates))


def collect_context_history(backend: StorageBackend, context: EmitterContext | None) -> History:
    """:func:`collect_history` with the spec's settings carried by ``context`` (defaults without)."""
    if context is None:
        return collect_history(backend)
    return collect_history(
        backend,
        aggregation=context.aggregation,
        earliest_date=context.earliest_date,
        resource_types=context.billing_resource_types,
    )


def _amount_rows(
    backend: StorageBackend, dates: Sequence[date], aggregation: str | None
) -> Iterator[tuple[ChargebackRow, date]]:
    """Rows for ``chargeback_amount`` with the day (or month) their sample is stamped at."""
    if not dates:
        return
    if aggregation in ("daily", "monthly"):
        bucket: Bucket = "month" if aggregation == "monthly" else "day"
        for start in sorted({bucket_date(d, aggregation) for d in dates}):
            for row in backend.chargebacks_aggregated(*bucket_range(start, aggregation), bucket):
                yield row, row.timestamp.date()
        return
    for d in dates:
        for row in backend.chargebacks_for_date(d):
            yield row, d


def _amount_labels(row: ChargebackRow) -> tuple[str | None, ...]:
    return (
        row.tenant_id,
        row.ecosystem,
        row.identity_id,
        row.resource_id,
        row.product_type,
        str(row.cost_type),
        row.allocation_method,
    )


def current_state(
    history: History, aggregation: str | None, tenant_id: str, ecosystem: str
) -> list[FamilySamples]:
    """The newest day's samples without timestamps, plus the day itself as a gauge.

    With ``monthly`` aggregation ``chargeback_amount`` is the newest month so far.
    """
    if history.latest is None:
        return [FamilySamples(f.family) for f in history.families]
    latest = history.latest
    amounts, *per_day = history.families
    views = [amounts.at(unix_seconds(bucket_date(latest, aggregation)))]
    views.extend(samples.at(unix_seconds(latest)) for samples in per_day)
    billing_date = FamilySamples(BILLING_DATE)
    billing_date.add((tenant_id, ecosystem), Decimal(unix_seconds(latest)), None)
    return [*views, billing_date]


# --- the emitter -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrometheusOutput:
    """What the last render wrote, for the sink step's asset metadata."""

    path: Path
    bytes_written: int
    samples: int
    dates_rendered: int
    latest_date: str | None
    current_state_path: Path | None
    current_state_bytes: int | None


class PrometheusEmitter:
    """Renders a tenant's whole chargeback history to OpenMetrics on every (batched) call."""

    def __init__(
        self,
        output_dir: Path,
        filename_template: str,
        current_state_template: str | None,
        storage_backend: StorageBackend,
        context: EmitterContext | None,
    ) -> None:
        self.output_dir = output_dir
        self.filename_template = filename_template
        self.current_state_template = current_state_template
        self.backend = storage_backend
        self.context = context
        self.last_output: PrometheusOutput | None = None
        self._batch_depth = 0
        self._batched_tenant: str | None = None

    def __call__(self, tenant_id: str, date: date, rows: Sequence[ChargebackRow]) -> None:
        for row in rows:
            if row.tenant_id != tenant_id:
                raise ValueError(
                    f"row of tenant_id {row.tenant_id!r} handed to the Prometheus emitter for {tenant_id!r}"
                )
        if self._batch_depth:
            self._batched_tenant = tenant_id
            return
        self.render(tenant_id)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Defer rendering until the block ends; render once if anything was emitted in it.

        If the block raises, nothing is written: the previous files stay as they were.
        """
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
        tenant_id, self._batched_tenant = self._batched_tenant, None
        if tenant_id is not None and not self._batch_depth:
            self.render(tenant_id)

    def paths(self, tenant_id: str) -> tuple[Path, Path | None]:
        """The history file and the current-state file (if enabled), inside ``output_dir``."""
        values = {"tenant_id": tenant_id, **context_path_values(self.context)}
        history = render_path(self.output_dir, self.filename_template, values)
        current = (
            None
            if self.current_state_template is None
            else render_path(self.output_dir, self.current_state_template, values)
        )
        return history, current

    def render(self, tenant_id: str) -> PrometheusOutput:
        """Read storage, write both files atomically, and return what was written."""
        history_path, current_path = self.paths(tenant_id)
        context = self.context
        aggregation = context.aggregation if context else None
        history = collect_context_history(self.backend, context)
        text = render_openmetrics(history.families)
        with atomic_write(history_path) as stream:
            stream.write(text)
        current_bytes = None
        if current_path is not None:
            ecosystem = context.ecosystem if context else ""
            current = render_text_exposition(current_state(history, aggregation, tenant_id, ecosystem))
            with atomic_write(current_path) as stream:
                stream.write(current)
            current_bytes = len(current.encode("utf-8"))
        self.last_output = PrometheusOutput(
            path=history_path,
            bytes_written=len(text.encode("utf-8")),
            samples=sum(len(f) for f in history.families),
            dates_rendered=history.dates,
            latest_date=history.latest.isoformat() if history.latest else None,
            current_state_path=current_path,
            current_state_bytes=current_bytes,
        )
        return self.last_output


@emitter_factory(
    needs_storage_backend=True,
    needs_emitter_context=True,
    validate_params=validate_prometheus_params,
    validate_context=validate_prometheus_context,
)
def make_prometheus_emitter(
    output_dir: str = DEFAULT_OUTPUT_DIR,
    filename_template: str = DEFAULT_FILENAME_TEMPLATE,
    port: int | None = None,
    *,
    current_state_template: str | None = DEFAULT_CURRENT_STATE_TEMPLATE,
    storage_backend: StorageBackend,
    emitter_context: EmitterContext | None = None,
) -> PrometheusEmitter:
    """Build the ``prometheus`` emitter; ``storage_backend`` and ``emitter_context`` are injected."""
    params: dict[str, Any] = {
        "output_dir": str(output_dir),
        "filename_template": filename_template,
        "current_state_template": current_state_template,
        "port": port,
    }
    validate_prometheus_params(params)
    if emitter_context is None:
        used = set().union(*(template_placeholders(t) for _, t in _templates(params)))
        needs_context = sorted(used & set(CONTEXT_PLACEHOLDERS))
        if needs_context:
            raise ValueError(
                f"params: {{{needs_context[0]}}} needs an EmitterContext "
                "(build the emitter through registry.get with context=...)"
            )
    config_dir = emitter_context.config_dir if emitter_context else None
    return PrometheusEmitter(
        resolve_output_dir(output_dir, config_dir),
        filename_template,
        current_state_template,
        storage_backend,
        emitter_context,
    )


def render_history(backend: StorageBackend, context: EmitterContext | None = None) -> str:
    """The exact history-file content without touching the disk (previews, tests)."""
    return render_openmetrics(collect_context_history(backend, context).families)
