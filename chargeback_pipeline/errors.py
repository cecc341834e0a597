"""Error types. Each carries enough context (file, tenant, field, line) to act on."""

from __future__ import annotations


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


class TenantBusyError(StorageError):
    """Another run of the tenant held its lock for longer than the caller would wait."""


class DateOutOfRangeError(ChargebackError):
    """A billing date outside the tenant's allowed window was requested."""
