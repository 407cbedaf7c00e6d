"""`ftspec launch BUILD_DIR|SPEC [--resume] [--overwrite] [--dry-run] [--no-wait]`: train a compiled plan.

A spec path is compiled first (into `-o BUILD_DIR`, default build/<spec name>, as `ftspec run` does).
The verb finds and verifies the build, then hands it to the launch stage: `launch.launch.run_local`
for a plan that runs here (the command `launch.sh` runs, its output streaming straight through, with
out-of-memory relaunches and failed-rank reports), `launch.slurm` for `launcher: slurm`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ftspec.compiler.launch.launch import claim_run_folder, run_local
from ftspec.compiler.launch.run_folder import run_dir_of


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
    print(to_text([make(code, loc, **fields)]), file=sys.stderr)
    return 2


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


def _show_command(argv: list[str], env: dict[str, str]) -> None:
    print("# environment added to the current one:")
    for key in sorted(env):
        print(f"export {key}={shlex.quote(env[key])}")
    print("# command:")
    print(shlex.join(argv))


def _report(diagnostic) -> None:
    from ftspec.compiler.core.reporters import to_text

    print(to_text([diagnostic]), file=sys.stderr, flush=True)


def _launch_slurm(args: argparse.Namespace, plan: dict, build_dir: Path) -> int:
    """launcher slurm: submit slurm.sbatch, print the job id, follow the job (unless --no-wait) and
    exit with its result: 0 completed, 1 any other end, 2 not submitted, 130 detached by ^C."""
    from ftspec.compiler.launch import slurm

    tools = slurm.Tools(env=slurm.job_environment())
    if args.dry_run:
        print(f"# in {build_dir.resolve()}:")
        print(shlex.join(slurm.sbatch_argv(build_dir, resume=args.resume)))
        return 0
    run_dir = run_dir_of(plan, build_dir)
    refused = claim_run_folder(run_dir, resume=args.resume, overwrite=args.overwrite, build_dir=build_dir)
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
    return run_local(plan, build_dir, resume=args.resume, overwrite=args.overwrite)
