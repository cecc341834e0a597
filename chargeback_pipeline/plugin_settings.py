"""Helpers plugins use to validate their ``plugin_settings`` with pydantic.

Lives in the core so that every plugin reports settings errors the same way: one
``PluginConfigError`` per problem path, never echoing the offending value (it may be
a secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

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
