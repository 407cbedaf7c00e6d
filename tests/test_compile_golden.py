"""Golden files for every artifact of every spec (specs/ and tests/fixtures/compile/).

Regenerate after an intended change with:
    .venv/bin/python -m pytest tests/test_compile_golden.py -q --update-golden
and review the diff of tests/golden/ like code.
"""

from __future__ import annotations

import os
import shutil

import pytest
from compile_helpers import GOLDEN, all_specs, compile_to, golden_name, normalise

UPDATE = bool(os.environ.get("FTSPEC_UPDATE_GOLDEN"))
REGENERATE = ".venv/bin/python -m pytest tests/test_compile_golden.py -q --update-golden"


def _compile(spec, build):
    """Compile; a spec that is valid but does not fit its hardware (the examples include one on
    purpose) is refused, and then compiled with --force, which the plan records."""
    result = compile_to(spec, build)
    if result.ok:
        assert not result.plan["forced"]
        return result
    errors = [d for d in result.diagnostics if d.severity == "error"]
    blocking = [
        f"{d.code} {d.message}" for d in errors if not d.code.startswith("FT03") and d.code != "FT0604"
    ]
    assert not blocking, f"{spec} does not compile: {blocking}"
    assert any(d.code == "FT0604" for d in errors), "a refusal says why (FT0604)"
    assert not build.exists(), "a refused compile writes nothing"
    forced = compile_to(spec, build, force=True)
    assert forced.ok and forced.plan["forced"] is True
    return forced


@pytest.mark.parametrize("spec", all_specs(), ids=str)
def test_spec_compiles(spec, tmp_path):
    _compile(spec, tmp_path / "build")


@pytest.mark.parametrize("spec", all_specs(), ids=str)
def test_golden(spec, tmp_path):
    build = tmp_path / "build"
    _compile(spec, build)
    folder = GOLDEN / golden_name(spec)
    produced = {p.name: normalise(p.name, p.read_text(encoding="utf-8")) for p in sorted(build.iterdir())}
    if UPDATE:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, text in produced.items():
            (folder / name).write_text(text, encoding="utf-8")
        return
    if not folder.is_dir():
        # a spec added since the goldens were written: test_spec_compiles still covers it
        pytest.skip(f"no golden files for {spec} yet: run {REGENERATE}")
    expected = {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.iterdir())}
    assert sorted(produced) == sorted(expected), (
        f"artifact set changed for {spec}: run {REGENERATE} if intended"
    )
    for name, text in produced.items():
        assert text == expected[name], (
            f"{spec}: {name} differs from {folder / name}; run {REGENERATE} if intended"
        )
