"""`ftspec lint`: load, schema check, then cross-field rules. Returns data; reporters render it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.core.diagnostics import Diagnostic, Location, make, sort_diagnostics
from ftspec.compiler.core.loader import LoadedSpec, load_spec, non_finite_diagnostics
from ftspec.compiler.core.schema import schema_diagnostics


@dataclass
class LintOptions:
    allow_remote_code: bool = False
    # Dataset paths must stay inside this folder; default: the git repository holding the spec.
    repo_root: Path | None = None
    check_files: bool = True


@dataclass
class LintResult:
    spec: LoadedSpec
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)


def lint_loaded(spec: LoadedSpec, options: LintOptions | None = None) -> LintResult:
    options = options or LintOptions()
    diags = list(spec.diagnostics)
    if isinstance(spec.data, dict):
        version = spec.data.get("version")
        if "version" in spec.data and version != 1:
            diags.append(make("FT0108", spec.locate("/version"), value=repr(version)))
        else:
            # A non-finite number is refused once, at its value; the schema and the rules skip it
            non_finite = non_finite_diagnostics(spec)
            refused = {d.pointer for d in non_finite}
            schema_diags = [d for d in schema_diagnostics(spec) if d.pointer not in refused]
            diags.extend(non_finite + schema_diags)
            from ftspec.compiler.lint.rules.registry import cross_field_diagnostics

            diags.extend(cross_field_diagnostics(spec, options, schema_diags + non_finite))
    return LintResult(spec, sort_diagnostics(suppressed(spec, _dedupe(diags))))


_IGNORE = re.compile(r"#\s*ftspec:\s*ignore\b\s*\[?\s*((?:FT\d{4}[\s,]*)+)\]?")


def suppressed(spec: LoadedSpec, diags: list[Diagnostic]) -> list[Diagnostic]:
    """Drop warnings and infos acknowledged in the spec with `# ftspec: ignore FT0237` on their line.

    The acknowledgement sits in the reviewed file, next to the value, so a reviewer sees it in the
    diff. Errors cannot be silenced this way: they stop the job for a reason.
    """
    if "ftspec:" not in spec.text:
        return diags
    ignored: dict[int, set[str]] = {}
    for number, line in enumerate(spec.text.splitlines(), 1):
        match = _IGNORE.search(line)
        if match:
            ignored[number] = set(re.findall(r"FT\d{4}", match.group(1)))
    own_file = spec.path
    return [
        d
        for d in diags
        if d.severity == "error" or d.file != own_file or d.code not in ignored.get(d.line or 0, ())
    ]


def lint_file(path: str | Path, options: LintOptions | None = None) -> LintResult:
    options = options or LintOptions()
    return lint_loaded(load_spec(path, root=options.repo_root), options)


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen, out = set(), []
    for d in diags:
        key = (d.code, d.file, d.line, d.column, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


BUILD_MARKER = "plan.json"  # ftspec compile's build folders and launch's run folders hold one


def expand_paths(paths: list[str]) -> list[str]:
    return [path for path, _top in scan_paths(paths)]


def folder_link_problem(path: str, top: Path | None) -> Diagnostic | None:
    """FT0013 for a spec found by a folder search that is a symlink to anything but another spec the
    same search would lint: `ftspec lint specs/` runs on pull requests, and a committed link to
    ~/.docker/config.json or a hidden file of the checkout would be printed line by line."""
    link = Path(path)
    if top is None or not link.is_symlink():
        return None
    real, root = Path(os.path.realpath(link)), Path(os.path.realpath(top))
    try:
        parts = real.relative_to(root).parts
    except ValueError:
        parts = None
    if (
        parts is not None
        and real.suffix in (".yaml", ".yml")
        and not any(part.startswith(".") for part in parts)
        and not _in_build_folder(real, root)
    ):
        return None
    where = f"a file outside {top}" if parts is None else "a file that is not a spec of this folder"
    return make("FT0013", Location(path, 1, 1, ""), where=where)


def scan_paths(paths: list[str]) -> list[tuple[str, Path | None]]:
    """(file, the folder it was found in, or None when named directly). Files as given; folders
    become the YAML specs inside them (sorted). Hidden folders are skipped, and so are the build and
    run folders ftspec itself writes (they hold plan.json next to YAML that is not a spec, such as
    accelerate.yaml), so `ftspec lint .` after a compile stays clean."""
    out: list[tuple[str, Path | None]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.suffix in (".yaml", ".yml")
                and f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and not _in_build_folder(f, p)
            )
            out.extend((str(f), p) for f in found)
        else:
            out.append((raw, None))
    return out


def _in_build_folder(path: Path, top: Path) -> bool:
    """Is `path` inside a folder (below `top`) that ftspec wrote, i.e. one holding plan.json?"""
    folder = path.parent
    while True:
        if (folder / BUILD_MARKER).is_file():
            return True
        if folder == top or folder == folder.parent:
            return False
        folder = folder.parent
