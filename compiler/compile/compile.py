"""`ftspec compile` as data: spec -> (diagnostics, the build folder's files), and an atomic writer.

Order: load and apply `--set` overrides, lint, resolve defaults, check the data (lengths for
sequence_len: p95, usable example counts), assess feasibility, build the plan, render. Lint errors,
data errors and a spec that does not fit refuse the build unless forced; a plan that cannot be
built at all (no sequence length, no steps) is refused even then, and so is an accelerate config or
DeepSpeed JSON that does not match ftspec's schema of it (FT0619, a bug in ftspec).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.check.data.datacheck import check_data
from ftspec.compiler.check.feasibility import assess
from ftspec.compiler.compile.plan import apply_overrides, override_pointer, plan_with_diagnostics, read_plan
from ftspec.compiler.core.diagnostics import Diagnostic, Location, make, sort_diagnostics
from ftspec.compiler.core.loader import LoadedSpec, load_spec
from ftspec.compiler.lint.lint import LintOptions, lint_loaded


@dataclass
class CompileOptions:
    lint: LintOptions = field(default_factory=LintOptions)
    overrides: dict = field(default_factory=dict)  # dotted key or JSON pointer -> value
    force: bool = False
    image: str | None = None
    container_build_dir: str | None = None
    run_data_check: bool = True
    run_feasibility: bool = True


@dataclass
class CompileResult:
    spec: LoadedSpec
    diagnostics: list[Diagnostic]
    files: dict[str, str] | None = None
    plan: dict | None = None
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.files is not None


def parse_override(text: str) -> tuple[str, object]:
    """`training.learning_rate=1e-4` -> (pointer, value); the value is read as YAML 1.2 (the spec's)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError("expected key=value")
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        value = YAML(typ="safe", pure=True).load(raw) if raw.strip() else ""
    except YAMLError as exc:
        raise ValueError(f"value is not valid YAML: {' '.join(str(exc).split())}") from None
    return override_pointer(key.strip()), value


def _with_overrides(spec: LoadedSpec, overrides: dict) -> tuple[LoadedSpec, list[Diagnostic]]:
    if not overrides or not isinstance(spec.data, dict):
        return spec, []
    try:
        data = apply_overrides(spec.data, overrides)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        return spec, [
            make("FT0606", Location(spec.path, None, None, ""), key=", ".join(overrides), detail=str(exc))
        ]
    out = copy.copy(spec)
    out.data = data
    out.diagnostics = list(spec.diagnostics)
    return out, []


def _estimate(
    spec: LoadedSpec, resolved: dict, data_summary: dict | None
) -> tuple[dict | None, bool | None, list[Diagnostic]]:
    # the data summary gives the estimate measured lengths (sequence_len: p95) and token counts
    assessment = assess(spec, resolved, data_summary)
    return assessment.to_json(), assessment.fits, list(assessment.diagnostics)


def compile_spec(
    path: str | Path, options: CompileOptions | None = None, *, build_dir: Path
) -> CompileResult:
    options = options or CompileOptions()
    spec, diags = _with_overrides(load_spec(path, root=options.lint.repo_root), options.overrides)
    if diags:
        return CompileResult(spec, diags, refused=True)
    lint = lint_loaded(spec, options.lint)
    diags = _mark_overrides(list(lint.diagnostics), options.overrides)
    if not isinstance(spec.data, dict) or any(
        d.code.startswith("FT00") and d.severity == "error" for d in diags
    ):
        return CompileResult(spec, diags, refused=True)  # nothing to compile
    if any(d.code.startswith("FT01") and d.severity == "error" for d in diags):
        # schema errors: defaults and derived values would be computed from invalid data
        diags.append(
            make(
                "FT0604",
                spec.locate(""),
                detail="the spec does not match the schema",
                hint="fix the schema errors above: --force cannot compile a spec that does not match the "
                "schema (its defaults and derived values would be computed from invalid data)",
            )
        )
        return CompileResult(spec, sort_diagnostics(diags), refused=True)
    escapes = [d for d in diags if d.code in UNFORCEABLE and d.severity == "error"]
    if escapes:
        # reading or writing outside the repository is a separate boundary: --force does not cross it,
        # and it is checked before the data check opens any file (a FIFO would block it)
        diags.append(
            make(
                "FT0604",
                spec.locate(escapes[0].pointer),
                detail="a data or output path leaves the repository, is not a regular file, or is listed twice",
                hint="fix the paths above: --force does not compile a spec that reads or writes outside "
                "the repository",
            )
        )
        return CompileResult(spec, sort_diagnostics(_dedupe(diags)), refused=True)
    from ftspec.compiler.core.resolve import resolve

    resolved = resolve(spec.data)
    data_summary = None
    if options.run_data_check:
        report = check_data(spec, resolved)
        data_summary = report.summary
        diags.extend(report.diagnostics)
    estimate, fits = None, None
    if options.run_feasibility:
        estimate, fits, feas_diags = _estimate(spec, resolved, data_summary)
        diags.extend(feas_diags)
    errors = sum(1 for d in diags if d.severity == "error")
    reasons = []
    if errors:
        reasons.append(f"{errors} error(s)")
    if fits is False:
        reasons.append("the estimate does not fit the declared GPUs")
    if any(d.code == "FT0231" for d in diags):
        # running a repository's own Python is a separate consent: --force does not grant it
        diags.append(
            make(
                "FT0604",
                spec.locate("/model/trust_remote_code"),
                detail="model.trust_remote_code: true needs --allow-remote-code",
                hint="review the model repository's code, then pass --allow-remote-code (--force does "
                "not allow remote code)",
            )
        )
        return CompileResult(spec, sort_diagnostics(_dedupe(diags)), refused=True)
    if reasons and not options.force:
        diags.append(make("FT0604", spec.locate(""), detail=" and ".join(reasons)))
        return CompileResult(spec, sort_diagnostics(_dedupe(diags)), refused=True)
    if reasons:
        diags.append(
            make("FT0605", spec.locate(""), count=errors + (1 if fits is False and not errors else 0))
        )
    launch_options = {"image": options.image, "container_build_dir": options.container_build_dir}
    plan, plan_diags = plan_with_diagnostics(
        spec,
        resolved,
        build_dir=build_dir,
        overrides=options.overrides,
        forced=bool(reasons),
        estimate=estimate,
        data_summary=data_summary,
        launch_options=launch_options,
    )
    diags.extend(plan_diags)
    if plan is not None:
        diags.extend(_output_in_build(spec, plan, build_dir))
    diags = sort_diagnostics(_dedupe(diags))
    if plan is None or any(d.code == "FT0620" for d in diags):
        return CompileResult(spec, diags, refused=True)
    if plan["derived"]["strategy"] == "fsdp" and not (plan["derived"].get("architecture") or {}).get(
        "decoder_layer_class"
    ):
        diags.append(make("FT0608", spec.locate("/hardware/strategy"), model=plan["derived"]["model"]["id"]))
    if plan["derived"]["launcher"] == "kubernetes":
        from ftspec.compiler.compile.render import k8s_name

        if k8s_name(plan["spec"]["name"]) != plan["spec"]["name"]:
            diags.append(
                make(
                    "FT0609",
                    spec.locate("/name"),
                    name=plan["spec"]["name"],
                    k8s_name=k8s_name(plan["spec"]["name"]),
                )
            )
    from ftspec.compiler.check.lockfile import build_lock
    from ftspec.compiler.compile.render import artifact_violations, render_build
    from ftspec.compiler.compile.review import render_review

    lock = build_lock(spec, plan["spec"], plan)
    from ftspec.compiler.core.artifacts import PLAN_SHA256, plan_digest

    lock[PLAN_SHA256] = plan_digest(plan)  # launch, the runtime and evaluate refuse a plan that differs
    review = render_review(plan, data_summary=data_summary, diagnostics=diags)
    files = render_build(plan, lock, review)
    violations = artifact_violations(files)
    if violations:
        # ftspec's own generators disagree with its schemas of their output: an internal error,
        # refused even with --force, and nothing reaches the build folder; no line of the spec is at fault
        where = Location(spec.path, None, None, "")
        diags += [make("FT0619", where, file=v.file, schema=v.schema, detail=v.detail) for v in violations]
        return CompileResult(spec, sort_diagnostics(diags), plan=plan, refused=True)
    return CompileResult(spec, diags, files=files, plan=plan)


def _mark_overrides(diags: list[Diagnostic], overrides: dict) -> list[Diagnostic]:
    """Findings about a value given with --set say so: their file position shows the value the
    command line replaced (or the section that will hold a new key), not the one compiled."""
    if not overrides:
        return diags
    from dataclasses import replace

    # shown as typed on the command line (the verb hands over JSON pointers)
    pointers = {
        override_pointer(k): ".".join(
            t.replace("~1", "/").replace("~0", "~") for t in override_pointer(k).split("/")[1:]
        )
        for k in overrides
    }
    out = []
    for d in diags:
        given = next(
            (
                key
                for ptr, key in pointers.items()
                if d.pointer == ptr
                or d.pointer.startswith(ptr + "/")
                or ptr.startswith(d.pointer + "/")
                and d.code in ("FT0103", "FT0101", "FT0107")
            ),
            None,
        )
        out.append(replace(d, message=f"{d.message} (value from --set {given})") if given else d)
    return out


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen, out = set(), []
    for d in diags:
        key = (d.code, d.file, d.line, d.column, d.pointer, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


# Path findings --force cannot override (security review V4, V11, D8): FT0228 absolute, FT0229
# escaping, FT0255 through a symlink, FT0256 a FIFO or device, FT0250 one file listed again (YAML
# aliases listed one file 4,800 times: the data check then read it 4,800 times).
UNFORCEABLE = frozenset({"FT0228", "FT0229", "FT0250", "FT0255", "FT0256"})


def _output_in_build(spec: LoadedSpec, plan: dict, build_dir: Path) -> list[Diagnostic]:
    """FT0620 when the run folder is the build folder or inside it: launch would copy plan.json onto
    itself (SameFileError) and the next compile would refuse the folder it wrote. Refused even with
    --force: no run could succeed."""
    build = Path(os.path.realpath(build_dir))
    run = Path(os.path.realpath(build / plan["paths"]["spec_dir"] / plan["derived"]["output_dir"]))
    if run != build and build not in run.parents:
        return []
    return [
        make("FT0620", spec.locate("/output/dir"), output=plan["derived"]["output_dir"], build=str(build_dir))
    ]


class BuildDirError(Exception):
    """The build folder cannot be written; `no_space` holds (file, free) when the disk filled up."""

    def __init__(self, detail: str, no_space: tuple[str, str] | None = None):
        super().__init__(detail)
        self.no_space = no_space


def _refusal(target: Path) -> str | None:
    """Why an existing `target` may not be replaced, or None when it may: it is empty, or an earlier
    ftspec build holding nothing but build artifacts.

    Replacing deletes the old folder, so anything a user or a run put inside a build folder
    (notes, checkpoints when output.dir points there) must stop the swap rather than vanish."""
    if target.is_symlink():
        return f"{target} is a symbolic link: give the folder it points to as -o"
    if not target.is_dir():
        return f"{target} exists and is not a folder"
    from ftspec.compiler.compile.render import ARTIFACT_FILES

    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return None
    try:
        read_plan(target / "plan.json")
    except (OSError, ValueError):
        return f"{target} exists and is not an ftspec build folder"
    foreign = [name for name in entries if name not in ARTIFACT_FILES or not (target / name).is_file()]
    if not foreign:
        return None
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return (
        f"{target} holds an earlier build and also {shown}, which compile did not write; "
        "replacing the folder would delete them"
    )


def write_build(
    files: dict[str, str], target: Path, *, executable: frozenset[str] | set[str] = frozenset()
) -> None:
    """Write every file into a temporary folder next to `target`, then swap it into place: a failure
    or an interrupt at any point leaves either the old build or nothing, never half of one."""
    target = Path(target)
    if target.exists() or target.is_symlink():
        reason = _refusal(target)
        if reason is not None:
            raise BuildDirError(reason)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as exc:
        from ftspec.compiler.core.artifacts import free_bytes, human_bytes, is_no_space

        full = ("the folder", human_bytes(free_bytes(parent))) if is_no_space(exc) else None
        raise BuildDirError(exc.strerror or str(exc), no_space=full) from None
    old: Path | None = None
    name = "the folder"
    try:
        for name, text in sorted(files.items()):
            path = staging / name
            with open(path, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
            os.chmod(path, 0o755 if name in executable else 0o644)
        os.chmod(staging, 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.rmdir(old)
            os.replace(target, old)
        os.replace(staging, target)
    except BaseException as exc:  # OSError, and Ctrl-C between two steps: never leave half a swap
        if old is not None and not target.exists():
            os.replace(old, target)  # put the previous build back
            old = None
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            from ftspec.compiler.core.artifacts import free_bytes, human_bytes, is_no_space

            full = (name, human_bytes(free_bytes(parent))) if is_no_space(exc) else None
            raise BuildDirError(exc.strerror or str(exc), no_space=full) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class BuildOutcome:
    """The compile stage as one result: the compile result, the folder written, and the exit status."""

    result: CompileResult
    target: Path
    diagnostics: list[Diagnostic]
    exit_code: int

    @property
    def written(self) -> bool:
        return self.exit_code == 0


def build_folder(path: str | Path, options: CompileOptions, target: Path) -> BuildOutcome:
    """The compile stage's front door: compile the spec, then write the build folder atomically."""
    from ftspec.compiler.compile.render import EXECUTABLE
    from ftspec.compiler.core.diagnostics import exit_code

    result = compile_spec(path, options, build_dir=target)
    if exit_code(result.diagnostics) == 2:  # an unreadable spec, or ftspec's own bug
        return BuildOutcome(result, target, result.diagnostics, 2)
    if not result.ok:
        return BuildOutcome(result, target, result.diagnostics, 1)
    assert result.files is not None  # result.ok
    try:
        write_build(result.files, target, executable=EXECUTABLE)
    except BuildDirError as exc:
        where = Location(str(target), None, None, "")
        if exc.no_space is not None:
            file, free = exc.no_space
            refusal = make("FT0627", where, file=file, path=str(target), free=free)
        else:
            refusal = make("FT0607", where, path=str(target), detail=str(exc))
        return BuildOutcome(result, target, [*result.diagnostics, refusal], 2)
    return BuildOutcome(result, target, result.diagnostics, 0)
