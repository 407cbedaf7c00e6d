"""`ftspec evaluate RUN_DIR`: measure base and fine-tuned models, apply the acceptance gate, write reports.

Exit 0: the gate passed; 1: it failed (a rule, eval/train overlap, or eval data changed since the
lock); 2: the run could not be evaluated (not a finished run folder, the evaluation crashed).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

from ftspec.compiler.verbs.common import SourceCache, add_format


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the output folder of `ftspec launch`")
    add_format(parser)
    parser.add_argument(
        "-o",
        "--output",
        metavar="REPORT_DIR",
        default=None,
        help="folder for metrics.json, predictions.jsonl and report.{json,md,html} (default: RUN_DIR/eval)",
    )
    parser.add_argument(
        "--reuse-metrics",
        action="store_true",
        help="apply the gate to the metrics.json already in REPORT_DIR instead of measuring again",
    )
    parser.add_argument(
        "--lm-eval",
        default="",
        metavar="TASKS",
        help="comma-separated lm-eval-harness tasks to run as well (needs the lm_eval package "
        "and its data cached offline; skipped with a note otherwise)",
    )


def run(args: argparse.Namespace) -> int:
    from ftspec.compiler.core.diagnostics import Location, make
    from ftspec.compiler.core.reporters import emit
    from ftspec.compiler.launch.run_folder import RunFolderError, open_run

    sources = SourceCache()
    try:
        folder = open_run(args.run_dir)
    except RunFolderError as exc:
        code = exc.code
        diag = make(code, Location(file=str(Path(args.run_dir) / "plan.json")), detail=exc.detail)
        emit([diag], args.format, sources)
        return 2
    from ftspec.compiler.evaluate.integrity import metrics_problems, run_problems

    edited = run_problems(folder)  # an edited plan or lock is a finding, never the gate's rules
    if edited:
        emit(edited, args.format, sources)
        return 1
    out_dir = Path(args.output) if args.output else folder.path / "eval"
    metrics_path = out_dir / "metrics.json"
    locate = _locator(folder, sources)

    kept = keep_previous(out_dir)
    if kept is not None:
        print(
            f"ftspec: the previous evaluation ({kept}) was copied to {out_dir / PREVIOUS}/", file=sys.stderr
        )
    if not args.reuse_metrics:
        code = measure(folder.path, metrics_path, lm_eval=args.lm_eval)
        if code != 0:
            emit(
                [
                    make(
                        "FT0807",
                        Location(file=str(folder.path)),
                        detail=f"python -m ftspec.runtime.evaluate exited with {code}",
                    )
                ],
                args.format,
                sources,
            )
            return 2
    try:
        metrics = read_metrics(metrics_path)
    except ValueError as exc:
        emit(
            [make("FT0808", Location(file=str(metrics_path)), path=str(metrics_path), detail=str(exc))],
            args.format,
            sources,
        )
        return 2
    forged = metrics_problems(folder, metrics, metrics_path)
    if forged:
        emit(forged, args.format, sources)
        return 1
    report, diagnostics = gate_and_report(
        folder, metrics, locate, run_dir_label=args.run_dir, out_dir=out_dir
    )
    text = render_text(report, out_dir) if args.format == "text" else None
    emit(diagnostics, args.format, sources, text_extra=text, report=report)
    return 0 if report["status"] == "pass" else 1


PREVIOUS = "previous"
OUTPUTS = ("metrics.json", "predictions.jsonl", "report.json", "report.md", "report.html")


def keep_previous(out_dir: Path) -> str | None:
    """Copy the files of an earlier evaluation in out_dir to out_dir/previous/ before they are replaced,
    so evaluating twice (a retrained adapter, a changed spec) never loses a report without a trace; one
    level of history, like a CI artifact of the last run. Returns the earlier status, or None when there
    was nothing to keep. Copies, not moves: if the new measurement fails, out_dir still holds a
    consistent metrics.json and report for --reuse-metrics."""
    import json
    import shutil

    present = [name for name in OUTPUTS if (out_dir / name).is_file()]
    if not present:
        return None
    target = out_dir / PREVIOUS
    target.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # no mix of two older evaluations in previous/
        (target / name).unlink(missing_ok=True)
    for name in present:
        shutil.copy2(out_dir / name, target / name)
    try:
        status = json.loads((out_dir / "report.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    return f"status {str(status).upper()}" if isinstance(status, str) else "no report"


def measure(run_dir: Path, metrics_path: Path, *, lm_eval: str = "") -> int:
    """Run the evaluation subprocess (the only place torch is loaded); its log goes to our stderr."""
    cmd = [sys.executable, "-m", "ftspec.runtime.evaluate", "--run", str(run_dir), "--out", str(metrics_path)]
    if lm_eval:
        cmd += ["--lm-eval", lm_eval]
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return subprocess.run(cmd, env=env, stdout=sys.stderr, check=False).returncode
    except OSError as exc:
        print(f"ftspec: cannot start the evaluation: {exc}", file=sys.stderr)
        return 2


def read_metrics(path: Path) -> dict:
    """The evaluation's metrics document; values written as "nan"/"inf" strings become floats again."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError("the file does not exist") from None
    except (OSError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    meta = data.get("metadata") if isinstance(data, dict) else None
    if (
        not isinstance(meta, dict)
        or meta.get("kind") != "ftspec-eval-metrics"
        or meta.get("schema_version") != 1
    ):
        raise ValueError("not an ftspec-eval-metrics document of schema_version 1")
    for model in ("base", "finetuned"):
        values = (data.get("values") or {}).get(model) or {}
        for key, value in list(values.items()):
            if isinstance(value, str):
                try:
                    values[key] = float(value)
                except ValueError:
                    values[key] = None
    return data


def _locator(folder, sources: SourceCache):
    """Pointer -> Location in the spec file when it is still there, else the pointer alone."""
    from ftspec.compiler.core.diagnostics import Location
    from ftspec.compiler.core.loader import load_spec

    spec_file = folder.spec_file
    if spec_file is None:
        return lambda pointer: Location(pointer=pointer)
    loaded = load_spec(spec_file)
    if not isinstance(loaded.data, dict):
        return lambda pointer: Location(pointer=pointer)
    sources.add(loaded.path, loaded.text)

    def locate(pointer: str) -> Location:
        try:
            return loaded.locate(pointer)
        except Exception:  # a pointer the edited spec no longer has: point at the file
            return Location(file=loaded.path, pointer=pointer)

    return locate


def gate_and_report(folder, metrics: dict, locate, *, run_dir_label: str, out_dir: Path) -> tuple[dict, list]:
    """Judge the metrics, write report.{json,md,html} into out_dir; (report, diagnostics)."""
    from ftspec.compiler.core.diagnostics import make, sort_diagnostics
    from ftspec.compiler.evaluate.acceptance import judge
    from ftspec.compiler.evaluate.report import build_report, read_curves, write_reports
    from ftspec.compiler.launch.run_folder import check_eval_data

    spec = folder.spec
    checks = (spec.get("dataset") or {}).get("checks") or {}
    gate = judge(
        list(spec.get("acceptance") or []),
        metrics.get("values") or {},
        measured=metrics.get("measured") or {},
        contamination=metrics.get("contamination"),
        max_contaminated=int(checks.get("max_contaminated", 0)),
        data_findings=check_eval_data(folder, locate),
        locate=locate,
    )
    notes = list(metrics.get("notes") or [])
    extra = [make("FT0812", locate(""), detail=n) for n in notes]
    diagnostics = sort_diagnostics(gate.diagnostics + extra)
    report = build_report(
        gate=gate,
        metrics=metrics,
        spec=spec,
        spec_sha256=(folder.plan.get("metadata") or {}).get("spec_sha256"),
        spec_file=str(folder.spec_file)
        if folder.spec_file
        else (folder.plan.get("metadata") or {}).get("spec_file"),
        run_dir=run_dir_label,
        finetuned=str((metrics.get("models") or {}).get("finetuned", "")),
        curves=read_curves(folder.path / "metrics.jsonl"),
        run_info=folder.run,
        diagnostics=diagnostics,
        notes=notes,
    )
    write_reports(report, out_dir)
    from ftspec.compiler.launch.model_card import record_gate

    record_gate(folder.path, report)  # the model cards of adapter/ and merged/ carry the verdict
    return report, diagnostics


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
