"""`ftspec diff OLD NEW [--format text|markdown|json]`: semantic diff of two specs after defaults."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD", help="spec file, or git:REV:path")
    parser.add_argument("new", metavar="NEW", help="spec file, or git:REV:path")
    parser.add_argument(
        "--format",
        choices=("text", "markdown", "json"),
        default="text",
        help="text (default), markdown (for a pull-request comment) or json",
    )
    parser.add_argument(
        "--no-estimate", action="store_true", help="skip the memory/time/cost estimate of each side"
    )


def run(args: argparse.Namespace) -> int:
    import json

    from ftspec.compiler.author.spec_diff import _fmt, diff_specs, to_markdown, to_text
    from ftspec.compiler.core.diagnostics import exit_code
    from ftspec.compiler.core.reporters import emit
    from ftspec.compiler.verbs.common import SourceCache

    diff = diff_specs(args.old, args.new, estimate=not args.no_estimate)
    if diff.diagnostics:
        sources = SourceCache()
        for side in (diff.old, diff.new):
            if side.spec.text:
                sources.add(side.spec.path, side.spec.text)
        emit(diff.diagnostics, "json" if args.format == "json" else "text", sources)
        return exit_code(diff.diagnostics) or 1
    if args.format == "markdown":
        print(to_markdown(diff), end="")
    elif args.format == "json":
        print(
            json.dumps(
                {
                    "old": diff.old.label,
                    "new": diff.new.label,
                    "changes": [{"pointer": p, "old": _fmt(a), "new": _fmt(b)} for p, a, b in diff.changes],
                    "consequences": diff.consequences,
                },
                indent=2,
            )
        )
    else:
        print(to_text(diff), end="")
    return 0
