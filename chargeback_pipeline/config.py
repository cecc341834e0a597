"""Loading and validating the YAML configuration file (config.md).

The file is read once, environment references are substituted, and every tenant is
validated on its own: a tenant with errors is excluded and its errors kept, so one
tenant's bad settings never stop the others (config.md §7). Validation messages are
built from pydantic's location and message only; the offending *value* is never
included because it may be a secret.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from chargeback_pipeline.errors import ConfigError, PluginConfigError, PluginLoadError
from chargeback_pipeline.loader import PluginRegistry, discover_plugins
from chargeback_pipeline.plugin_settings import MAX_DURATION_HOURS, MAX_DURATION_SECONDS

logger = logging.getLogger(__name__)

CONFIG_ENV = "CHARGEBACK_CONFIG"
ENV_FILE_ENV = "CHARGEBACK_ENV_FILE"
DEFAULT_CONFIG_FILE = "config.yaml"
TENANT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
DEFAULT_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
GRANULARITY_LEVELS = {"hourly": 0, "daily": 1, "monthly": 2}
MASK = "**********"

# Secret fields of the built-in plugins (config.md §6); "*" matches any key or list index.
SECRET_PATTERNS: tuple[tuple[str, ...], ...] = (
    ("ccloud_api", "secret"),
    ("flink", "*", "secret"),
    ("metrics", "password"),
    ("metrics", "bearer_token"),
    ("resource_source", "sasl_password"),
)
# Any field with one of these names is treated as secret wherever it appears, so a
# plugin that forgets to declare a ``settings_model`` still gets its secrets masked.
SECRET_KEY_NAMES = frozenset({"secret", "password", "bearer_token", "sasl_password", "token", "api_secret"})

KeyPath = tuple[str | int, ...]


# --- Environment: .env files and ${VAR} substitution ------------------------------------

_PLACEHOLDER = re.compile(r"\$\{([^}:]+)(?::-([^}]*))?\}")


class _MissingVariable(Exception):
    def __init__(self, name: str, where: str, reason: str = "is not set") -> None:
        super().__init__(f"Required environment variable '{name}' {reason} (at {where})")
        self.variable = name
        self.where = where


def _usable(name: str, value: str, where: str) -> str:
    """``value``, unless it holds bytes that are not UTF-8.

    Python hands such bytes over as lone surrogates, which would fail much later in an
    HTTP header or a DuckDB write with an error that says nothing of the variable. The
    value itself is never shown: it is often a secret.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _MissingVariable(name, where, "is not valid UTF-8 text") from None
    return value


def format_path(path: Iterable[str | int]) -> str:
    """Dotted key path as used in every message (list indices as numbers)."""
    return ".".join(str(part) for part in path)


def substitute_string(value: str, where: str, env: Mapping[str, str] | None = None) -> str:
    """Replace every ``${NAME}`` / ``${NAME:-default}`` in one string (config.md §2)."""
    environ = os.environ if env is None else env

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        current = environ.get(name)
        if default is not None:
            return _usable(name, current, where) if current else default
        if current is None:
            raise _MissingVariable(name, where)
        return _usable(name, current, where)

    return _PLACEHOLDER.sub(replace, value)


def substitute_env(
    data: Any, path: KeyPath = (), env: Mapping[str, str] | None = None
) -> tuple[Any, set[KeyPath], list[str]]:
    """Substitute over every string value of ``data`` recursively; keys are untouched.

    Returns the new tree, the paths of values that used a placeholder (a secret that
    did not is a literal in the file) and one message per missing variable.
    """
    placeholders: set[KeyPath] = set()
    errors: list[str] = []
    result = _substitute(data, path, env, placeholders, errors)
    return result, placeholders, errors


def _substitute(
    data: Any, path: KeyPath, env: Mapping[str, str] | None, placeholders: set[KeyPath], errors: list[str]
) -> Any:
    if isinstance(data, str):
        if _PLACEHOLDER.search(data) is None:
            return data
        placeholders.add(path)
        try:
            return substitute_string(data, format_path(path), env)
        except _MissingVariable as exc:
            errors.append(str(exc))
            return data
    if isinstance(data, Mapping):
        return {
            key: _substitute(value, (*path, key), env, placeholders, errors) for key, value in data.items()
        }
    if isinstance(data, list):
        return [_substitute(value, (*path, i), env, placeholders, errors) for i, value in enumerate(data)]
    return data


def parse_env_file(path: Path) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines (``export``, ``#`` comments and quotes allowed).

    Deliberately tiny: no interpolation and no multi-line values, which keeps what a
    ``.env`` file means obvious and avoids another dependency.
    """
    values: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"Cannot read env file '{path}': {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Cannot read env file '{path}': not UTF-8 text (byte {exc.start})") from None
    for number, line in enumerate(lines, start=1):
        parsed = _parse_env_line(line, path, number)
        if parsed is not None:
            values[parsed[0]] = parsed[1]
    return values


def _parse_env_line(line: str, path: Path, number: int) -> tuple[str, str] | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    stripped = stripped.removeprefix("export ").lstrip()
    key, sep, value = stripped.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
        raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
    parsed = _env_value(value.strip(), path, number)
    if "\x00" in parsed:  # the environment cannot hold it (os.environ raises a bare ValueError)
        raise ConfigError(f"{path}:{number}: the value of {key} contains a NUL byte")
    return key, parsed


def _env_value(value: str, path: Path, number: int) -> str:
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = value.find(quote, 1)
        if end == -1:
            raise ConfigError(f"{path}:{number}: unterminated {quote} quote")
        return value[1:end]
    comment = value.find(" #")
    return (value[:comment] if comment != -1 else value).strip()


def load_env_file(config_dir: Path) -> Path | None:
    """Load ``CHARGEBACK_ENV_FILE`` or ``<config dir>/.env``; existing variables win."""
    explicit = os.environ.get(ENV_FILE_ENV)
    if explicit:
        env_path = Path(explicit)
        if not env_path.is_file():
            raise ConfigError(f"{ENV_FILE_ENV} names '{explicit}', which is not a file")
    else:
        env_path = config_dir / ".env"
        if not env_path.is_file():
            return None
    for key, value in parse_env_file(env_path).items():
        os.environ.setdefault(key, value)
    return env_path


# --- Shared validators --------------------------------------------------------------------


def _reject_bool(value: Any) -> Any:
    """YAML ``true`` is not a count of days; pydantic would otherwise read it as 1."""
    if isinstance(value, bool):
        raise ValueError("Input should be a valid integer, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_reject_bool)]


def _log_level(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return value.upper()


LogLevel = Annotated[str, BeforeValidator(_log_level)]


# Durations are capped at ten years (plugin_settings.MAX_DURATION_SECONDS). The spec gives
# only lower bounds, but a duration has to become a ``timedelta`` (and a Dagster schedule
# interval), and ``10**30`` seconds overflows both: the cap turns that crash at run time
# into a config error that names the field.


def _at_least_one_hour(value: int) -> int:
    if value < 1:
        raise ValueError("minimum is 1 hour")
    if value > MAX_DURATION_HOURS:
        raise ValueError(f"maximum is {MAX_DURATION_HOURS} hours (ten years)")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonBlank = Annotated[str, AfterValidator(_non_blank)]


# --- Top-level models (config.md §3) --------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LoggingSettings(_Section):
    level: LogLevel = "INFO"
    format: str = DEFAULT_LOG_FORMAT
    per_module_levels: dict[str, LogLevel] = Field(default_factory=dict)


class FeatureSettings(_Section):
    enable_periodic_refresh: bool = True
    refresh_interval: Int = Field(default=1800, gt=0, le=MAX_DURATION_SECONDS)
    max_parallel_tenants: Int = Field(default=4, ge=1, le=64)


class AppSettings(_Section):
    """Everything above ``tenants:``; ``plugins_path`` is absolute after loading."""

    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    plugins_path: Path | None = None


# --- Plugin settings base (config.md §5, emitters.md §2) -----------------------------------


class EmitterSpec(_Section):
    type: NonBlank
    name: NonBlank
    aggregation: Literal["hourly", "daily", "monthly"] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    lookback_days: Int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_type(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("name") is None and "type" in data:
            return {**data, "name": data["type"]}
        return data

    @field_validator("params")
    @classmethod
    def _no_injected_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        for reserved in ("storage_backend", "emitter_context"):
            if reserved in params:
                raise ValueError(f"params.{reserved} is supplied by the pipeline and must not be configured")
        return params


def _allocator_params(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    for key, item in value.items():
        if not isinstance(item, bool | int | float | str | Decimal):
            raise ValueError(f"'{key}' must be a number, string or boolean, got {type(item).__name__}")
        # .nan / .inf (or 1e400) would pass every ``<``/``>`` range check an allocator makes.
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"'{key}' must be a finite number, got {item}")
    return value


class PluginSettingsBase(_Section):
    """Fields every plugin's settings share; each plugin's settings model extends it.

    Unknown keys are ignored here because the rest of ``plugin_settings`` belongs to
    the plugin; plugins can list them with :meth:`unknown_keys` to warn.
    """

    allocator_params: Annotated[dict[str, bool | int | float | str], BeforeValidator(_allocator_params)] = (
        Field(default_factory=dict)
    )
    allocator_overrides: dict[str, NonBlank] = Field(default_factory=dict)
    identity_resolution_overrides: dict[str, NonBlank] = Field(default_factory=dict)
    min_refresh_gap_seconds: Int = Field(default=1800, ge=0, le=MAX_DURATION_SECONDS)
    granularity_durations: dict[str, Annotated[Int, AfterValidator(_at_least_one_hour)]] = Field(
        default_factory=dict
    )
    metrics_step_seconds: Int = Field(default=3600, gt=0, le=MAX_DURATION_SECONDS)
    chargeback_granularity: Literal["hourly", "daily", "monthly"] = "daily"
    emitters: list[EmitterSpec] = Field(default_factory=list)

    @field_validator("emitters")
    @classmethod
    def _emitters_consistent(cls, emitters: list[EmitterSpec], info: ValidationInfo) -> list[EmitterSpec]:
        problems = _duplicate_emitter_names(emitters)
        granularity = info.data.get("chargeback_granularity")
        if granularity is not None:
            problems.extend(_too_fine_aggregations(emitters, granularity))
        if problems:
            raise ValueError("; ".join(problems))
        return emitters

    @classmethod
    def unknown_keys(cls, raw: Mapping[str, Any]) -> list[str]:
        """Top-level keys of ``raw`` this model does not declare."""
        known = set(cls.model_fields) | {info.alias for info in cls.model_fields.values() if info.alias}
        return [str(key) for key in raw if key not in known]


def _duplicate_emitter_names(emitters: list[EmitterSpec]) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    for index, spec in enumerate(emitters):
        if spec.name in seen:
            first = seen[spec.name]
            problems.append(
                f"duplicate emitter name '{spec.name}': entries {first} (type '{emitters[first].type}') "
                f"and {index} (type '{spec.type}'); set a distinct 'name'"
            )
        else:
            seen[spec.name] = index
    return problems


def _too_fine_aggregations(emitters: list[EmitterSpec], granularity: str) -> list[str]:
    return [
        f"entry {index} ('{spec.name}'): aggregation '{spec.aggregation}' is finer than "
        f"chargeback_granularity '{granularity}'"
        for index, spec in enumerate(emitters)
        if spec.aggregation and GRANULARITY_LEVELS[spec.aggregation] < GRANULARITY_LEVELS[granularity]
    ]


# --- Tenant model (config.md §4) ---------------------------------------------------------------


class StorageSettings(_Section):
    backend: Literal["duckdb"] = "duckdb"
    path: Path | None = None

    @field_validator("path")
    @classmethod
    def _no_nul(cls, value: Path | None) -> Path | None:
        # The OS refuses it later with a bare "embedded null byte" that names no field.
        if value is not None and "\x00" in str(value):
            raise ValueError("the path contains a NUL byte")
        return value


class CheckSettings(_Section):
    """Thresholds of the tenant's non-blocking asset checks (README, "Operating it").

    ``unallocated_share_warning_pct``: a tenant-day whose ``UNALLOCATED`` amount exceeds
    this share of its billed total gets a warning. ``freshness_grace_hours``: hours after
    a date settles before the freshness check flags it as not yet calculated (the
    scheduled refresh needs a tick or two to pick it up).
    """

    unallocated_share_warning_pct: Annotated[Decimal, BeforeValidator(_reject_bool)] = Field(
        default=Decimal(10), ge=0, le=100
    )
    freshness_grace_hours: Int = Field(default=6, ge=0, le=168)


class TenantConfig(_Section):
    """One validated tenant. ``storage.path`` is absolute after loading."""

    ecosystem: NonBlank
    tenant_id: NonBlank
    cutoff_days: Int = Field(default=5, ge=1, le=30)
    lookback_days: Int = Field(default=200, ge=1, le=364, validate_default=True)
    retention_days: Int = Field(default=250, ge=1, le=730, validate_default=True)
    allocation_retry_limit: Int = Field(default=3, ge=1, le=10)
    zero_gather_deletion_threshold: Int = Field(default=-1, ge=-1)
    gather_failure_threshold: Int = Field(default=5, ge=1)
    tenant_execution_timeout_seconds: Int = Field(default=3600, ge=0, le=MAX_DURATION_SECONDS)
    metrics_prefetch_workers: Int = Field(default=4, ge=1, le=20)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    checks: CheckSettings = Field(default_factory=CheckSettings)
    plugin_settings: PluginSettingsBase = Field(default_factory=PluginSettingsBase)

    _name: str = PrivateAttr("")
    _config_dir: Path | None = PrivateAttr(None)
    _raw_plugin_settings: dict[str, Any] = PrivateAttr(default_factory=dict)
    _secret_paths: frozenset[KeyPath] = PrivateAttr(frozenset())

    @field_validator("lookback_days")
    @classmethod
    def _lookback_after_cutoff(cls, value: int, info: ValidationInfo) -> int:
        cutoff = info.data.get("cutoff_days")
        if cutoff is not None and value <= cutoff:
            raise ValueError("lookback_days must be > cutoff_days")
        return value

    @field_validator("retention_days")
    @classmethod
    def _retention_covers_lookback(cls, value: int, info: ValidationInfo) -> int:
        lookback = info.data.get("lookback_days")
        if lookback is not None and value < lookback:
            raise ValueError("retention_days must be >= lookback_days")
        return value

    @property
    def name(self) -> str:
        """The tenant name (YAML key): partition key and file-name stem."""
        return self._name

    @property
    def config_dir(self) -> Path | None:
        """Directory of the configuration file; relative emitter paths are resolved against it."""
        return self._config_dir

    @property
    def storage_path(self) -> Path:
        if self.storage.path is None:
            raise ValueError(f"tenant '{self._name}': storage.path was not resolved")
        return self.storage.path

    def plugin_settings_dict(self) -> dict[str, Any]:
        """The substituted ``plugin_settings`` as a plain dict (secrets as plain strings).

        A fresh deep copy each time, so a plugin that mutates its settings cannot
        affect the next run.
        """
        return copy.deepcopy(self._raw_plugin_settings)

    def masked_plugin_settings(self) -> dict[str, Any]:
        """``plugin_settings`` with every secret replaced by ``**********``."""
        masked = mask_secrets(self._raw_plugin_settings, self._secret_paths)
        return masked if isinstance(masked, dict) else {}

    def calculation_fingerprint(self) -> str:
        """Digest of the settings an allocation depends on (secrets masked, so a rotated
        key does not force every date to be recalculated)."""
        payload = {
            "ecosystem": self.ecosystem,
            "tenant_id": self.tenant_id,
            "allocation_retry_limit": self.allocation_retry_limit,
            "plugin_settings": self.masked_plugin_settings(),
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def fingerprint(self) -> str:
        """Stable digest of the tenant's effective settings ("settings changed" tests)."""
        payload = {"tenant": self.model_dump(mode="json"), "plugin_settings": self._raw_plugin_settings}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- Secrets (config.md §6) -------------------------------------------------------------------------


def _matches(path: KeyPath, pattern: tuple[str, ...]) -> bool:
    return len(path) == len(pattern) and all(
        p == "*" or p == str(part) for part, p in zip(path, pattern, strict=True)
    )


def is_secret_path(path: KeyPath, extra_patterns: Iterable[tuple[str, ...]] = ()) -> bool:
    """Whether a path inside ``plugin_settings`` holds a secret."""
    if path and isinstance(path[-1], str) and path[-1] in SECRET_KEY_NAMES:
        return True
    return any(_matches(path, pattern) for pattern in (*SECRET_PATTERNS, *extra_patterns))


def secret_paths(data: Any, extra_patterns: Iterable[tuple[str, ...]] = ()) -> frozenset[KeyPath]:
    """Concrete paths of secret values in ``data`` (only non-null scalars count)."""
    patterns = tuple(extra_patterns)
    return frozenset(
        path for path, value in _leaves(data) if value is not None and is_secret_path(path, patterns)
    )


def _leaves(data: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _leaves(value, (*path, index))
    else:
        yield path, data


def mask_secrets(data: Any, paths: frozenset[KeyPath], path: KeyPath = ()) -> Any:
    """Copy of ``data`` with the values at ``paths`` replaced by the mask."""
    if path in paths:
        return MASK
    if isinstance(data, Mapping):
        return {key: mask_secrets(value, paths, (*path, key)) for key, value in data.items()}
    if isinstance(data, list):
        return [mask_secrets(value, paths, (*path, i)) for i, value in enumerate(data)]
    return data


def model_secret_patterns(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of ``SecretStr`` fields in a plugin's settings model ("*" for list items/map values)."""
    patterns: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        patterns.extend(_annotation_secrets(info.annotation, (*prefix, key), depth=0))
    return patterns


def _annotation_secrets(annotation: Any, path: tuple[str, ...], depth: int) -> list[tuple[str, ...]]:
    if depth > 8 or annotation is None:
        return []
    if annotation is SecretStr:
        return [path]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_secret_patterns(annotation, path)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _annotation_secrets(args[0], path, depth + 1)
    if origin in (list, tuple, set, frozenset) and args:
        return _annotation_secrets(args[0], (*path, "*"), depth + 1)
    if origin is dict and len(args) == 2:
        return _annotation_secrets(args[1], (*path, "*"), depth + 1)
    if origin in (Union, types.UnionType):
        found: list[tuple[str, ...]] = []
        for arg in args:
            found.extend(_annotation_secrets(arg, path, depth + 1))
        return found
    return []


# --- Error formatting ---------------------------------------------------------------------------------


def pydantic_issues(exc: ValidationError, prefix: KeyPath = ()) -> list[tuple[str, str]]:
    """``(field path, message)`` pairs without the input value (it may be a secret)."""
    issues = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        issues.append((format_path((*prefix, *error["loc"])), message))
    return issues


def tenant_message(display: str, tenant: str, field_path: str, message: str) -> str:
    head = f"{display}: tenant '{tenant}'"
    return f"{head}: {field_path}: {message}" if field_path else f"{head}: {message}"


def top_message(display: str, field_path: str, message: str) -> str:
    return f"{display}: {field_path}: {message}" if field_path else f"{display}: {message}"


# --- The loaded file --------------------------------------------------------------------------------


@dataclass
class LoadedConfig:
    """Result of :func:`load_config`: valid tenants, excluded tenants' errors, warnings."""

    path: Path
    display_path: str
    settings: AppSettings
    tenants: dict[str, TenantConfig] = field(default_factory=dict)
    tenant_errors: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    registry: PluginRegistry | None = None

    @property
    def config_dir(self) -> Path:
        return self.path.parent

    @property
    def errors(self) -> list[str]:
        """Every tenant error, one message per problem, in file order."""
        return [message for messages in self.tenant_errors.values() for message in messages]

    def tenant_names(self) -> list[str]:
        """Valid and excluded tenants, in file order."""
        return list(dict.fromkeys([*self.tenants, *self.tenant_errors]))

    def require_tenant(self, name: str) -> TenantConfig:
        """The named valid tenant, or a ConfigError carrying why it cannot run."""
        if name in self.tenants:
            return self.tenants[name]
        if name in self.tenant_errors:
            errors = self.tenant_errors[name]
            raise ConfigError(f"tenant '{name}' is invalid:\n" + "\n".join(errors), errors=list(errors))
        known = ", ".join(self.tenant_names()) or "(none)"
        raise ConfigError(f"{self.display_path}: unknown tenant '{name}'; configured tenants: {known}")


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)


def load_config(path: str | Path | None = None, *, registry: PluginRegistry | None = None) -> LoadedConfig:
    """Load, substitute and validate the configuration file (config.md §1).

    Raises ``ConfigError`` for problems that invalidate the whole file (missing file,
    YAML syntax, top-level settings, plugin discovery); tenant problems are returned in
    ``tenant_errors``. ``registry`` replaces plugin discovery (tests).
    """
    config_path = Path(path) if path is not None else default_config_path()
    display = str(config_path)
    absolute = config_path.expanduser().resolve()
    load_env_file(absolute.parent)
    root = _read_yaml(absolute, display)
    warnings: list[str] = []
    warnings.extend(_unknown_keys(AppSettings, root, (), display=display, known=frozenset({"tenants"})))
    settings = _load_app_settings(root, display, absolute.parent)
    tenants_raw = _tenants_section(root, display)
    if not tenants_raw:
        warnings.append(f"{display}: no tenants configured")
    if registry is None:
        registry = _discover(settings.plugins_path, display)
    loaded = LoadedConfig(absolute, display, settings, warnings=warnings, registry=registry)
    context = _TenantLoader(display, absolute.parent, registry)
    for name, raw in tenants_raw.items():
        context.load(str(name), raw, loaded)
    _check_storage_collisions(loaded)
    for warning in loaded.warnings:
        logger.warning(warning)
    return loaded


def _read_yaml(path: Path, display: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Configuration file not found: '{display}'") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read configuration file '{display}': {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Cannot read configuration file '{display}': not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"Malformed YAML in '{display}': {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{display}: the top level must be a mapping, got {type(data).__name__}")
    broken = _lone_surrogate_path(data, ())
    if broken is not None:
        raise ConfigError(
            f"{display}: {format_path(broken) or '(top level)'}: contains a lone UTF-16 surrogate "
            "(a YAML escape such as \\ud800), which is not valid Unicode text"
        )
    return data


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate_path(node: Any, path: KeyPath) -> KeyPath | None:
    """Where a YAML ``"\\ud800"`` escape left half a surrogate pair, if anywhere.

    ``yaml.safe_load`` accepts the escape, but no file, log or DuckDB column can hold the
    result: it would pass validation and fail the run with a bare codec error.
    """
    if isinstance(node, str):
        return path if _SURROGATE.search(node) else None
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and _SURROGATE.search(key):
                return (*path, key.encode("utf-8", "backslashreplace").decode("ascii"))
            found = _lone_surrogate_path(value, (*path, str(key)))
            if found is not None:
                return found
    if isinstance(node, list):
        for index, value in enumerate(node):
            found = _lone_surrogate_path(value, (*path, index))
            if found is not None:
                return found
    return None


def _load_app_settings(root: Mapping[str, Any], display: str, config_dir: Path) -> AppSettings:
    top = {key: value for key, value in root.items() if key in AppSettings.model_fields}
    substituted, _, missing = substitute_env(top)
    errors = [top_message(display, "", message) for message in missing]
    settings = AppSettings()
    if not missing:
        try:
            settings = AppSettings.model_validate(substituted)
        except ValidationError as exc:
            errors.extend(top_message(display, p, m) for p, m in pydantic_issues(exc))
    if errors:
        raise ConfigError("\n".join(errors), errors=errors)
    if settings.plugins_path is not None:
        try:
            settings.plugins_path = (config_dir / settings.plugins_path.expanduser()).resolve()
            is_dir = settings.plugins_path.is_dir()
        except (OSError, ValueError, RuntimeError) as exc:  # NUL byte, unknown ~user, symlink loop
            raise ConfigError(top_message(display, "plugins_path", f"not a usable path: {exc}")) from None
        if not is_dir:
            message = top_message(display, "plugins_path", f"'{settings.plugins_path}' is not a directory")
            raise ConfigError(message)
    return settings


def _tenants_section(root: Mapping[str, Any], display: str) -> dict[Any, Any]:
    tenants = root.get("tenants")
    if tenants is None:
        return {}
    if not isinstance(tenants, dict):
        raise ConfigError(top_message(display, "tenants", f"must be a mapping, got {type(tenants).__name__}"))
    return tenants


def _discover(plugins_path: Path | None, display: str) -> PluginRegistry:
    try:
        return discover_plugins(plugins_path)
    except PluginLoadError as exc:
        raise ConfigError(f"{display}: {exc}") from exc


def _unknown_keys(
    model: type[BaseModel],
    data: Any,
    path: tuple[str, ...],
    *,
    display: str,
    known: frozenset[str] = frozenset(),
) -> list[str]:
    """Warnings for keys the model (and its nested section models) does not declare."""
    if not isinstance(data, Mapping):
        return []
    warnings = []
    for key, value in data.items():
        key_path = (*path, str(key))
        info = model.model_fields.get(str(key))
        if info is None and key not in known:
            warnings.append(f"{display}: unknown key '{format_path(key_path)}' ignored")
        elif info is not None and _is_section(info.annotation):
            warnings.extend(_unknown_keys(info.annotation, value, key_path, display=display))
    return warnings


def _is_section(annotation: Any) -> TypeGuard[type[_Section]]:
    """Nested sections whose keys are checked; ``plugin_settings`` belongs to the plugin."""
    if not isinstance(annotation, type) or annotation is PluginSettingsBase:
        return False
    return issubclass(annotation, _Section)


def _check_storage_collisions(loaded: LoadedConfig) -> None:
    """Two tenants on one DuckDB file would corrupt each other: exclude both."""
    owners: dict[Path, str] = {}
    for name, tenant in list(loaded.tenants.items()):
        other = owners.setdefault(tenant.storage_path, name)
        if other == name:
            continue
        for mine, theirs in ((other, name), (name, other)):
            message = tenant_message(
                loaded.display_path,
                mine,
                "storage.path",
                f"'{tenant.storage_path}' is also used by tenant '{theirs}'; each tenant needs its own file",
            )
            loaded.tenant_errors.setdefault(mine, []).append(message)
            loaded.tenants.pop(mine, None)


# --- One tenant -----------------------------------------------------------------------------------


@dataclass
class _TenantLoader:
    display: str
    config_dir: Path
    registry: PluginRegistry

    def load(self, name: str, raw: Any, loaded: LoadedConfig) -> None:
        issues: list[tuple[str, str]] = []
        warnings: list[str] = []
        tenant = self._validate(name, raw, issues, warnings)
        loaded.warnings.extend(warnings)
        messages = list(dict.fromkeys(tenant_message(self.display, name, p, m) for p, m in _shadowed(issues)))
        if messages or tenant is None:
            loaded.tenant_errors[name] = messages
        else:
            loaded.tenants[name] = tenant

    def _validate(
        self, name: str, raw: Any, issues: list[tuple[str, str]], warnings: list[str]
    ) -> TenantConfig | None:
        if not TENANT_NAME_PATTERN.match(name):
            issues.append(("", f"invalid tenant name; it must match {TENANT_NAME_PATTERN.pattern}"))
            return None
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            issues.append(("", f"must be a mapping, got {type(raw).__name__}"))
            return None
        warnings.extend(_unknown_keys(TenantConfig, raw, ("tenants", name), display=self.display))
        substituted, placeholders, missing = substitute_env(raw, ("tenants", name))
        issues.extend(_missing_issue(message) for message in missing)
        plugin_raw = _plugin_settings_raw(substituted, issues)
        if plugin_raw is None:
            return None
        self._resolve_output_dirs(plugin_raw)
        tenant = self._model(substituted, plugin_raw, issues)
        secret_patterns = self._plugin_checks(substituted.get("ecosystem"), plugin_raw, issues)
        base = tenant.plugin_settings if tenant is not None else _base_settings(plugin_raw)
        if base is not None:
            tenant_id = substituted.get("tenant_id")
            issues.extend(
                emitter_spec_issues(
                    base.emitters,
                    tenant_name=name,
                    tenant_id=tenant_id if isinstance(tenant_id, str) else None,
                    ecosystem=str(substituted.get("ecosystem") or ""),
                    config_dir=self.config_dir,
                )
            )
            issues.extend(override_issues(base))
        if tenant is None or issues:
            return None
        self._finish(name, tenant)
        paths = secret_paths(plugin_raw, secret_patterns)
        warnings.extend(self._literal_secret_warnings(name, paths, placeholders))
        warnings.extend(self._step_warning(name, tenant))
        tenant._secret_paths = paths
        return tenant

    def _model(
        self, substituted: dict[str, Any], plugin_raw: dict[str, Any], issues: list[tuple[str, str]]
    ) -> TenantConfig | None:
        try:
            tenant = TenantConfig.model_validate({**substituted, "plugin_settings": plugin_raw})
        except ValidationError as exc:
            issues.extend(pydantic_issues(exc))
            return None
        tenant._raw_plugin_settings = plugin_raw
        return tenant

    def _resolve_output_dirs(self, plugin_raw: dict[str, Any]) -> None:
        """Relative emitter ``output_dir`` is relative to the config file, not the cwd."""
        emitters = plugin_raw.get("emitters")
        if not isinstance(emitters, list):
            return
        for spec in emitters:
            params = spec.get("params") if isinstance(spec, dict) else None
            if isinstance(params, dict) and isinstance(params.get("output_dir"), str):
                params["output_dir"] = str(self.config_dir / Path(params["output_dir"]).expanduser())

    def _plugin_checks(
        self, ecosystem: Any, plugin_raw: dict[str, Any], issues: list[tuple[str, str]]
    ) -> list[tuple[str, ...]]:
        """Run the plugin's own settings validation; returns its declared secret paths."""
        if not isinstance(ecosystem, str) or not ecosystem.strip():
            return []
        factory = self.registry.get(ecosystem)
        if factory is None:
            issues.append(("ecosystem", self.registry.unknown_ecosystem_message(ecosystem)))
            return []
        try:
            plugin = factory()
        except Exception as exc:
            issues.append(("ecosystem", f"plugin '{ecosystem}' factory failed: {type(exc).__name__}: {exc}"))
            return []
        self._resolve_plugin_paths(plugin, plugin_raw)
        known_paths = {path for path, _ in issues}
        for path, message in plugin_validation_issues(plugin, plugin_raw):
            if path not in known_paths:
                issues.append((path, message))
        model = getattr(plugin, "settings_model", None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model_secret_patterns(model)
        return []

    def _resolve_plugin_paths(self, plugin: object, plugin_raw: dict[str, Any]) -> None:
        """Relative paths a plugin declares in ``config_relative_paths`` are relative to the config file.

        Each entry is a key path inside ``plugin_settings`` (e.g. ``("ccloud_api", "replay", "dir")``);
        a string found there that is not absolute is joined to the config file's directory, so the
        file works from any working directory (the same rule as emitter ``output_dir``).
        """
        declared = getattr(plugin, "config_relative_paths", ())
        if not isinstance(declared, tuple | list):
            return
        for key_path in declared:
            parent: Any = plugin_raw
            *head, last = key_path
            for key in head:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and isinstance(parent.get(last), str) and parent[last].strip():
                parent[last] = str(self.config_dir / Path(parent[last]).expanduser())

    def _finish(self, name: str, tenant: TenantConfig) -> None:
        tenant._name = name
        tenant._config_dir = self.config_dir
        default = Path("data") / f"{name}.duckdb"
        tenant.storage.path = (self.config_dir / (tenant.storage.path or default).expanduser()).resolve()

    def _literal_secret_warnings(
        self, name: str, paths: frozenset[KeyPath], placeholders: set[KeyPath]
    ) -> list[str]:
        prefix: KeyPath = ("tenants", name, "plugin_settings")
        warnings = []
        for path in sorted(paths, key=format_path):
            if (*prefix, *path) not in placeholders:
                field_path = format_path(("plugin_settings", *path))
                warnings.append(
                    tenant_message(
                        self.display,
                        name,
                        field_path,
                        "secret given literally in the file; use a ${VAR} reference",
                    )
                )
        return warnings

    def _step_warning(self, name: str, tenant: TenantConfig) -> list[str]:
        step = tenant.plugin_settings.metrics_step_seconds
        if 86400 % step == 0:
            return []
        message = f"{step} does not divide a day (86400 s); metric windows will not align with days"
        return [tenant_message(self.display, name, "plugin_settings.metrics_step_seconds", message)]


_MISSING_MARK = "Required environment variable"


def _missing_issue(message: str) -> tuple[str, str]:
    where = message.rsplit("(at ", 1)[-1].rstrip(")")
    parts = where.split(".", 2)
    return (parts[2] if len(parts) == 3 else ""), message


def _shadowed(issues: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop validation noise about values whose environment variable is missing.

    Validation still runs on the rest of the tenant so that every other problem is
    reported in the same pass; a placeholder left in place would only add a second,
    misleading message for the same field.
    """
    missing = {path for path, message in issues if message.startswith(_MISSING_MARK)}
    return [
        (path, message)
        for path, message in issues
        if message.startswith(_MISSING_MARK) or not any(_under(path, m) for m in missing)
    ]


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent + ".")


def _base_settings(plugin_raw: dict[str, Any]) -> PluginSettingsBase | None:
    """The common plugin fields on their own, so emitter and override checks still run
    (and report) when another part of the tenant is invalid."""
    try:
        return PluginSettingsBase.model_validate(plugin_raw)
    except ValidationError:
        return None


def _plugin_settings_raw(substituted: dict[str, Any], issues: list[tuple[str, str]]) -> dict[str, Any] | None:
    plugin_raw = substituted.get("plugin_settings")
    if plugin_raw is None:
        return {}
    if not isinstance(plugin_raw, dict):
        issues.append(("plugin_settings", f"must be a mapping, got {type(plugin_raw).__name__}"))
        return None
    return plugin_raw


def plugin_validation_issues(plugin: object, plugin_raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Call the plugin's optional ``validate_settings`` and turn its complaint into issues."""
    validate = getattr(plugin, "validate_settings", None)
    if not callable(validate):
        return []
    try:
        validate(copy.deepcopy(dict(plugin_raw)))
    except PluginConfigError as exc:
        return [(format_path(("plugin_settings", exc.field)) if exc.field else "plugin_settings", exc.reason)]
    except ValidationError as exc:
        return pydantic_issues(exc, ("plugin_settings",))
    except Exception as exc:
        return [("plugin_settings", f"validate_settings failed: {type(exc).__name__}: {exc}")]
    return []


def emitter_spec_issues(
    emitters: list[EmitterSpec],
    *,
    tenant_name: str | None = None,
    tenant_id: str | None = None,
    ecosystem: str = "",
    config_dir: Path | None = None,
) -> list[tuple[str, str]]:
    """Ask the emitter registry whether each spec's type and params are acceptable.

    Given the tenant, the specs are also checked against it (file names built from its
    tenant id, an output directory that cannot be written), so such problems exclude
    the tenant at load time instead of failing its sinks later.
    """
    validate = _emitter_validator()
    if validate is None:
        return []
    context = None
    if tenant_name is not None:
        from chargeback_pipeline.emitters.registry import EmitterContext

        context = EmitterContext(
            tenant_name=tenant_name, ecosystem=ecosystem, tenant_id=tenant_id, config_dir=config_dir
        )
    issues = []
    for index, spec in enumerate(emitters):
        try:
            validate(spec.type, spec.params, context)
        except ValueError as exc:
            issues.append((f"plugin_settings.emitters.{index}", f"emitter '{spec.name}': {exc}"))
    return issues


def _emitter_validator() -> Callable[[str, Mapping[str, Any], Any], None] | None:
    """The registry's ``validate_spec``; importing the package registers the built-ins."""
    try:
        import importlib

        importlib.import_module("chargeback_pipeline.emitters")
        registry = importlib.import_module("chargeback_pipeline.emitters.registry")
    except ImportError:  # pragma: no cover - only while the emitters package is absent
        logger.debug("Emitter registry unavailable; emitter specs not validated")
        return None
    validator = getattr(registry, "validate_spec", None)
    return validator if callable(validator) else None


def override_issues(settings: PluginSettingsBase) -> list[tuple[str, str]]:
    """Load every override path now so a typo is a validation error, not a failed run."""
    from chargeback_pipeline.overrides import load_allocator, load_resolver

    issues: list[tuple[str, str]] = []
    checks: list[tuple[str, dict[str, str], Callable[[str], object]]] = [
        ("allocator_overrides", settings.allocator_overrides, load_allocator),
        ("identity_resolution_overrides", settings.identity_resolution_overrides, load_resolver),
    ]
    for key, entries, load in checks:
        for product_type, dotted in entries.items():
            try:
                load(dotted)
            except (ValueError, ImportError, AttributeError, TypeError) as exc:
                issues.append((f"plugin_settings.{key}.{product_type}", f"{type(exc).__name__}: {exc}"))
    return issues


# --- Presentation helpers ---------------------------------------------------------------------------


def resolved_settings(loaded: LoadedConfig) -> dict[str, Any]:
    """The effective configuration as JSON-ready data, secrets masked (show-config)."""
    tenants = {}
    for name, tenant in loaded.tenants.items():
        data = tenant.model_dump(mode="json", exclude={"plugin_settings"})
        data["plugin_settings"] = tenant.masked_plugin_settings()
        tenants[name] = data
    return {
        "config_path": str(loaded.path),
        **loaded.settings.model_dump(mode="json"),
        "tenants": tenants,
        "invalid_tenants": {name: errors for name, errors in loaded.tenant_errors.items()},
    }


def configure_logging(settings: LoggingSettings) -> None:
    """Apply ``logging:`` (level, format, per-module levels) to the root logger."""
    logging.basicConfig(level=settings.level, format=settings.format, force=True)
    for module, level in settings.per_module_levels.items():
        logging.getLogger(module).setLevel(level)
