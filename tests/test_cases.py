"""Data-driven lint cases: tests/cases/{invalid,valid}/<name>/spec.yaml + expected.json.

expected.json: {"description": ..., "options": {LintOptions fields}, "diagnostics": ["CODE line:col", ...]}
The list is exact (order as the linter sorts it): a new, unexpected finding fails the case too.
Paths in the specs are relative to their folder; the repository root is tests/cases, so `..` escapes
and missing files behave the same in any checkout. Adding a case needs no Python.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ftspec.compiler.core.diagnostics import catalog
from ftspec.compiler.lint.lint import LintOptions, lint_file

CASES = Path(__file__).parent / "cases"
INVALID = sorted(p for p in (CASES / "invalid").iterdir() if p.is_dir())
VALID = sorted(p for p in (CASES / "valid").iterdir() if p.is_dir())


def _expected(folder: Path) -> dict:
    return json.loads((folder / "expected.json").read_text(encoding="utf-8"))


def _lint(folder: Path, expected: dict) -> list[str]:
    options = LintOptions(repo_root=CASES, **expected.get("options", {}))
    result = lint_file(folder / "spec.yaml", options)
    return [f"{d.code} {d.line}:{d.column}" for d in result.diagnostics]


@pytest.mark.parametrize("folder", INVALID, ids=[p.name for p in INVALID])
def test_invalid_case(folder: Path) -> None:
    expected = _expected(folder)
    assert expected["diagnostics"], "an invalid case must expect at least one diagnostic"
    assert _lint(folder, expected) == expected["diagnostics"], expected["description"]


@pytest.mark.parametrize("folder", VALID, ids=[p.name for p in VALID])
def test_valid_case(folder: Path) -> None:
    expected = _expected(folder)
    assert _lint(folder, expected) == expected.get("diagnostics", []), expected["description"]


def test_enough_cases() -> None:
    assert len(INVALID) >= 40
    assert len(VALID) >= 5


def test_every_rule_and_load_code_has_a_case() -> None:
    """Each FT00xx/FT02xx code (except the internal FT0299) is shown firing by at least one case."""
    seen = {entry.split()[0] for folder in INVALID for entry in _expected(folder)["diagnostics"]}
    # FT0256 (a FIFO or device as data) cannot be committed to git: tests/test_security_lint.py makes one
    wanted = {code for code in catalog() if code.startswith("FT02") and code not in ("FT0299", "FT0256")}
    wanted |= {
        code for code in catalog() if code.startswith("FT00") and code not in ("FT0001", "FT0007", "FT0012")
    }
    assert sorted(wanted - seen) == []


def test_cases_are_located() -> None:
    """Every expected finding has a real line and column (none fall back to the unknown 0:0)."""
    for folder in INVALID:
        for entry in _expected(folder)["diagnostics"]:
            line, column = entry.split()[1].split(":")
            assert int(line) >= 1 and int(column) >= 1, (folder.name, entry)
