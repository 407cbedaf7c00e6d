"""One diagnostic type for every check, and the catalog of codes it draws its messages from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import resources

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Location:
    """Where a finding points: a file, a 1-based line and column, and the JSON pointer of the field."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    pointer: str = ""


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: str
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    pointer: str = ""
    hint: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        out = asdict(self)
        if not out.pop("extra"):
            return out
        out["data"] = self.extra
        return out

    @property
    def location(self) -> Location:
        return Location(self.file, self.line, self.column, self.pointer)

    def at(self, loc: Location) -> Diagnostic:
        return replace(self, file=loc.file, line=loc.line, column=loc.column, pointer=loc.pointer)

    @property
    def sort_key(self) -> tuple:
        return (self.file or "", self.line or 0, self.column or 0, self.code, self.message)


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: str
    summary: str
    message: str
    hint: str | None
    source: str | None
    exit: int = 1  # the exit status an error of this code means: 2 when the tool itself could not run


@lru_cache(maxsize=1)
def catalog() -> dict[str, Rule]:
    """All diagnostic codes, merged from compiler/data/codes_*.json (one file per stage)."""
    rules: dict[str, Rule] = {}
    data_dir = resources.files("ftspec.compiler.data")
    for entry in sorted(data_dir.iterdir(), key=lambda p: p.name):
        if not (entry.name.startswith("codes_") and entry.name.endswith(".json")):
            continue
        for code, spec in json.loads(entry.read_text(encoding="utf-8")).items():
            if code.startswith("$"):
                continue
            if code in rules:
                raise ValueError(f"diagnostic code {code} defined twice ({entry.name})")
            rules[code] = Rule(
                code=code,
                name=spec["name"],
                severity=spec["severity"],
                summary=spec["summary"],
                message=spec.get("message", "{detail}"),
                hint=spec.get("hint"),
                source=spec.get("source"),
                exit=int(spec.get("exit", 1)),
            )
    return rules


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def make(
    code: str,
    loc: Location | None = None,
    *,
    message: str | None = None,
    hint: str | None = None,
    severity: str | None = None,
    extra: dict | None = None,
    **fields: object,
) -> Diagnostic:
    """Build a diagnostic from the catalog entry `code`, formatting its message and hint with `fields`.

    An explicit `message`/`hint` replaces the catalog's text; `hint=""` drops the catalog hint.
    """
    rule = catalog()[code]
    values = _Defaulting({k: v for k, v in fields.items()})
    text = message if message is not None else rule.message.format_map(values)
    if hint is None and rule.hint:
        hint = rule.hint.format_map(values)
    loc = loc or Location()
    return Diagnostic(
        code=code,
        severity=severity or rule.severity,
        message=text,
        file=loc.file,
        line=loc.line,
        column=loc.column,
        pointer=loc.pointer,
        hint=hint or None,
        extra=extra or {},
    )


def exit_code(diagnostics: list[Diagnostic]) -> int:
    """The one exit-code decision: 2 if an error means the tool could not run (its catalog entry says
    `"exit": 2`), 1 for any other error, else 0. Warnings and infos never fail."""
    errors = [d for d in diagnostics if d.severity == "error"]
    rules = catalog()
    if any(rules[d.code].exit == 2 for d in errors if d.code in rules):
        return 2
    return 1 if errors else 0


def has_errors(diagnostics: list[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)


def sort_diagnostics(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(diagnostics, key=lambda d: d.sort_key)
