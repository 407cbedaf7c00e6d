"""`ftspec run SPEC [-o BUILD_DIR]`: lint, check, compile, launch and evaluate, stopping at the first
stage that fails, with that stage's exit code.

Each stage runs as its own `ftspec <verb>` subprocess: the stages stay as independent as when a person
or a CI job runs them one by one (same arguments, same exit codes, same artifacts in between), and the
heavy runtime never enters this process. lint, check and compile print their findings only when they
fail (their counts are in the stage line); launch and evaluate stream their output, unless --quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ftspec.compiler.verbs.common import add_lint_options

STAGES = ("lint", "check", "compile", "launch", "evaluate")
_COUNTS = re.compile(r"^(?:(\d+) errors?)?(?:, )?(?:(\d+) warnings?)?(?:, )?(?:(\d+) infos?)?$|^no problems$")
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


def _lint_args(args: argparse.Namespace) -> list[str]:
    out = []
    if args.allow_remote_code:
        out.append("--allow-remote-code")
    if args.repo_root:
        out += ["--repo-root", args.repo_root]
    return out


def _counts(output: str) -> str:
    """'0 errors, 2 warnings' from the text reporter's last line, for the stage line."""
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if _COUNTS.match(line) and line:
            return line
    return ""


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
        proc = subprocess.run(cmd, env=env, check=False)  # inherits stdout/stderr: output streams live
        return proc.returncode, ""
    except OSError as exc:
        return 2, f"cannot start {cmd[0]}: {exc}\n"


def _run_dir(build_dir: Path) -> Path | None:
    """The run folder the compiled plan names: build folder / paths.spec_dir / derived.output_dir."""
    try:
        plan = json.loads((build_dir / "plan.json").read_text(encoding="utf-8"))
        return (build_dir / plan["paths"]["spec_dir"] / plan["derived"]["output_dir"]).resolve()
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
    lint_args = _lint_args(args)
    started = time.monotonic()
    run_dir: Path | None = None
    stages: list[Stage] = []
    for index, stage_name in enumerate(STAGES, 1):
        if stage_name == "lint":
            cmd, capture = _cli("lint", str(spec_path), *lint_args), True
        elif stage_name == "check":
            cmd, capture = _cli("check", str(spec_path), *lint_args), True
        elif stage_name == "compile":
            cmd, capture = _cli("compile", str(spec_path), "-o", str(build_dir), *lint_args), True
        elif stage_name == "launch":
            cmd, capture = (
                _cli("launch", str(build_dir), *(["--overwrite"] if args.overwrite else [])),
                args.quiet,
            )
        else:
            run_dir = _run_dir(build_dir)
            if run_dir is None:
                stages.append(
                    Stage(stage_name, 2, 0.0, f"cannot find the run folder from {build_dir}/plan.json")
                )
                print(_line(stages[-1], index), flush=True)
                break
            cmd, capture = _cli("evaluate", str(run_dir)), False
        t0 = time.monotonic()
        if not capture:
            print(f"[{index}/{len(STAGES)}] {stage_name} ...", flush=True)
        code, output = _execute(stage_name, cmd, capture=capture, log_dir=log_dir)
        note = _counts(output) if stage_name in ("lint", "check", "compile") else ""
        if stage_name == "compile" and code == 0:
            note = (note + "; " if note else "") + f"build: {build_dir}"
        if stage_name == "launch" and code == 0:
            found = _run_dir(build_dir)
            note = f"run: {found}" if found else ""
        if stage_name == "evaluate":
            note = "gate passed" if code == 0 else ("gate FAILED" if code == 1 else "could not evaluate")
            if run_dir is not None:
                note += f"; report: {run_dir / 'eval' / 'report.html'}"
        stage = Stage(stage_name, code, time.monotonic() - t0, note)
        stages.append(stage)
        if code != 0 and capture and output and stage_name != "evaluate":
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
