"""`ftspec launch` for `launcher: slurm`: submit the build's slurm.sbatch, follow the job, report it.

Submission is `sbatch --parsable slurm.sbatch [--resume]` from the build folder (the script finds the
build folder through SLURM_SUBMIT_DIR). Following polls `scontrol show job -o` (it knows a finished
job for MinJobAge seconds; `sacct` is asked after that, where accounting runs) and copies what the
job's output file gains. A requeued job (preemption, `scontrol requeue`) goes back to PENDING and
runs again; following goes on until the job reaches a final state. The slurm.sbatch itself makes a
restarted job resume (SLURM_RESTART_COUNT), so nothing here decides about resuming.

Everything Slurm is reached through `Tools` (the commands as argv lists and a runner), so the logic
is tested against a fake as well as against the real test cluster (tests/slurm_cluster.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.core.artifacts import write_json
from ftspec.compiler.core.diagnostics import Diagnostic, Location, make

SLURM_FILE = "slurm.sbatch"
# Final states (squeue/scontrol JobState); REQUEUED, PENDING, RUNNING, CONFIGURING, COMPLETING,
# SUSPENDED, PREEMPTED-then-requeued ... are passing.
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "SPECIAL_EXIT",
    }
)
EXIT_OK, EXIT_FAILED, EXIT_NOT_SUBMITTED, EXIT_DETACHED = 0, 1, 2, 130

Runner = Callable[..., subprocess.CompletedProcess]


@dataclass(frozen=True)
class Tools:
    """How Slurm is reached: the runner takes an argv and returns a CompletedProcess (text)."""

    runner: Runner = subprocess.run
    env: dict[str, str] | None = None
    timeout_s: float = 30

    def call(self, argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
        try:
            return self.runner(
                argv,
                cwd=cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
            )
        except FileNotFoundError:
            return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(
                argv, 124, "", f"{argv[0]} did not answer in {self.timeout_s:.0f} s"
            )


@dataclass(frozen=True)
class Submission:
    """A submitted job, or why it was not submitted."""

    job_id: str | None
    argv: list[str]
    diagnostic: Diagnostic | None = None


@dataclass(frozen=True)
class JobState:
    state: str  # COMPLETED, RUNNING, PENDING, ... (the first word of JobState)
    exit_code: str = "0:0"  # Slurm's "code:signal"
    reason: str = ""
    output: str | None = None  # StdOut, the job's output file
    restarts: int = 0
    nodes: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"


@dataclass
class Follow:
    """What following a job saw: its last state and the states it passed through, in order."""

    job_id: str
    last: JobState | None = None
    states: list[str] = field(default_factory=list)


def sbatch_argv(build_dir: Path, *, resume: bool) -> list[str]:
    """The submission, run in the build folder (the script reads it as SLURM_SUBMIT_DIR)."""
    argv = ["sbatch", "--parsable", f"--export=ALL,FTSPEC_BUILD_DIR={Path(build_dir).resolve()}", SLURM_FILE]
    return argv + (["--resume"] if resume else [])


def job_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment sbatch exports into the job (--export=ALL): this Python's bin/ first on PATH,
    so launch.sh finds the accelerate/torchrun installed beside the ftspec that submitted it."""
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    parts = env.get("PATH", "").split(os.pathsep) if env.get("PATH") else []
    if bindir not in parts:
        env["PATH"] = os.pathsep.join([bindir, *parts])
    return env


def submit(build_dir: Path, tools: Tools, *, resume: bool = False) -> Submission:
    """Submit the build's slurm.sbatch; the job id, or FT0726 saying why not."""
    script = Path(build_dir) / SLURM_FILE
    argv = sbatch_argv(build_dir, resume=resume)
    if not script.is_file():
        return Submission(None, argv, _submit_error(script, "the build folder holds no slurm.sbatch"))
    result = tools.call(argv, cwd=Path(build_dir))
    if result.returncode != 0:
        detail = (
            " ".join((result.stderr or result.stdout or "").split()) or f"sbatch exited {result.returncode}"
        )
        return Submission(None, argv, _submit_error(script, detail))
    # --parsable: "jobid" or "jobid;cluster"
    job_id = (result.stdout or "").strip().splitlines()[-1:] or [""]
    job_id = job_id[0].split(";")[0].strip()
    if not job_id.isdigit():
        return Submission(None, argv, _submit_error(script, f"sbatch printed no job id: {result.stdout!r}"))
    return Submission(job_id, argv)


def _submit_error(script: Path, detail: str) -> Diagnostic:
    return make("FT0726", Location(file=str(script)), script=str(script), detail=detail)


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o` prints one line of Key=Value pairs; values hold no spaces except the
    last ones (Command=, WorkDir=, StdOut= may; they are read up to the next known key)."""
    fields: dict[str, str] = {}
    key = None
    for word in text.strip().split(" "):
        head, sep, value = word.partition("=")
        if sep and head and head.replace("/", "").replace(":", "").isalnum():
            key = head
            fields[key] = value
        elif key is not None:  # a value with a space in it
            fields[key] += " " + word
    return fields


def query(job_id: str, tools: Tools) -> JobState | None:
    """The job's state now; None when Slurm no longer knows it (or cannot be asked)."""
    result = tools.call(["scontrol", "show", "job", "-o", job_id])
    if result.returncode == 0 and "JobState=" in result.stdout:
        line = next(x for x in result.stdout.splitlines() if "JobState=" in x)
        fields = parse_scontrol(line)
        return JobState(
            state=fields.get("JobState", "UNKNOWN").split()[0],
            exit_code=fields.get("ExitCode", "0:0"),
            reason=fields.get("Reason", ""),
            output=fields.get("StdOut") or None,
            restarts=int(fields.get("Restarts", "0") or 0),
            nodes=fields.get("NodeList", ""),
        )
    return _query_sacct(job_id, tools)


def _query_sacct(job_id: str, tools: Tools) -> JobState | None:
    """After MinJobAge the controller forgets a job; accounting (where it runs) still knows it."""
    result = tools.call(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"])
    if result.returncode != 0:
        return None
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            return JobState(state=parts[0].split()[0], exit_code=parts[1])
    return None


class OutputTail:
    """Copies what a growing file gains. A requeued job may start its file over (without
    --open-mode=append): a file shorter than what was read is read again from its start."""

    def __init__(self, path: Path | None):
        self.path = path
        self.offset = 0

    def read(self) -> str:
        if self.path is None:
            return ""
        try:
            size = self.path.stat().st_size
            if size < self.offset:
                self.offset = 0
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return ""
        self.offset += len(data)
        return data.decode("utf-8", errors="replace")


def follow(
    job_id: str,
    tools: Tools,
    *,
    build_dir: Path,
    on_output: Callable[[str], None],
    on_state: Callable[[JobState], None],
    poll_s: float = 1.0,
    lost_after: int = 10,
) -> Follow:
    """Follow the job until it reaches a final state (or Slurm stops knowing it: `lost_after` polls
    in a row). KeyboardInterrupt passes through: the caller decides about scancel."""
    seen = Follow(job_id)
    tail = OutputTail(None)
    misses = 0
    while True:
        state = query(job_id, tools)
        if state is None:
            misses += 1
            if misses >= lost_after:
                on_output(tail.read())
                return seen
        else:
            misses = 0
            if tail.path is None and state.output:
                out = Path(state.output)
                tail.path = out if out.is_absolute() else Path(build_dir) / out
            if not seen.states or seen.states[-1] != state.state:
                seen.states.append(state.state)
                on_state(state)
            seen.last = state
        on_output(tail.read())
        if state is not None and state.final:
            time.sleep(min(poll_s, 0.5))  # the last lines may land just after the state changes
            on_output(tail.read())
            return seen
        time.sleep(poll_s)


def cancel(job_id: str, tools: Tools) -> subprocess.CompletedProcess:
    return tools.call(["scancel", job_id])


def exit_code(result: Follow) -> int:
    """0 when the job completed, 1 for any other end (failed, cancelled, timed out, lost)."""
    return EXIT_OK if result.last is not None and result.last.ok else EXIT_FAILED


def outcome_diagnostic(result: Follow) -> Diagnostic | None:
    """FT0727 for a job that did not complete; None when it did."""
    last = result.last
    if last is not None and last.ok:
        return None
    return make(
        "FT0727",
        job=result.job_id,
        state=last.state if last else "UNKNOWN (Slurm no longer knows the job)",
        exit_code=last.exit_code if last else "?",
        output=(last.output if last and last.output else "unknown"),
    )


def record_job(run_dir: Path, result: Follow) -> bool:
    """Add the Slurm job's id and final state to run.json (`scheduler`), beside what the runtime
    wrote. A job killed before the runtime could write its end (SIGKILL after KillWait, a node
    lost) leaves `running`: it becomes `failed` here, so evaluate refuses the folder. False when
    there is no run.json (the job never reached the runtime)."""
    path = Path(run_dir) / "run.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    last = result.last
    data["scheduler"] = {
        "kind": "slurm",
        "job_id": result.job_id,
        "state": last.state if last else "UNKNOWN",
        "exit_code": last.exit_code if last else None,
        "restarts": last.restarts if last else None,
    }
    if data.get("exit_status") == "running" and last is not None and last.final:
        data.update(exit_status="failed", exit_code=1, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json(path, data, durable=True)
    return True
