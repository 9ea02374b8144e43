"""docs/threat-model.md names its proofs by pytest node id; every one must exist as
a test pytest collects, and every risk row must name at least one, so the document
cannot drift. The checks are functions of the document's text, so the self-checks
feed them broken documents and see each failure reported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "threat-model.md"
NODE = re.compile(r"`([\w./-]+\.py)(?:::(\w+))?`")
REQUIRED_ROWS = [f"API{n} " for n in range(1, 11)] + [
    "Insecure model deserialization",
    "Model extraction",
]


def _test_functions(path: Path) -> set[str]:
    """The tests pytest collects from a file: module-level ``test*`` functions and
    ``test*`` methods of ``Test*`` classes (a nested ``def test_x`` is not a test)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    functions = ast.FunctionDef | ast.AsyncFunctionDef
    for node in tree.body:
        if isinstance(node, functions) and node.name.startswith("test"):
            names.add(node.name)
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names |= {
                f.name for f in node.body if isinstance(f, functions) and f.name.startswith("test")
            }
    return names


def missing_tests(doc: str, root: Path) -> list[str]:
    """Node ids the document names that are no collected test."""
    missing = []
    for file, function in NODE.findall(doc):
        path = root / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        if not (path.name.startswith("test_") and path.suffix == ".py"):
            missing.append(f"{file} (not a test file)")
            continue
        functions = _test_functions(path)
        if function and function not in functions:
            missing.append(f"{file}::{function}")
        if not function and not functions:
            missing.append(f"{file} (no tests in it)")
    return missing


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _test_rows(doc: str) -> dict[str, str]:
    """Rows of the tables whose last column is "tests": first cell -> last cell."""
    rows: dict[str, str] = {}
    header: list[str] | None = None
    for line in doc.splitlines():
        if not line.startswith("|"):
            header = None
        elif header is None:
            header = _cells(line)
        elif not line.startswith("|---") and header[-1] == "tests":
            cells = _cells(line)
            rows[cells[0]] = cells[-1]
    return rows


def rows_without_tests(doc: str, required: list[str]) -> list[str]:
    """Required risks with no row, and rows whose "tests" column names no test."""
    rows = _test_rows(doc)
    problems = [
        f"no row for {risk.strip()!r}"
        for risk in required
        if not any(name.startswith(risk.strip()) for name in rows)
    ]
    problems += [
        f"the row {name!r} names no test in its last column"
        for name, tests in rows.items()
        if not NODE.search(tests)
    ]
    return problems


def test_every_named_test_exists() -> None:
    doc = DOC.read_text()
    assert len(NODE.findall(doc)) >= 30, "the threat model names too few tests"
    missing = missing_tests(doc, ROOT)
    assert not missing, "docs/threat-model.md names tests that do not exist: " + ", ".join(missing)


def test_every_risk_row_names_a_test() -> None:
    problems = rows_without_tests(DOC.read_text(), REQUIRED_ROWS)
    assert not problems, "; ".join(problems)


def test_drift_check_reports_missing_tests(tmp_path: Path) -> None:
    """The existence check fails on each kind of drift: a gone function, a gone file,
    a file without tests, a test nested where pytest never collects it."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_real.py").write_text(
        "def test_real():\n"
        "    def test_nested():\n"
        "        pass\n"
        "\n"
        "class TestGroup:\n"
        "    def test_method(self):\n"
        "        pass\n"
    )
    (tests / "test_empty.py").write_text("def helper():\n    pass\n")
    (tests / "helpers.py").write_text("def test_looks_like_one():\n    pass\n")
    good = "`tests/test_real.py::test_real`, `tests/test_real.py::TestGroup`"
    assert missing_tests("`tests/test_real.py::test_real` `tests/test_real.py`", tmp_path) == []
    assert missing_tests("`tests/test_real.py::test_method`", tmp_path) == []
    doc = (
        f"| API1 x | y | {good} |\n"
        "| API2 x | y | `tests/test_real.py::test_gone` |\n"
        "| API3 x | y | `tests/test_real.py::test_nested` |\n"
        "| API4 x | y | `tests/test_missing.py::test_any` |\n"
        "| API5 x | y | `tests/test_empty.py` |\n"
        "| API6 x | y | `tests/helpers.py::test_looks_like_one` |\n"
    )
    assert missing_tests(doc, tmp_path) == [
        "tests/test_real.py::TestGroup",
        "tests/test_real.py::test_gone",
        "tests/test_real.py::test_nested",
        "tests/test_missing.py (no such file)",
        "tests/test_empty.py (no tests in it)",
        "tests/helpers.py (not a test file)",
    ]


def test_drift_check_reports_rows_without_tests() -> None:
    """The row check fails on a missing required row and on a row naming no test."""
    doc = (
        "| asset | where | why |\n"
        "|---|---|---|\n"
        "| keys | secrets/ | not a risk row: needs no test |\n"
        "\n"
        "| risk | control | tests |\n"
        "|---|---|---|\n"
        "| API1 Broken things | a control | `tests/test_a.py::test_a` |\n"
        "| API2 Other things | a control, no test | none yet |\n"
    )
    assert rows_without_tests(doc, ["API1 ", "API2 ", "API3 "]) == [
        "no row for 'API3'",
        "the row 'API2 Other things' names no test in its last column",
    ]
    assert rows_without_tests(doc, ["API1 "]) == [
        "the row 'API2 Other things' names no test in its last column",
    ]
