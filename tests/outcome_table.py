"""The README's "What happens when…" table, tied to the tests that prove each row.

Every row of the table starts with a case id in backticks; every test that proves a case
carries ``@pytest.mark.outcome("<case id>")`` (or ``pytest.param(..., marks=...)``). The
third column lists the test files holding those markers. ``test_outcome_table.py`` fails
when a row has no test, a marker has no row, or the file column is out of date, and
``python -m tests.outcome_table`` prints the file column as it should be.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
TESTS = REPO / "tests"
SECTION = "## What happens when…"
ROW = re.compile(r"^\|\s*`(?P<case>[a-z0-9][a-z0-9-]*)`\s*(?P<rest>.*)\|\s*(?P<files>[^|]*)\|\s*$")


def readme_rows(text: str | None = None) -> dict[str, str]:
    """Case id → the row's test-file cell, from the README section."""
    text = README.read_text(encoding="utf-8") if text is None else text
    if SECTION not in text:
        raise AssertionError(f"README.md has no '{SECTION}' section")
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in body.splitlines():
        match = ROW.match(line.strip())
        if match is None:
            continue
        case = match["case"]
        if case in rows:
            raise AssertionError(f"README.md: case `{case}` appears twice in '{SECTION}'")
        rows[case] = match["files"].strip()
    return rows


def marked_cases() -> dict[str, set[str]]:
    """Case id → test files (relative to the repo) holding an ``outcome`` marker for it."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            case = _outcome_case(node)
            if case is not None:
                found[case].add(path.relative_to(REPO).as_posix())
    return dict(found)


def _outcome_case(node: ast.AST) -> str | None:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    if node.func.attr != "outcome" or not node.args:
        return None
    owner = node.func.value
    if not (isinstance(owner, ast.Attribute) and owner.attr == "mark"):
        return None
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def files_cell(files: set[str]) -> str:
    return ", ".join(f"`{f}`" for f in sorted(files))


def main() -> None:
    marked = marked_cases()
    for case, files in sorted(marked.items()):
        print(f"{case}: {files_cell(files)}")


if __name__ == "__main__":
    main()
