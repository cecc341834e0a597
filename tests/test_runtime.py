"""TenantRuntime: start-up order, protocol checks, dispatch, overrides and close (plugin-system.md §3-§12)."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chargeback_pipeline.allocation import default_fallback_allocator
from chargeback_pipeline.calculation import AllocationDispatch
from chargeback_pipeline.config import TenantConfig, load_config
from chargeback_pipeline.errors import ConfigError, PluginConfigError, PluginLoadError
from chargeback_pipeline.loader import PluginRegistry
from chargeback_pipeline.models import AllocationContext, AllocationResult, IdentityResolution
from chargeback_pipeline.plugin_guard import unwrap
from chargeback_pipeline.runtime import open_runtime

TARGETS = "cb_override_targets"

# --- a small fake plugin -------------------------------------------------------------------


def handler_allocator(ctx: AllocationContext) -> AllocationResult:
    return AllocationResult(rows=[])


def plugin_fallback(ctx: AllocationContext) -> AllocationResult:
    return AllocationResult(rows=[])


class FakeHandler:
    def __init__(
        self, service_type: str, product_types: Sequence[str], resource_types: Sequence[str]
    ) -> None:
        self.service_type = service_type
        self.handles_product_types = tuple(product_types)
        self.gathered_resource_types = tuple(resource_types)
        self.allocator_requests: list[str] = []

    def gather_resources(self, tenant_id: str, store: Any, shared_ctx: object | None = None) -> Iterable[Any]:
        return []

    def gather_identities(self, tenant_id: str, store: Any) -> Iterable[Any]:
        return []

    def resolve_identities(
        self,
        tenant_id: str,
        resource_id: str,
        billing_timestamp: datetime,
        billing_duration: timedelta,
        metrics_data: Any,
        store: Any,
        context: Any = None,
    ) -> IdentityResolution:
        return IdentityResolution(context={"resolved_by": self.service_type})

    def get_metrics_for_product_type(self, product_type: str) -> list[Any]:
        return []

    def get_allocator(self, product_type: str) -> Any:
        if product_type not in self.handles_product_types:
            raise ValueError(f"Unknown product type: {product_type}")
        self.allocator_requests.append(product_type)
        return handler_allocator


class HandlerWithoutAllocator(FakeHandler):
    get_allocator = None  # type: ignore[assignment]

    def __getattribute__(self, name: str) -> Any:
        if name == "get_allocator":
            raise AttributeError(name)
        return super().__getattribute__(name)


class FakeCostInput:
    def gather(self, tenant_id: str, start: datetime, end: datetime, store: Any) -> Iterable[Any]:
        return []


class FakeStorage:
    extra_key_fields = ("env_id",)

    def register_tables(self, conn: Any) -> None: ...
    def create_billing_repository(self, conn: Any) -> Any: ...
    def create_resource_repository(self, conn: Any) -> Any: ...
    def create_identity_repository(self, conn: Any) -> Any: ...
    def create_chargeback_repository(self, conn: Any) -> Any: ...


class FakePlugin:
    """Behaviour is set per test through class attributes; every call is recorded."""

    ecosystem = "fake"
    handlers: dict[str, Any] = {}
    fallback: Any = None
    initialize_error: Exception | None = None
    close_error: Exception | None = None
    instances: list[FakePlugin] = []

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.config: dict[str, Any] | None = None
        FakePlugin.instances.append(self)

    def initialize(self, config: dict[str, Any]) -> None:
        self.calls.append("initialize")
        self.config = config
        if self.initialize_error is not None:
            raise self.initialize_error

    def get_service_handlers(self) -> dict[str, Any]:
        self.calls.append("get_service_handlers")
        return dict(self.handlers)

    def get_cost_input(self) -> Any:
        self.calls.append("get_cost_input")
        return FakeCostInput()

    def get_metrics_source(self) -> Any:
        self.calls.append("get_metrics_source")
        return None

    def get_storage_module(self) -> Any:
        self.calls.append("get_storage_module")
        return FakeStorage()

    def get_fallback_allocator(self) -> Any:
        self.calls.append("get_fallback_allocator")
        return self.fallback

    def build_shared_context(self, tenant_id: str) -> object | None:
        self.calls.append("build_shared_context")
        return None

    def close(self) -> None:
        self.calls.append("close")
        if self.close_error is not None:
            raise self.close_error


class PluginWithoutFallback(FakePlugin):
    def __getattribute__(self, name: str) -> Any:
        if name == "get_fallback_allocator":
            raise AttributeError(name)
        return super().__getattribute__(name)


STARTUP = [
    "initialize",
    "get_service_handlers",
    "get_cost_input",
    "get_metrics_source",
    "get_storage_module",
    "get_fallback_allocator",
]


@pytest.fixture(autouse=True)
def _reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakePlugin, "instances", [])
    monkeypatch.setattr(
        FakePlugin,
        "handlers",
        {
            "kafka": FakeHandler("kafka", ["KAFKA_A", "KAFKA_B"], ["topic", "cluster"]),
            "flink": FakeHandler("flink", ["FLINK"], ["pool", "cluster"]),
        },
    )
    monkeypatch.setattr(FakePlugin, "fallback", None)
    monkeypatch.setattr(FakePlugin, "initialize_error", None)
    monkeypatch.setattr(FakePlugin, "close_error", None)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures" / "plugins_overrides"))


def registry(factory: Any = FakePlugin) -> PluginRegistry:
    return PluginRegistry(factories={"fake": factory})


def tenant(tmp_path: Path, plugin_settings: str = "{}") -> TenantConfig:
    text = f"""
        tenants:
          acme:
            ecosystem: fake
            tenant_id: acme-id
            allocation_retry_limit: 4
            plugin_settings: {plugin_settings}
        """
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    loaded = load_config(path, registry=registry())
    assert loaded.tenant_errors == {}
    FakePlugin.instances.clear()  # validation built a plugin too; tests look at the runtime's own
    return loaded.tenants["acme"]


def only_plugin() -> FakePlugin:
    [plugin] = FakePlugin.instances
    return plugin


# --- start-up order and attributes ------------------------------------------------------------------


def test_startup_order_settings_and_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_TEST_RT_SECRET", "s3cret")
    settings = "{api: {secret: '${CB_TEST_RT_SECRET}'}, allocator_params: {ratio: 0.7, n: 2}}"
    config = tenant(tmp_path, settings)
    with open_runtime("acme", config, registry()) as runtime:
        plugin = only_plugin()
        assert plugin.calls == STARTUP
        assert plugin.config == {"api": {"secret": "s3cret"}, "allocator_params": {"ratio": 0.7, "n": 2}}
    assert plugin.calls == [*STARTUP, "close"]
    assert "build_shared_context" not in plugin.calls
    assert runtime.allocator_params == {"ratio": Decimal("0.7"), "n": 2}
    assert isinstance(runtime.allocator_params["ratio"], Decimal)


def test_runtime_attributes(tmp_path: Path) -> None:
    config = tenant(tmp_path, "{granularity_durations: {weekly: 168}}")
    with open_runtime("acme", config, registry()) as runtime:
        assert isinstance(runtime, AllocationDispatch)
        assert (runtime.tenant_name, runtime.tenant_id, runtime.ecosystem) == ("acme", "acme-id", "fake")
        assert runtime.extra_key_fields == ("env_id",)
        assert runtime.billing_resource_types == ("cluster", "pool", "topic")
        assert runtime.granularity_durations == {"weekly": 168}
        assert runtime.allocation_retry_limit == 4
        assert list(runtime.handlers) == ["kafka", "flink"]
        assert runtime.product_types() == ["FLINK", "KAFKA_A", "KAFKA_B"]
        assert runtime.metrics_source is None
        assert isinstance(unwrap(runtime.cost_input), FakeCostInput)
        assert runtime.settings is config and runtime.settings_base is config.plugin_settings
        assert runtime.plugin is only_plugin()


def test_dispatch(tmp_path: Path) -> None:
    with open_runtime("acme", tenant(tmp_path), registry()) as runtime:
        kafka = FakePlugin.handlers["kafka"]
        assert unwrap(runtime.handler_for("KAFKA_B")) is kafka
        assert unwrap(runtime.handler_for("FLINK")) is FakePlugin.handlers["flink"]
        assert runtime.handler_for("UNKNOWN") is None
        assert unwrap(runtime.allocator_for("KAFKA_A")) is handler_allocator
        assert runtime.allocator_for("KAFKA_A") is runtime.allocator_for("KAFKA_A")  # cached
        assert kafka.allocator_requests == ["KAFKA_A"]
        assert unwrap(runtime.resolver_for("KAFKA_A")) == kafka.resolve_identities
        assert runtime.allocator_for("UNKNOWN") is default_fallback_allocator
        assert runtime.fallback_allocator is default_fallback_allocator
        with pytest.raises(ValueError, match="no handler claims product type 'UNKNOWN'"):
            runtime.resolver_for("UNKNOWN")


def test_plugin_fallback_is_used_when_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakePlugin, "fallback", staticmethod(plugin_fallback))
    with open_runtime("acme", tenant(tmp_path), registry()) as runtime:
        assert unwrap(runtime.fallback_allocator) is plugin_fallback
        assert unwrap(runtime.allocator_for("UNKNOWN")) is plugin_fallback


def test_overrides_are_applied(tmp_path: Path) -> None:
    settings = (
        f"{{allocator_overrides: {{KAFKA_B: '{TARGETS}:allocator_ok', GHOST: '{TARGETS}:allocator_ok'}}, "
        f"identity_resolution_overrides: {{kafka: '{TARGETS}:resolver_ok', "
        f"KAFKA_B: '{TARGETS}:resolver_other'}}}}"
    )
    with open_runtime("acme", tenant(tmp_path, settings), registry()) as runtime:
        assert runtime.allocator_for("KAFKA_B").__name__ == "allocator_ok"  # type: ignore[attr-defined]
        assert unwrap(runtime.allocator_for("KAFKA_A")) is handler_allocator
        assert runtime.resolver_for("KAFKA_A").__name__ == "resolver_ok"  # type: ignore[attr-defined]
        assert runtime.resolver_for("KAFKA_B").__name__ == "resolver_other"  # type: ignore[attr-defined]
        assert unwrap(runtime.resolver_for("FLINK")) == FakePlugin.handlers["flink"].resolve_identities
        # An override for a product type no handler claims is unused: the fallback still applies.
        assert runtime.allocator_for("GHOST") is default_fallback_allocator
        assert runtime.overrides.unused_allocator_keys == ["GHOST"]


# --- failures: errors name what is wrong, close runs exactly once --------------------------------------


def test_product_type_claimed_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handlers = {"a": FakeHandler("a", ["X", "Y"], []), "b": FakeHandler("b", ["Z", "Y"], [])}
    monkeypatch.setattr(FakePlugin, "handlers", handlers)
    with pytest.raises(PluginLoadError) as info, open_runtime("acme", tenant(tmp_path), registry()):
        pytest.fail("must not start")
    assert str(info.value) == "product type 'Y' is claimed by handlers 'a' and 'b'"
    assert only_plugin().calls == ["initialize", "get_service_handlers", "close"]


def test_plugin_missing_a_protocol_member(tmp_path: Path) -> None:
    with (
        pytest.raises(PluginLoadError) as info,
        open_runtime("acme", tenant(tmp_path), registry(PluginWithoutFallback)),
    ):
        pytest.fail("must not start")
    assert str(info.value) == (
        "tenant 'acme': plugin 'fake' (PluginWithoutFallback) does not implement EcosystemPlugin: "
        "missing member(s) get_fallback_allocator"
    )
    assert only_plugin().calls == []  # never initialised, so nothing to close


def test_handler_missing_a_protocol_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakePlugin, "handlers", {"kafka": HandlerWithoutAllocator("kafka", ["K"], [])})
    with pytest.raises(PluginLoadError) as info, open_runtime("acme", tenant(tmp_path), registry()):
        pytest.fail("must not start")
    assert str(info.value) == (
        "tenant 'acme': plugin 'fake' handler 'kafka' (HandlerWithoutAllocator) does not implement "
        "ServiceHandler: missing member(s) get_allocator"
    )
    assert only_plugin().calls.count("close") == 1


def test_plugin_config_error_is_prefixed_with_the_tenant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakePlugin, "initialize_error", PluginConfigError("ccloud_api.key", "Field required"))
    with pytest.raises(PluginConfigError) as info, open_runtime("acme", tenant(tmp_path), registry()):
        pytest.fail("must not start")
    assert str(info.value) == "tenant 'acme': plugin_settings.ccloud_api.key: Field required"
    assert (info.value.field, info.value.reason) == ("ccloud_api.key", "Field required")
    assert only_plugin().calls == ["initialize", "close"]


def test_failing_initialize_still_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakePlugin, "initialize_error", RuntimeError("cannot reach vendor"))
    with (
        pytest.raises(
            PluginLoadError,
            match=r"tenant 'acme': plugin '.*' failed to initialise: RuntimeError: cannot reach vendor",
        ),
        open_runtime("acme", tenant(tmp_path), registry()),
    ):
        pytest.fail("must not start")
    assert only_plugin().calls == ["initialize", "close"]


def test_failure_inside_the_run_closes_once(tmp_path: Path) -> None:
    with pytest.raises(KeyError), open_runtime("acme", tenant(tmp_path), registry()):
        raise KeyError("step failed")
    assert only_plugin().calls.count("close") == 1


def test_failing_close_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(FakePlugin, "close_error", OSError("socket already gone"))
    with (
        caplog.at_level(logging.WARNING, logger="chargeback_pipeline.runtime"),
        open_runtime("acme", tenant(tmp_path), registry()),
    ):
        pass
    assert caplog.messages == ["tenant 'acme': plugin 'fake' close() failed: OSError: socket already gone"]


def test_unknown_resolver_override_key_fails_startup_and_closes(tmp_path: Path) -> None:
    settings = f"{{identity_resolution_overrides: {{ksql: '{TARGETS}:resolver_ok'}}}}"
    with (
        pytest.raises(ConfigError, match="'ksql' is neither a product type nor a service type"),
        open_runtime("acme", tenant(tmp_path, settings), registry()),
    ):
        pytest.fail("must not start")
    assert only_plugin().calls[-1] == "close"
    assert only_plugin().calls.count("close") == 1


def test_unknown_ecosystem(tmp_path: Path) -> None:
    config = tenant(tmp_path)
    empty = PluginRegistry(load_errors=["plugin '/x' failed to import: ImportError: boom"])
    with pytest.raises(ConfigError) as info, open_runtime("acme", config, empty):
        pytest.fail("must not start")
    assert str(info.value) == (
        "tenant 'acme': unknown ecosystem 'fake'; available: (none); "
        "plugin load errors: plugin '/x' failed to import: ImportError: boom"
    )


def test_factory_failure(tmp_path: Path) -> None:
    def broken_factory() -> Any:
        raise RuntimeError("no plugin today")

    with (
        pytest.raises(PluginLoadError) as info,
        open_runtime("acme", tenant(tmp_path), registry(broken_factory)),
    ):
        pytest.fail("must not start")
    assert str(info.value) == "tenant 'acme': plugin 'fake' factory failed: RuntimeError: no plugin today"
