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


@pytest.mark.parametrize("where", ["/etc", "../../../../../outside-the-repo"])
def test_force_does_not_compile_an_output_dir_outside_the_repo(tmp_path, where):
    """V11: `--force` compiled `--set output.dir=/etc` into a plan that launch would write to."""
    result = compile_to(SPEC, tmp_path / "build", overrides={"output.dir": where}, force=True)
    assert not result.ok and "FT0604" in _errors(result)
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


def _build(tmp_path: Path) -> Path:
    build = tmp_path / "build"
    assert compile_to(SPEC, build, overrides={"training.max_steps": 4}).ok
    return build


def _edit_plan(build: Path, rehash_lock: bool) -> None:
    import json

    from ftspec.compiler.core.artifacts import file_sha256

    plan = json.loads((build / "plan.json").read_text())
    plan["spec"]["model"]["trust_remote_code"] = True
    plan["spec"]["training"]["learning_rate"] = 0.5
    (build / "plan.json").write_text(json.dumps(plan))
    if rehash_lock:
        lock = json.loads((build / "lock.json").read_text())
        lock["plan_sha256"] = file_sha256(build / "plan.json")
        (build / "lock.json").write_text(json.dumps(lock))


@pytest.mark.parametrize("rehash_lock", [False, True], ids=["plan-only", "lock-rehashed"])
def test_an_edited_plan_is_never_launched(tmp_path, rehash_lock):
    """V2: trust_remote_code: true written into plan.json after compile ran the model's code."""
    import subprocess
    import sys

    build = _build(tmp_path)
    from ftspec.compiler.launch.integrity import verify_build

    assert verify_build(build) == []
    _edit_plan(build, rehash_lock)
    assert [d.code for d in verify_build(build)] == ["FT0621"]
    for argv in (
        ["-m", "ftspec.compiler.cli", "launch", str(build), "--dry-run"],
        ["-m", "ftspec.runtime.train", "--plan", str(build / "plan.json")],  # what launch.sh runs
    ):
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode != 0 and "FT0621" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr


def test_a_build_whose_spec_changed_is_stale(tmp_path):
    import shutil

    spec = tmp_path / "spec" / "tiny-cpu.yaml"
    shutil.copytree(ROOT / "specs" / "data", tmp_path / "spec" / "data")
    shutil.copy(ROOT / SPEC, spec)
    build = tmp_path / "build"
    from ftspec.compiler.compile.compile import CompileOptions, compile_spec, write_build
    from ftspec.compiler.launch.integrity import verify_build
    from ftspec.compiler.lint.lint import LintOptions

    options = CompileOptions(lint=LintOptions(repo_root=tmp_path), overrides={"training.max_steps": 4})
    result = compile_spec(str(spec), options, build_dir=build)
    assert result.ok, [d.message for d in result.diagnostics if d.severity == "error"]
    write_build(result.files, build)
    assert verify_build(build) == []

    spec.write_text(spec.read_text().replace("learning_rate: 3.0e-3", "learning_rate: 3.0e-4"))
    assert [d.code for d in verify_build(build)] == ["FT0622"]
    (build / "lock.json").unlink()
    assert [d.code for d in verify_build(build)] == ["FT0623"]


def test_a_shell_metacharacter_class_name_in_config_json_is_not_an_internal_error():
    """D14: architectures[0] = 'X$(touch P)\\nForCausalLM' gave FT0619 "internal error, please report"."""
    from ftspec.compiler.catalog.architecture import from_config

    config = {"architectures": ["X$(touch P)\nForCausalLM"], "model_type": "weird"}
    assert "decoder_layer_class" not in from_config(config)  # compile then says FT0608 at the strategy
    assert from_config({"architectures": ["FooForCausalLM"], "model_type": "foo"})["decoder_layer_class"] == (
        "FooDecoderLayer"
    )


def test_yaml_aliases_cannot_amplify_the_data_check_even_with_force(tmp_path):
    """D8: one train file listed 4,800 times through aliases: one warning, then 72 s and 2.7 GB in check."""
    text = (ROOT / SPEC).read_text()
    old = text[text.index("  train:\n") : text.index("  eval:")]
    amplified = text.replace(
        old, "  train:\n    - &t {path: data/tiny-cpu-train.jsonl}\n" + "    - *t\n" * 4800
    )
    spec = ROOT / "specs" / f".amp-{__import__('os').getpid()}.yaml"
    spec.write_text(amplified)
    try:
        result = compile_to(spec.relative_to(ROOT), tmp_path / "build", force=True)
        assert not result.ok and {"FT0250", "FT0604"} <= set(_errors(result))
    finally:
        spec.unlink()
