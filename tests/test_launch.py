"""`ftspec launch`: the command it runs, its failure handling, and its exit codes (no training here;
real launches are in test_runtime_train.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ftspec.compiler.launch import launch as launcher
from ftspec.compiler.launch.run_folder import run_dir_of
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
    assert launcher.execute([sys.executable, "-c", "import sys; sys.exit(3)"], {}) == 3
    assert (
        launcher.execute([sys.executable, "-c", "import os; assert os.environ['X_T'] == 'y'"], {"X_T": "y"})
        == 0
    )
    assert launcher.execute([str(tmp_path / "no-such-program")], {}) == 2


def test_failures_are_reported_and_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    (run / ".ftspec").mkdir(parents=True)
    (run / ".ftspec" / "error-rank1.txt").write_text("Traceback ...\nRuntimeError: boom on rank 1\n")
    (run / "run.json").write_text(json.dumps({"exit_status": "running"}))
    launcher.report_failures(run, since=0)
    launcher.mark_failed(run, 1)
    err = capsys.readouterr().err
    assert "FT0717" in err and "rank 1 failed: RuntimeError: boom on rank 1" in err
    assert json.loads((run / "run.json").read_text())["exit_status"] == "failed"


def test_oom_retry_is_taken_once(tmp_path):
    (tmp_path / launcher.BATCH_FILE).write_text(
        json.dumps({"micro_batch_size": 2, "gradient_accumulation_steps": 4, "pending": True})
    )
    first = launcher.oom_retry_pending(tmp_path)
    assert first["micro_batch_size"] == 2
    assert launcher.oom_retry_pending(tmp_path) is None  # consumed: a second failure is not retried blindly


def test_launch_verb_does_not_import_the_training_stack():
    code = (
        "import sys, ftspec.compiler.cli as c; c.build_parser('launch'); import ftspec.compiler.verbs.launch; "
        "bad = [m for m in ('torch', 'transformers', 'accelerate', 'peft') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _fake_finished_run(build: Path) -> Path:
    plan = json.loads((build / "plan.json").read_text())
    run = run_dir_of(plan, build)
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
    monkeypatch.setattr(launcher, "execute", lambda argv, env: launched.append(argv) or 0)
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
    run = run_dir_of(plan, build)
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"exit_status": "running"}))

    def interrupted(argv, env):
        raise KeyboardInterrupt

    monkeypatch.setattr(launcher, "execute", interrupted)
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


# ------------------------------------------------------------------------ launcher slurm (no cluster)
# The real cluster tests are tests/test_slurm.py; these drive compiler/launch/slurm.py with a fake
# Slurm, for the paths a real cluster cannot be made to take on demand.

SCONTROL_LINE = (
    "JobId={job} JobName=rt-test UserId=root(0) GroupId=root(0) Priority=4294901757 JobState={state} "
    "Reason={reason} Dependency=(null) Requeue=1 Restarts={restarts} BatchFlag=1 ExitCode={exit} "
    "NodeList=node[1-2] NumNodes=2 NumCPUs=2 TRES=cpu=2,node=2,billing=2 "
    "Command=/tmp/my build/slurm.sbatch WorkDir=/tmp/my build StdErr={out} StdIn=/dev/null StdOut={out}"
)


class FakeSlurm:
    """Answers sbatch/scontrol/scancel from a script of job states; records every call."""

    def __init__(self, states, out: Path, sbatch=(0, "4242\n", "")):
        self.states = list(states)
        self.out = out
        self.sbatch = sbatch
        self.calls: list[list[str]] = []

    def __call__(self, argv, **_kw):
        self.calls.append(list(argv))
        if argv[0] == "sbatch":
            rc, stdout, stderr = self.sbatch
            return subprocess.CompletedProcess(argv, rc, stdout, stderr)
        if argv[0] == "scancel":
            self.states = [("CANCELLED", "0:15", "None", 0, "")]
            return subprocess.CompletedProcess(argv, 0, "", "")
        state, code, reason, restarts, text = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        with open(self.out, "a") as fh:
            fh.write(text)
        line = SCONTROL_LINE.format(
            job="4242", state=state, reason=reason, restarts=restarts, exit=code, out=self.out
        )
        return subprocess.CompletedProcess(argv, 0, line + "\n", "")


def test_scontrol_lines_parse_with_spaces_in_paths(tmp_path):
    from ftspec.compiler.launch import slurm

    fields = slurm.parse_scontrol(
        SCONTROL_LINE.format(
            job="7", state="RUNNING", reason="None", restarts=1, exit="0:0", out="/a b/x.out"
        )
    )
    assert fields["JobState"] == "RUNNING" and fields["Restarts"] == "1" and fields["NumCPUs"] == "2"
    assert fields["WorkDir"] == "/tmp/my build" and fields["StdOut"] == "/a b/x.out"
    assert fields["TRES"] == "cpu=2,node=2,billing=2"


def test_following_a_requeued_job_goes_on_to_its_end_and_streams_its_output(tmp_path):
    from ftspec.compiler.launch import slurm

    out = tmp_path / "job.out"
    fake = FakeSlurm(
        [
            ("PENDING", "0:0", "None", 0, ""),
            ("RUNNING", "0:0", "None", 0, "first start\n"),
            ("PENDING", "0:0", "BeginTime", 1, ""),  # requeued: not an end
            ("RUNNING", "0:0", "None", 1, "restart 1: resuming\n"),
            ("COMPLETED", "0:0", "None", 1, "completed at step 12/12\n"),
        ],
        out,
    )
    tools = slurm.Tools(runner=fake)
    submitted = slurm.submit(_slurm_build(tmp_path), tools)
    assert submitted.job_id == "4242" and submitted.diagnostic is None
    seen_text, seen_states = [], []
    result = slurm.follow(
        "4242", tools, build_dir=tmp_path, on_output=seen_text.append, on_state=seen_states.append, poll_s=0
    )
    assert result.states == ["PENDING", "RUNNING", "PENDING", "RUNNING", "COMPLETED"]
    assert "".join(seen_text) == "first start\nrestart 1: resuming\ncompleted at step 12/12\n"
    assert slurm.exit_code(result) == 0 and slurm.outcome_diagnostic(result) is None
    assert seen_states[2].reason == "BeginTime" and result.last.restarts == 1


def _slurm_build(tmp_path: Path) -> Path:
    build = tmp_path / "build"
    build.mkdir(exist_ok=True)
    (build / "slurm.sbatch").write_text("#!/bin/bash\n")
    return build


def test_submission_failures_are_located_findings(tmp_path):
    from ftspec.compiler.launch import slurm

    build = _slurm_build(tmp_path)
    refused = slurm.Tools(
        runner=FakeSlurm([], tmp_path / "o", sbatch=(1, "", "sbatch: error: invalid partition"))
    )
    sub = slurm.submit(build, refused)
    assert sub.job_id is None and sub.diagnostic.code == "FT0726"
    assert "invalid partition" in sub.diagnostic.message and sub.diagnostic.file.endswith("slurm.sbatch")
    missing = slurm.Tools(runner=lambda argv, **kw: (_ for _ in ()).throw(FileNotFoundError(argv[0])))
    sub = slurm.submit(build, missing)
    assert sub.diagnostic.code == "FT0726" and "sbatch: command not found" in sub.diagnostic.message
    assert slurm.submit(tmp_path, refused).diagnostic.code == "FT0726"  # no slurm.sbatch there
    cluster = slurm.Tools(runner=FakeSlurm([], tmp_path / "o", sbatch=(0, "77;cluster-a\n", "")))
    assert slurm.submit(build, cluster).job_id == "77"


def test_a_job_killed_before_the_runtime_wrote_its_end_is_recorded_failed(tmp_path):
    from ftspec.compiler.launch import slurm

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"exit_status": "running", "final_step": 3}))
    ended = slurm.Follow("9", slurm.JobState("CANCELLED", "0:9", restarts=0), ["RUNNING", "CANCELLED"])
    assert slurm.record_job(run, ended)
    info = json.loads((run / "run.json").read_text())
    assert info["exit_status"] == "failed" and info["scheduler"]["state"] == "CANCELLED"
    assert slurm.exit_code(ended) == 1
    assert "ended CANCELLED (exit code 0:9)" in slurm.outcome_diagnostic(ended).message
    assert not slurm.record_job(tmp_path / "nothing-here", ended)


def test_ctrl_c_with_a_terminal_that_says_yes_cancels_the_job(tmp_path, monkeypatch, capsys):
    from ftspec.compiler.launch import slurm

    fake = FakeSlurm([("RUNNING", "0:0", "None", 0, "")], tmp_path / "job.out")
    monkeypatch.setattr(verb, "_ask_cancel", lambda job: True)
    code = verb._interrupted_slurm(
        "4242", slurm.Tools(runner=fake), tmp_path, tmp_path / "run", lambda t: None, lambda s: None
    )
    assert code == 1 and ["scancel", "4242"] in fake.calls
    assert "cancelled Slurm job 4242" in capsys.readouterr().err
    monkeypatch.setattr(verb, "_ask_cancel", lambda job: None)  # no terminal: never cancels
    fake.calls.clear()
    assert verb._interrupted_slurm("4242", slurm.Tools(runner=fake), tmp_path, tmp_path, print, print) == 130
    assert not any(c[0] == "scancel" for c in fake.calls)
    assert "keeps running (no terminal to ask)" in capsys.readouterr().err


def test_no_wait_is_refused_for_a_plan_that_runs_here(tmp_path):
    build = _compiled(tmp_path)
    result = launch(build, "--no-wait")
    assert result.returncode == 2 and "FT0720" in result.stderr and "--no-wait" in result.stderr
