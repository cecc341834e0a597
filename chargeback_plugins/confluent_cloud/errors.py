"""Errors raised while talking to the Confluent Cloud API (spec/confluent-cloud.md §2).

Both derive from the core's ``ChargebackError`` so the pipeline reports them like any
other deliberate failure. Messages carry the HTTP status and a bounded slice of the
body, never the API secret or the ``Authorization`` header.
"""

from __future__ import annotations

from chargeback_pipeline.errors import ChargebackError


class CCloudApiError(ChargebackError):
    """The API answered with a status that is not success (or a body that cannot be used).

    ``status`` is ``None`` for client-side protocol problems such as a pagination loop.
    """

    def __init__(self, status: int | None, message: str) -> None:
        prefix = f"HTTP {status}: " if status is not None else ""
        super().__init__(f"{prefix}{message}")
        self.status = status
        self.message = message


class CCloudConnectionError(ChargebackError):
    """No HTTP answer at all: DNS failure, refused or reset connection, timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
