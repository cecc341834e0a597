"""Emitter registry rules (spec/plugin-system.md §10)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from chargeback_pipeline.emitters import EmitterContext, make_csv_emitter, registry
from chargeback_pipeline.emitters.csv_emitter import CsvEmitter
from chargeback_pipeline.models import ChargebackRow

TEST_NAMES = ("my_emitter", "t_plain", "t_flag_not_true", "t_validated", "t_context", "t_bad_return")


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    yield
    for name in TEST_NAMES:
        registry.unregister(name)


class FakeBackend:
    """Stands in for the tenant StorageBackend; identity is all the registry should care about."""


class MyEmitter:
    def __init__(self, port: int, storage_backend: object) -> None:
        self.port = port
        self.storage_backend = storage_backend

    def __call__(self, tenant_id: str, date: date, rows: Sequence[ChargebackRow]) -> None:
        return None


def test_csv_is_registered_on_package_import() -> None:
    assert "csv" in registry.names()
    assert registry.names() == sorted(registry.names())


def test_seed_example_works_as_written_and_really_injects_the_backend() -> None:
    backend = FakeBackend()
    received: list[object] = []

    def make_my_emitter(port: int, storage_backend: FakeBackend) -> MyEmitter:
        assert storage_backend is backend
        received.append(storage_backend)
        return MyEmitter(port=port, storage_backend=storage_backend)

    make_my_emitter.needs_storage_backend = True  # type: ignore[attr-defined]
    registry.register("my_emitter", make_my_emitter)

    emitter = registry.get("my_emitter", {"port": 9100}, backend)

    assert isinstance(emitter, MyEmitter)
    assert emitter.port == 9100
    assert emitter.storage_backend is backend
    assert received == [backend]


def test_factory_without_flag_receives_only_params() -> None:
    seen: dict[str, Any] = {}

    def factory(**kwargs: Any) -> MyEmitter:
        seen.update(kwargs)
        return MyEmitter(port=kwargs["port"], storage_backend=None)

    registry.register("t_plain", factory)
    registry.get("t_plain", {"port": 1}, FakeBackend())
    assert seen == {"port": 1}


def test_truthy_flag_that_is_not_true_does_not_inject() -> None:
    seen: dict[str, Any] = {}

    def factory(**kwargs: Any) -> MyEmitter:
        seen.update(kwargs)
        return MyEmitter(port=0, storage_backend=None)

    factory.needs_storage_backend = "yes"  # type: ignore[attr-defined]
    registry.register("t_flag_not_true", factory)
    registry.get("t_flag_not_true", {}, FakeBackend())
    assert seen == {}


def test_storage_backend_in_params_is_a_config_error() -> None:
    def make_my_emitter(port: int, storage_backend: object) -> MyEmitter:
        raise AssertionError("must not be called")

    make_my_emitter.needs_storage_backend = True  # type: ignore[attr-defined]
    registry.register("my_emitter", make_my_emitter)
    with pytest.raises(ValueError, match=r"Emitter 'my_emitter': params.storage_backend is supplied by the"):
        registry.get("my_emitter", {"port": 1, "storage_backend": "x"}, FakeBackend())
    with pytest.raises(ValueError, match=r"params.storage_backend"):
        registry.validate_spec("my_emitter", {"storage_backend": "x"})
    with pytest.raises(ValueError, match=r"params.emitter_context"):
        registry.validate_spec("csv", {"output_dir": "out", "emitter_context": "x"})


def test_needed_backend_missing_is_refused() -> None:
    def make_my_emitter(port: int, storage_backend: object) -> MyEmitter:
        raise AssertionError("must not be called")

    make_my_emitter.needs_storage_backend = True  # type: ignore[attr-defined]
    registry.register("my_emitter", make_my_emitter)
    with pytest.raises(ValueError, match="Emitter 'my_emitter' needs a storage backend"):
        registry.get("my_emitter", {"port": 1}, None)


def test_same_factory_twice_is_a_noop_and_different_factory_is_refused() -> None:
    def first(**kwargs: Any) -> MyEmitter:
        return MyEmitter(port=1, storage_backend=None)

    def second(**kwargs: Any) -> MyEmitter:
        return MyEmitter(port=2, storage_backend=None)

    registry.register("t_plain", first)
    registry.register("t_plain", first)
    assert registry.names().count("t_plain") == 1
    with pytest.raises(
        ValueError, match="Emitter type 't_plain' is already registered with a different factory"
    ):
        registry.register("t_plain", second)
    emitter = registry.get("t_plain", {}, None)
    assert isinstance(emitter, MyEmitter) and emitter.port == 1


def test_builtin_csv_cannot_be_replaced() -> None:
    with pytest.raises(ValueError, match="'csv' is already registered"):
        registry.register("csv", lambda **kw: MyEmitter(0, None))


def test_unknown_name_message_lists_available_types() -> None:
    registry.register("t_plain", lambda **kw: MyEmitter(0, None))
    expected = f"Unknown emitter type 'nope'. Available: {', '.join(sorted(registry.names()))}"
    assert "csv" in registry.names() and "t_plain" in registry.names()
    with pytest.raises(ValueError) as get_error:
        registry.get("nope", {}, None)
    assert str(get_error.value) == expected
    with pytest.raises(ValueError) as validate_error:
        registry.validate_spec("nope", {})
    assert str(validate_error.value) == expected


def test_bad_registration_arguments() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("  ", lambda **kw: MyEmitter(0, None))
    with pytest.raises(ValueError, match="'t_plain' is not callable"):
        registry.register("t_plain", "not a factory")  # type: ignore[arg-type]


def test_validate_params_hook_is_called_by_validate_spec_and_get() -> None:
    calls: list[dict[str, Any]] = []

    def check(params: Mapping[str, Any]) -> None:
        calls.append(dict(params))
        if "bad" in params:
            raise ValueError("params.bad: not allowed")

    @registry.emitter_factory(validate_params=check)
    def factory(**kwargs: Any) -> MyEmitter:
        return MyEmitter(port=0, storage_backend=None)

    registry.register("t_validated", factory)
    registry.validate_spec("t_validated", {"ok": 1})
    with pytest.raises(ValueError, match=r"params\.bad: not allowed"):
        registry.validate_spec("t_validated", {"bad": 1})
    with pytest.raises(ValueError, match=r"params\.bad: not allowed"):
        registry.get("t_validated", {"bad": 1}, None)
    assert calls == [{"ok": 1}, {"bad": 1}, {"bad": 1}]


def test_validate_context_hook_runs_only_against_a_tenant() -> None:
    seen: list[tuple[dict[str, Any], str | None]] = []

    def check(params: Mapping[str, Any], context: EmitterContext) -> None:
        seen.append((dict(params), context.tenant_id))
        if context.tenant_id == "../x":
            raise ValueError("tenant id cannot be a file name")

    @registry.emitter_factory(validate_context=check)
    def factory(**kwargs: Any) -> MyEmitter:
        return MyEmitter(port=0, storage_backend=None)

    registry.register("t_context_checked", factory)
    try:
        registry.validate_spec("t_context_checked", {"a": 1})
        assert seen == []  # without a tenant there is nothing to check
        registry.validate_spec("t_context_checked", {"a": 1}, EmitterContext("t", "eco", tenant_id="ok"))
        with pytest.raises(ValueError, match="tenant id cannot be a file name"):
            registry.get("t_context_checked", {}, None, context=EmitterContext("t", "eco", tenant_id="../x"))
        assert seen == [({"a": 1}, "ok"), ({}, "../x")]
    finally:
        registry.unregister("t_context_checked")


def test_check_param_types_messages() -> None:
    types = {"a": (str,), "n": (int, type(None))}
    registry.check_param_types("x", {"a": "s", "n": None}, types, ("a",))
    for params, message in [
        ({"n": 1}, r"params\.a: required parameter of emitter 'x' is missing"),
        ({"a": "s", "z": 1}, r"params\.z: unknown parameter for emitter 'x' \(allowed: a, n\)"),
        ({"a": "s", "n": True}, r"params\.n: must be an integer or null, got bool"),
        ({"a": 1}, r"params\.a: must be a string, got int"),
    ]:
        with pytest.raises(ValueError, match=message):
            registry.check_param_types("x", params, types, ("a",))


def test_unexpected_keyword_becomes_a_value_error_naming_the_emitter() -> None:
    def factory(port: int) -> MyEmitter:
        return MyEmitter(port=port, storage_backend=None)

    registry.register("t_plain", factory)
    with pytest.raises(ValueError, match=r"Emitter 't_plain': invalid params: .*'colour'"):
        registry.get("t_plain", {"port": 1, "colour": "red"}, None)


def test_factory_returning_non_callable_is_refused() -> None:
    registry.register("t_bad_return", lambda **kw: 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="returned a non-callable int"):
        registry.get("t_bad_return", {}, None)


def test_params_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="Emitter 'csv': params must be a mapping, got list"):
        registry.validate_spec("csv", ["output_dir"])  # type: ignore[arg-type]


def test_emitter_context_is_injected_only_when_declared(tmp_path: Path) -> None:
    context = EmitterContext(
        tenant_name="acme-prod", ecosystem="confluent_cloud", extra_key_fields=("env_id",)
    )
    received: list[object] = []

    @registry.emitter_factory(needs_emitter_context=True)
    def factory(*, emitter_context: EmitterContext) -> MyEmitter:
        received.append(emitter_context)
        return MyEmitter(port=0, storage_backend=None)

    registry.register("t_context", factory)
    registry.get("t_context", {}, None, context=context)
    assert received == [context]
    with pytest.raises(ValueError, match="Emitter 't_context' needs an EmitterContext"):
        registry.get("t_context", {}, None)


def test_csv_built_through_registry_gets_context(tmp_path: Path) -> None:
    context = EmitterContext(
        tenant_name="acme-prod", ecosystem="confluent_cloud", extra_key_fields=("env_id",)
    )
    emitter = registry.get(
        "csv",
        {"output_dir": str(tmp_path), "filename_template": "{tenant_name}/{ecosystem}_{date}.csv"},
        FakeBackend(),
        context=context,
    )
    assert isinstance(emitter, CsvEmitter)
    assert emitter.extra_key_fields == ("env_id",)
    assert (
        emitter.path_for("acme", date(2026, 2, 1))
        == tmp_path / "acme-prod" / "confluent_cloud_2026-02-01.csv"
    )
    assert make_csv_emitter.needs_emitter_context is True  # type: ignore[attr-defined]
    assert getattr(make_csv_emitter, "needs_storage_backend", False) is False


def test_reimported_plugin_may_register_its_factory_again() -> None:
    """A plugin imported a second time (e.g. after rediscovery) defines a fresh function object."""
    namespace_a: dict[str, object] = {}
    namespace_b: dict[str, object] = {}
    source = "def make_reloaded(**params):\n    return lambda tenant_id, date, rows: None\n"
    exec(compile(source, "reloaded_plugin.py", "exec"), {"__name__": "reloaded_plugin"}, namespace_a)
    exec(compile(source, "reloaded_plugin.py", "exec"), {"__name__": "reloaded_plugin"}, namespace_b)
    first, second = namespace_a["make_reloaded"], namespace_b["make_reloaded"]
    assert first is not second
    try:
        registry.register("reloaded", first)  # type: ignore[arg-type]
        registry.register("reloaded", second)  # type: ignore[arg-type]
        assert registry._FACTORIES["reloaded"] is second
    finally:
        registry.unregister("reloaded")
