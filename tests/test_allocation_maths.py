"""The pure money maths: Q4, remainder distribution, even split, usage ratio, composite parts.

Every table row of allocation.md §4-§6 and §8 is asserted with its exact numbers.
"""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from chargeback_pipeline.allocation import (
    Composite,
    Terminal,
    distribute,
    even_split,
    usage_ratio,
)
from chargeback_pipeline.errors import AllocationError
from chargeback_pipeline.models import UNALLOCATED, q4


def test_q4_rounds_half_away_from_zero() -> None:
    assert q4(D("-0.00005")) == D("-0.0001")
    assert q4(D("0.00005")) == D("0.0001")
    assert q4(D("0.00025")) == D("0.0003")
    assert q4(D("1.00004999")) == D("1.0000")
    assert str(q4(D("18"))) == "18.0000"


# --- §5 even split table ---------------------------------------------------------------

SEVEN = ["g", "a", "f", "b", "e", "c", "d"]


@pytest.mark.parametrize(
    ("target", "ids", "expected"),
    [
        ("10.0000", ["a", "b", "c"], ["3.3334", "3.3333", "3.3333"]),
        ("100.0000", SEVEN, ["14.2858"] + ["14.2857"] * 6),
        ("0.0005", ["a", "b"], ["0.0002", "0.0003"]),
        ("33.3333", ["a", "b"], ["16.6666", "16.6667"]),
        ("2.0000", ["a", "b", "c"], ["0.6666", "0.6667", "0.6667"]),
        ("0.0002", ["a", "b", "c"], ["0.0000", "0.0001", "0.0001"]),
        ("-10.0000", ["a", "b", "c"], ["-3.3334", "-3.3333", "-3.3333"]),
        ("0.2440", ["x1", "x2", "x3"], ["0.0814", "0.0813", "0.0813"]),
    ],
)
def test_even_split_table(target: str, ids: list[str], expected: list[str]) -> None:
    result = even_split(ids, D(target))
    assert [i for i, _ in result] == sorted(ids)
    assert [str(a) for _, a in result] == expected
    assert sum(a for _, a in result) == D(target)


def test_even_split_sorts_and_deduplicates_ids() -> None:
    assert even_split(["c", "a", "b", "a"], D("10.0000")) == [
        ("a", D("3.3334")),
        ("b", D("3.3333")),
        ("c", D("3.3333")),
    ]


def test_even_split_of_nobody_is_an_error() -> None:
    with pytest.raises(AllocationError, match="no identities"):
        even_split([], D("1.0000"))


def test_even_split_sorts_by_code_point_not_locale() -> None:
    # "Z" (0x5A) sorts before "a" (0x61): the extra unit goes to "Z".
    assert even_split(["a", "b", "Z"], D("10.0000")) == [
        ("Z", D("3.3334")),
        ("a", D("3.3333")),
        ("b", D("3.3333")),
    ]


# --- §6 usage ratio table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "usage", "expected"),
    [
        ("100.0000", {"alice": "700", "bob": "300"}, {"alice": "70.0000", "bob": "30.0000"}),
        ("10.0000", {"c": "1", "b": "1", "a": "1"}, {"a": "3.3334", "b": "3.3333", "c": "3.3333"}),
        ("1.0001", {"y": "1", "x": "2"}, {"x": "0.6667", "y": "0.3334"}),
        (
            "25.0000",
            {"u-carol": "1", "sa-etl": "2", "sa-api": "3"},
            {"sa-api": "12.5000", "sa-etl": "8.3333", "u-carol": "4.1667"},
        ),
        (
            "0.0005",
            {"a": "1e-9", "b": "1", "c": "1", "d": "1"},
            {"a": "0.0000", "b": "0.0001", "c": "0.0002", "d": "0.0002"},
        ),
    ],
)
def test_usage_ratio_table(target: str, usage: dict[str, str], expected: dict[str, str]) -> None:
    result = usage_ratio({k: D(v) for k, v in usage.items()}, D(target))
    assert [i for i, _, _ in result] == sorted(usage)
    assert {i: str(a) for i, a, _ in result} == expected


def test_usage_ratio_reports_ratios() -> None:
    result = usage_ratio({"alice": D(700), "bob": D(300)}, D("100.0000"))
    assert [(i, r) for i, _, r in result] == [("alice", 0.7), ("bob", 0.3)]


def test_usage_ratio_of_negative_total() -> None:
    result = usage_ratio({"a": D(1), "b": D(1), "c": D(1)}, D("-10.0000"))
    assert [a for _, a, _ in result] == [D("-3.3334"), D("-3.3333"), D("-3.3333")]


@pytest.mark.parametrize("usage", [{}, {"a": D(0)}, {"a": D(1), "b": D(-1)}])
def test_usage_ratio_requires_positive_usage(usage: dict[str, D]) -> None:
    with pytest.raises(AllocationError):
        usage_ratio(usage, D("1.0000"))


# --- §4 remainder distribution -------------------------------------------------------


def test_distribute_no_remainder_returns_amounts_unchanged() -> None:
    amounts = [D("1.0000"), D("2.0000")]
    assert distribute(["a", "b"], amounts, D("3.0000")) is amounts
    assert amounts == [D("1.0000"), D("2.0000")]


def test_distribute_wraps_round_robin() -> None:
    assert distribute(["a", "b"], [D(0), D(0)], D("0.0003")) == [D("0.0002"), D("0.0001")]


def test_distribute_skips_zero_when_moving_toward_zero_for_negative_target() -> None:
    # T < 0 and the remainder is positive (toward zero): the 0.0000 of "a" is not made positive.
    assert distribute(["a", "b"], [D("0.0000"), D("-0.0003")], D("-0.0002")) == [
        D("0.0000"),
        D("-0.0002"),
    ]


def test_distribute_away_from_zero_may_touch_zero_amounts() -> None:
    assert distribute(["a", "b"], [D("0.0000"), D("0.0000")], D("0.0001")) == [D("0.0001"), D("0")]


def test_distribute_raises_when_remainder_does_not_converge() -> None:
    # Only "b" may move toward zero, and it needs four units: more than 2 * len passes.
    with pytest.raises(AllocationError, match="remainder did not converge"):
        distribute(["a", "b"], [D("0.0000"), D("0.0005")], D("0.0001"))


def test_distribute_over_nobody() -> None:
    assert distribute([], [], D(0)) == []
    with pytest.raises(AllocationError, match="no identities"):
        distribute([], [], D("0.0001"))


def test_distribute_rejects_misaligned_inputs() -> None:
    with pytest.raises(AllocationError, match="2 ids but 1 amounts"):
        distribute(["a", "b"], [D(1)], D(1))


# --- §8 composite parts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "usage_part", "shared_part"),
    [
        ("100.0000", "70.0000", "30.0000"),
        ("100.0050", "70.0035", "30.0015"),
        ("33.3333", "23.3333", "10.0000"),
        ("-100.0050", "-70.0035", "-30.0015"),
    ],
)
def test_composite_part_amounts(total: str, usage_part: str, shared_part: str) -> None:
    composite = Composite([(D("0.70"), Terminal(UNALLOCATED)), (D("0.30"), Terminal(UNALLOCATED))])
    assert composite.amounts(D(total)) == [D(usage_part), D(shared_part)]


def test_composite_last_part_takes_exact_rest() -> None:
    composite = Composite(
        [(D("0.3333"), Terminal("a")), (D("0.3333"), Terminal("b")), (D("0.3334"), Terminal("c"))]
    )
    assert composite.amounts(D("1.0000")) == [D("0.3333"), D("0.3333"), D("0.3334")]
