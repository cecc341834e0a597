"""Building blocks plugins use for their ``plugin_settings`` (validated with pydantic).

Lives in the core so that every plugin reports settings errors the same way (one
``PluginConfigError`` naming the field, never echoing the offending value, which may
be a secret) and shares the common pieces: exact decimal rates and the identity
source of metric-driven plugins (static identities, principal → team mapping).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from chargeback_pipeline.errors import PluginConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_plugin_settings(model: type[ModelT], raw: Mapping[str, Any]) -> ModelT:
    """Validate ``raw`` against ``model``; the first problem becomes a ``PluginConfigError``."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        first = errors[0]
        field = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        raise PluginConfigError(field, message) from None


# Upper bounds the spec leaves open. Each value here ends up in a ``timedelta``, a socket
# timeout, ``time.sleep`` or a product of money; far above any real setting, they turn
# an ``OverflowError`` (or a run that sleeps forever) into a config error naming the field.
MAX_DURATION_SECONDS = 10 * 366 * 86400  # ten years
MAX_DURATION_HOURS = MAX_DURATION_SECONDS // 3600
MAX_WAIT_SECONDS = 3600.0  # network timeouts, request intervals, retry backoff
MAX_COUNT = 1_000_000  # nodes, brokers: multiplied by 24 h and a rate

# A rate is multiplied by quantities and hours, and the product must still fit a 28-digit
# Decimal with four decimals (24 integer digits); ``1e400`` passes every other check and
# would only fail at run time, inside the billing step. A trillion per unit is far above
# any real price.
MAX_RATE = Decimal(10) ** 12


def _exact_rate(value: Any) -> Decimal:
    """``Decimal(str(value))`` so ``0.1`` in YAML stays exactly 0.1; rates are never negative."""
    if isinstance(value, bool):
        raise ValueError("must be a decimal number")
    try:
        parsed = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValueError("must be a decimal number") from None
    if not parsed.is_finite():
        raise ValueError("must be a finite decimal number")
    if parsed < 0:
        raise ValueError("must be >= 0")
    if parsed > MAX_RATE:
        raise ValueError(f"must be <= {MAX_RATE}")
    return parsed


Rate = Annotated[Decimal, BeforeValidator(_exact_rate)]


class StrictSettings(BaseModel):
    """Nested plugin settings: unknown keys are typos, so they are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StaticIdentity(StrictSettings):
    identity_id: str = Field(min_length=1)
    identity_type: str = "principal"
    display_name: str | None = None
    team: str | None = None


class IdentitySourceSettings(StrictSettings):
    """Where a metric-driven plugin finds identities: Prometheus labels, a static list, or both."""

    source: Literal["prometheus", "static", "both"] = "prometheus"
    principal_to_team: dict[str, str] = Field(default_factory=dict)
    default_team: str = "UNASSIGNED"
    static_identities: list[StaticIdentity] = Field(default_factory=list)

    @property
    def uses_prometheus(self) -> bool:
        return self.source in ("prometheus", "both")

    @property
    def uses_static(self) -> bool:
        return self.source in ("static", "both")

    def team_of(self, principal: str) -> str:
        return self.principal_to_team.get(principal, self.default_team)
