"""`ftspec compile SPEC -o BUILD_DIR [--force] [--set key=value ...]`"""

from __future__ import annotations

import argparse
import sys

from ftspec.compiler.verbs.common import SourceCache, add_format, add_lint_options, lint_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="the spec file")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="BUILD_DIR",
        help="build folder to write (replaced atomically when it holds an earlier build)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="compile despite errors or an estimate that does not fit (recorded in the plan)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. --set training.learning_rate=1e-4 (recorded as cli)",
    )
    parser.add_argument(
        "--image", default=None, help="container image for launcher kubernetes (default ftspec:<version>)"
    )
    parser.add_argument(
        "--container-build-dir",
        default=None,
        help="where the build folder is inside the container (kubernetes; default /workspace/build)",
    )
    add_format(parser)
    add_lint_options(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ftspec.compiler.compile.compile import CompileOptions, build_folder, parse_override
    from ftspec.compiler.core.diagnostics import Location, make
    from ftspec.compiler.core.reporters import emit

    overrides: dict = {}
    bad = []
    for text in args.overrides:
        try:
            pointer, value = parse_override(text)
            overrides[pointer] = value
        except ValueError as exc:
            bad.append(
                make(
                    "FT0606",
                    Location(args.spec, None, None, ""),
                    key=text.partition("=")[0] or text,
                    detail=str(exc),
                )
            )
    sources = SourceCache()
    if bad:
        emit(bad, args.format, sources)
        return 2
    target = Path(args.output)
    options = CompileOptions(
        lint=lint_options(args),
        overrides=overrides,
        force=args.force,
        image=args.image,
        container_build_dir=args.container_build_dir,
    )
    outcome = build_folder(args.spec, options, target)
    result = outcome.result
    sources.add(args.spec, result.spec.text)
    emit(outcome.diagnostics, args.format, sources)
    if not outcome.written:
        return outcome.exit_code
    d = result.plan["derived"]
    print(
        f"ftspec: compiled {args.spec} -> {target}/ ({len(result.files)} files: "
        f"{', '.join(sorted(result.files))}); {d['strategy']} on {d['world_size']} process(es), "
        f"{d['total_steps']} steps, effective batch {d['effective_batch']}"
        f"{'; FORCED' if result.plan['forced'] else ''}",
        file=sys.stderr,
    )
    return 0
