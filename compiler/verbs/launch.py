"""`ftspec launch BUILD_DIR|SPEC [--resume] [--dry-run]`: train a compiled plan with the embedded runtime.

A spec path is compiled first (into `-o BUILD_DIR`, default build/<spec name>, as `ftspec run` does).
The command is the one `launch.sh` runs (`compiler.launch.launch_command`): accelerate (or torchrun)
starting `python -m ftspec.runtime.train --plan plan.json` on every process. Its output streams
straight through (the training processes inherit stdout/stderr, so the progress bar stays a bar);
its exit status is ours.

Failures: torch's elastic agent (under both accelerate launch and torchrun) stops every other
process as soon as one exits non-zero, so one failing rank never leaves the rest hanging in a
collective; each failing rank writes its error to <run>/.ftspec/error-rank<N>.txt and we repeat the
first lines of each after the run. A run that ran out of memory with `on_oom: reduce_batch` leaves
<run>/batch_override.json (micro batch halved, accumulation doubled); we relaunch with --resume,
which continues from the last complete checkpoint at the new batch shape.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ftspec.compiler.launch.run_folder import BATCH_FILE, ERRORS_DIR

MAX_OOM_RETRIES = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="BUILD_DIR|SPEC",
        help="a build folder written by `ftspec compile`, or a spec file to compile first",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the command and its environment; run nothing"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over although the run folder holds an earlier run (which is moved aside, "
        "to <run folder>.previous-<time>, never deleted)",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="launcher slurm: submit the job, print its id and return (default: follow it to its end)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="BUILD_DIR",
        help="where a SPEC is compiled to (default: build/<spec name>)",
    )


def _compile(spec: Path, build_dir: Path) -> int:
    from ftspec.compiler.verbs import compile as compile_verb

    parser = argparse.ArgumentParser(prog="ftspec compile")
    compile_verb.add_arguments(parser)
    return int(compile_verb.run(parser.parse_args([str(spec), "-o", str(build_dir)])) or 0)


def _spec_name(spec: Path) -> str:
    from ftspec.compiler.core.loader import load_spec

    data = load_spec(spec).data
    name = data.get("name") if isinstance(data, dict) else None
    return str(name) if isinstance(name, str) and name else spec.stem


def _error(code: str, file: Path | None = None, **fields: object) -> int:
    """The tool could not run: the finding (code, message, hint) on stderr, exit code 2."""
    from ftspec.compiler.core.diagnostics import Location, make
    from ftspec.compiler.core.reporters import to_text

    loc = Location(file=str(file)) if file is not None else None
    print(to_text([make(code, loc, **fields)], lambda *_: None), file=sys.stderr)
    return 2


def _lock_run_folder(run_dir: Path) -> tuple[int | None, str | None]:
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


def _run_folder_hint(run_dir: Path) -> str:
    """What to type instead of `ftspec launch RUN_DIR`, with the real spec path where the run names it."""
    from ftspec.compiler.launch.run_folder import RunFolderError, locate_spec_dir

    judge = f"judge it: ftspec evaluate {shlex.quote(str(run_dir))}"
    try:
        plan = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
        spec = locate_spec_dir(run_dir, plan) / plan["metadata"]["spec_file"]
    except (OSError, ValueError, KeyError, TypeError, RunFolderError):
        return f"launch the build folder or spec it came from (with --resume to continue it), or {judge}"
    return f"continue it: ftspec launch {shlex.quote(os.path.relpath(spec))} --resume; or {judge}"


def _move_aside(run_dir: Path) -> Path:
    """--overwrite: keep the earlier run whole under a new name instead of deleting it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.previous-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.previous-{stamp}-{n}")
    os.rename(run_dir, target)
    return target


def _run_dir(build_dir: Path, plan: dict) -> Path:
    return (build_dir / plan["paths"]["spec_dir"] / plan["derived"]["output_dir"]).resolve()


def _show_command(argv: list[str], env: dict[str, str]) -> None:
    print("# environment added to the current one:")
    for key in sorted(env):
        print(f"export {key}={shlex.quote(env[key])}")
    print("# command:")
    print(shlex.join(argv))


def _execute(argv: list[str], env: dict[str, str]) -> int:
    """Start the launcher in its own process group, stream its output, stop the whole group on ^C."""
    try:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, start_new_session=True)
    except OSError as exc:
        from ftspec.compiler.core.diagnostics import make
        from ftspec.compiler.core.reporters import to_text

        print(
            to_text(
                [make("FT0720", detail=f"cannot start {argv[0]}: {exc.strerror or exc}")], lambda *_: None
            ),
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


def _report_failures(run_dir: Path, since: float) -> None:
    from ftspec.compiler.core.diagnostics import make
    from ftspec.compiler.core.reporters import to_text

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
        print(
            to_text([make("FT0717", rank=rank, detail=detail, file=str(path))], lambda *_: None),
            file=sys.stderr,
        )


def _mark_failed(run_dir: Path, code: int) -> None:
    """A rank killed from outside (or ^C) never writes its end: record it, so evaluate refuses the folder."""
    path = run_dir / "run.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if data.get("exit_status") != "running":
        return
    data.update(exit_status="failed", exit_code=code, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    tmp = path.with_name(".run.json.launch-tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _oom_retry_pending(run_dir: Path) -> dict | None:
    path = run_dir / BATCH_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not data.get("pending"):
        return None
    data["pending"] = False
    tmp = path.with_name(f".{BATCH_FILE}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return data


def _claim_run_folder(run_dir: Path, *, resume: bool, overwrite: bool, build_dir: Path) -> int | None:
    """A fresh launch never replaces an earlier run's checkpoints or model silently (the runtime
    refuses too, for launch.sh); --overwrite moves the earlier run aside first. None: go ahead."""
    from ftspec.compiler.launch.run_folder import previous_run

    found = [] if resume else previous_run(run_dir)
    if found and not overwrite:
        build = shlex.quote(str(build_dir))  # the hint names the real build folder, not BUILD_DIR
        return _error("FT0723", run_dir, folder=run_dir, found="; ".join(found), build=build)
    if found:
        moved = _move_aside(run_dir)
        print(f"ftspec: moved the earlier run {run_dir} to {moved}", file=sys.stderr, flush=True)
    return None


def _report(diagnostic) -> None:
    from ftspec.compiler.core.reporters import to_text

    print(to_text([diagnostic], lambda *_: None), file=sys.stderr, flush=True)


def _launch_slurm(args: argparse.Namespace, plan: dict, build_dir: Path) -> int:
    """launcher slurm: submit slurm.sbatch, print the job id, follow the job (unless --no-wait) and
    exit with its result: 0 completed, 1 any other end, 2 not submitted, 130 detached by ^C."""
    from ftspec.compiler.launch import slurm

    tools = slurm.Tools(env=slurm.job_environment())
    if args.dry_run:
        print(f"# in {build_dir.resolve()}:")
        print(shlex.join(slurm.sbatch_argv(build_dir, resume=args.resume)))
        return 0
    run_dir = _run_dir(build_dir, plan)
    refused = _claim_run_folder(run_dir, resume=args.resume, overwrite=args.overwrite, build_dir=build_dir)
    if refused is not None:
        return refused
    submitted = slurm.submit(build_dir, tools, resume=args.resume)
    if submitted.diagnostic is not None:
        _report(submitted.diagnostic)
        return slurm.EXIT_NOT_SUBMITTED
    job = submitted.job_id
    print(job, flush=True)  # stdout holds the job id alone, for scripts
    print(
        f"ftspec: submitted Slurm job {job} ({plan['derived']['nodes']} node(s), "
        f"{plan['derived']['world_size']} process(es)){' --resume' if args.resume else ''}",
        file=sys.stderr,
        flush=True,
    )
    if args.no_wait:
        print(f"ftspec: not following it: `squeue -j {job}`; cancel with `scancel {job}`", file=sys.stderr)
        return slurm.EXIT_OK

    def on_state(state) -> None:
        where = f" on {state.nodes}" if state.nodes and state.nodes != "(null)" else ""
        why = f" ({state.reason})" if state.reason and state.reason != "None" else ""
        print(f"ftspec: job {job} {state.state}{where}{why}", file=sys.stderr, flush=True)

    def on_output(text: str) -> None:
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()

    try:
        result = slurm.follow(job, tools, build_dir=build_dir, on_output=on_output, on_state=on_state)
    except KeyboardInterrupt:
        return _interrupted_slurm(job, tools, build_dir, run_dir, on_output, on_state)
    slurm.record_job(run_dir, result)
    problem = slurm.outcome_diagnostic(result)
    if problem is not None:
        _report(problem)
    else:
        print(f"ftspec: job {job} COMPLETED; run folder {run_dir}", file=sys.stderr, flush=True)
    return slurm.exit_code(result)


def _ask_cancel(job: str) -> bool | None:
    """Ask on the terminal whether to cancel; None when there is no one to ask."""
    if not (sys.stdin and sys.stdin.isatty()):
        return None
    try:
        answer = input(f"\nftspec: cancel Slurm job {job} with scancel? [y/N] ")
    except (EOFError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")


def _interrupted_slurm(job: str, tools, build_dir: Path, run_dir: Path, on_output, on_state) -> int:
    from ftspec.compiler.launch import slurm

    choice = _ask_cancel(job)
    if not choice:
        why = "no terminal to ask" if choice is None else "not cancelled"
        print(
            f"ftspec: stopped following; Slurm job {job} keeps running ({why}): follow it with "
            f"`squeue -j {job}`, cancel it with `scancel {job}`",
            file=sys.stderr,
            flush=True,
        )
        return slurm.EXIT_DETACHED
    result = slurm.cancel(job, tools)
    if result.returncode != 0:
        print(f"ftspec: scancel {job} failed: {result.stderr.strip()}", file=sys.stderr, flush=True)
        return slurm.EXIT_FAILED
    print(f"ftspec: cancelled Slurm job {job}; waiting for it to end", file=sys.stderr, flush=True)
    try:
        ended = slurm.follow(job, tools, build_dir=build_dir, on_output=on_output, on_state=on_state)
    except KeyboardInterrupt:
        return slurm.EXIT_DETACHED
    slurm.record_job(run_dir, ended)
    return slurm.EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    from ftspec.compiler.compile.launch_command import launch_command
    from ftspec.compiler.core.artifacts import read_plan

    target = Path(args.target)
    if target.is_file():
        build_dir = Path(args.output) if args.output else Path("build") / _spec_name(target)
        if not args.dry_run or not (build_dir / "plan.json").is_file():
            code = _compile(target, build_dir)
            if code != 0:
                return code
    elif target.is_dir() and (target / "run.json").is_file():
        # a natural mistake: the run folder holds a plan.json copy, and launching it ended in accelerate's traceback
        return _error(
            "FT0716",
            target,
            path=target,
            detail="this is a run folder written by `ftspec launch`, not a build folder",
            hint=_run_folder_hint(target),
        )
    elif target.is_dir():
        build_dir = target
    else:
        return _error("FT0716", target, path=target, detail="neither a build folder nor a spec file")
    plan_path = build_dir / "plan.json"
    try:
        plan = read_plan(plan_path)
    except FileNotFoundError:
        return _error("FT0716", plan_path, path=plan_path, detail=f"{build_dir} holds no plan.json")
    except (OSError, ValueError) as exc:
        return _error(
            "FT0716", plan_path, path=plan_path, detail=f"{exc} (compile the spec again with this ftspec)"
        )
    from ftspec.compiler.launch.integrity import verify_build

    edited = verify_build(build_dir)  # an edited plan is refused, never obeyed (security review V2)
    if edited:
        for diagnostic in edited:
            _report(diagnostic)
        return 2
    if args.resume and args.overwrite:
        return _error(
            "FT0720",
            detail="--resume continues the run in the run folder, --overwrite starts a new "
            "one: give one of them",
            hint="--resume keeps the run's checkpoints; --overwrite moves the earlier run aside",
        )
    if plan["derived"].get("launcher") == "slurm":
        return _launch_slurm(args, plan, build_dir)
    if args.no_wait:
        return _error(
            "FT0720",
            detail="--no-wait submits to a scheduler; this plan runs here (launcher "
            f"{plan['derived'].get('launcher')})",
            hint="set hardware.launcher: slurm to submit with sbatch, or drop --no-wait",
        )
    try:
        argv, env = launch_command(plan, build_dir, resume=args.resume)
    except ValueError as exc:  # a multi-node plan: this machine's rank and the rendezvous are needed
        return _error(
            "FT0720",
            detail=str(exc),
            hint="multi-node plans start through the build folder's launch.sh (Slurm / Kubernetes)",
        )
    if args.dry_run:
        _show_command(argv, env)
        return 0
    run_dir = _run_dir(build_dir, plan)
    resume = args.resume
    lock_fd, holder = _lock_run_folder(run_dir)  # held until this process exits (security review D3)
    if lock_fd is None:
        return _error("FT0749", run_dir, folder=run_dir, pid=holder or "?")
    refused = _claim_run_folder(run_dir, resume=resume, overwrite=args.overwrite, build_dir=build_dir)
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
            code = _execute(argv, env)
        except KeyboardInterrupt:
            _mark_failed(run_dir, 130)
            raise
        if code == 0:
            return 0
        retry = _oom_retry_pending(run_dir)
        if retry is None or attempt == MAX_OOM_RETRIES:
            _report_failures(run_dir, started - 1)
            _mark_failed(run_dir, code)
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
