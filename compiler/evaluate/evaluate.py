"""The evaluate stage's front door: judge a finished run folder and write its reports.

`evaluate_run` verifies the run folder (an edited plan, lock or metrics file is a finding, never the
gate's rules), keeps the previous evaluation, measures base and fine-tuned models in a subprocess (the
only place torch is loaded), applies the acceptance gate and writes report.{json,md,html}. It returns
data only; `ftspec evaluate` reports it. Exit 0: the gate passed; 1: it failed; 2: the run could not be
evaluated.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.core.artifacts import ArtifactError, read_artifact
from ftspec.compiler.core.diagnostics import Diagnostic, Location, make

METRICS_KIND = "ftspec-eval-metrics"
METRICS_SCHEMA_VERSION = 1


@dataclass
class EvaluateResult:
    """What evaluate found: the gate's report (None when it could not run), findings, exit status."""

    diagnostics: list[Diagnostic]
    exit_code: int
    report: dict | None = None
    out_dir: Path | None = None
    kept: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # spec file -> text, for the text reporter


def evaluate_run(
    run_dir: str | Path, *, output: str | Path | None = None, reuse_metrics: bool = False, lm_eval: str = ""
) -> EvaluateResult:
    from ftspec.compiler.evaluate.integrity import metrics_problems, run_problems
    from ftspec.compiler.launch.run_folder import RunFolderError, open_run

    try:
        folder = open_run(run_dir)
    except RunFolderError as exc:
        where = Location(file=str(Path(run_dir) / "plan.json"))
        return EvaluateResult([make(exc.code, where, detail=exc.detail)], 2)
    edited = run_problems(folder)  # an edited plan or lock is a finding, never the gate's rules
    if edited:
        return EvaluateResult(edited, 1)
    out_dir = Path(output) if output else folder.path / "eval"
    metrics_path = out_dir / "metrics.json"
    sources: dict[str, str] = {}
    locate = locator(folder, sources)
    kept = keep_previous(out_dir)
    if not reuse_metrics:
        code = measure(folder.path, metrics_path, lm_eval=lm_eval)
        if code != 0:
            detail = f"python -m ftspec.runtime.evaluate exited with {code}"
            return EvaluateResult(
                [make("FT0807", Location(file=str(folder.path)), detail=detail)], 2, kept=kept
            )
    try:
        metrics = read_metrics(metrics_path)
    except ValueError as exc:
        finding = make("FT0808", Location(file=str(metrics_path)), path=str(metrics_path), detail=str(exc))
        return EvaluateResult([finding], 2, kept=kept)
    forged = metrics_problems(folder, metrics, metrics_path)
    if forged:
        return EvaluateResult(forged, 1, kept=kept)
    report, diagnostics = gate_and_report(
        folder, metrics, locate, run_dir_label=str(run_dir), out_dir=out_dir
    )
    code = 0 if report["status"] == "pass" else 1
    return EvaluateResult(diagnostics, code, report=report, out_dir=out_dir, kept=kept, sources=sources)


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
    try:
        data = read_artifact(path, METRICS_KIND, METRICS_SCHEMA_VERSION)
    except FileNotFoundError:
        raise ValueError("the file does not exist") from None
    except OSError as exc:
        raise ValueError(str(exc)) from None
    except ArtifactError:
        raise ValueError(
            f"not an {METRICS_KIND} document of schema_version {METRICS_SCHEMA_VERSION}"
        ) from None
    for model in ("base", "finetuned"):
        values = (data.get("values") or {}).get(model) or {}
        for key, value in list(values.items()):
            if isinstance(value, str):
                try:
                    values[key] = float(value)
                except ValueError:
                    values[key] = None
    return data


def locator(folder, sources: dict[str, str]):
    """Pointer -> Location in the spec file when it is still there, else the pointer alone."""
    from ftspec.compiler.core.loader import load_spec

    spec_file = folder.spec_file
    if spec_file is None:
        return lambda pointer: Location(pointer=pointer)
    loaded = load_spec(spec_file)
    if not isinstance(loaded.data, dict):
        return lambda pointer: Location(pointer=pointer)
    sources[loaded.path] = loaded.text

    def locate(pointer: str) -> Location:
        try:
            return loaded.locate(pointer)
        except Exception:  # a pointer the edited spec no longer has: point at the file
            return Location(file=loaded.path, pointer=pointer)

    return locate


def gate_and_report(folder, metrics: dict, locate, *, run_dir_label: str, out_dir: Path) -> tuple[dict, list]:
    """Judge the metrics, write report.{json,md,html} into out_dir; (report, diagnostics)."""
    from ftspec.compiler.core.diagnostics import sort_diagnostics
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
