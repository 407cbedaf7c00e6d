"""Is a build (or a run folder's copy of it) still what compile produced? Checked before it is obeyed.

`launch` and the runtime act on plan.json, and `evaluate` judges a run by the acceptance rules in the
run folder's copy of it: an edit there (trust_remote_code: true, a weaker gate, another learning
rate) must stop them with a finding, never be followed. Two checks, each against what produced the
file rather than against a sibling that can be edited with it:

1. lock.json records the SHA-256 of plan.json as compile wrote it (`plan_sha256`);
2. the plan's `spec` section is recomputed from the spec file it names (with the `--set` values the
   lock records) and must be equal, so re-hashing the lock after editing the plan does not pass
   either. When the spec file itself changed since compile, the build is stale: compile again.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftspec.compiler.core.artifacts import PLAN_SHA256, file_sha256
from ftspec.compiler.core.diagnostics import Diagnostic, Location, make


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify_plan(plan_path: Path, lock_path: Path, spec_dir: Path | None) -> list[Diagnostic]:
    """Findings (errors) when plan.json differs from what compile wrote: FT0621 edited plan, FT0622
    spec changed since compile, FT0623 missing or unreadable lock. `spec_dir` is where the spec file
    lives (None: not known here; then only the lock's digest is checked)."""
    plan_path, lock_path = Path(plan_path), Path(lock_path)
    where = Location(str(plan_path), None, None, "")
    lock = _read_json(lock_path)
    if lock is None:
        return [make("FT0623", Location(str(lock_path), None, None, ""), path=str(lock_path))]
    try:
        actual = file_sha256(plan_path)
    except OSError as exc:
        return [make("FT0621", where, path=str(plan_path), detail=exc.strerror or str(exc))]
    recorded = lock.get(PLAN_SHA256)
    if recorded != actual:
        detail = (
            f"its SHA-256 is {actual[:12]}, the lock records {str(recorded)[:12]}"
            if recorded
            else "the lock records no digest of it (compiled by an older ftspec)"
        )
        return [make("FT0621", where, path=str(plan_path), detail=detail)]
    plan = _read_json(plan_path)
    if plan is None:
        return [make("FT0621", where, path=str(plan_path), detail="not a JSON object")]
    if spec_dir is None:
        return []
    return _against_spec(plan, lock, Path(spec_dir), where)


def _against_spec(plan: dict, lock: dict, spec_dir: Path, where: Location) -> list[Diagnostic]:
    from ftspec.compiler.compile.plan import apply_overrides
    from ftspec.compiler.core.loader import load_spec
    from ftspec.compiler.core.resolve import resolve

    meta = plan.get("metadata") or {}
    name = meta.get("spec_file")
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        return [make("FT0621", where, path=where.file, detail="metadata.spec_file is not a file name")]
    spec_path = spec_dir / name
    try:
        current = file_sha256(spec_path)
    except OSError as exc:
        return [make("FT0622", where, spec=str(spec_path), detail=exc.strerror or str(exc))]
    if current != meta.get("spec_sha256") or current != (lock.get("metadata") or {}).get("spec_sha256"):
        return [make("FT0622", where, spec=str(spec_path), detail="it changed since compile")]
    spec = load_spec(spec_path)
    overrides = (lock.get("metadata") or {}).get("overrides") or {}
    if not isinstance(spec.data, dict) or not isinstance(overrides, dict):
        return [make("FT0622", where, spec=str(spec_path), detail="it no longer loads")]
    try:
        expected = resolve(apply_overrides(spec.data, overrides))
    except (KeyError, TypeError, ValueError) as exc:
        return [
            make("FT0621", where, path=where.file, detail=f"the lock's --set values do not apply ({exc})")
        ]
    if expected == plan.get("spec"):
        return []
    changed = _first_difference(expected, plan.get("spec"), "/spec")
    return [make("FT0621", where, path=where.file, detail=f"{changed} differs from what {name} compiles to")]


def _first_difference(want: object, got: object, pointer: str) -> str:
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got), key=str):
            if want.get(key) != got.get(key):
                return _first_difference(want.get(key), got.get(key), f"{pointer}/{key}")
    return pointer


def verify_build(build_dir: Path) -> list[Diagnostic]:
    """verify_plan for a build folder written by compile (its plan names the spec's folder)."""
    build_dir = Path(build_dir)
    plan = _read_json(build_dir / "plan.json") or {}
    spec_dir = (plan.get("paths") or {}).get("spec_dir")
    folder = (build_dir / spec_dir) if isinstance(spec_dir, str) else None
    return verify_plan(build_dir / "plan.json", build_dir / "lock.json", folder)
