"""`ftspec codes [--format text|markdown|json]`: every diagnostic code ftspec can emit, from the catalog.

The README's code table is this command's markdown output, and a test keeps the two in step.
"""

from __future__ import annotations

import argparse
import json

FORMATS = ("text", "markdown", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    parser.add_argument("--prefix", default="", help="only codes starting with this (e.g. FT02)")
    parser.add_argument(
        "--update-readme",
        metavar="FILE",
        default=None,
        help="rewrite the markdown table between the codes markers in FILE (README.md)",
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(fmt: str, prefix: str = "") -> str:
    from ftspec.compiler.core.diagnostics import catalog
    from ftspec.compiler.core.reporters import generic_hint

    rules = [r for code, r in sorted(catalog().items()) if code.startswith(prefix)]
    if fmt == "json":
        return json.dumps(
            [
                {
                    "code": r.code,
                    "name": r.name,
                    "severity": r.severity,
                    "summary": r.summary,
                    "hint": generic_hint(r.hint),
                    "source": r.source,
                }
                for r in rules
            ],
            indent=2,
            ensure_ascii=False,
        )
    if fmt == "markdown":
        rows = ["| code | name | severity | what it means | fix |", "|---|---|---|---|---|"]
        for r in rules:
            rows.append(
                f"| {r.code} | {r.name} | {r.severity} | {_cell(r.summary)} | "
                f"{_cell(generic_hint(r.hint) or '')} |"
            )
        return "\n".join(rows)
    width = max((len(r.name) for r in rules), default=0)
    return "\n".join(f"{r.code}  {r.severity:<7}  {r.name:<{width}}  {r.summary}" for r in rules)


START, END = "<!-- codes:start -->", "<!-- codes:end -->"


def update_readme(path: str) -> bool:
    """Replace the table between the markers with the current catalog; True when the file changed."""
    from pathlib import Path

    file = Path(path)
    text = file.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render('markdown')}\n{END}{tail}"
    if new != text:
        file.write_text(new, encoding="utf-8")
    return new != text


def run(args: argparse.Namespace) -> int:
    if args.update_readme:
        from ftspec.compiler.verbs.common import fail

        try:
            changed = update_readme(args.update_readme)
        except (OSError, ValueError) as exc:
            return fail(str(exc))
        print(f"{args.update_readme}: code table {'updated' if changed else 'already current'}")
        return 0
    text = render(args.format, args.prefix)
    if text:
        print(text)
    return 0
