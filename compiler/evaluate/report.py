"""The evaluation report: report.json (schemas/report.v1.schema.json), report.md for a pull-request
comment, report.html for people (inline SVG loss curves, metrics side by side, the rule table, example
answers). Self-contained: no scripts, fonts or images from anywhere else.

Answers are untrusted text (a model wrote them): the HTML template autoescapes everything, and the
Markdown puts them in code blocks whose fence is longer than any backtick run inside.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import cast

from ftspec.compiler import __version__
from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.evaluate.acceptance import GateResult, json_number

REPORT_KIND = "ftspec-report"
REPORT_SCHEMA_VERSION = 1
ACCEPTANCE_METRICS = ("task", "regression", "format", "eval_loss", "perplexity", "preference")
EXAMPLES_PER_SET = {"task": 4, "regression": 2}


MAX_STEP = 10**15  # far beyond any run; a larger step is a damaged or forged line
MAX_LOSS = 1e300  # a chart spans max - min: two values near 1e308 of opposite sign overflow to inf


def _plottable(value: float) -> bool:
    try:
        return math.isfinite(value) and abs(value) <= MAX_LOSS
    except OverflowError:  # an int too large for a float
        return False


def read_curves(metrics_jsonl: Path) -> dict[str, list[list[float]]]:
    """Train and eval loss by step from the runtime's metrics.jsonl; unreadable lines are skipped (the
    file may end in a partial line if a rank died mid-write)."""
    train: dict[int, float] = {}
    evals: dict[int, float] = {}
    try:
        lines = Path(metrics_jsonl).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        step = event.get("step") if isinstance(event, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP:
            continue  # 10**400 would overflow the chart's float arithmetic
        for key, into in (("loss", train), ("eval_loss", evals)):
            value = event.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and _plottable(value):
                into[step] = float(value)
    return {
        "train_loss": [[s, train[s]] for s in sorted(train)],
        "eval_loss": [[s, evals[s]] for s in sorted(evals)],
    }


def _value(value: object) -> float | str | None:
    """A measured value for report.json: a number, "nan"/"inf"/"-inf" (see acceptance.json_number), or
    None when it was not measured."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return json_number(float(value))


def _as_float(value: float | str | None) -> float | None:
    """The inverse of _value, for arithmetic in the templates' context."""
    if isinstance(value, str):
        return float(value)
    return None if value is None else float(value)


def _clean(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def pick_examples(examples: dict, per_set: dict[str, int] | None = None) -> list[dict]:
    """A few answers per set, deterministic: half where the fine-tuned model is wrong (what a failing
    rule is about), the rest where the two models differ most (what the training changed)."""
    per_set = per_set or EXAMPLES_PER_SET
    out = []
    for name, limit in per_set.items():
        rows = [r for r in examples.get(name) or [] if isinstance(r, dict)]

        def ft(r: dict) -> float:
            return _clean(r.get("finetuned_score")) or 0.0

        def gap(r: dict) -> float:
            return abs(ft(r) - (_clean(r.get("base_score")) or 0.0))

        wrong = sorted((r for r in rows if ft(r) < 1.0), key=lambda r: (ft(r), r.get("index", 0)))
        chosen = wrong[: (limit + 1) // 2]
        taken = {id(r) for r in chosen}
        for r in sorted(rows, key=lambda r: (-gap(r), r.get("index", 0))):
            if len(chosen) >= limit:
                break
            if id(r) not in taken:
                chosen.append(r)
                taken.add(id(r))
        for r in sorted(chosen, key=lambda r: r.get("index", 0)):
            out.append(
                {
                    "set": name,
                    "index": int(r.get("index", 0)),
                    "prompt": str(r.get("prompt", "")),
                    "reference": str(r.get("reference", "")),
                    "base": str(r.get("base", "")),
                    "finetuned": str(r.get("finetuned", "")),
                    "base_score": _clean(r.get("base_score")),
                    "finetuned_score": _clean(r.get("finetuned_score")),
                }
            )
    return out


def build_report(
    *,
    gate: GateResult,
    metrics: dict | None,
    spec: dict,
    spec_sha256: str | None,
    spec_file: str | None,
    run_dir: str,
    finetuned: str,
    curves: dict,
    run_info: dict | None = None,
    diagnostics: list[Diagnostic] | None = None,
    notes: list[str] | None = None,
) -> dict:
    """The report.json document. `diagnostics` defaults to the gate's."""
    metrics = metrics or {}
    values = metrics.get("values") or {}
    diags = gate.diagnostics if diagnostics is None else diagnostics
    status = "pass" if gate.passed and not any(d.severity == "error" for d in diags) else "fail"
    failed = gate.failed_rules
    if status == "pass":
        summary = (
            f"PASS: {len(gate.checks)} acceptance check(s) held"
            if gate.checks
            else "PASS: no acceptance rules"
        )
    else:
        reasons = [f"rule {i} ({spec.get('acceptance', [{}])[i].get('metric', '?')})" for i in failed]
        reasons += [f"{i.name}" for i in gate.integrity if i.passed is False]
        summary = "FAIL: " + (", ".join(reasons) if reasons else "see diagnostics")
    run_info = run_info or {}
    return {
        "metadata": {
            "schema_version": REPORT_SCHEMA_VERSION,
            "kind": REPORT_KIND,
            "ftspec_version": __version__,
            "spec_sha256": spec_sha256,
            "spec_name": spec.get("name"),
            "spec_file": spec_file,
            "run_dir": run_dir,
        },
        "status": status,
        "summary": summary,
        "models": {"base": str((spec.get("model") or {}).get("id", "")), "finetuned": finetuned},
        "metrics": {
            "base": {m: _value((values.get("base") or {}).get(m)) for m in ACCEPTANCE_METRICS},
            "finetuned": {m: _value((values.get("finetuned") or {}).get(m)) for m in ACCEPTANCE_METRICS},
            "measured": {k: str(v) for k, v in (metrics.get("measured") or {}).items()},
            "counts": {k: int(v) for k, v in (metrics.get("counts") or {}).items()},
            **({"flipped": metrics["flipped"]} if isinstance(metrics.get("flipped"), list) else {}),
        },
        "rules": [c.to_json() for c in gate.checks],
        "integrity": [i.to_json() for i in gate.integrity],
        "diagnostics": [d.to_json() for d in diags],
        "training": {
            "final_step": run_info.get("final_step") if isinstance(run_info.get("final_step"), int) else None,
            "world_size": run_info.get("world_size") if isinstance(run_info.get("world_size"), int) else None,
            "curves": curves,
        },
        "examples": pick_examples(metrics.get("examples") or {}),
        "notes": [str(n) for n in (notes if notes is not None else metrics.get("notes") or [])],
    }


def validate_report(report: dict) -> list[str]:
    """Schema violations of a report.json document (empty when valid)."""
    from jsonschema import Draft202012Validator

    schema = json.loads(
        resources.files("ftspec.schemas").joinpath("report.v1.schema.json").read_text("utf-8")
    )
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in Draft202012Validator(schema).iter_errors(report)
    ]


# --- SVG loss chart ---------------------------------------------------------------------------


def _nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:  # optimizer steps: no tick at step 1.5
        step = max(1.0, float(math.ceil(step)))
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 1e-9:  # the last tick at or above the largest value: nothing is clipped
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def loss_chart(curves: dict, width: int = 640, height: int = 260) -> dict | None:
    """Coordinates for an SVG line chart of train and eval loss by step; None without data."""
    train, evals = curves.get("train_loss") or [], curves.get("eval_loss") or []
    points = train + evals
    if not points:
        return None
    left, right, top, bottom = 56, 16, 16, 36
    steps = [p[0] for p in points]
    losses = [p[1] for p in points]
    x_lo, x_hi = min(steps), max(steps)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_ticks = _nice_ticks(min(losses), max(losses))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    if y_hi == y_lo:
        y_hi = y_lo + 1.0
    x_ticks = [t for t in _nice_ticks(x_lo, x_hi, 6, integer=True) if x_lo <= t <= x_hi]

    def x(step: float) -> float:
        return round(left + (step - x_lo) / (x_hi - x_lo) * (width - left - right), 1)

    def y(loss: float) -> float:
        return round(top + (y_hi - loss) / (y_hi - y_lo) * (height - top - bottom), 1)

    def polyline(series: list) -> str:
        return " ".join(f"{x(s)},{y(v)}" for s, v in series)

    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - right,
        "top": top,
        "bottom": height - bottom,
        "x_ticks": [{"pos": x(t), "label": f"{t:g}"} for t in x_ticks],
        "y_ticks": [{"pos": y(t), "label": f"{t:.3g}"} for t in y_ticks],
        "train": polyline(train),
        "eval": polyline(evals),
        "eval_points": [{"x": x(s), "y": y(v), "label": f"step {s}: eval loss {v:.4g}"} for s, v in evals],
        "train_points": len(train),
        "eval_count": len(evals),
    }


# --- rendering ----------------------------------------------------------------------------------


def fmt_value(value: object, digits: int = 4) -> str:
    """n/a: not measured; NaN/inf: measured, not finite (report.json writes those as strings)."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        text = value
        try:
            value = float(text)
        except ValueError:
            return text
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.{digits}g}"
    return str(value)


def fmt_signed(value: object) -> str:
    if value is None:
        return "n/a"
    number = float(value) if isinstance(value, str) else cast(float, value)  # a number or its text
    return ("+" if number >= 0 else "") + fmt_value(number)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~@&])")


def md_cell(text: object, limit: int = 160) -> str:
    """Untrusted text as inert Markdown table-cell content: one line, special characters escaped,
    cut at `limit` characters (0: no limit)."""
    one_line = " ".join(str(text).split())
    if limit and len(one_line) > limit:
        one_line = one_line[: limit - 3] + "..."
    return _MD_SPECIAL.sub(r"\\\1", one_line)


_MD_LABEL_SPECIAL = re.compile(r"([\\`*{}\[\]<>#!|~@&])")


def md_label(text: object) -> str:
    """A short label in a table cell (a metric, what it was measured as, a rule kind): md_cell's
    escaping minus `_` and parentheses, which make neither links, images nor HTML, so `exact_match`
    and `exp(eval_loss)` read as written; `](` is broken up as well. A spec's regex reaches here."""
    return _MD_LABEL_SPECIAL.sub(r"\\\1", " ".join(str(text).split())).replace("](", "]\\(")


def md_inline(text: object, limit: int = 160) -> str:
    """Untrusted text as an inline code span: backslash escapes are literal inside code spans (a model
    id `org/my_model` would show as `my\\_model`), so the span's fence outgrows any backtick run instead."""
    body = " ".join(str(text).split())
    if limit and len(body) > limit:
        body = body[: limit - 3] + "..."
    fence = "`" * (max((len(m) for m in re.findall(r"`+", body)), default=0) + 1)
    if body.startswith("`") or body.endswith("`"):
        body = f" {body} "
    return f"{fence}{body}{fence}"


def md_code(text: object) -> str:
    """Untrusted text as a fenced code block: the fence outgrows any backtick run in the text."""
    body = str(text)
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{body}\n{fence}"


@lru_cache(maxsize=4)
def _environment(autoescape: bool):
    from jinja2 import Environment, StrictUndefined

    env = Environment(
        autoescape=autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = fmt_value
    env.filters["signed"] = fmt_signed
    env.filters["md_cell"] = md_cell
    env.filters["md_label"] = md_label
    env.filters["md_code"] = md_code
    env.filters["md_inline"] = md_inline
    return env


def _template(name: str, autoescape: bool):
    source = (
        resources.files("ftspec.compiler.evaluate").joinpath("templates", name).read_text(encoding="utf-8")
    )
    return _environment(autoescape).from_string(source)


def _context(report: dict) -> dict:
    labels = {
        "task": "task",
        "regression": "regression",
        "format": "format",
        "eval_loss": "eval loss",
        "perplexity": "perplexity",
        "preference": "preference",
    }
    measured = report["metrics"]["measured"]
    rows = []
    for metric in ACCEPTANCE_METRICS:
        b, f = (
            _as_float(report["metrics"]["base"].get(metric)),
            _as_float(report["metrics"]["finetuned"].get(metric)),
        )
        if b is None and f is None:
            continue
        diff = None if b is None or f is None else f - b
        better = None
        if diff is not None and diff != 0 and not math.isnan(diff):
            better = (diff > 0) == (metric not in ("eval_loss", "perplexity"))
        rows.append(
            {
                "metric": labels[metric],
                "measured": measured.get(metric, ""),
                "base": b,
                "finetuned": f,
                "difference": diff,
                "better": better,
            }
        )
    return {"r": report, "metric_rows": rows, "chart": loss_chart(report["training"]["curves"])}


def render_markdown(report: dict) -> str:
    return _template("report.md.j2", autoescape=False).render(**_context(report))


def render_html(report: dict) -> str:
    return _template("report.html.j2", autoescape=True).render(**_context(report))


def write_reports(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html; each file appears whole or not at all."""
    from ftspec.compiler.core.artifacts import dumps_json, write_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        "report.json": dumps_json(report),
        "report.md": render_markdown(report),
        "report.html": render_html(report),
    }
    paths = {}
    for name, text in texts.items():
        path = out_dir / name
        write_atomic(path, text)
        paths[name] = path
    return paths


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return f"{value:.4g}"


def render_text(report: dict, out_dir: Path) -> str:
    """The rule table as plain text, for the terminal and CI logs."""
    lines = [f"acceptance gate: {report['summary']}"]
    rows = [("#", "metric", "rule", "threshold", "base", "fine-tuned", "difference", "result")]
    for c in report["rules"]:
        label = c["metric"] + (f" ({c['measured']})" if c["measured"] else "")
        diff = (
            "n/a"
            if c["difference"] is None
            else ("+" if c["difference"] >= 0 else "") + _cell(c["difference"])
        )
        rows.append(
            (
                str(c["index"]),
                label,
                c["kind"],
                _cell(c["threshold"]),
                _cell(c["base"]),
                _cell(c["finetuned"]),
                diff,
                c["status"].upper(),
            )
        )
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    for check in report["integrity"]:
        lines.append(f"  {check['name']}: {check['status']} ({check['detail']})")
    lines.append(f"report: {out_dir / 'report.html'}")
    return "\n".join(lines)
