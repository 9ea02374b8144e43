"""docs/threat-model.md names its proofs by pytest node id; every one must exist,
and every risk row must name at least one, so the document cannot drift."""

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
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            names.add(node.name)
    return names


def _rows() -> dict[str, str]:
    """Risk name (first cell) -> the whole table row."""
    rows = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            rows[line.split("|")[1].strip()] = line
    return rows


def test_every_named_test_exists() -> None:
    named = NODE.findall(DOC.read_text())
    assert len(named) >= 30, "the threat model names too few tests"
    missing = []
    for file, function in named:
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        functions = _test_functions(path)
        if function and function not in functions:
            missing.append(f"{file}::{function}")
        if not function and not functions:
            missing.append(f"{file} (no tests in it)")
    assert not missing, "docs/threat-model.md names tests that do not exist: " + ", ".join(missing)


def test_every_risk_row_names_a_test() -> None:
    rows = _rows()
    for risk in REQUIRED_ROWS:
        matching = [row for name, row in rows.items() if name.startswith(risk.strip())]
        assert matching, f"no row for {risk!r}"
        assert all(NODE.search(row.split("|")[-2]) for row in matching), (
            f"the row for {risk!r} names no test in its last column"
        )


def test_drift_check_catches_a_missing_test(tmp_path: Path) -> None:
    """The checker itself can fail: a made-up node id is reported missing."""
    fake = tmp_path / "test_fake.py"
    fake.write_text("def test_real():\n    pass\n")
    assert _test_functions(fake) == {"test_real"}
    assert NODE.findall("`tests/x.py::test_gone`") == [("tests/x.py", "test_gone")]
