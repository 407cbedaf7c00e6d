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

from ftspec.compiler.core.diagnostics import Diagnostic, Location, make
from ftspec.compiler.core.loader import MAX_BYTES, LoadedSpec, join_pointer, load_spec, load_text
from ftspec.compiler.core.resolve import world_size
from ftspec.compiler.core.schema import schema_default
from ftspec.compiler.lint.lint import LintOptions, lint_loaded

_MISSING = object()


@dataclass
class Side:
    label: str
    spec: LoadedSpec
    resolved: dict | None = None
    estimate: dict | None = None
    steps: dict | None = None  # train_examples, steps_per_epoch, total_steps (when the data can be counted)
    findings: list[Diagnostic] = field(default_factory=list)  # lint errors and warnings of this side


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
    if rev.startswith("-") or any(ord(c) < 0x20 for c in rev + path):
        # `git show --output=FILE:...` would write git's output anywhere (security review V9)
        return None, [
            make("FT0618", Location(ref), path=ref, detail="REV must name a commit, not start with '-'")
        ]
    target = path if path.startswith(("/", "./", "../")) else f"./{path}"
    try:
        run = subprocess.run(
            ["git", "show", "--no-textconv", f"{rev}:{target}"], capture_output=True, cwd=cwd, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, [make("FT0618", Location(ref), path=ref, detail=str(exc))]
    if run.returncode != 0:
        detail = " ".join(run.stderr.decode("utf-8", "replace").split()) or f"git exited {run.returncode}"
        return None, [make("FT0618", Location(ref), path=ref, detail=detail)]
    if len(run.stdout) > MAX_BYTES:  # the same bound as a spec file on disk
        return None, [make("FT0007", Location(path, 1, 1, ""), size=len(run.stdout), limit=MAX_BYTES)]
    spec = load_text(run.stdout.decode("utf-8", "replace"), path)
    spec.path = path  # data paths resolve against this file's folder in the working tree
    return spec, []


def flatten(value: object, pointer: str = "") -> dict[str, object]:
    """JSON pointer -> leaf value. An empty mapping has no leaves: `packages: {}` and no packages are
    the same spec, and a mapping that gains keys shows as those keys only."""
    if isinstance(value, dict) and (value or pointer):
        out: dict[str, object] = {}
        for key in sorted(value):
            out.update(flatten(value[key], join_pointer(pointer, key)))
        return out
    return {pointer or "/": value}


def _data_key(spec: LoadedSpec, resolved: dict) -> str:
    """What the data check's summary depends on: the same key on both sides means one check."""
    import json

    training = resolved.get("training", {})
    return json.dumps(
        [
            str(spec.base_dir),
            resolved.get("dataset"),
            resolved.get("model"),
            training.get("sequence_len"),
            training.get("packing"),
            training.get("loss_on"),
        ],
        sort_keys=True,
        default=str,
    )


def _data_summary(spec: LoadedSpec, resolved: dict, cache: dict) -> dict | None:
    """The data check's summary (measured lengths, usable counts), as compile and check use it, so the
    diff's memory, time and cost are the numbers REVIEW.md shows; None when the data is not readable."""
    key = _data_key(spec, resolved)
    if key not in cache:
        try:
            from ftspec.compiler.check.data.datacheck import check_data
        except ImportError:
            cache[key] = None
        else:
            report = check_data(spec, resolved)
            # an unreadable file gives no lengths: the estimate then falls back as `ftspec check` does
            cache[key] = report.summary if isinstance(report.summary, dict) else None
    return cache[key]


def _estimate(spec: LoadedSpec, resolved: dict, summary: dict | None) -> dict | None:
    try:
        from ftspec.compiler.check.feasibility import assess
    except ImportError:
        return None
    return assess(spec, resolved, summary).to_json()


def _steps(spec: LoadedSpec, resolved: dict, summary: dict | None) -> dict | None:
    """Examples and optimizer steps by the plan's arithmetic; None when the files cannot be counted."""
    import math

    from ftspec.compiler.compile.plan import example_counts

    counts, problems = example_counts(spec, resolved)
    if problems:
        return None
    train = counts["train_examples"]
    if summary and isinstance(summary.get("train_examples"), int):
        train = summary["train_examples"]
    t = resolved.get("training", {})
    per_epoch = math.ceil(train / _effective(resolved)) if train else 0
    total = (
        int(t["max_steps"])
        if "max_steps" in t
        else math.ceil(float(t.get("epochs", schema_default("/training/epochs"))) * per_epoch)
    )
    return {"train_examples": train, "steps_per_epoch": per_epoch, "total_steps": total}


def _world(r: dict) -> int:
    return world_size(r.get("hardware"))


def _effective(r: dict) -> int:
    t = r.get("training", {})
    micro = int(t.get("micro_batch_size", schema_default("/training/micro_batch_size")))
    accumulation = int(
        t.get("gradient_accumulation_steps", schema_default("/training/gradient_accumulation_steps"))
    )
    return micro * accumulation * _world(r)


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


def _capacity(estimate: dict | None) -> tuple[float | None, float | None, bool | None]:
    """(GPU memory, usable after headroom, fits) of an estimate."""
    mem = (estimate or {}).get("memory") or {}
    return mem.get("gpu_memory_gib"), mem.get("usable_gib"), mem.get("fits")


def _money(value: float) -> str:
    return f"${value:,.2f}" if abs(value) < 100 else f"${value:,.0f}"


def _memory_line(old: Side, new: Side) -> str | None:
    """Memory per GPU, said whenever it moves or the verdict against the GPU changes (a GPU swap can
    turn a fitting job into one that does not fit with the same bytes per GPU)."""
    ma, mb = _memory(old.estimate), _memory(new.estimate)
    if ma is None or mb is None:
        return None
    cap_a, usable_a, fits_a = _capacity(old.estimate)
    cap_b, usable_b, fits_b = _capacity(new.estimate)
    moved = round(mb - ma, 1) != 0
    if not moved and fits_a == fits_b and cap_a == cap_b:
        return None
    change = f"{mb - ma:+.1f} GiB ({ma:.1f} -> {mb:.1f} GiB" if moved else f"unchanged ({mb:.1f} GiB"
    if usable_b is not None:
        verdict = {True: "fits", False: "does NOT fit", None: "fit unknown"}[fits_b]
        change += f"; {verdict} in {usable_b:.1f} GiB usable"
        if fits_a is not None and fits_a != fits_b:
            change += f", {'fitted' if fits_a else 'did not fit'} before"
        elif cap_a != cap_b and usable_a is not None:
            change += f", was {usable_a:.1f} GiB"
    return f"memory per GPU {change})"


def consequences(old: Side, new: Side) -> list[str]:
    from ftspec.compiler.lint.rules.adapter import MAX_LR

    a, b = old.resolved, new.resolved
    assert a is not None and b is not None  # diff() compares resolved sides only
    out: list[str] = []
    if _world(a) != _world(b):
        out.append(f"world size {_world(a)} -> {_world(b)} processes")
    if _effective(a) != _effective(b):
        out.append(f"effective batch {_effective(a)} -> {_effective(b)}")
    sa, sb = old.steps or {}, new.steps or {}
    if sa and sb:
        if sa["train_examples"] != sb["train_examples"]:
            out.append(f"training examples {sa['train_examples']} -> {sb['train_examples']}")
        if sa["total_steps"] != sb["total_steps"]:
            out.append(
                f"optimizer steps {sa['total_steps']} -> {sb['total_steps']} "
                f"({sa['steps_per_epoch']} -> {sb['steps_per_epoch']} per epoch)"
            )
    memory = _memory_line(old, new)
    if memory:
        out.append(memory)
    ha, hb = _hours(old.estimate), _hours(new.estimate)
    if ha is not None and hb is not None and round((hb - ha) * 60, 1) != 0:
        if max(ha, hb) < 2:
            out.append(f"time {(hb - ha) * 60:+.1f} min ({ha * 60:.1f} -> {hb * 60:.1f} min)")
        else:
            out.append(f"time {hb - ha:+.2f} h ({ha:.2f} -> {hb:.2f} h)")
    ca, cb = _cost(old.estimate), _cost(new.estimate)
    if ca is not None and cb is not None and round(cb - ca, 2) != 0:
        out.append(f"cost {'+' if cb >= ca else '-'}{_money(abs(cb - ca))} ({_money(ca)} -> {_money(cb)})")
    aa, ab = a.get("adapter", {}), b.get("adapter", {})
    if "full" not in (aa.get("method"), ab.get("method")) and aa.get("r") and ab.get("r"):
        scale_a, scale_b = aa.get("alpha", 0) / aa["r"], ab.get("alpha", 0) / ab["r"]
        if round(scale_a, 4) != round(scale_b, 4):
            out.append(
                f"LoRA scaling alpha/r {scale_a:.3g} -> {scale_b:.3g}: the adapter's update is "
                f"scaled by {scale_b / scale_a:.3g}x at the same learning rate"
            )
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
        out.append(
            f"adapter method {ma_method} -> {method}: different memory profile and learning-rate range"
        )
    pa, pb = a["training"].get("precision"), b["training"].get("precision")
    if pa != pb:
        out.append(
            f"precision {pa} -> {pb}: {PRECISION_MEANING.get(pb, pb)} (was {PRECISION_MEANING.get(pa, pa)})"
        )
    # findings the change introduces: what `ftspec lint` will say on the pull request
    before = {(d.code, d.pointer) for d in old.findings}
    for d in new.findings:
        if d.code == "FT0237" and any(line.startswith("learning rate") and "above" in line for line in out):
            continue  # the learning-rate line above already says it
        if d.code == "FT0239" and any(line.startswith("LoRA scaling") for line in out):
            continue  # so does the scaling line
        if (d.code, d.pointer) not in before:
            out.append(f"new lint {d.severity} {d.code}: {d.message}")
    return out


PRECISION_MEANING = {
    "bf16": "weights and compute in bf16",
    "bf16-mixed": "fp32 weights, bf16 autocast",
    "fp16": "fp32 weights, fp16 autocast with loss scaling",
    "fp32": "fp32 throughout, no autocast",
}


def diff_specs(
    old_ref: str, new_ref: str, *, lint_options: LintOptions | None = None, estimate: bool = True
) -> SpecDiff:
    from ftspec.compiler.core.resolve import resolve

    sides: list[Side] = []
    diags: list[Diagnostic] = []
    summaries: dict = {}  # one data check per distinct data setup
    for ref in (old_ref, new_ref):
        spec, problems = load_side(ref)
        diags.extend(problems)
        if spec is None or problems:
            sides.append(Side(ref, spec or LoadedSpec(path=ref, text="")))
            continue
        options = lint_options or LintOptions(check_files=False)
        lint = lint_loaded(spec, options)
        schema_errors = [
            d for d in lint.diagnostics if d.severity == "error" and d.code[:4] in ("FT00", "FT01")
        ]
        side = Side(ref, spec, findings=[d for d in lint.diagnostics if d.severity in ("error", "warning")])
        if schema_errors:
            diags.extend(schema_errors)  # defaults cannot be filled into an invalid spec
        else:
            side.resolved = resolve(spec.data)
            summary = _data_summary(spec, side.resolved, summaries) if estimate else None
            if estimate:
                side.estimate = _estimate(spec, side.resolved, summary)
            side.steps = _steps(spec, side.resolved, summary)  # line counts: cheap, also without estimates
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
    from ftspec.compiler.compile.review import code

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
