"""Security review findings reproduced through `ftspec compile` (--set overrides, the build folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from compile_helpers import ROOT, compile_to

SPEC = Path("specs/tiny-cpu.yaml")


def _errors(result) -> list[str]:
    return [d.code for d in result.diagnostics if d.severity == "error"]


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"output.dir": "/etc"}, "FT0228"),  # V11: --set output.dir=/etc compiled
        ({"output.dir": "../../../../../outside-the-repo"}, "FT0229"),
        ({"training.warmup_ratio": float("nan")}, "FT0105"),  # D2: was "internal error" exit 2
        ({"training.learning_rate": float("nan")}, "FT0105"),  # D2: plan.json got NaN
    ],
)
def test_overrides_are_linted_like_the_file(tmp_path, override, code):
    result = compile_to(SPEC, tmp_path / "build", overrides=override)
    assert not result.ok and code in _errors(result)
    assert not (tmp_path / "build").exists()


def test_an_output_dir_that_is_the_build_folder_is_refused(tmp_path):
    """D13: launch died on SameFileError, and the build folder could not be recompiled."""
    build = ROOT / "build-test-same"
    try:
        result = compile_to(SPEC, build, overrides={"output.dir": "../build-test-same"}, force=True)
        assert not result.ok and "FT0620" in _errors(result)
        assert not build.exists()
    finally:
        assert not build.exists()
