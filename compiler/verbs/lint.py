"""`ftspec lint SPEC...`"""

from __future__ import annotations

import argparse
from pathlib import Path

from ftspec.compiler.verbs.common import SourceCache, add_format, add_lint_options, lint_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="spec files or folders of specs")
    add_format(parser)
    add_lint_options(parser)
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 1)")


def run(args: argparse.Namespace) -> int:
    from ftspec.compiler.core.diagnostics import exit_code
    from ftspec.compiler.core.reporters import emit
    from ftspec.compiler.lint.lint import folder_link_problem, lint_file, scan_paths

    found = scan_paths(args.specs)
    paths = [path for path, _top in found]
    if not paths:
        from ftspec.compiler.verbs.common import fail

        return fail("no spec files found in " + ", ".join(args.specs))
    if args.repo_root and not Path(args.repo_root).is_dir():
        from ftspec.compiler.verbs.common import fail

        return fail(f"--repo-root {args.repo_root} is not a folder")
    options = lint_options(args)
    sources = SourceCache()
    diagnostics = []
    for path, top in found:
        refused = folder_link_problem(path, top)
        if refused is not None:  # not read at all: nothing of it can reach the log
            sources.add(path, "")  # nor a source line, which the text reporter would read on demand
            diagnostics.append(refused)
            continue
        result = lint_file(path, options)
        sources.add(path, result.spec.text)
        diagnostics.extend(result.diagnostics)
    emit(diagnostics, args.format, sources)
    code = exit_code(diagnostics)
    if code:
        return code
    if args.strict and any(d.severity == "warning" for d in diagnostics):
        return 1
    return 0
