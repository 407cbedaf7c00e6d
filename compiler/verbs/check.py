"""`ftspec check SPEC [--only memory,pins,data] [--installed] [--format ...]`

Lints first (lint errors are reported and nothing else runs), then runs the selected sections:
data (the dataset check), memory (memory verdict, time and cost), pins. Exit 1 on any error,
including "does not fit"; 2 when the spec cannot be read.
"""

from __future__ import annotations

import argparse

from ftspec.compiler.check.check import SECTIONS
from ftspec.compiler.verbs.common import SourceCache, add_format, add_lint_options, fail, lint_options


def _sections(value: str) -> list[str]:
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SECTIONS)}"
        )
    return chosen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spec",
        metavar="SPEC",
        nargs="?",
        help="the spec file (optional with --lock: the spec the build was compiled from)",
    )
    parser.add_argument(
        "--only",
        type=_sections,
        default=list(SECTIONS),
        metavar="SECTIONS",
        help="comma-separated sections to run: memory (incl. time and cost), pins, data (default: all)",
    )
    parser.add_argument(
        "--installed",
        action="store_true",
        help="also compare the pins with the running environment (importlib.metadata)",
    )
    parser.add_argument("--lock", metavar="LOCK", help="also report drift from a build's lock.json")
    add_format(parser)
    add_lint_options(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ftspec.compiler.check.check import check_spec, spec_of_build
    from ftspec.compiler.core.reporters import emit

    if args.spec is None:
        if not args.lock:
            return fail("give a SPEC (or --lock BUILD/lock.json to check the spec a build was compiled from)")
        args.spec = spec_of_build(args.lock)
        if args.spec is None:
            return fail(
                f"cannot tell which spec {args.lock} was compiled from (no readable plan.json beside it)",
                f"name the spec: ftspec check SPEC --lock {args.lock}",
            )
    result = check_spec(
        args.spec,
        lint_options(args),
        only=args.only,
        installed=args.installed,
        lock=Path(args.lock) if args.lock else None,
    )
    sources = SourceCache()
    sources.add(args.spec, result.spec.text)
    if result.lint_failed and result.exit_code == 1:
        extra = "lint found errors: fix them before check runs" if args.format == "text" else None
        emit(result.diagnostics, args.format, sources, text_extra=extra)
    elif result.exit_code == 2:
        emit(result.diagnostics, args.format, sources)
    else:
        text = "\n\n".join(t for t in result.texts if t) + "\n"
        emit(result.diagnostics, args.format, sources, text_extra=text, **result.sections)
    return result.exit_code


__all__ = ["add_arguments", "run", "fail"]
