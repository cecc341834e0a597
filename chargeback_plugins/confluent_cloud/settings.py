"""Settings of the ``confluent_cloud`` plugin (spec/confluent-cloud.md §1, config.md §5–§6).

Secrets (the API secret and every Flink secret) are ``SecretStr``: they are unwrapped
only when an HTTP client is built, so a settings object can be logged or shown without
leaking them. Validation messages never repeat input values.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from chargeback_pipeline.config import PluginSettingsBase
from chargeback_pipeline.metrics import MetricsConnection
from chargeback_pipeline.plugin_settings import MAX_WAIT_SECONDS

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.confluent.cloud"
DEFAULT_FLINK_BASE_URL = "https://flink.{region}.{cloud}.confluent.cloud"
CKU_USAGE_RATIO = "kafka_cku_usage_ratio"
CKU_SHARED_RATIO = "kafka_cku_shared_ratio"
CKU_DEFAULTS = {CKU_USAGE_RATIO: Decimal("0.70"), CKU_SHARED_RATIO: Decimal("0.30")}
RATIO_TOLERANCE = Decimal("0.0001")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_URL = re.compile(r"^https?://[^/?#@\s]+(/[^?#\s]*)?$")


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


NonBlank = Annotated[str, AfterValidator(_non_blank)]
Secret = Annotated[SecretStr, AfterValidator(_non_empty_secret)]


def _http_url(value: str) -> str:
    """``http://`` or ``https://``, no credentials or query; trailing ``/`` removed, path prefix kept."""
    value = value.strip()
    if not _URL.match(value):
        raise ValueError("must be an http:// or https:// URL with a host (no credentials, query or fragment)")
    return value.rstrip("/")


class _Section(BaseModel):
    """Nested sections keep unknown keys so the plugin can warn about them instead of failing."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def unknown_keys(self, prefix: str) -> list[str]:
        return [f"{prefix}.{key}" for key in (self.model_extra or {})]


class ReplaySettings(_Section):
    """Serve recorded API responses instead of calling the vendor (offline demos).

    The same client code path runs — pagination, retries, throttling — only the
    transport reads ``dir`` instead of opening sockets. With ``recorded_now`` set, every
    date of the recording is moved by the whole days between that instant and the
    pipeline's clock, so a recording keeps covering "the last settled days" forever.
    """

    dir: NonBlank
    recorded_now: datetime | None = None

    @field_validator("recorded_now")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError("must carry a timezone, e.g. 2026-03-09T00:00:00Z")
        return value


class CCloudApiSettings(_Section):
    key: NonBlank
    secret: Secret
    base_url: str = DEFAULT_BASE_URL
    flink_base_url: str = DEFAULT_FLINK_BASE_URL
    # Extensions (not in the spec's table): knobs for tests, stand-ins and the offline demo.
    timeout_seconds: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    request_interval_seconds: float = Field(default=0.1, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    # Bounded retries (429, 5xx, timeouts, truncated bodies): attempts per request, and a
    # factor on every wait (the backoff and the server's Retry-After) so fault tests and
    # stand-ins can run the real retry path in milliseconds instead of minutes.
    max_attempts: int = Field(default=6, ge=1, le=20)
    retry_wait_scale: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    replay: ReplaySettings | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("flink_base_url")
    @classmethod
    def _flink_template(cls, value: str) -> str:
        names = set(_PLACEHOLDER.findall(value))
        if names - {"region", "cloud"}:
            raise ValueError("only the placeholders {region} and {cloud} are allowed")
        sample = value.replace("{region}", "region").replace("{cloud}", "cloud")
        if "{" in sample or "}" in sample:
            raise ValueError("has unbalanced braces; only {region} and {cloud} are allowed")
        _http_url(sample)
        return value.strip().rstrip("/")


class BillingApiSettings(_Section):
    days_per_query: int = Field(default=15, ge=1, le=30)


class FlinkRegion(_Section):
    """Credentials of one Flink region; ``region_id`` is ``us-east-1`` or ``aws.us-east-1``."""

    region_id: NonBlank
    key: NonBlank
    secret: Secret

    @field_validator("region_id")
    @classmethod
    def _normalise(cls, value: str) -> str:
        return value.strip().lower()

    @property
    def cloud(self) -> str | None:
        """The cloud named by a qualified ``region_id`` (``aws.us-east-1`` → ``aws``), else ``None``."""
        head, sep, _ = self.region_id.partition(".")
        return head if sep else None

    @property
    def region(self) -> str:
        _, sep, tail = self.region_id.partition(".")
        return tail if sep else self.region_id


class CCloudSettings(PluginSettingsBase):
    ccloud_api: CCloudApiSettings
    billing_api: BillingApiSettings = Field(default_factory=BillingApiSettings)
    metrics: MetricsConnection | None = None
    flink: list[FlinkRegion] = Field(default_factory=list)
    topic_attribution: Any = None

    @field_validator("flink")
    @classmethod
    def _unique_regions(cls, regions: list[FlinkRegion]) -> list[FlinkRegion]:
        seen: set[str] = set()
        for region in regions:
            if region.region_id in seen:
                raise ValueError(f"duplicate region_id '{region.region_id}'")
            seen.add(region.region_id)
        return regions

    @field_validator("allocator_params")
    @classmethod
    def _ratios(cls, params: dict[str, Any]) -> dict[str, Any]:
        for name, value in params.items():
            if name.endswith("_ratio") and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"'{name}' must be a number (int or float)")
        if CKU_USAGE_RATIO in params or CKU_SHARED_RATIO in params:
            total = sum(
                (Decimal(str(params.get(name, default))) for name, default in CKU_DEFAULTS.items()),
                Decimal(0),
            )
            if abs(total - 1) > RATIO_TOLERANCE:
                raise ValueError(
                    f"{CKU_USAGE_RATIO} + {CKU_SHARED_RATIO} must be 1 within {RATIO_TOLERANCE}, got {total}"
                )
        return params

    @model_validator(mode="after")
    def _warn_ignored(self) -> CCloudSettings:
        if self.topic_attribution is not None:
            log.warning("plugin_settings.topic_attribution is not part of this version; ignored")
        return self

    def unknown_key_paths(self, raw: dict[str, Any]) -> list[str]:
        """Keys the plugin does not know, at top level and inside its sections (warned, ignored)."""
        paths = self.unknown_keys(raw)
        paths += self.ccloud_api.unknown_keys("ccloud_api")
        if self.ccloud_api.replay is not None:
            paths += self.ccloud_api.replay.unknown_keys("ccloud_api.replay")
        paths += self.billing_api.unknown_keys("billing_api")
        for index, region in enumerate(self.flink):
            paths += region.unknown_keys(f"flink.{index}")
        return paths

    def flink_credentials_for(self, cloud: str, region: str) -> FlinkRegion | None:
        """The ``flink[]`` entry for a pool's (cloud, region), both lower-case (§7.5).

        A cloud-qualified entry wins over a bare one; ``None`` = the pool is not allocatable.
        """
        bare = None
        for entry in self.flink:
            if entry.region != region:
                continue
            if entry.cloud == cloud:
                return entry
            if entry.cloud is None and bare is None:
                bare = entry
        return bare
