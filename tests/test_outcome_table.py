"""The README's "What happens when…" table and the tests behind it agree."""

from __future__ import annotations

import pytest

from tests.outcome_table import files_cell, marked_cases, readme_rows


def test_every_documented_case_has_a_test_and_every_marked_test_a_row() -> None:
    rows, marked = readme_rows(), marked_cases()
    assert rows, "the README table lists no case"
    assert sorted(set(rows) - set(marked)) == [], "README rows without an @pytest.mark.outcome test"
    assert sorted(set(marked) - set(rows)) == [], "outcome markers without a README row"


def test_the_file_column_names_the_tests_that_prove_each_case() -> None:
    rows, marked = readme_rows(), marked_cases()
    wrong = {case: (rows[case], files_cell(marked[case])) for case in rows if case in marked}
    wrong = {case: pair for case, pair in wrong.items() if pair[0] != pair[1]}
    assert wrong == {}, "run `python -m tests.outcome_table` for the expected cells"


def test_the_table_parser_rejects_a_duplicate_case() -> None:
    text = "## What happens when…\n\n| Case | Outcome | Tests |\n|---|---|---|\n"
    text += "| `a-case` | x | `t.py` |\n| `a-case` | y | `t.py` |\n"
    with pytest.raises(AssertionError, match="appears twice"):
        readme_rows(text)


def test_the_table_parser_reads_only_its_section() -> None:
    text = "## Other\n\n| `elsewhere` | x | `t.py` |\n\n## What happens when…\n\n"
    text += "| `inside` | y | `tests/test_a.py` |\n\n## After\n\n| `later` | z | `t.py` |\n"
    assert readme_rows(text) == {"inside": "`tests/test_a.py`"}
