"""`ftspec check SPEC [--only memory,pins,data] [--installed] [--format ...]`

Lints first (lint errors are reported and nothing else runs), then runs the selected sections:
data (the dataset check), memory (memory verdict, time and cost), pins. Exit 1 on any error,
including "does not fit"; 2 when the spec cannot be read.
"""

from __future__ import annotations

import argparse

from ftspec.compiler.verbs.common import SourceCache, add_format, add_lint_options, fail, lint_options

SECTIONS = ("memory", "pins", "data")


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
    from ftspec.compiler.core.diagnostics import sort_diagnostics
    from ftspec.compiler.core.reporters import emit
    from ftspec.compiler.core.resolve import resolve
    from ftspec.compiler.lint.lint import lint_file

    if args.spec is None:
        if not args.lock:
            return fail("give a SPEC (or --lock BUILD/lock.json to check the spec a build was compiled from)")
        args.spec = _spec_of_build(args.lock)
        if args.spec is None:
            return fail(
                f"cannot tell which spec {args.lock} was compiled from (no readable plan.json beside it)",
                f"name the spec: ftspec check SPEC --lock {args.lock}",
            )
    sources = SourceCache()
    result = lint_file(args.spec, lint_options(args))
    sources.add(args.spec, result.spec.text)
    if any(d.code == "FT0001" for d in result.diagnostics):
        emit(result.diagnostics, args.format, sources)
        return 2
    if not result.ok:
        emit(
            result.diagnostics,
            args.format,
            sources,
            text_extra="lint found errors: fix them before check runs" if args.format == "text" else None,
        )
        return 1
    spec = result.spec
    resolved = resolve(spec.data)
    diagnostics = list(result.diagnostics)  # lint warnings stay visible
    if args.lock:
        from pathlib import Path

        from ftspec.compiler.check.lockfile import check_lock

        drift = check_lock(Path(args.lock), spec, resolved)
        if any(d.code == "FT0610" for d in drift):  # the lock cannot be read: the check cannot run
            emit(drift, args.format, sources)
            return 2
        diagnostics.extend(drift)
    sections: dict[str, object] = {}
    texts: list[str] = []
    only = set(args.only)

    data_summary = None
    if "data" in only:
        data_json, data_text, data_diags, data_summary = _data_section(spec, resolved)
        diagnostics.extend(data_diags)
        sections["data"] = data_json
        texts.append(data_text)
    if "memory" in only:
        from ftspec.compiler.check.feasibility import assess

        assessment = assess(spec, resolved, data_summary)
        diagnostics.extend(assessment.diagnostics)
        sections.update(assessment.to_json())
        texts.append(assessment.text())
    if "pins" in only:
        from ftspec.compiler.lint.pins import check_pins

        pins = check_pins(spec, resolved, installed=args.installed)
        diagnostics.extend(pins.diagnostics)
        sections["pins"] = pins.to_json()
        texts.append(pins.text())
    from ftspec.compiler.lint.lint import suppressed

    # lint and the pins section both report feature-need pins: show each finding once
    diagnostics = sort_diagnostics(suppressed(spec, list(dict.fromkeys(diagnostics))))
    emit(diagnostics, args.format, sources, text_extra="\n\n".join(t for t in texts if t) + "\n", **sections)
    return 1 if any(d.severity == "error" for d in diagnostics) else 0


def _spec_of_build(lock: str) -> str | None:
    """The spec a build folder was compiled from, by the plan.json beside its lock.json."""
    from pathlib import Path

    from ftspec.compiler.core.artifacts import read_plan

    build = Path(lock).parent
    try:
        plan = read_plan(build / "plan.json")
        spec = build / plan["paths"]["spec_dir"] / plan["metadata"]["spec_file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(spec) if spec.is_file() else None


def _data_section(spec, resolved) -> tuple[dict | None, str, list, dict | None]:
    """The dataset check, when its module exists in this build; otherwise a note and no findings."""
    try:
        from ftspec.compiler.check.data.datacheck import check_data
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith("datacheck"):
            note = "data: skipped (the dataset check is not available in this build)"
            return {"skipped": note}, note, [], None
        raise
    report = check_data(spec, resolved)
    return report.summary, report.text(), list(report.diagnostics), report.summary


__all__ = ["add_arguments", "run", "fail"]
