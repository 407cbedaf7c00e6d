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
    assert "FT0716" in result.stderr and "hint:" in result.stderr
    (tmp_path / "empty").mkdir()
    result = subprocess.run([*cmd, str(tmp_path / "empty")], capture_output=True, text=True)
    assert result.returncode == 2 and "no plan.json" in result.stderr and "FT0716" in result.stderr
    build = _compiled(tmp_path / "x")
    plan = json.loads((build / "plan.json").read_text())
    plan["metadata"]["schema_version"] = 99
    (build / "plan.json").write_text(json.dumps(plan))
    result = subprocess.run([*cmd, str(build)], capture_output=True, text=True)
    assert result.returncode == 2 and "schema_version" in result.stderr and "FT0716" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_spec_that_does_not_compile_stops_before_launching(tmp_path):
    spec = write_spec(tmp_path, training={"learning_rte": 1})
    result = launch(spec, build=tmp_path / "build")
    assert result.returncode == 1 and "learning_rte" in result.stdout + result.stderr
    assert not (tmp_path / "build").exists()


def test_execute_returns_the_child_exit_status(tmp_path):
    assert verb._execute([sys.executable, "-c", "import sys; sys.exit(3)"], {}) == 3
    assert (
        verb._execute([sys.executable, "-c", "import os; assert os.environ['X_T'] == 'y'"], {"X_T": "y"}) == 0
    )
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
    (tmp_path / verb.BATCH_FILE).write_text(
        json.dumps({"micro_batch_size": 2, "gradient_accumulation_steps": 4, "pending": True})
    )
    first = verb._oom_retry_pending(tmp_path)
    assert first["micro_batch_size"] == 2
    assert verb._oom_retry_pending(tmp_path) is None  # consumed: a second failure is not retried blindly


def test_launch_verb_does_not_import_the_training_stack():
    code = (
        "import sys, ftspec.compiler.cli as c; c.build_parser('launch'); import ftspec.compiler.verbs.launch; "
        "bad = [m for m in ('torch', 'transformers', 'accelerate', 'peft') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _fake_finished_run(build: Path) -> Path:
    plan = json.loads((build / "plan.json").read_text())
    run = verb._run_dir(build, plan)
    (run / "checkpoints" / "checkpoint-8").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-12").mkdir()
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"earlier run")
    (run / "run.json").write_text(json.dumps({"exit_status": "completed"}))
    return run


def test_a_fresh_launch_never_replaces_an_earlier_run(tmp_path, monkeypatch):
    build = _compiled(tmp_path)
    run = _fake_finished_run(build)
    cmd = [sys.executable, "-m", "ftspec.compiler.cli", "launch", str(build)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 2 and "FT0723" in result.stderr and "--resume" in result.stderr
    assert "checkpoint-12" in result.stderr  # the newest, by step
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == b"earlier run"
    result = subprocess.run([*cmd, "--resume", "--overwrite"], capture_output=True, text=True)
    assert result.returncode == 2 and "FT0720" in result.stderr
    # --overwrite moves the earlier run aside, whole, then launches
    launched = []
    monkeypatch.setattr(verb, "_execute", lambda argv, env: launched.append(argv) or 0)
    parser = __import__("argparse").ArgumentParser()
    verb.add_arguments(parser)
    assert verb.run(parser.parse_args([str(build), "--overwrite"])) == 0
    assert launched and not run.exists()
    (moved,) = run.parent.glob(f"{run.name}.previous-*")
    assert (moved / "adapter" / "adapter_model.safetensors").read_bytes() == b"earlier run"
    assert (moved / "checkpoints" / "checkpoint-12").is_dir()


def test_ctrl_c_marks_the_run_failed_so_it_is_not_left_running(tmp_path, monkeypatch):
    build = _compiled(tmp_path)
    plan = json.loads((build / "plan.json").read_text())
    run = verb._run_dir(build, plan)
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"exit_status": "running"}))

    def interrupted(argv, env):
        raise KeyboardInterrupt

    monkeypatch.setattr(verb, "_execute", interrupted)
    parser = __import__("argparse").ArgumentParser()
    verb.add_arguments(parser)
    try:
        verb.run(parser.parse_args([str(build)]))
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("^C must reach the CLI (exit 130)")
    data = json.loads((run / "run.json").read_text())
    assert data["exit_status"] == "failed" and data["exit_code"] == 130


def test_oom_retry_keeps_the_effective_batch_exactly():
    """Regression: micro batch 3 became 1 with accumulation x2, so each step saw 2 examples instead of 3."""
    from ftspec.runtime.train import reduced_batch

    for mbs in range(2, 33):
        for gas in (1, 3, 4):
            new_mbs, new_gas = reduced_batch(mbs, gas)
            assert new_mbs < mbs and new_mbs * new_gas == mbs * gas
    assert reduced_batch(4, 2) == (2, 4) and reduced_batch(3, 1) == (1, 3) and reduced_batch(9, 1) == (3, 3)


def test_runtime_log_lines_are_written_whole(monkeypatch):
    """Regression: ranks sharing the launcher's stderr ran their start-up lines into one, because
    print() writes the text and the newline separately; the kill -9 test then found one rank's pid."""
    from ftspec.runtime import log as log_module

    writes: list[str] = []

    class Recorder:
        def write(self, text: str) -> None:
            writes.append(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(log_module.sys, "stderr", Recorder())
    log_module.log("ftspec: rank 0/2 pid 1")
    assert writes == ["ftspec: rank 0/2 pid 1\n"]
