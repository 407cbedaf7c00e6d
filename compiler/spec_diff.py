"""Semantic diff of two specs after defaults, with what each change does.

Both sides are resolved (every default written in), flattened to JSON pointers and compared, so
writing a default explicitly is no change, and a changed default is visible. Consequences are
computed, not guessed: effective batch and world size from the arithmetic the plan uses, memory per
GPU, time and cost from the feasibility estimate (when that stage is installed), and the learning
rate against the ceiling the linter applies for the adapter method.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .diagnostics import Diagnostic, Location, make
from .lint import LintOptions, lint_loaded
from .loader import LoadedSpec, join_pointer, load_spec, load_text

_MISSING = object()


@dataclass
class Side:
    label: str
    spec: LoadedSpec
    resolved: dict | None = None
    estimate: dict | None = None


@dataclass
class SpecDiff:
    old: Side
    new: Side
    changes: list[tuple[str, object, object]] = field(default_factory=list)  # pointer, old, new
    consequences: list[str] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.changes


def load_side(ref: str, *, cwd: Path | None = None) -> tuple[LoadedSpec | None, list[Diagnostic]]:
    """A spec file, or `git:REV:path` (read with `git show`, resolved against the working tree's
    folder of `path` for data files)."""
    if not ref.startswith("git:"):
        spec = load_spec(ref)
        return spec, [d for d in spec.diagnostics if d.code == "FT0001"]
    _, _, rest = ref.partition(":")
    rev, sep, path = rest.partition(":")
    if not sep or not rev or not path:
        return None, [make("FT0618", Location(ref), path=ref, detail="expected git:REV:path")]
    target = path if path.startswith(("/", "./", "../")) else f"./{path}"
    try:
        run = subprocess.run(["git", "show", f"{rev}:{target}"], capture_output=True, cwd=cwd, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, [make("FT0618", Location(ref), path=ref, detail=str(exc))]
    if run.returncode != 0:
        detail = " ".join(run.stderr.decode("utf-8", "replace").split()) or f"git exited {run.returncode}"
        return None, [make("FT0618", Location(ref), path=ref, detail=detail)]
    spec = load_text(run.stdout.decode("utf-8", "replace"), path)
    spec.path = path  # data paths resolve against this file's folder in the working tree
    return spec, []


def flatten(value: object, pointer: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for key in sorted(value):
            out.update(flatten(value[key], join_pointer(pointer, key)))
        return out
    return {pointer or "/": value}


def _estimate(spec: LoadedSpec, resolved: dict) -> dict | None:
    try:
        from .feasibility import assess
    except ImportError:
        return None
    return assess(spec, resolved).to_json()


def _world(r: dict) -> int:
    hw = r.get("hardware", {})
    return int(hw.get("nodes", 1)) * int(hw.get("gpus_per_node", 1))


def _effective(r: dict) -> int:
    t = r.get("training", {})
    return int(t.get("micro_batch_size", 2)) * int(t.get("gradient_accumulation_steps", 8)) * _world(r)


def _memory(estimate: dict | None) -> float | None:
    mem = (estimate or {}).get("memory") or {}
    return (mem.get("per_gpu") or {}).get("device_gib")


def _cost(estimate: dict | None) -> float | None:
    return ((estimate or {}).get("cost") or {}).get("total")


def _hours(estimate: dict | None) -> float | None:
    return ((estimate or {}).get("time") or {}).get("hours")


def _fmt(value: object) -> str:
    if value is _MISSING:
        return "(absent)"
    if isinstance(value, float):
        return f"{value:g}"
    if value is None or isinstance(value, (bool, list, dict)):
        import json

        return json.dumps(value, sort_keys=True)
    return str(value)


def consequences(old: Side, new: Side) -> list[str]:
    from .rules_adapter import MAX_LR

    a, b = old.resolved, new.resolved
    out: list[str] = []
    if _world(a) != _world(b):
        out.append(f"world size {_world(a)} -> {_world(b)} processes")
    if _effective(a) != _effective(b):
        out.append(f"effective batch {_effective(a)} -> {_effective(b)}")
    ma, mb = _memory(old.estimate), _memory(new.estimate)
    if ma is not None and mb is not None and round(mb - ma, 1) != 0:
        fits = ((new.estimate or {}).get("memory") or {}).get("fits")
        verdict = {True: "fits", False: "does NOT fit", None: ""}[fits]
        out.append(f"memory per GPU {mb - ma:+.1f} GiB ({ma:.1f} -> {mb:.1f} GiB{', ' + verdict if verdict else ''})")
    ha, hb = _hours(old.estimate), _hours(new.estimate)
    if ha is not None and hb is not None and round((hb - ha) * 60, 1) != 0:
        if max(ha, hb) < 2:
            out.append(f"time {(hb - ha) * 60:+.1f} min ({ha * 60:.1f} -> {hb * 60:.1f} min)")
        else:
            out.append(f"time {hb - ha:+.2f} h ({ha:.2f} -> {hb:.2f} h)")
    ca, cb = _cost(old.estimate), _cost(new.estimate)
    if ca is not None and cb is not None and round(cb - ca) != 0:
        out.append(f"cost {'+' if cb >= ca else '-'}${abs(cb - ca):,.0f} (${ca:,.2f} -> ${cb:,.2f})")
    lra, lrb = a["training"].get("learning_rate"), b["training"].get("learning_rate")
    method = b.get("adapter", {}).get("method", "lora")
    if lra and lrb and lra != lrb:
        ratio = lrb / lra
        factor = f"x{ratio:.3g}" if ratio >= 1 else f"/{1 / ratio:.3g}"
        ceiling = MAX_LR.get(method)
        label = "LoRA" if method in ("lora", "qlora") else "full fine-tuning"
        note = ""
        if ceiling is not None and lrb > ceiling:
            note = f": above the {label} range (<= {ceiling:g})"
        elif ceiling is not None and lra > ceiling >= lrb:
            note = f": back within the {label} range (<= {ceiling:g})"
        out.append(f"learning rate {factor} ({lra:g} -> {lrb:g}){note}")
    ma_method = a.get("adapter", {}).get("method")
    if ma_method != method:
        out.append(f"adapter method {ma_method} -> {method}: different memory profile and learning-rate range")
    return out


def diff_specs(old_ref: str, new_ref: str, *, lint_options: LintOptions | None = None,
               estimate: bool = True) -> SpecDiff:
    from .resolve import resolve

    sides: list[Side] = []
    diags: list[Diagnostic] = []
    for ref in (old_ref, new_ref):
        spec, problems = load_side(ref)
        diags.extend(problems)
        if spec is None or problems:
            sides.append(Side(ref, spec or LoadedSpec(path=ref, text="")))
            continue
        options = lint_options or LintOptions(check_files=False)
        lint = lint_loaded(spec, options)
        schema_errors = [d for d in lint.diagnostics if d.severity == "error" and d.code[:4] in ("FT00", "FT01")]
        side = Side(ref, spec)
        if schema_errors:
            diags.extend(schema_errors)  # defaults cannot be filled into an invalid spec
        else:
            side.resolved = resolve(spec.data)
            if estimate:
                side.estimate = _estimate(spec, side.resolved)
        sides.append(side)
    result = SpecDiff(sides[0], sides[1], diagnostics=diags)
    if result.old.resolved is None or result.new.resolved is None:
        return result
    fa, fb = flatten(result.old.resolved), flatten(result.new.resolved)
    for pointer in sorted(set(fa) | set(fb)):
        va, vb = fa.get(pointer, _MISSING), fb.get(pointer, _MISSING)
        if va != vb or isinstance(va, bool) != isinstance(vb, bool):  # 1 == True in Python
            result.changes.append((pointer, va, vb))
    result.consequences = consequences(result.old, result.new)
    return result


def to_text(diff: SpecDiff) -> str:
    lines = [f"--- {diff.old.label}", f"+++ {diff.new.label}"]
    if diff.identical:
        lines.append("no semantic changes (after defaults)")
        return "\n".join(lines) + "\n"
    width = max(len(p) for p, _, _ in diff.changes)
    for pointer, a, b in diff.changes:
        lines.append(f"  {pointer:<{width}}  {_fmt(a)} -> {_fmt(b)}")
    if diff.consequences:
        lines.append("what changes:")
        lines.extend(f"  - {c}" for c in diff.consequences)
    return "\n".join(lines) + "\n"


def _md(value: str) -> str:
    return value.replace("|", "\\|").replace("`", "'").replace("\n", " ")


def to_markdown(diff: SpecDiff) -> str:
    from .review import code

    lines = [f"### Spec diff: {code(diff.old.label)} -> {code(diff.new.label)}", ""]
    if diff.identical:
        lines.append("No semantic changes (after defaults).")
        return "\n".join(lines) + "\n"
    if diff.consequences:
        lines.append("**What changes**")
        lines.append("")
        lines.extend(f"- {_md(c)}" for c in diff.consequences)
        lines.append("")
    lines += ["| field | old | new |", "|---|---|---|"]
    for pointer, a, b in diff.changes:
        lines.append(f"| {code(pointer)} | {code(_fmt(a))} | {code(_fmt(b))} |")
    return "\n".join(lines) + "\n"
