"""`ftspec launch`: the command it runs, its failure handling, and its exit codes (no training here;
real launches are in test_runtime_train.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ftspec.compiler.verbs import launch as verb
from runtime_helpers import launch, write_spec


def _compiled(tmp_path: Path) -> Path:
    spec = write_spec(tmp_path)
    result = launch(spec, "--dry-run", build=tmp_path / "build")
    assert result.returncode == 0, result.stderr
    return tmp_path / "build"


def test_dry_run_compiles_a_spec_and_prints_command_and_environment(tmp_path):
    spec = write_spec(tmp_path)
    result = launch(spec, "--dry-run", build=tmp_path / "build")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "build" / "plan.json").is_file()
    out = result.stdout
    assert "export ACCELERATE_USE_CPU=true" in out and "export OMP_NUM_THREADS=" in out
    assert "--multi_gpu --num_processes 2" in out and "-m ftspec.runtime.train --plan" in out
    assert "--resume" not in out
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_dry_run_on_a_build_folder_with_resume(tmp_path):
    build = _compiled(tmp_path)
    result = launch(build, "--dry-run", "--resume")
    assert result.returncode == 0 and result.stdout.rstrip().endswith("--resume")


def test_missing_or_foreign_build_folders_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "ftspec.compiler.cli", "launch"]
    result = subprocess.run([*cmd, str(tmp_path / "nope")], capture_output=True, text=True)
    assert result.returncode == 2 and "neither a build folder nor a spec" in result.stderr
    (tmp_path / "empty").mkdir()
    result = subprocess.run([*cmd, str(tmp_path / "empty")], capture_output=True, text=True)
    assert result.returncode == 2 and "no plan.json" in result.stderr
    build = _compiled(tmp_path / "x")
    plan = json.loads((build / "plan.json").read_text())
    plan["metadata"]["schema_version"] = 99
    (build / "plan.json").write_text(json.dumps(plan))
    result = subprocess.run([*cmd, str(build)], capture_output=True, text=True)
    assert result.returncode == 2 and "schema_version" in result.stderr


def test_a_spec_that_does_not_compile_stops_before_launching(tmp_path):
    spec = write_spec(tmp_path, training={"learning_rte": 1})
    result = launch(spec, build=tmp_path / "build")
    assert result.returncode == 1 and "learning_rte" in result.stdout + result.stderr
    assert not (tmp_path / "build").exists()


def test_execute_returns_the_child_exit_status(tmp_path):
    assert verb._execute([sys.executable, "-c", "import sys; sys.exit(3)"], {}) == 3
    assert verb._execute([sys.executable, "-c", "import os; assert os.environ['X_T'] == 'y'"], {"X_T": "y"}) == 0
    assert verb._execute([str(tmp_path / "no-such-program")], {}) == 2


def test_failures_are_reported_and_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    (run / ".ftspec").mkdir(parents=True)
    (run / ".ftspec" / "error-rank1.txt").write_text("Traceback ...\nRuntimeError: boom on rank 1\n")
    (run / "run.json").write_text(json.dumps({"exit_status": "running"}))
    verb._report_failures(run, since=0)
    verb._mark_failed(run, 1)
    err = capsys.readouterr().err
    assert "FT0717" in err and "rank 1 failed: RuntimeError: boom on rank 1" in err
    assert json.loads((run / "run.json").read_text())["exit_status"] == "failed"


def test_oom_retry_is_taken_once(tmp_path):
    (tmp_path / verb.BATCH_FILE).write_text(json.dumps({"micro_batch_size": 2, "gradient_accumulation_steps": 4,
                                                        "pending": True}))
    first = verb._oom_retry_pending(tmp_path)
    assert first["micro_batch_size"] == 2
    assert verb._oom_retry_pending(tmp_path) is None  # consumed: a second failure is not retried blindly


def test_launch_verb_does_not_import_the_training_stack():
    code = ("import sys, ftspec.compiler.cli as c; c.build_parser('launch'); import ftspec.compiler.verbs.launch; "
            "bad = [m for m in ('torch', 'transformers', 'accelerate', 'peft') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
