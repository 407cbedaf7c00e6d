"""Render diagnostics as text, JSON, SARIF 2.1.0 or GitHub workflow annotations."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable

from ftspec.compiler import __version__
from ftspec.compiler.core.diagnostics import Diagnostic, catalog

FORMATS = ("text", "json", "sarif", "github")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFO_URI = "https://github.com/ftspec/ftspec#diagnostic-codes"

SourceLookup = Callable[[str | None, int | None], str | None]


def status(diagnostics: Iterable[Diagnostic]) -> str:
    return "fail" if any(d.severity == "error" for d in diagnostics) else "ok"


def count_line(diagnostics: Iterable[Diagnostic]) -> str:
    """'1 error, 2 warnings' (or 'no problems'): the last line of the text report."""
    found = list(diagnostics)
    counts = {s: sum(1 for d in found if d.severity == s) for s in ("error", "warning", "info")}
    return ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n) or "no problems"


def to_json(diagnostics: list[Diagnostic], **sections: object) -> str:
    body: dict[str, object] = {
        "status": status(diagnostics),
        "diagnostics": [d.to_json() for d in diagnostics],
    }
    body.update({k: v for k, v in sections.items() if v is not None})
    return json.dumps(body, indent=2, sort_keys=False, ensure_ascii=False)


def _use_color(stream) -> bool:
    """Color only on a terminal; NO_COLOR (https://no-color.org) always wins, FORCE_COLOR forces it."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


SOURCE_WIDTH = 120  # longer source lines are shown as a window around the column


def _source_window(line: str, column: int) -> tuple[str, int]:
    """The part of `line` worth printing and the caret's 0-based offset in it."""
    text = line.expandtabs(1).rstrip()  # one column per tab keeps the caret under the reported column
    offset = max(column - 1, 0)
    if len(text) <= SOURCE_WIDTH:
        return text, min(offset, len(text))
    start = max(0, min(offset - SOURCE_WIDTH // 2, len(text) - SOURCE_WIDTH))
    window = text[start : start + SOURCE_WIDTH]
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + SOURCE_WIDTH < len(text) else ""
    return prefix + window + suffix, len(prefix) + offset - start


# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows. Printed
# raw, spec keys and data lines could clear the screen, forge "no problems", set the window title,
# add hyperlinks (OSC 8), or start a GitHub workflow command (`::add-mask::`) on a line of their own.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def terminal_safe(text: str) -> str:
    """One line for a terminal or a CI log: every control character shown as an escape (`\\n`, `\\x1b`)."""
    return _UNSAFE.sub(_escape_char, text)


def terminal_safe_block(text: str) -> str:
    """Several lines (sample renderings, report tables): controls escaped except the newlines that
    separate the lines, and no line able to start a workflow command (the runner trims leading spaces)."""
    lines = [terminal_safe(line) for line in text.split("\n")]
    return "\n".join(f"| {line}" if line.lstrip().startswith("::") else line for line in lines)


_COLORS = {"error": "\x1b[31;1m", "warning": "\x1b[33;1m", "info": "\x1b[36;1m"}
_DIM, _RESET = "\x1b[2m", "\x1b[0m"


# A code repeated this often in one file (40 examples truncated away) is shown SAME_SHOWN times in
# full, then once as a count with the remaining lines; JSON, SARIF and GitHub keep every finding.
SAME_LIMIT = 10
SAME_SHOWN = 3


def _collapsed(diagnostics: list[Diagnostic]) -> tuple[list[Diagnostic], dict[int, list[Diagnostic]]]:
    """(findings to print in full, index of the last one printed per group -> the ones left out)."""
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(diagnostics):
        groups.setdefault((d.file, d.code, d.severity), []).append(i)
    hidden: set[int] = set()
    rest: dict[int, list[Diagnostic]] = {}
    for members in groups.values():
        if len(members) > SAME_LIMIT:
            hidden.update(members[SAME_SHOWN:])
            rest[members[SAME_SHOWN - 1]] = [diagnostics[i] for i in members[SAME_SHOWN:]]
    shown = [d for i, d in enumerate(diagnostics) if i not in hidden]
    index = {id(diagnostics[i]): left for i, left in rest.items()}
    return shown, {i: index[id(d)] for i, d in enumerate(shown) if id(d) in index}


def _more_line(left: list[Diagnostic]) -> str:
    first = left[0]
    where = terminal_safe(first.file or "<spec>")
    places = [str(d.line) for d in left if d.line][:20]
    at = f" at lines {', '.join(places)}{', ...' if len(left) > len(places) else ''}" if places else ""
    plural = "s" if len(left) != 1 else ""
    return f"  ... and {len(left)} more {first.code} {first.severity}{plural} like this in {where}{at}"


def to_text(diagnostics: list[Diagnostic], source: SourceLookup | None = None, *, color: bool = False) -> str:
    """`path:line:col: CODE severity: message`, the source line with a caret, then the hint. A code
    repeated more than SAME_LIMIT times in one file is shown SAME_SHOWN times, then counted."""
    lines: list[str] = []
    shown, more = _collapsed(diagnostics)
    for position, d in enumerate(shown):
        where = ":".join(str(x) for x in (d.file, d.line, d.column) if x is not None) or "<spec>"
        sev = f"{_COLORS[d.severity]}{d.severity}{_RESET}" if color else d.severity
        head = f"{terminal_safe(where)}: {d.code} {sev}: {terminal_safe(d.message)}"
        lines.append(head)
        src = source(d.file, d.line) if source is not None else None
        if src is not None and d.column:
            window, caret = _source_window(src, d.column)
            safe = terminal_safe(window)
            if safe != window:  # escapes widen the line: keep the caret under the same character
                caret = len(terminal_safe(window[:caret]))
                window = safe
            lines.append(f"  {d.line:>4} | {window}")
            lines.append("       | " + " " * caret + (f"{_COLORS[d.severity]}^{_RESET}" if color else "^"))
        if d.hint:
            hint = terminal_safe(d.hint)
            lines.append(f"  {_DIM}hint:{_RESET} {hint}" if color else f"  hint: {hint}")
        if position in more:
            lines.append(_more_line(more[position]))
    summary = count_line(diagnostics)
    lines.append(summary)
    return "\n".join(lines)


def _gh_escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_escape_prop(text: str) -> str:
    return _gh_escape_data(text).replace(":", "%3A").replace(",", "%2C")


def to_github(diagnostics: list[Diagnostic]) -> str:
    """GitHub Actions workflow commands: one `::error file=...,line=...,col=...,title=CODE::msg` each."""
    level = {"error": "error", "warning": "warning", "info": "notice"}
    out = []
    for d in diagnostics:
        props = []
        if d.file:
            props.append(f"file={_gh_escape_prop(_relpath(d.file))}")
        if d.line:
            props.append(f"line={d.line}")
        if d.column:
            props.append(f"col={d.column}")
        props.append(f"title={_gh_escape_prop(d.code)}")
        message = d.message + (f"\n{d.hint}" if d.hint else "")
        out.append(f"::{level[d.severity]} {','.join(props)}::{_gh_escape_data(message)}")
    return "\n".join(out)


def _relpath(path: str) -> str:
    """The path as GitHub maps it onto the repository: relative to the checkout root when run in a
    GitHub Actions job (GITHUB_WORKSPACE, so a job with `working-directory: ml/` still annotates
    `ml/specs/x.yaml`), else relative to the working directory; unchanged when outside both."""
    bases = [b for b in (os.environ.get("GITHUB_WORKSPACE"), os.getcwd()) if b]
    for base in bases:
        try:
            rel = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
        except ValueError:  # another drive on Windows
            continue
        if not rel.startswith(".."):
            return rel.replace(os.sep, "/")
    return path.replace(os.sep, "/")


def _artifact_location(path: str) -> dict:
    """A SARIF artifactLocation: a percent-encoded path relative to the checkout (what GitHub code
    scanning maps onto the repository), or an absolute file:// URI for files outside it."""
    from pathlib import Path
    from urllib.parse import quote

    rel = _relpath(path)
    if os.path.isabs(rel) or rel.startswith(".."):
        return {"uri": Path(os.path.abspath(path)).as_uri()}
    return {"uri": quote(rel, safe="/"), "uriBaseId": "%SRCROOT%"}


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return "..."


def generic_hint(hint: str | None) -> str | None:
    """A catalog hint with its per-finding fields shown as `...` (for rule help and the code table)."""
    if not hint:
        return None
    try:
        return hint.format_map(_Blank())
    except (ValueError, IndexError, AttributeError):
        return hint


def to_sarif(diagnostics: list[Diagnostic]) -> str:
    """SARIF 2.1.0 as GitHub code scanning accepts it: rules with help text, physical locations."""
    rules_used = sorted({d.code for d in diagnostics})
    cat = catalog()
    level = {"error": "error", "warning": "warning", "info": "note"}
    rules = []
    for code in rules_used:
        rule = cat.get(code)
        summary = rule.summary if rule else code
        generic = generic_hint(rule.hint) if rule else None
        help_text = summary + (f" Fix: {generic}" if generic else "")
        if rule and rule.source and rule.source.startswith("http"):
            help_text += f" Source: {rule.source}"
        rules.append(
            {
                "id": code,
                "name": rule.name if rule else code,
                "shortDescription": {"text": summary},
                "fullDescription": {"text": summary},
                "helpUri": INFO_URI,
                "help": {"text": help_text, "markdown": f"**{code}** {help_text}"},
                "defaultConfiguration": {"level": level[rule.severity if rule else "error"]},
                "properties": {"tags": ["ftspec"]},
            }
        )
    index = {code: i for i, code in enumerate(rules_used)}
    results = []
    for d in diagnostics:
        result = {
            "ruleId": d.code,
            "ruleIndex": index[d.code],
            "level": level[d.severity],
            "message": {"text": d.message + (f" (hint: {d.hint})" if d.hint else "")},
        }
        if d.file:
            result["locations"] = [_sarif_location(d.file, d.line, d.column, d.pointer)]
            related = [r for r in d.extra.get("related", []) if r.get("line")]
            if related:
                # the second place a finding is about (a feature's line beside the pin's)
                result["relatedLocations"] = [
                    {
                        "id": i,
                        **_sarif_location(d.file, r["line"], r.get("column"), r.get("pointer", "")),
                        "message": {"text": r.get("message", "")},
                    }
                    for i, r in enumerate(related)
                ]
        results.append(result)
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "ftspec",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "informationUri": INFO_URI,
                        "rules": rules,
                    }
                },
                "results": results,
                "columnKind": "unicodeCodePoints",
            }
        ],
    }
    return json.dumps(log, indent=2, ensure_ascii=False)


def _sarif_location(file: str, line: int | None, column: int | None, pointer: str) -> dict:
    region = {"startLine": max(line or 1, 1)}
    if column:
        region["startColumn"] = column
    return {
        "physicalLocation": {"artifactLocation": _artifact_location(file), "region": region},
        **({"logicalLocations": [{"fullyQualifiedName": pointer}]} if pointer else {}),
    }


def emit(
    diagnostics: list[Diagnostic],
    fmt: str,
    source: SourceLookup,
    *,
    text_extra: str | None = None,
    stream=None,
    **json_sections: object,
) -> None:
    """Write diagnostics in `fmt` to stdout; `text_extra` is a report printed before text findings."""
    stream = stream or sys.stdout
    if fmt == "json":
        stream.write(to_json(diagnostics, **json_sections) + "\n")
    elif fmt == "sarif":
        stream.write(to_sarif(diagnostics) + "\n")
    elif fmt == "github":
        text = to_github(diagnostics)
        if text:
            stream.write(text + "\n")
    else:
        if text_extra:
            stream.write(terminal_safe_block(text_extra.rstrip("\n")) + "\n")
        stream.write(to_text(diagnostics, source, color=_use_color(stream)) + "\n")
