"""`ftspec import {axolotl,llamafactory,torchtune} CONFIG [-o SPEC]`

Writes the translated spec atomically and reports every dropped or changed key at its line in the
source config, followed by the lint findings of the written spec. Exit 0 when the spec lints clean
and nothing in the config was untranslatable, 1 otherwise, 2 when the config cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftspec.compiler.verbs.common import add_format, add_lint_options

TOOLS = ("axolotl", "llamafactory", "torchtune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tool", choices=TOOLS, help="which tool wrote CONFIG")
    parser.add_argument("config", metavar="CONFIG", help="the tool's YAML config")
    parser.add_argument(
        "-o",
        "--output",
        metavar="SPEC",
        default=None,
        help="spec to write (default: CONFIG's name with .ftspec.yaml, beside it); - for stdout",
    )
    parser.add_argument("--force", action="store_true", help="overwrite SPEC if it exists")
    parser.add_argument("--gpu", default=None, help="hardware.gpu to write (the configs do not name one)")
    parser.add_argument("--gpus", type=int, default=None, help="hardware.gpus_per_node to write")
    parser.add_argument("--name", default=None, help="spec name (default: from CONFIG's file name)")
    add_format(parser)
    add_lint_options(parser)


def default_output(config: str) -> Path:
    path = Path(config)
    return path.with_name(path.stem + ".ftspec.yaml")


def run(args: argparse.Namespace) -> int:
    from ftspec.compiler.author.importers import ImportOptions, translate
    from ftspec.compiler.core.diagnostics import exit_code, has_errors, sort_diagnostics
    from ftspec.compiler.core.loader import load_spec, load_text
    from ftspec.compiler.core.reporters import emit
    from ftspec.compiler.lint.lint import lint_loaded
    from ftspec.compiler.verbs.common import SourceCache, fail, lint_options

    to_stdout = args.output == "-"
    output = Path(args.output) if args.output and not to_stdout else default_output(args.config)
    if not to_stdout and output.exists() and not args.force:
        return fail(f"{output} exists", hint="pass --force to overwrite it, or -o another path")
    if args.gpus is not None and args.gpus < 1:
        return fail("--gpus must be at least 1")

    source = load_spec(args.config)
    sources = SourceCache()
    sources.add(source.path, source.text)
    if not source.ok:
        emit(source.diagnostics, args.format, sources)
        return exit_code(source.diagnostics) or 1

    result = translate(
        args.tool, source, ImportOptions(output=output, gpu=args.gpu, gpus=args.gpus, name=args.name)
    )
    for extra in result.extra_sources:
        sources.add(extra.path, extra.text)
    written = load_text(result.text, str(output))
    lint = lint_loaded(written, lint_options(args))
    sources.add(str(output), result.text)
    diagnostics = sort_diagnostics(result.diagnostics) + lint.diagnostics
    if has_errors(result.diagnostics):
        # a refused import writes nothing: a spec without its FT0906 would lint clean and train
        # something else than the config (peer-import report, defect 7)
        emit(diagnostics, args.format, sources, stream=sys.stderr if to_stdout else None)
        print(
            f"ftspec: not written: the {args.tool} config cannot be imported (errors above)", file=sys.stderr
        )
        return 1
    if to_stdout:
        sys.stdout.write(result.text)
        emit(diagnostics, args.format, sources, stream=sys.stderr)
    else:
        from ftspec.compiler.core.artifacts import write_atomic

        write_atomic(output, result.text)
        emit(diagnostics, args.format, sources)
        print(f"ftspec: wrote {output}", file=sys.stderr)
    return 1 if has_errors(diagnostics) else 0
