"""The README stays true: the install/test commands on top, every verb, every diagnostic code."""

from __future__ import annotations

from pathlib import Path

from ftspec.compiler.cli import VERBS
from ftspec.compiler.core.diagnostics import catalog
from ftspec.compiler.verbs.codes import END, START, render

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FIX = "run `ftspec codes --update-readme README.md`"


def test_first_lines_are_the_install_and_test_commands() -> None:
    lines = README.splitlines()
    assert lines[2] == "```bash"
    assert lines[3].startswith("bash .ci/setup && .venv/bin/ftspec run specs/tiny-cpu.yaml")
    assert lines[4].startswith("bash .ci/setup && .venv/bin/python -m pytest")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash .ci/setup" in ci and ".venv/bin/python -m pytest" in ci


def test_code_table_lists_every_catalog_code() -> None:
    table = README.split(START, 1)[1].split(END, 1)[0]
    listed = [row.split("|")[1].strip() for row in table.strip().splitlines()[2:]]
    missing = sorted(set(catalog()) - set(listed))
    assert not missing, f"README lacks {missing}: {FIX}"
    assert listed == sorted(catalog()), FIX


def test_code_table_is_current() -> None:
    table = README.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == render("markdown"), f"the code table is stale: {FIX}"


def test_every_verb_is_documented() -> None:
    for verb in VERBS:
        assert f"`ftspec {verb}" in README, verb
