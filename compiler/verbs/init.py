"""`ftspec init [-o SPEC]`: asks for the model, the data file, the GPU and count, and the goal metric
(or takes them as flags), then writes a spec fitted to that hardware."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftspec.compiler.verbs.common import add_format

QUESTIONS = (
    ("model", "Base model (hub id or local folder)", None),
    ("data", "Training data file (JSON Lines)", None),
    ("gpu", "GPU (e.g. RTX-4090, A100-80GB, H100-80GB, cpu)", "A100-80GB"),
    ("gpus", "Number of GPUs", "1"),
    (
        "metric",
        "Goal metric (exact_match, f1, rouge_l, accuracy, contains, json_schema, regex)",
        "exact_match",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", metavar="SPEC", default="ftspec.yaml", help="spec to write (default: ftspec.yaml)"
    )
    parser.add_argument("--model", help="base model: hub id or local folder holding config.json")
    parser.add_argument("--data", help="training data: a JSON Lines file")
    parser.add_argument("--gpu", help="GPU catalog name (RTX-4090, A100-80GB, H100-80GB, ...) or cpu")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs per node (default 1)")
    parser.add_argument("--metric", default=None, help="goal metric (default exact_match)")
    parser.add_argument(
        "--name", default=None, help="spec name (default: from SPEC's or the data's file name)"
    )
    parser.add_argument(
        "--non-interactive", action="store_true", help="never prompt; missing answers are an error"
    )
    parser.add_argument("--force", action="store_true", help="overwrite SPEC if it exists")
    add_format(parser)


def _ask(label: str, default: str | None) -> str:
    suffix = f" [{default}]" if default else ""
    while True:
        answer = input(f"{label}{suffix}: ").strip()
        if answer or default:
            return answer or str(default)


def run(args: argparse.Namespace) -> int:
    from ftspec.compiler.author.init_spec import InitAnswers, build
    from ftspec.compiler.core.artifacts import write_atomic
    from ftspec.compiler.core.diagnostics import exit_code, has_errors
    from ftspec.compiler.core.loader import load_text
    from ftspec.compiler.core.reporters import emit
    from ftspec.compiler.lint.lint import lint_loaded
    from ftspec.compiler.verbs.common import SourceCache, fail

    output = Path(args.output)
    if output.exists() and not args.force:
        return fail(f"{output} exists", hint="pass --force to overwrite it, or -o another path")
    given = {
        "model": args.model,
        "data": args.data,
        "gpu": args.gpu,
        "gpus": None if args.gpus is None else str(args.gpus),
        "metric": args.metric,
    }
    interactive = not args.non_interactive and sys.stdin.isatty()
    for key, label, default in QUESTIONS:
        if given[key] is None:
            if interactive:
                given[key] = _ask(label, default)
            elif default is not None:
                given[key] = default
            else:
                return fail(f"--{key} is required without a terminal", hint="pass --model, --data and --gpu")
    for key in ("model", "data", "gpu", "metric"):
        if not str(given[key]).strip():
            return fail(f"--{key} is empty", hint=f"give a value for --{key}")
        given[key] = str(given[key]).strip()
    try:
        gpus = int(given["gpus"])
    except ValueError:
        return fail(f"--gpus must be a whole number, not {given['gpus']!r}")
    if gpus < 1:
        return fail("--gpus must be at least 1")
    answers = InitAnswers(
        model=given["model"],
        data=given["data"],
        gpu=given["gpu"],
        gpus=gpus,
        metric=given["metric"],
        output=output,
        name=args.name,
    )
    result = build(answers)
    sources = SourceCache()
    if not result.text:
        emit(result.diagnostics, args.format, sources)
        return exit_code(result.diagnostics) or 1
    lint = lint_loaded(load_text(result.text, str(output)))
    sources.add(str(output), result.text)
    write_atomic(output, result.text)
    diagnostics = result.diagnostics + lint.diagnostics
    emit(diagnostics, args.format, sources, estimate=result.estimate)
    print(f"ftspec: wrote {output}", file=sys.stderr)
    return 1 if has_errors(diagnostics) else 0
