"""What Prometheus says exists: brokers, topics and principals seen recently (§2, §5)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chargeback_pipeline.errors import MetricsQueryError
from chargeback_pipeline.principals import label_values
from chargeback_pipeline.protocols import MetricsSource
from chargeback_plugins.self_managed_kafka.queries import COMBINED_DISCOVERY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Discovery:
    brokers: tuple[str, ...]
    topics: tuple[str, ...]
    principals: tuple[str, ...]


def discover(source: MetricsSource, now: datetime, window_hours: int, step: timedelta) -> Discovery:
    """Label sets of the bytes-in series over ``[now − window, now)``; query errors propagate."""
    rows = source.query([COMBINED_DISCOVERY], now - timedelta(hours=window_hours), now, step)
    return Discovery(
        brokers=tuple(label_values(rows, "broker")),
        topics=tuple(label_values(rows, "topic")),
        principals=tuple(label_values(rows, "principal")),
    )


@dataclass
class DiscoveryState:
    """Discovery shared by the plugin (which runs it) and the handler (which reads it).

    ``principals_available`` is decided once per plugin instance at ``initialize``: a
    cluster whose metrics carry no ``principal`` label falls back to static identities
    for the whole run rather than flapping between gathers.
    """

    principals_available: bool = False
    latest: Discovery | None = None
    _from_initialize: Discovery | None = field(default=None, repr=False)

    def initial(self, source: MetricsSource, now: datetime, window_hours: int, step: timedelta) -> None:
        try:
            found = discover(source, now, window_hours, step)
        except MetricsQueryError as exc:
            log.warning("Principal discovery failed (%s); principals unavailable for this run", exc)
            return
        self._from_initialize = found
        self.principals_available = bool(found.principals)
        if not self.principals_available:
            log.warning("Principal discovery found no 'principal' label values; principals unavailable")

    def refresh(
        self, source: MetricsSource, now: datetime, window_hours: int, step: timedelta
    ) -> Discovery | None:
        """The initialize result the first time, a fresh discovery afterwards; ``None`` on error."""
        if self._from_initialize is not None:
            self.latest, self._from_initialize = self._from_initialize, None
            return self.latest
        try:
            self.latest = discover(source, now, window_hours, step)
        except MetricsQueryError as exc:
            log.warning("Kafka discovery failed (%s); only the cluster is gathered", exc)
            self.latest = None
        return self.latest
