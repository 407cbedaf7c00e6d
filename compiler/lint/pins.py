"""`environment` pins: PEP 440 syntax, ranges that cannot hold, what the spec's features need,
known-bad versions and combinations (data/version_rules.json, a source per rule), packages the spec
needs but does not pin, and (with `installed=True`) the running environment via importlib.metadata,
never by importing the packages.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from ftspec.compiler.core.diagnostics import Diagnostic, make
from ftspec.compiler.core.loader import LoadedSpec, get_pointer, join_pointer
from ftspec.compiler.core.resolve import resolve_strategy
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


@lru_cache(maxsize=1)
def rules() -> dict:
    return json.loads(
        resources.files("ftspec.compiler.data").joinpath("version_rules.json").read_text("utf-8")
    )


# --- version-set arithmetic -----------------------------------------------------------------------


def _neighbours(spec_text: str) -> set[Version]:
    """Versions on and around every boundary of a specifier set: if the set allows any version, it
    allows one of these (the allowed region is a union of intervals bounded by these points)."""
    out = {Version("0.0.1"), Version("9999")}
    for clause in SpecifierSet(spec_text):
        raw = clause.version.rstrip(".*").rstrip(".")
        try:
            v = Version(raw)
        except InvalidVersion:
            continue
        rel = list(v.release)
        out.add(v)
        out.add(Version(".".join(map(str, rel + [1]))))
        for i in range(len(rel)):
            bumped = rel[: i + 1]
            bumped[-1] += 1
            out.add(Version(".".join(map(str, bumped))))
            out.add(Version(".".join(map(str, rel[: i + 1] + [999]))))
        if rel[-1] > 0:
            lower = rel[:-1] + [rel[-1] - 1]
            out.add(Version(".".join(map(str, lower))))
            out.add(Version(".".join(map(str, lower + [999]))))
    return out


def allowed(spec_text: str, *others: str) -> list[Version]:
    """Probe versions allowed by `spec_text` (and every one of `others`), sorted."""
    probes: set[Version] = set()
    for text in (spec_text, *others):
        probes |= _neighbours(text)
    sets = [SpecifierSet(t) for t in (spec_text, *others)]
    return sorted(v for v in probes if all(s.contains(v, prereleases=True) for s in sets))


def satisfiable(*specs: str) -> bool:
    return bool(allowed(specs[0], *specs[1:])) if specs else True


def allows_outside(pin: str, need: str) -> bool:
    """Does `pin` allow some version that `need` does not?"""
    probes = _neighbours(pin) | _neighbours(need)
    p, n = SpecifierSet(pin), SpecifierSet(need)
    return any(p.contains(v, prereleases=True) and not n.contains(v, prereleases=True) for v in probes)


# --- conditions on the spec -----------------------------------------------------------------------


def _value(resolved: dict, dotted: str) -> object:
    if dotted == "hardware.strategy":
        return resolve_strategy(resolved.get("hardware"))
    node: object = resolved
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def condition_holds(when: dict, resolved: dict) -> bool:
    for key, expected in when.items():
        value = _value(resolved, key)
        if isinstance(expected, list):
            if value not in expected:
                return False
        elif value != expected:
            return False
    return True


# --- the check -------------------------------------------------------------------------------------


@dataclass
class PinReport:
    diagnostics: list[Diagnostic] = field(default_factory=list)
    packages: dict[str, dict] = field(default_factory=dict)
    python: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"python": self.python, "packages": self.packages}

    def text(self) -> str:
        lines = ["pins"]
        if not self.packages:
            lines.append("  (no packages pinned)")
        for name, info in sorted(self.packages.items()):
            pin = info.get("pin") or "(not pinned)"
            needs = "; ".join(f"{n['needs']} for {n['feature']}" for n in info.get("needs", []))
            inst = f"  installed {info['installed']}" if info.get("installed") else ""
            lines.append(f"  {name:14} {pin:24}{('  needs ' + needs) if needs else ''}{inst}")
        return "\n".join(lines)


def _pin_pointer(name: str) -> str:
    return join_pointer("/environment/packages", name)


def feature_findings(spec: LoadedSpec, resolved: dict) -> list[Diagnostic]:
    """Only the feature-need findings (FT0403/FT0404) of the pins: what lint reports."""
    report = PinReport()
    pins, pointers = _parse_pins(spec, resolved, report)
    _features(spec, resolved, pins, pointers, report)
    return [d for d in report.diagnostics if d.code in ("FT0403", "FT0404")]


def check_pins(spec: LoadedSpec, resolved: dict, *, installed: bool = False) -> PinReport:
    report = PinReport()
    env = resolved.get("environment") or {}
    pins, pointers = _parse_pins(spec, resolved, report)
    _python(spec, env, report, installed)
    needs = _features(spec, resolved, pins, pointers, report)
    _known_bad(spec, pins, pointers, report)
    _needed(spec, resolved, pins, needs, report)
    if installed:
        _installed(spec, pins, pointers, needs, report)
    return report


def _parse_pins(spec: LoadedSpec, resolved: dict, report: PinReport) -> tuple[dict[str, str], dict[str, str]]:
    """Valid, satisfiable pins by normalised name, and each one's JSON pointer (its first spelling);
    findings for the rest. One package pinned under several spellings is one pin: all of them apply."""
    raw_pins = (resolved.get("environment") or {}).get("packages") or {}
    spellings: dict[str, list[str]] = {}
    for raw_name in raw_pins:
        spellings.setdefault(canonicalize_name(str(raw_name)), []).append(str(raw_name))
    pins: dict[str, str] = {}
    pointers: dict[str, str] = {}
    for name, names in spellings.items():
        pointers[name] = _pin_pointer(names[0])
        texts, valid = [], True
        for raw_name in names:
            text = str(raw_pins[raw_name]).strip()
            texts.append(text)
            try:
                SpecifierSet(text)
            except InvalidSpecifier as exc:
                valid = False
                report.diagnostics.append(
                    make(
                        "FT0401",
                        spec.locate(_pin_pointer(raw_name)),
                        package=raw_name,
                        spec=text,
                        detail=_invalid_detail(exc),
                        hint=_bare_version_hint(text),
                    )
                )
        combined = ",".join(t for t in texts if t)
        report.packages[name] = {"pin": combined, "needs": []}
        for later in names[1:]:
            report.diagnostics.append(
                make(
                    "FT0412",
                    spec.locate(_pin_pointer(later)),
                    package=name,
                    first=names[0],
                    second=later,
                    combined=combined,
                )
            )
        if not valid:
            report.packages[name]["valid"] = False
            continue
        if not satisfiable(combined):
            report.diagnostics.append(
                make(
                    "FT0402",
                    spec.locate(_pin_pointer(names[-1])),
                    what=f"packages.{names[-1]}",
                    spec=combined,
                    detail="its clauses exclude every version",
                )
            )
            report.packages[name]["satisfiable"] = False
            continue
        pins[name] = combined
    return pins, pointers


def _python(spec: LoadedSpec, env: dict, report: PinReport, installed: bool) -> None:
    text = str(env.get("python", ">=3.10")).strip()
    report.python = {"pin": text}
    try:
        SpecifierSet(text)
    except InvalidSpecifier as exc:
        report.diagnostics.append(
            make(
                "FT0401",
                spec.locate("/environment/python"),
                package="python",
                spec=text,
                message=f"environment.python: '{text}' is not a valid PEP 440 version "
                f"specifier ({_invalid_detail(exc)})",
                hint=_bare_version_hint(text),
            )
        )
        return
    if not satisfiable(text):
        report.diagnostics.append(
            make(
                "FT0402",
                spec.locate("/environment/python"),
                what="python",
                spec=text,
                detail="its clauses exclude every version",
            )
        )
        return
    if installed:
        running = platform.python_version()
        report.python["installed"] = running
        if not SpecifierSet(text).contains(running, prereleases=True):
            report.diagnostics.append(
                make("FT0410", spec.locate("/environment/python"), installed=running, spec=text)
            )


def _invalid_detail(exc: InvalidSpecifier) -> str:
    # packaging only says "Invalid specifier: '2.0'", and the message already quotes the pin: say
    # what a specifier is made of instead, unless packaging gave a more specific reason.
    detail = str(exc).split(":", 1)[0].strip()
    if not detail or detail.lower() == "invalid specifier":
        return "each comma-separated clause is an operator (==, !=, >=, <=, >, <, ~=) and a version"
    return detail


def _bare_version_hint(text: str) -> str | None:
    """`2.8.0` is a version, not a specifier: say which operator to add. None keeps the catalog hint."""
    try:
        Version(text)
    except InvalidVersion:
        return None
    return f'a bare version is not a specifier: write "=={text}" (exactly that version) or ">={text}"'


def _features(
    spec: LoadedSpec, resolved: dict, pins: dict[str, str], pointers: dict[str, str], report: PinReport
) -> dict[str, list[dict]]:
    """Feature needs that apply, by package; findings for pinned packages."""
    needs: dict[str, list[dict]] = {}
    for rule in rules()["features"]:
        if not condition_holds(rule["when"], resolved):
            continue
        # where the spec turns the feature on: its line, or "by default" when the value is a default
        given = get_pointer(spec.data, rule["pointer"], None) is not None
        loc = spec.locate(rule["pointer"])
        line = f"line {loc.line or '?'}" if given else "by default"
        related = (
            [
                {
                    "line": loc.line,
                    "column": loc.column,
                    "pointer": rule["pointer"],
                    "message": f"{rule['feature']} is set here",
                }
            ]
            if given
            else []
        )
        for package, need in rule["needs"].items():
            name = canonicalize_name(package)
            entry = {
                "feature": rule["feature"],
                "needs": need,
                "source": rule["source"],
                "line": line,
                "pointer": rule["pointer"],
                "related": related,
            }
            needs.setdefault(name, []).append(entry)
            report.packages.setdefault(name, {"pin": None, "needs": []})["needs"].append(
                {"feature": rule["feature"], "needs": need, "source": rule["source"]}
            )
            pin = pins.get(name)
            if pin is None:
                continue
            fields = dict(
                feature=rule["feature"],
                feature_line=line,
                package=package,
                needs=need,
                spec=pin,
                suggest=_combined_suggestion(pin, need),
            )
            if not satisfiable(pin, need):
                report.diagnostics.append(
                    make(
                        "FT0403",
                        spec.locate(pointers[name]),
                        **fields,
                        extra={
                            "source": rule["source"],
                            "feature_pointer": rule["pointer"],
                            "related": related,
                        },
                    )
                )
            elif allows_outside(pin, need):
                report.diagnostics.append(
                    make(
                        "FT0404",
                        spec.locate(pointers[name]),
                        **fields,
                        extra={
                            "source": rule["source"],
                            "feature_pointer": rule["pointer"],
                            "related": related,
                        },
                    )
                )
    return needs


def _combined_suggestion(pin: str, need: str) -> str:
    """The need, plus the pin's own upper bounds and exclusions where they still leave versions."""
    keep = [str(c) for c in SpecifierSet(pin) if c.operator in ("<", "<=", "!=")]
    combined = ",".join([need, *keep])
    return combined if satisfiable(combined) else need


def _condition_pins(cond: dict, pins: dict[str, str]) -> str | None:
    """'definite' when every pinned version meets the rule's `if`, 'possible' when some do, None."""
    state = "definite"
    for package, req in cond.items():
        pin = pins.get(canonicalize_name(package))
        if pin is None:
            return None
        if not req:
            continue
        if not satisfiable(pin, req):
            return None
        if allows_outside(pin, req):
            state = "possible"
    return state


def _known_bad(spec: LoadedSpec, pins: dict[str, str], pointers: dict[str, str], report: PinReport) -> None:
    for rule in rules()["known_bad"]:
        name = canonicalize_name(rule["package"])
        pin = pins.get(name)
        if pin is None:
            continue
        cond = _condition_pins(rule.get("if", {}), pins) if rule.get("if") else "definite"
        if cond is None:
            continue
        bad = rule["bad"]
        if not satisfiable(pin, bad):
            continue  # the pin already avoids it
        only_bad = not allows_outside(pin, bad)
        fields = dict(package=rule["package"], spec=pin, why=rule["why"], fix=rule["fix"], bad=bad)
        extra = {"source": rule["source"], "rule": rule["id"]}
        if only_bad and cond == "definite":
            report.diagnostics.append(make("FT0405", spec.locate(pointers[name]), **fields, extra=extra))
        else:
            report.diagnostics.append(make("FT0406", spec.locate(pointers[name]), **fields, extra=extra))


def _train_extra() -> dict[str, str]:
    """ftspec's own tested ranges (the `train` extra), to suggest for packages with no feature need."""
    from importlib import metadata  # lazily: importing it costs lint ~9 ms

    out: dict[str, str] = {}
    try:
        requires = metadata.requires("ftspec") or []
    except metadata.PackageNotFoundError:
        return out
    from packaging.requirements import InvalidRequirement, Requirement

    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and "train" in str(req.marker):
            out[canonicalize_name(req.name)] = str(req.specifier)
    return out


def _needed(
    spec: LoadedSpec, resolved: dict, pins: dict[str, str], needs: dict[str, list[dict]], report: PinReport
) -> None:
    raw_pins = {canonicalize_name(k) for k in ((resolved.get("environment") or {}).get("packages") or {})}
    extra = _train_extra()
    reasons: dict[str, list[str]] = {}
    related: dict[str, list[dict]] = {}
    for rule in rules()["needed"]:
        if condition_holds(rule["when"], resolved):
            name: str = canonicalize_name(rule["package"])
            reasons.setdefault(name, []).append(rule["why"])
            for key in rule["when"]:  # the settings that make the package needed
                pointer = "/" + key.replace(".", "/")
                loc = spec.locate(pointer)
                related.setdefault(name, []).append(
                    {
                        "line": loc.line,
                        "column": loc.column,
                        "pointer": pointer,
                        "message": f"{rule['why']}: set here",
                    }
                )
    for name, feature_needs in needs.items():
        reasons.setdefault(name, []).extend(n["feature"] for n in feature_needs)
    where = spec.locate("/environment/packages", key=True)
    for name, why in sorted(reasons.items()):
        if name in raw_pins:
            continue
        parts = [n["needs"] for n in needs.get(name, [])]
        if name in extra and extra[name]:
            # ftspec's tested range, plus whatever feature need it does not already imply
            parts = [p for p in parts if allows_outside(extra[name], p)] + [extra[name]]
        suggestion = (
            ",".join(parts)
            if parts and satisfiable(",".join(parts))
            else (",".join(n["needs"] for n in needs.get(name, [])) or "")
        )
        report.packages.setdefault(name, {"pin": None, "needs": []})["needed_for"] = sorted(set(why))
        places = [
            r
            for r in related.get(name, []) + [r for n in needs.get(name, []) for r in n["related"]]
            if r["line"]
        ]
        report.diagnostics.append(
            make(
                "FT0407",
                where,
                package=name,
                why="; ".join(sorted(set(why))),
                suggest=suggestion or ">=0",
                extra={"related": places} if places else None,
            )
        )


def _installed(
    spec: LoadedSpec,
    pins: dict[str, str],
    pointers: dict[str, str],
    needs: dict[str, list[dict]],
    report: PinReport,
) -> None:
    from importlib import metadata

    names = sorted(
        set(pins) | set(needs) | {n for n, info in report.packages.items() if info.get("needed_for")}
    )
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = None
        info = report.packages.setdefault(name, {"pin": None, "needs": []})
        info["installed"] = version
        pin = pins.get(name)
        loc = (
            spec.locate(pointers[name])
            if name in pointers
            else spec.locate("/environment/packages", key=True)
        )
        if version is None:
            why = "pinned in environment.packages" if pin else "needed by the spec"
            report.diagnostics.append(
                make(
                    "FT0409", loc, package=name, why=why, spec=pin or "", severity=None if pin else "warning"
                )
            )
            continue
        if pin and not SpecifierSet(pin).contains(version, prereleases=True):
            report.diagnostics.append(make("FT0408", loc, package=name, installed=version, spec=pin))
        for need in needs.get(name, []):
            if not SpecifierSet(need["needs"]).contains(version, prereleases=True):
                report.diagnostics.append(
                    make(
                        "FT0411",
                        spec.locate(need["pointer"]),
                        feature=need["feature"],
                        feature_line=need["line"],
                        package=name,
                        needs=need["needs"],
                        installed=version,
                    )
                )
