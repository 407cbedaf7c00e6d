"""`ftspec run SPEC [-o BUILD_DIR]`: lint, check, compile, launch and evaluate, stopping at the first
stage that fails, with that stage's exit code.

lint, check and compile are called through their front doors (`lint_file`, `check_spec`,
`build_folder`) and their results read as data: the spec is read by each as it would be by the verb,
and their findings are printed only when they fail (their counts are in the stage line). launch and
evaluate run as `ftspec <verb>` subprocesses (the heavy runtime never enters this process) and stream
their output, unless --quiet; their results are read from the run folder, never from their text.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ftspec.compiler.verbs.common import add_lint_options

STAGES = ("lint", "check", "compile", "launch", "evaluate")
_HINTS = {
    "lint": "fix the spec (the findings above point at lines), then run again",
    "check": "the job does not fit the hardware or the data has errors: see the findings above",
    "compile": "see the findings above; `ftspec compile --force` writes a build despite them",
    "launch": "training failed: see its output above; `ftspec launch BUILD_DIR --resume` continues from a checkpoint; "
    "`ftspec run SPEC --overwrite` starts over beside an earlier run",
    "evaluate": "see the rule table and report above",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="the spec file")
    parser.add_argument(
        "-o",
        "--output",
        metavar="BUILD_DIR",
        default=None,
        help="build folder for compile (default: build/<spec name>); the run itself goes to "
        "the spec's output.dir",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="the spec's output.dir holds an earlier run: move it aside to a .previous-<time> "
        "folder and train again (without this, launch refuses to replace it)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only the stage lines: keep launch and evaluate output in BUILD_DIR-logs/",
    )
    add_lint_options(parser)


@dataclass
class Stage:
    name: str
    code: int
    seconds: float
    note: str


def _cli(verb: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ftspec.compiler.cli", verb, *args]


def _in_process(
    name: str, args: argparse.Namespace, build_dir: Path, log_dir: Path | None
) -> tuple[int, str, str]:
    """Run lint, check or compile through its front door: (exit code, count line, text report)."""
    from ftspec.compiler.core.reporters import count_line, to_text
    from ftspec.compiler.verbs.common import SourceCache, lint_options

    options = lint_options(args)
    if name == "lint":
        from ftspec.compiler.core.diagnostics import exit_code
        from ftspec.compiler.lint.lint import lint_file

        result = lint_file(args.spec, options)
        spec, diagnostics, code = result.spec, result.diagnostics, exit_code(result.diagnostics)
    elif name == "check":
        from ftspec.compiler.check.check import check_spec

        checked = check_spec(args.spec, options)
        spec, diagnostics, code = checked.spec, checked.diagnostics, checked.exit_code
    else:
        from ftspec.compiler.compile.compile import CompileOptions, build_folder

        outcome = build_folder(args.spec, CompileOptions(lint=options), build_dir)
        spec, diagnostics, code = outcome.result.spec, outcome.diagnostics, outcome.exit_code
    sources = SourceCache()
    if spec is not None:
        sources.add(args.spec, spec.text)
    report = to_text(list(diagnostics), sources)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{name}.log").write_text(report + "\n", encoding="utf-8")
    return code, count_line(diagnostics), report


def _execute(name: str, cmd: list[str], *, capture: bool, log_dir: Path | None) -> tuple[int, str]:
    """Run one stage; returns (exit code, captured output or '')."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if capture:
            proc = subprocess.run(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
            )
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                (log_dir / f"{name}.log").write_text(proc.stdout, encoding="utf-8")
            return proc.returncode, proc.stdout
        live = subprocess.run(cmd, env=env, check=False)  # inherits stdout/stderr: output streams live
        return live.returncode, ""
    except OSError as exc:
        return 2, f"cannot start {cmd[0]}: {exc}\n"


def _run_dir(build_dir: Path) -> Path | None:
    """The run folder the compiled plan names."""
    from ftspec.compiler.core.artifacts import read_plan
    from ftspec.compiler.launch.run_folder import run_dir_of

    try:
        return run_dir_of(read_plan(build_dir / "plan.json"), build_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _line(stage: Stage, index: int) -> str:
    status = "ok" if stage.code == 0 else f"FAILED (exit {stage.code})"
    note = f"  {stage.note}" if stage.note else ""
    return f"[{index}/{len(STAGES)}] {stage.name:<8} {status:<16} {stage.seconds:6.1f}s{note}"


def run(args: argparse.Namespace) -> int:
    from ftspec.compiler.core.loader import load_spec

    spec_path = Path(args.spec)
    if not spec_path.is_file():
        from ftspec.compiler.verbs.common import fail

        return fail(f"{args.spec} is not a file")
    loaded = load_spec(spec_path)
    name = loaded.data.get("name") if isinstance(loaded.data, dict) else None
    build_dir = Path(args.output) if args.output else Path("build") / (str(name) if name else spec_path.stem)
    log_dir = build_dir.with_name(build_dir.name + "-logs") if args.quiet else None
    started = time.monotonic()
    run_dir: Path | None = None
    stages: list[Stage] = []
    for index, stage_name in enumerate(STAGES, 1):
        t0 = time.monotonic()
        output = ""
        if stage_name in ("lint", "check", "compile"):
            code, note, output = _in_process(stage_name, args, build_dir, log_dir)
            if stage_name == "compile" and code == 0:
                note = (note + "; " if note else "") + f"build: {build_dir}"
        elif stage_name == "launch":
            cmd = _cli("launch", str(build_dir), *(["--overwrite"] if args.overwrite else []))
            if not args.quiet:
                print(f"[{index}/{len(STAGES)}] {stage_name} ...", flush=True)
            code, output = _execute(stage_name, cmd, capture=args.quiet, log_dir=log_dir)
            found = _run_dir(build_dir) if code == 0 else None
            note = f"run: {found}" if found else ""
        else:
            run_dir = _run_dir(build_dir)
            if run_dir is None:
                stages.append(
                    Stage(stage_name, 2, 0.0, f"cannot find the run folder from {build_dir}/plan.json")
                )
                print(_line(stages[-1], index), flush=True)
                break
            if not args.quiet:
                print(f"[{index}/{len(STAGES)}] {stage_name} ...", flush=True)
            code, output = _execute(  # -q: kept in the stage log like launch's, shown only on failure
                stage_name, _cli("evaluate", str(run_dir)), capture=args.quiet, log_dir=log_dir
            )
            note = "gate passed" if code == 0 else ("gate FAILED" if code == 1 else "could not evaluate")
            note += f"; report: {run_dir / 'eval' / 'report.html'}"
        stage = Stage(stage_name, code, time.monotonic() - t0, note)
        stages.append(stage)
        if code != 0 and output:
            sys.stdout.write(output if output.endswith("\n") else output + "\n")
        print(_line(stage, index), flush=True)
        if code != 0:
            if code == 2:  # the verb itself could not run: its own message says why, not a finding
                print(f"  hint: `ftspec {stage_name}` could not run; its message is above", flush=True)
            elif stage_name != "evaluate":
                print(f"  hint: {_HINTS[stage_name]}", flush=True)
            break
    final = stages[-1]
    total = time.monotonic() - started
    if final.code == 0 and len(stages) == len(STAGES):
        print(f"ftspec run: PASS in {total:.0f}s", flush=True)
        return 0
    print(f"ftspec run: stopped at {final.name} (exit {final.code}) after {total:.0f}s", flush=True)
    return final.code
