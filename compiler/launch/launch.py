"""The launch stage's front door for a plan that runs here: one run folder, one launch at a time.

`run_local` claims the run folder (an exclusive lock, and never replacing an earlier run's checkpoints
or model unless --overwrite moves it aside), starts the plan's launch command in its own process group,
relaunches from the last checkpoint with a smaller micro batch when the runtime asks for it (out of
memory, exit 75), and records a run killed from outside as failed. It returns the exit status; the
verb only reports it. A plan for Slurm goes through `launch/slurm.py` instead.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ftspec.compiler.compile.launch_command import launch_command
from ftspec.compiler.core.artifacts import write_json
from ftspec.compiler.core.diagnostics import Diagnostic, Location, make
from ftspec.compiler.core.reporters import to_text
from ftspec.compiler.launch.run_folder import BATCH_FILE, ERRORS_DIR, previous_run, run_dir_of

MAX_OOM_RETRIES = 6


def _refuse(diagnostic: Diagnostic) -> int:
    """The launch cannot go ahead: the finding on stderr, exit code 2."""
    print(to_text([diagnostic]), file=sys.stderr)
    return 2


def lock_run_folder(run_dir: Path) -> tuple[int | None, str | None]:
    """An exclusive lock on the run folder for this launch: (fd, None), or (None, holder's pid) when
    another launch holds it. The lock file sits beside the folder, so --overwrite can move the folder
    aside while it is held; the kernel drops the lock when the process ends, however it ends."""
    import fcntl

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f".{run_dir.name}.launch-lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        return None, holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, None


def move_aside(run_dir: Path) -> Path:
    """--overwrite: keep the earlier run whole under a new name instead of deleting it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.previous-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.previous-{stamp}-{n}")
    os.rename(run_dir, target)
    return target


def execute(argv: list[str], env: dict[str, str]) -> int:
    """Start the launcher in its own process group, stream its output, stop the whole group on ^C."""
    try:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, start_new_session=True)
    except OSError as exc:
        from ftspec.compiler.core.diagnostics import make
        from ftspec.compiler.core.reporters import to_text

        print(
            to_text([make("FT0720", detail=f"cannot start {argv[0]}: {exc.strerror or exc}")]),
            file=sys.stderr,
        )
        return 2
    try:
        return proc.wait()
    except KeyboardInterrupt:
        print(
            "ftspec: interrupted: stopping the training processes (resume with --resume)",
            file=sys.stderr,
            flush=True,
        )
        # The launcher forwards SIGINT to its workers; give them a moment, then end the group.
        for sig, wait_s in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        raise


def spec_location(plan: dict, build_dir: Path) -> Location:
    """The spec file the plan was compiled from, as the findings of a launch name it (not `<spec>`)."""
    name = (plan.get("metadata") or {}).get("spec_file")
    folder = (plan.get("paths") or {}).get("spec_dir")
    if not name or not folder:
        return Location()
    path = (Path(build_dir) / folder / name).resolve()
    rel = os.path.relpath(path)
    return Location(file=str(path) if rel.startswith("..") else rel)


def report_failures(run_dir: Path, since: float, where: Location | None = None) -> list[Diagnostic]:
    """Print each failed rank's finding (FT0717, at `where`: the spec); they are returned for run.json."""
    from ftspec.compiler.core.diagnostics import make
    from ftspec.compiler.core.reporters import to_text

    found: list[Diagnostic] = []
    folder = run_dir / ERRORS_DIR
    files = sorted(folder.glob("error-rank*.txt")) if folder.is_dir() else []
    for path in files:
        if path.stat().st_mtime < since:
            continue
        lines = [
            x for x in path.read_text(encoding="utf-8", errors="replace").strip().splitlines() if x.strip()
        ]
        # the runtime's own finding (an FT07xx line) when it wrote one, else a traceback's last line
        finding = next((x for x in lines if " FT07" in x or x.startswith("FT07")), None)
        detail = (finding or (lines[-1] if lines else "no message")).strip()
        rank = path.stem.removeprefix("error-rank")
        diag = make("FT0717", where, rank=rank, detail=detail, file=str(path))
        found.append(diag)
        print(to_text([diag]), file=sys.stderr)
    return found


def mark_failed(run_dir: Path, code: int, diagnostics: Sequence[Diagnostic] = ()) -> None:
    """A rank killed from outside (or ^C) never writes its end: record it, so evaluate refuses the
    folder, with the failed ranks' findings as the reason. On a full disk (no room for the atomic
    copy) run.json is rewritten in place; when even that fails, the finding says so."""
    path = run_dir / "run.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if data.get("exit_status") != "running":
        return
    data.update(exit_status="failed", exit_code=code, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if diagnostics:
        data["diagnostics"] = [*(data.get("diagnostics") or []), *(d.to_json() for d in diagnostics)]
    try:
        write_json(path, data, durable=True)
    except OSError as exc:
        from ftspec.compiler.core.artifacts import dumps_json, free_bytes, human_bytes, is_no_space

        if not is_no_space(exc):
            raise
        free = human_bytes(free_bytes(run_dir))
        try:
            with open(path, "r+", encoding="utf-8") as fh:
                fh.truncate(0)  # the old copy's blocks come back first
                fh.write(dumps_json(data))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            where = Location(file=str(path))
            print(
                to_text([make("FT0747", where, what="run.json", folder=str(run_dir), free=free)]),
                file=sys.stderr,
            )


def oom_retry_pending(run_dir: Path) -> dict | None:
    path = run_dir / BATCH_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not data.get("pending"):
        return None
    data["pending"] = False
    write_json(path, data)
    return data


def claim_run_folder(run_dir: Path, *, resume: bool, overwrite: bool, build_dir: Path) -> int | None:
    """A fresh launch never replaces an earlier run's checkpoints or model silently (the runtime
    refuses too, for launch.sh); --overwrite moves the earlier run aside first. None: go ahead."""
    found = [] if resume else previous_run(run_dir)
    if found and not overwrite:
        build = shlex.quote(str(build_dir))  # the hint names the real build folder, not BUILD_DIR
        return _refuse(
            make("FT0723", Location(file=str(run_dir)), folder=run_dir, found="; ".join(found), build=build)
        )
    if found:
        moved = move_aside(run_dir)
        print(f"ftspec: moved the earlier run {run_dir} to {moved}", file=sys.stderr, flush=True)
    return None


def run_local(plan: dict, build_dir: Path, *, resume: bool = False, overwrite: bool = False) -> int:
    """Train a plan on this machine: 0 done, 1 the run failed, 2 refused, 128+n killed by signal n."""
    argv, env = launch_command(plan, build_dir, resume=resume)
    run_dir = run_dir_of(plan, build_dir)
    lock_fd, holder = lock_run_folder(run_dir)  # held until this process exits (security review D3)
    if lock_fd is None:
        return _refuse(make("FT0749", Location(file=str(run_dir)), folder=run_dir, pid=holder or "?"))
    refused = claim_run_folder(run_dir, resume=resume, overwrite=overwrite, build_dir=build_dir)
    if refused is not None:
        return refused
    for attempt in range(MAX_OOM_RETRIES + 1):
        started = time.time()
        for old in (run_dir / ERRORS_DIR).glob("error-rank*.txt") if (run_dir / ERRORS_DIR).is_dir() else []:
            old.unlink(missing_ok=True)
        if not resume:
            (run_dir / BATCH_FILE).unlink(missing_ok=True)  # a fresh run starts at the plan's batch
        print(
            f"ftspec: launching {plan['derived']['world_size']} process(es) "
            f"({plan['derived']['strategy']} on {plan['derived']['device']}){' --resume' if resume else ''}: "
            f"{shlex.join(argv)}",
            file=sys.stderr,
            flush=True,
        )
        try:
            code = execute(argv, env)
        except KeyboardInterrupt:
            mark_failed(run_dir, 130)
            raise
        if code == 0:
            return 0
        retry = oom_retry_pending(run_dir)
        if retry is None or attempt == MAX_OOM_RETRIES:
            failures = report_failures(run_dir, started - 1, spec_location(plan, build_dir))
            mark_failed(run_dir, code, failures)
            return code if code > 0 else 128 - code
        print(
            f"ftspec: out of memory: relaunching from the last checkpoint with micro_batch_size "
            f"{retry['micro_batch_size']} and gradient_accumulation_steps {retry['gradient_accumulation_steps']}",
            file=sys.stderr,
            flush=True,
        )
        resume = True
        argv, env = launch_command(plan, build_dir, resume=True)
    return 1
