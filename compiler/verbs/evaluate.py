"""`ftspec evaluate RUN_DIR`: measure base and fine-tuned models, apply the acceptance gate, write reports.

Exit 0: the gate passed; 1: it failed (a rule, eval/train overlap, or eval data changed since the
lock); 2: the run could not be evaluated (not a finished run folder, the evaluation crashed).
"""

from __future__ import annotations

import argparse
import sys

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
    from ftspec.compiler.core.reporters import emit
    from ftspec.compiler.evaluate.evaluate import PREVIOUS, evaluate_run
    from ftspec.compiler.evaluate.report import render_text

    result = evaluate_run(
        args.run_dir, output=args.output, reuse_metrics=args.reuse_metrics, lm_eval=args.lm_eval
    )
    if result.kept is not None and result.out_dir is not None:
        where = result.out_dir / PREVIOUS
        print(f"ftspec: the previous evaluation ({result.kept}) was copied to {where}/", file=sys.stderr)
    sources = SourceCache()
    for path, text in result.sources.items():
        sources.add(path, text)
    if result.report is None:
        emit(result.diagnostics, args.format, sources)
        return result.exit_code
    text = render_text(result.report, result.out_dir) if args.format == "text" else None
    emit(result.diagnostics, args.format, sources, text_extra=text, report=result.report)
    return result.exit_code
