"""Shared by the compile tests: compile a spec in-process, normalise machine-dependent values."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ftspec.compiler.compile.compile import CompileOptions, CompileResult, compile_spec, write_build
from ftspec.compiler.compile.render import EXECUTABLE
from ftspec.compiler.lint.lint import LintOptions

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "compile"
GOLDEN = ROOT / "tests" / "golden"


def all_specs() -> list[Path]:
    """Every example spec plus the compile fixtures, as paths relative to the repository."""
    specs = sorted((ROOT / "specs").glob("*.yaml")) + sorted(FIXTURES.glob("*.yaml"))
    return [p.relative_to(ROOT) for p in specs]


def golden_name(spec: Path) -> str:
    return spec.stem if spec.parts[0] == "specs" else f"fixture-{spec.stem}"


def compile_to(spec: Path, build: Path, **options: object) -> CompileResult:
    """Compile `spec` (relative to the repository) from the repository root, like the CLI does."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        opts = CompileOptions(lint=LintOptions(repo_root=ROOT), **options)
        result = compile_spec(str(spec), opts, build_dir=build)
        if result.ok:
            write_build(result.files, build, executable=EXECUTABLE)
        return result
    finally:
        os.chdir(cwd)


def normalise(name: str, text: str) -> str:
    """Golden form: the build folder's place on disk and the compiling machine's versions removed."""
    if name == "plan.json":
        data = json.loads(text)
        data["paths"]["spec_dir"] = "<spec_dir>"
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if name == "lock.json":
        data = json.loads(text)
        for entry in data["packages"].values():
            entry["installed"] = "<installed>" if entry["installed"] else None
        data["python"]["version"] = "<python>"
        if "plan_sha256" in data:  # plan.json holds the build folder's place on disk
            data["plan_sha256"] = "<plan_sha256>"
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return text
