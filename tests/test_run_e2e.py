"""`ftspec run`: stage order and stop-at-first-failure (fast), and the proof that the acceptance gate
discriminates on the embedded default (slow: real training on CPU processes):

- specs/tiny-cpu.yaml passes;
- a copy limited to one optimizer step fails the task rule (exit 1, the report names the rule);
- an aggressive copy (full fine-tune, very high learning rate) fails the regression rule: the built-in
  model's general skill (single-digit sums, opposites) is forgotten, and the gate catches it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "specs" / "tiny-cpu.yaml"
READY = all(p.is_file() for p in (DEMO, ROOT / "runtime/train.py", ROOT / "compiler/verbs/launch.py"))
needs_runtime = pytest.mark.skipif(
    not READY, reason="needs specs/tiny-cpu.yaml, runtime/train.py and `ftspec launch`"
)


def ftspec(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_stops_at_lint_with_its_exit_code(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "version: 1\nname: bad\nmodel: {id: builtin:tiny-llama}\nlearning_rte: 3\n"
        "dataset: {train: train.jsonl, eval: eval.jsonl}\nhardware: {gpu: cpu}\n"
    )
    proc = ftspec("run", str(spec), "-o", str(tmp_path / "build"), cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    stage_lines = [line for line in lines if re.match(r"\[\d/5\] ", line)]
    assert (
        len(stage_lines) == 1
        and stage_lines[0].startswith("[1/5] lint")
        and "FAILED (exit 1)" in stage_lines[0]
    )
    assert any("FT0103" in line or "learning_rte" in line for line in lines)  # the findings are shown
    assert lines[-1].startswith("ftspec run: stopped at lint (exit 1)")
    assert not (tmp_path / "build").exists()


def test_run_missing_spec_is_exit_2(tmp_path):
    proc = ftspec("run", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert proc.returncode == 2


def _copy_demo(tmp_path: Path, name: str, edit) -> Path:
    """specs/tiny-cpu.yaml and its data copied into tmp (so runs land in tmp), with `edit` applied."""
    from ruamel.yaml import YAML

    folder = tmp_path / name
    shutil.copytree(
        ROOT / "specs" / "data",
        folder / "data",
        ignore=shutil.ignore_patterns("*.py", "support-*", "general-*", "ticket*"),
    )
    yaml = YAML()
    data = yaml.load(DEMO.read_text())
    data["name"] = name
    edit(data)
    spec = folder / f"{name}.yaml"
    with open(spec, "w") as fh:
        yaml.dump(data, fh)
    return spec


def _eval_dir(spec: Path) -> Path:
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load(spec.read_text())
    out = (data.get("output") or {}).get("dir") or f"runs/{data['name']}"
    return spec.parent / out / "eval"


def _report(spec: Path) -> dict:
    return json.loads((_eval_dir(spec) / "report.json").read_text())


def _rule_status(report: dict, metric: str) -> set[str]:
    return {r["status"] for r in report["rules"] if r["metric"] == metric}


@pytest.mark.slow
@needs_runtime
def test_demo_spec_passes_its_gate_within_five_minutes(tmp_path):
    spec = _copy_demo(tmp_path, "tiny-cpu", lambda d: None)
    started = time.monotonic()
    proc = ftspec("run", str(spec), "-o", str(tmp_path / "build"), cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert elapsed < 300, f"ftspec run took {elapsed:.0f}s"
    stage_lines = [line for line in proc.stdout.splitlines() if re.match(r"\[\d/5\] \w+ +(ok|FAILED)", line)]
    assert [line.split()[1] for line in stage_lines] == ["lint", "check", "compile", "launch", "evaluate"]
    assert proc.stdout.rstrip().splitlines()[-1].startswith("ftspec run: PASS")
    report = _report(spec)
    assert report["status"] == "pass"
    assert _rule_status(report, "task") == {"pass"}
    task = next(r for r in report["rules"] if r["metric"] == "task")
    assert task["finetuned"] > task["base"]
    assert report["training"]["curves"]["train_loss"], "the report has a train loss curve"
    assert report["training"]["world_size"] == 2
    from test_artifact_schemas import validate_run_folder

    validate_run_folder(_eval_dir(spec).parent, tmp_path / "build")


@pytest.mark.slow
@needs_runtime
def test_one_step_copy_fails_the_task_rule(tmp_path):
    def one_step(data):
        training = data.setdefault("training", {})
        training.pop("epochs", None)
        training["max_steps"] = 1
        for key in ("eval_steps", "save_steps", "logging_steps"):
            if key in training:
                training[key] = 1

    spec = _copy_demo(tmp_path, "tiny-one-step", one_step)
    proc = ftspec("run", str(spec), "-o", str(tmp_path / "build"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "stopped at evaluate (exit 1)" in proc.stdout
    report = _report(spec)
    assert report["status"] == "fail"
    assert _rule_status(report, "task") == {"fail"}
    assert "(task)" in report["summary"]
    assert any(d["code"] == "FT0801" and "task" in d["message"] for d in report["diagnostics"])
    md = (_eval_dir(spec) / "report.md").read_text()
    assert md.startswith("## ❌") and "| 0 | task (exact_match) | min_gain_over_base |" in md


@pytest.mark.slow
@needs_runtime
def test_aggressive_full_finetune_fails_the_regression_rule(tmp_path):
    def aggressive(data):
        adapter = data.setdefault("adapter", {})
        for key in list(adapter):
            del adapter[key]
        adapter["method"] = "full"
        data["training"]["learning_rate"] = 0.05

    spec = _copy_demo(tmp_path, "tiny-aggressive", aggressive)
    proc = ftspec("run", str(spec), "-o", str(tmp_path / "build"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = _report(spec)
    assert _rule_status(report, "regression") == {"fail"}
    regression = next(r for r in report["rules"] if r["metric"] == "regression")
    assert regression["base"] - regression["finetuned"] > regression["threshold"]
