"""`ftspec launch` on a real two-node Slurm cluster (tests/slurm_cluster.py): submit, follow, finish
across both nodes; requeue mid-run and resume to the same result; scancel leaves a consistent run.

Every test that needs the cluster is marked `slurm` (and `slow` where it trains the built-in tiny
model). Without Slurm installed they are skipped with the reason; under CI (CI=true) a cluster that
cannot start fails them instead. One training runs at a time: the cluster has one CPU per node.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster
from runtime_helpers import adapter_tensors, env_with, run_json, train_losses, write_spec

ROOT = Path(__file__).resolve().parent.parent
TOTAL_STEPS = 12
# The ranks sleep after each step so a test can requeue or cancel in the middle of the run.
STEP_DELAY_S = "0.8"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        up = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.ClusterUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the test Slurm cluster did not start under CI: {exc}")
        pytest.skip(f"no test Slurm cluster: {exc}")
    yield up
    slurm_cluster.stop(up)


def _spec(folder: Path) -> Path:
    """The tiny spec over two one-process CPU nodes; its own rendezvous port (other tests and other
    people's runs on this host may hold 29500)."""
    return write_spec(
        folder,
        training={"max_steps": TOTAL_STEPS},
        hardware={
            "gpu": "cpu",
            "gpus_per_node": 1,
            "nodes": 2,
            "strategy": "ddp",
            "launcher": "slurm",
            "main_process_port": _free_port(),
        },
    )


def _cli(cluster, *args: str, cwd: Path, timeout: float = 400, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "launch", *args],
        cwd=cwd,
        env=env_with(SLURM_CONF=str(cluster.conf), **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start(cluster, *args: str, cwd: Path, log: Path, **env: str) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "ftspec.compiler.cli", "launch", *args],
            cwd=cwd,
            env=env_with(SLURM_CONF=str(cluster.conf), **env),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def _wait_for(predicate, what: str, timeout: float = 240, proc: subprocess.Popen | None = None, log=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"ftspec launch ended (rc {proc.returncode}) before {what}:\n{_tail(log)}")
        assert time.monotonic() < deadline, f"no {what} in {timeout:.0f} s:\n{_tail(log)}"
        time.sleep(0.3)


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-4000:] if log is not None and log.is_file() else ""


def _job_state(cluster, job: str) -> str:
    out = cluster.run("scontrol", "show", "job", "-o", job, check=False).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "")


def _checkpoint(run: Path, step: int) -> bool:
    return (run / "checkpoints" / f"checkpoint-{step}" / "complete").is_file()


@pytest.fixture(scope="module")
def finished(cluster, tmp_path_factory):
    """One uninterrupted run through `ftspec launch` (compile, submit, follow): the reference."""
    folder = tmp_path_factory.mktemp("reference")
    spec = _spec(folder)
    started = time.monotonic()
    result = _cli(cluster, str(spec), "-o", str(folder / "build"), cwd=folder)
    return folder, result, time.monotonic() - started


@pytest.mark.slurm
def test_sbatch_accepts_the_generated_script_with_one_cpu_per_node_and_no_gres(cluster, tmp_path):
    spec = _spec(tmp_path)
    result = _cli(cluster, str(spec), "--dry-run", "-o", str(tmp_path / "build"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sbatch --parsable" in result.stdout and "slurm.sbatch" in result.stdout
    script = (tmp_path / "build" / "slurm.sbatch").read_text()
    assert "--cpus-per-task=1" in script and "--gpus" not in script and "--exclusive" not in script
    assert "#SBATCH --requeue" in script
    # the real consumer: the controller parses the script's #SBATCH lines and says where it would run
    check = cluster.run("sbatch", "--test-only", "slurm.sbatch", check=False, cwd=tmp_path / "build")
    assert check.returncode == 0 and "to start at" in check.stderr, check.stderr


@pytest.mark.slurm
@pytest.mark.slow
def test_launch_submits_follows_and_finishes_across_two_nodes(cluster, finished):
    folder, result, _seconds = finished
    assert result.returncode == 0, result.stderr[-4000:]
    job = result.stdout.strip().splitlines()[-1]
    assert job.isdigit(), result.stdout  # after compile's findings, the job id on a line of its own
    err = result.stderr
    assert f"ftspec: submitted Slurm job {job} (2 node(s), 2 process(es))" in err
    assert f"ftspec: job {job} RUNNING on node[1-2]" in err and f"ftspec: job {job} COMPLETED" in err
    # each rank names its Slurm node and node rank, and the job's output streamed through
    assert "node node1, node rank 0" in err and "node node2, node rank 1" in err
    assert f"ftspec: step {TOTAL_STEPS}/{TOTAL_STEPS} loss" in err
    info = run_json(folder / "runs" / "t")
    assert info["exit_status"] == "completed" and info["world_size"] == 2
    assert info["final_step"] == TOTAL_STEPS and info["resumed_from"] is None
    assert info["scheduler"] == {
        "kind": "slurm",
        "job_id": job,
        "state": "COMPLETED",
        "exit_code": "0:0",
        "restarts": 0,
    }
    # one CPU per node, no GRES: what the controller granted
    granted = cluster.run("scontrol", "show", "job", "-o", job).stdout
    assert "NumNodes=2" in granted and "NumCPUs=2" in granted and "gres" not in granted.lower()


@pytest.mark.slurm
@pytest.mark.slow
def test_requeue_mid_run_resumes_and_ends_equal_to_an_uninterrupted_run(cluster, finished, tmp_path):
    """Tolerance as for the kill -9 resume test: adapter to 1e-5 absolute, final loss to 1e-4
    relative (CPU, RNG restored: exact in practice)."""
    reference, ref_result, _ = finished
    assert ref_result.returncode == 0, ref_result.stderr[-3000:]
    spec = _spec(tmp_path)
    log = tmp_path / "launch.log"
    proc = _start(
        cluster,
        str(spec),
        "-o",
        str(tmp_path / "build"),
        cwd=tmp_path,
        log=log,
        FTSPEC_STEP_DELAY_S=STEP_DELAY_S,
    )
    run = tmp_path / "runs" / "t"
    try:
        _wait_for(lambda: _checkpoint(run, 4), "checkpoint-4", proc=proc, log=log)
        job = _job_id(log)
        cluster.run("scontrol", "requeue", job)
        # Slurm holds a requeued job back (BeginTime, ~2 minutes); an admin may let it start now
        _wait_for(lambda: _job_state(cluster, job) == "PENDING", "requeued job pending", 120, proc, log)
        cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert f"ftspec: job {job} restart 1: resuming from the last complete checkpoint" in text
    info = run_json(run)
    assert info["exit_status"] == "completed" and info["final_step"] == TOTAL_STEPS
    # stopped at a step boundary after SIGTERM, with a checkpoint of that step, and resumed from it
    assert info["resumed_from"] is not None and info["resumed_from"] != "checkpoint-0"
    assert info["scheduler"]["restarts"] == 1 and info["scheduler"]["state"] == "COMPLETED"
    assert "FT0725" in text and "stopped by SIGTERM at step" in text
    expected, got = adapter_tensors(reference / "runs" / "t"), adapter_tensors(run)
    assert expected.keys() == got.keys()
    for name in expected:
        assert float((expected[name] - got[name]).abs().max()) <= 1e-5, name
    ref_loss, loss = train_losses(reference / "runs" / "t")[TOTAL_STEPS], train_losses(run)[TOTAL_STEPS]
    assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss)
    steps = [m for m in train_losses(run)]
    assert steps == sorted(set(steps))


def _job_id(log: Path) -> str:
    """The first line `ftspec launch` prints to stdout is the job id."""
    for line in log.read_text().splitlines():
        if line.strip().isdigit():
            return line.strip()
    raise AssertionError(f"no job id in:\n{_tail(log)}")


@pytest.mark.slurm
@pytest.mark.slow
def test_ctrl_c_without_a_terminal_keeps_the_job_and_scancel_leaves_a_consistent_run(cluster, tmp_path):
    from ftspec.runtime import checkpoint as ckpt

    spec = _spec(tmp_path)
    log = tmp_path / "launch.log"
    proc = _start(
        cluster,
        str(spec),
        "-o",
        str(tmp_path / "build"),
        cwd=tmp_path,
        log=log,
        FTSPEC_STEP_DELAY_S=STEP_DELAY_S,
    )
    run = tmp_path / "runs" / "t"
    try:
        _wait_for(lambda: _checkpoint(run, 4), "checkpoint-4", proc=proc, log=log)
        job = _job_id(log)
        proc.send_signal(signal.SIGINT)  # ^C with no terminal to ask: stop following, keep the job
        assert proc.wait(timeout=30) == 130, _tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"Slurm job {job} keeps running (no terminal to ask)" in log.read_text()
    assert f"scancel {job}" in log.read_text()
    assert _job_state(cluster, job) == "RUNNING"
    cluster.run("scancel", job)
    _wait_for(lambda: _job_state(cluster, job) == "CANCELLED", "cancelled job", 120)
    _wait_for(lambda: run_json(run)["exit_status"] != "running", "run.json end", 60)
    info = run_json(run)
    # the runtime stopped at a step boundary on SIGTERM, saved that step and said so
    assert info["exit_status"] == "interrupted", info
    assert info["exit_code"] == 128 + signal.SIGTERM
    step = info["final_step"]
    assert 4 <= step < TOTAL_STEPS
    finding = next(d for d in info["diagnostics"] if d["code"] == "FT0725")
    assert f"checkpoint-{step}" in finding["message"]
    last = ckpt.latest_valid(run / "checkpoints")
    assert last is not None and last.path.name == f"checkpoint-{step}"
    assert all(ckpt.verify(c.path) is None for c in ckpt.list_checkpoints(run / "checkpoints"))
    assert not list((run / "checkpoints").glob(".tmp-*")), "no unfinished checkpoint write is left"
    assert not (run / "adapter").exists()


@pytest.mark.slurm
def test_a_job_that_cannot_be_submitted_exits_2(cluster, tmp_path):
    spec = _spec(tmp_path)
    assert _cli(cluster, str(spec), "--dry-run", "-o", str(tmp_path / "build"), cwd=tmp_path).returncode == 0
    # sbatch reads its options from SBATCH_* too: a partition the cluster does not have
    result = _cli(cluster, str(tmp_path / "build"), "--no-wait", cwd=tmp_path, SBATCH_PARTITION="nosuch")
    assert result.returncode == 2, result.stderr
    assert "FT0726" in result.stderr and "invalid partition" in result.stderr.lower(), result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""  # no job id: nothing was submitted
