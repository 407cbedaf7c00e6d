"""Before the gate: is the run folder what `ftspec launch` wrote? (security review V8)

The gate reads its acceptance rules from the run folder's copy of plan.json and its numbers from
eval/metrics.json. Both are plain files anyone with write access can edit: weaken the rules, re-hash
lock.json, delete it, or fabricate metrics next to an empty adapter/. Each check compares a file with
what produced it: run.json's digests of plan.json and lock.json (written by the runtime), the plan
against the spec file (compile/integrity.py), and the metrics' spec digest against the plan.
"""

from __future__ import annotations

from pathlib import Path

from ftspec.compiler.core.artifacts import file_sha256
from ftspec.compiler.core.diagnostics import Diagnostic, Location, make
from ftspec.compiler.launch.integrity import verify_plan


def _digest_problem(path: Path, recorded: object, what: str) -> Diagnostic | None:
    where = Location(str(path), None, None, "")
    if not isinstance(recorded, str) or not recorded:
        return make("FT0816", where, path=str(path), detail=f"run.json records no {what} digest")
    try:
        actual = file_sha256(path)
    except OSError as exc:
        return make("FT0816", where, path=str(path), detail=exc.strerror or str(exc))
    if actual != recorded:
        return make(
            "FT0816",
            where,
            path=str(path),
            detail=f"its SHA-256 is {actual[:12]}, run.json records {recorded[:12]}",
        )
    return None


def run_problems(folder) -> list[Diagnostic]:
    """Errors when the run folder's plan or lock is not what the run trained with."""
    run = folder.run if isinstance(folder.run, dict) else {}
    out = [
        problem
        for path, key, what in (
            (folder.path / "plan.json", "plan_sha256", "plan.json"),
            (folder.path / "lock.json", "lock_sha256", "lock.json"),
        )
        if (problem := _digest_problem(path, run.get(key), what)) is not None
    ]
    if out:
        return out
    return verify_plan(folder.path / "plan.json", folder.path / "lock.json", folder.spec_dir)


def metrics_problems(folder, metrics: dict, metrics_path: Path) -> list[Diagnostic]:
    """Metrics measured for another spec, or reused next to an adapter that holds no weights."""
    out: list[Diagnostic] = []
    where = Location(str(metrics_path), None, None, "")
    expected = (folder.plan.get("metadata") or {}).get("spec_sha256")
    recorded = (metrics.get("metadata") or {}).get("spec_sha256")
    if recorded != expected:
        out.append(
            make(
                "FT0808",
                where,
                path=str(metrics_path),
                detail=f"measured for spec {str(recorded)[:12]}, the run trained spec {str(expected)[:12]}",
            )
        )
    weights = [
        p
        for name in ("adapter", "merged")
        for p in (folder.path / name).glob("*.safetensors")
        if p.is_file() and p.stat().st_size > 0
    ]
    if not weights:
        out.append(
            make(
                "FT0808",
                where,
                path=str(metrics_path),
                detail=f"{folder.path}/adapter/ and merged/ hold no weights, so no model was measured",
            )
        )
    return out
