"""Allocator and identity-resolver overrides (plugin-system.md §7-§8) with real modules."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback_pipeline.errors import ConfigError
from chargeback_pipeline.models import AllocationContext, BillingLineItem, IdentityResolution
from chargeback_pipeline.overrides import bind_overrides, load_allocator, load_resolver

TARGETS = "cb_override_targets"
WHERE = "tenant 'acme': plugin_settings.allocator_overrides.KAFKA_X"


@pytest.fixture(autouse=True)
def _targets_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures" / "plugins_overrides"))


def _context() -> AllocationContext:
    line = BillingLineItem(
        ecosystem="eco",
        tenant_id="t",
        timestamp=datetime(2026, 3, 1, tzinfo=UTC),
        resource_id="r1",
        product_category="cat",
        product_type="KAFKA_X",
        quantity=Decimal(1),
        unit_price=Decimal("2.5000"),
        total_cost=Decimal("2.5000"),
    )
    return AllocationContext(
        timeslice=line.timestamp,
        billing_line=line,
        identities=IdentityResolution(),
        split_amount=Decimal("2.5000"),
    )


def test_allocator_override_loads_and_is_the_named_function() -> None:
    allocator = load_allocator(f"{TARGETS}:allocator_ok")
    result = allocator(_context())
    assert [(r.identity_id, r.amount, r.allocation_detail) for r in result.rows] == [
        ("UNALLOCATED", Decimal("2.5000"), "fixture_override")
    ]


@pytest.mark.parametrize("attribute", ["bound.allocate", "allocator_varargs"])
def test_allocator_shapes_that_are_accepted(attribute: str) -> None:
    assert callable(load_allocator(f"{TARGETS}:{attribute}"))


@pytest.mark.parametrize("attribute", ["resolver_ok", "resolver_instance"])
def test_resolver_shapes_that_are_accepted(attribute: str) -> None:
    resolver = load_resolver(f"{TARGETS}:{attribute}")
    resolution = resolver("t", "r", datetime(2026, 3, 1, tzinfo=UTC), timedelta(days=1), None, object(), None)
    assert isinstance(resolution, IdentityResolution)


@pytest.mark.parametrize("path", ["", "no_colon", ":attr", f"{TARGETS}:", "  :  "])
def test_malformed_paths_are_value_errors(path: str) -> None:
    with pytest.raises(ValueError) as info:
        load_allocator(path, WHERE)
    assert str(info.value) == f"{WHERE}: expected 'module.path:attribute', got {path!r}"


def test_non_string_path_is_a_value_error() -> None:
    with pytest.raises(ValueError) as info:
        load_allocator(42)  # type: ignore[arg-type]
    assert str(info.value) == "expected 'module.path:attribute', got 42"


def test_missing_module_is_an_import_error_naming_the_module() -> None:
    with pytest.raises(ImportError) as info:
        load_allocator("cb_no_such_module_anywhere:f", WHERE)
    assert str(info.value).startswith(f"{WHERE}: cannot import module 'cb_no_such_module_anywhere': ")
    assert info.value.name == "cb_no_such_module_anywhere"


def test_module_failing_at_import_is_an_import_error() -> None:
    with pytest.raises(ImportError) as info:
        load_allocator("cb_override_import_fails:f", WHERE)
    assert str(info.value) == (
        f"{WHERE}: cannot import module 'cb_override_import_fails': "
        "RuntimeError: this override module fails at import time"
    )


def test_missing_attribute_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError) as info:
        load_allocator(f"{TARGETS}:nope", WHERE)
    assert str(info.value) == f"{WHERE}: module '{TARGETS}' has no attribute 'nope'"


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        (
            "AllocatorClass",
            f"'{TARGETS}:AllocatorClass' is a class; the allocator override must be a callable",
        ),
        ("NOT_CALLABLE", f"'{TARGETS}:NOT_CALLABLE' is not callable (int)"),
        (
            "allocator_two_params",
            f"'{TARGETS}:allocator_two_params' takes 2 positional parameter(s); an allocator must take 1",
        ),
        (
            "allocator_keyword_only",
            f"'{TARGETS}:allocator_keyword_only' takes 0 positional parameter(s); an allocator must take 1",
        ),
        (
            "resolver_ok",
            f"'{TARGETS}:resolver_ok' takes 7 positional parameter(s); an allocator must take 1",
        ),
    ],
)
def test_allocator_type_errors(attribute: str, message: str) -> None:
    with pytest.raises(TypeError) as info:
        load_allocator(f"{TARGETS}:{attribute}", WHERE)
    assert str(info.value) == f"{WHERE}: {message}"


@pytest.mark.parametrize(
    ("attribute", "actual"),
    [("resolver_six", 6), ("allocator_ok", 1)],
)
def test_resolver_needs_seven_positional_parameters(attribute: str, actual: int) -> None:
    with pytest.raises(TypeError) as info:
        load_resolver(f"{TARGETS}:{attribute}")
    assert str(info.value) == (
        f"'{TARGETS}:{attribute}' takes {actual} positional parameter(s); an identity resolver must take 7"
    )


def test_resolver_accepts_varargs() -> None:
    assert callable(load_resolver(f"{TARGETS}:allocator_varargs"))


# --- binding to a tenant's product types ----------------------------------------------------------

PRODUCTS = {"KAFKA_A": "kafka", "KAFKA_B": "kafka", "FLINK": "flink"}
SERVICES = {"kafka": ["KAFKA_A", "KAFKA_B"], "flink": ["FLINK"]}


def test_product_type_key_wins_over_service_type_key() -> None:
    bound = bind_overrides(
        "acme",
        {},
        {"kafka": f"{TARGETS}:resolver_ok", "KAFKA_B": f"{TARGETS}:resolver_other"},
        PRODUCTS,
        SERVICES,
    )
    names = {pt: r.__name__ for pt, r in bound.resolvers.items()}  # type: ignore[attr-defined]
    assert names == {"KAFKA_A": "resolver_ok", "KAFKA_B": "resolver_other"}


def test_product_type_key_wins_regardless_of_order() -> None:
    bound = bind_overrides(
        "acme",
        {},
        {"KAFKA_B": f"{TARGETS}:resolver_other", "kafka": f"{TARGETS}:resolver_ok"},
        PRODUCTS,
        SERVICES,
    )
    assert bound.resolvers["KAFKA_B"].__name__ == "resolver_other"  # type: ignore[attr-defined]
    assert bound.resolvers["KAFKA_A"].__name__ == "resolver_ok"  # type: ignore[attr-defined]
    assert "FLINK" not in bound.resolvers


def test_resolver_key_matching_nothing_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        bind_overrides("acme", {}, {"KSQL": f"{TARGETS}:resolver_ok"}, PRODUCTS, SERVICES)
    assert str(info.value) == (
        "tenant 'acme': plugin_settings.identity_resolution_overrides.KSQL: 'KSQL' is neither a product "
        "type nor a service type of this plugin (product types: FLINK, KAFKA_A, KAFKA_B; "
        "service types: flink, kafka)"
    )


def test_allocator_override_for_an_unclaimed_product_type_warns_and_is_unused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="chargeback_pipeline.overrides"):
        bound = bind_overrides(
            "acme",
            {"KAFKA_A": f"{TARGETS}:allocator_ok", "GHOST": f"{TARGETS}:allocator_ok"},
            {},
            PRODUCTS,
            SERVICES,
        )
    assert list(bound.allocators) == ["KAFKA_A"]
    assert bound.unused_allocator_keys == ["GHOST"]
    assert caplog.messages == [
        "tenant 'acme': plugin_settings.allocator_overrides.GHOST: no handler claims product type "
        "'GHOST'; the allocator override is unused"
    ]


def test_binding_errors_carry_tenant_and_key() -> None:
    with pytest.raises(TypeError) as info:
        bind_overrides("acme", {"KAFKA_A": f"{TARGETS}:resolver_ok"}, {}, PRODUCTS, SERVICES)
    assert str(info.value).startswith("tenant 'acme': plugin_settings.allocator_overrides.KAFKA_A: ")
    with pytest.raises(AttributeError) as attr_info:
        bind_overrides("acme", {}, {"FLINK": f"{TARGETS}:missing"}, PRODUCTS, SERVICES)
    assert str(attr_info.value).startswith(
        "tenant 'acme': plugin_settings.identity_resolution_overrides.FLINK: "
    )
