"""Security review V8: the gate trusts nothing in the run folder that it cannot trace to the run.

Fixtures: a real compile of a copy of specs/tiny-cpu.yaml, and a run folder holding what the runtime
copies into it (plan.json, lock.json, run.json with their digests, adapter weights). No model runs:
every refusal here happens before measuring.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from compile_helpers import ROOT
from ftspec.compiler.compile.compile import CompileOptions, compile_spec, write_build
from ftspec.compiler.core.artifacts import file_sha256
from ftspec.compiler.evaluate.integrity import metrics_problems, run_problems
from ftspec.compiler.launch.run_folder import open_run
from ftspec.compiler.lint.lint import LintOptions


@pytest.fixture
def run_folder(tmp_path) -> Path:
    spec = tmp_path / "repo" / "tiny-cpu.yaml"
    shutil.copytree(ROOT / "specs" / "data", spec.parent / "data")
    shutil.copy(ROOT / "specs" / "tiny-cpu.yaml", spec)
    build = tmp_path / "repo" / "build"
    options = CompileOptions(lint=LintOptions(repo_root=spec.parent), run_feasibility=False)
    result = compile_spec(str(spec), options, build_dir=build)
    assert result.ok, [d.message for d in result.diagnostics if d.severity == "error"]
    write_build(result.files, build)
    run = spec.parent / "runs" / "tiny-cpu"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    for name in ("plan.json", "lock.json"):
        shutil.copy(build / name, run / name)
    _record(run)
    return run


def _record(run: Path) -> None:
    info = {"exit_status": "completed", "plan_sha256": file_sha256(run / "plan.json")}
    if (run / "lock.json").is_file():
        info["lock_sha256"] = file_sha256(run / "lock.json")
    (run / "run.json").write_text(json.dumps(info))


def _weaken_gate(run: Path) -> None:
    plan = json.loads((run / "plan.json").read_text())
    plan["spec"]["acceptance"] = [{"metric": "format", "min": 0.9}]
    (run / "plan.json").write_text(json.dumps(plan))


def _codes(run: Path) -> list[str]:
    return [d.code for d in run_problems(open_run(run))]


def test_an_untouched_run_folder_passes(run_folder):
    assert _codes(run_folder) == []


def test_weakened_acceptance_rules_are_refused(run_folder):
    _weaken_gate(run_folder)
    assert _codes(run_folder) == ["FT0816"]  # run.json's digest of plan.json


def test_weakened_rules_with_every_digest_rehashed_are_still_refused(run_folder):
    _weaken_gate(run_folder)
    lock = json.loads((run_folder / "lock.json").read_text())
    lock["plan_sha256"] = file_sha256(run_folder / "plan.json")
    (run_folder / "lock.json").write_text(json.dumps(lock))
    _record(run_folder)
    assert _codes(run_folder) == ["FT0621"]  # the plan no longer matches the spec file


def test_a_deleted_lock_fails_integrity_not_only_warns(run_folder):
    (run_folder / "lock.json").unlink()
    assert _codes(run_folder) == ["FT0816"]
    _record(run_folder)  # and with run.json rewritten to match
    assert _codes(run_folder) == ["FT0816"]


def test_fabricated_metrics_and_an_empty_adapter_are_refused(run_folder):
    folder = open_run(run_folder)
    forged = {"metadata": {"kind": "ftspec-eval-metrics", "schema_version": 1, "spec_sha256": "x"}}
    assert [d.code for d in metrics_problems(folder, forged, run_folder / "eval/metrics.json")] == ["FT0808"]
    (run_folder / "adapter" / "adapter_model.safetensors").unlink()
    genuine = {"metadata": {"spec_sha256": folder.plan["metadata"]["spec_sha256"]}}
    problems = metrics_problems(folder, genuine, run_folder / "eval/metrics.json")
    assert [d.code for d in problems] == ["FT0808"] and "no weights" in problems[0].message


def test_the_evaluate_verb_stops_before_measuring(run_folder):
    _weaken_gate(run_folder)
    done = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "evaluate", str(run_folder), "--reuse-metrics"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "FT0816" in done.stdout + done.stderr
    assert not (run_folder / "eval" / "report.md").exists()


def test_launching_a_run_folder_says_what_to_do(run_folder):
    """User audit: `ftspec launch RUN_DIR` (a natural mistake) ended in a raw accelerate traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "launch", str(run_folder)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=run_folder.parent.parent,
    )
    assert done.returncode == 2 and "FT0716" in done.stderr and "run folder" in done.stderr
    assert "ftspec launch tiny-cpu.yaml --resume" in done.stderr and "ftspec evaluate" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("typed", "meant"), [("lnt", "lint"), ("evalute", "evaluate"), ("complie", "compile")]
)
def test_a_misspelled_verb_gets_did_you_mean(typed, meant):
    done = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", typed, "x"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and f"did you mean `ftspec {meant}`?" in done.stderr


def test_a_run_moved_aside_by_overwrite_can_still_be_evaluated(run_folder):
    """D15: `<dir>.previous-<time>` lost its spec folder ("No such file or directory", no path)."""
    moved = run_folder.with_name(f"{run_folder.name}.previous-20261204-031955")
    run_folder.rename(moved)
    folder = open_run(moved)
    assert folder.spec_dir == run_folder.parent.parent.resolve()
    assert run_problems(folder) == []
