"""Error types. Each carries enough context (file, tenant, field, line) to act on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chargeback_pipeline.models import MetricQuery


class ChargebackError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(ChargebackError):
    """The configuration file (or a tenant in it) is invalid.

    ``errors`` holds one message per problem, already prefixed with the file and
    tenant, so the CLI can print all of them at once.
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


class PluginConfigError(ChargebackError):
    """A plugin rejected its ``plugin_settings``; ``field`` is the dotted field path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"plugin_settings.{field}: {message}" if field else f"plugin_settings: {message}")
        self.field = field
        self.reason = message


class PluginLoadError(ChargebackError):
    """Plugin discovery or start-up failed (broken plugin, duplicate product type, …)."""


class AllocationError(ChargebackError):
    """A billing line could not be allocated, or an allocator broke conservation."""


class StorageError(ChargebackError):
    """The tenant's database could not be opened, locked or written."""


class DateOutOfRangeError(ChargebackError):
    """A billing date outside the tenant's allowed window was requested."""


class MetricsQueryError(ChargebackError):
    """A metrics query failed: transport, HTTP status, Prometheus error or unreadable body.

    Every failure of the metrics source surfaces as this one type, so callers' fallbacks
    (usage tiers declining, per-date billing retry) always apply. ``str(err)`` names the
    query's key and the expression sent; it never contains a credential. The core adds
    the tenant name where it catches it.
    """

    def __init__(
        self,
        message: str,
        query: MetricQuery | None = None,
        status_code: int | None = None,
        expression: str | None = None,
    ) -> None:
        self.message = message
        self.query = query
        self.status_code = status_code
        self.expression = (
            expression if expression is not None else (query.query_expression if query else None)
        )
        super().__init__(self._render())

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the attributes when the error crosses a process boundary (pickling).
        return (type(self), (self.message, self.query, self.status_code, self.expression))

    def _render(self) -> str:
        if self.query is None:
            return self.message if self.expression is None else f"query {self.expression!r}: {self.message}"
        return f"metrics query '{self.query.key}' ({self.expression}): {self.message}"
