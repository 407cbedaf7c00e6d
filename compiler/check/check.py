"""The check stage's front door: lint, then the data check, memory/time/cost and pins, as one result.

`check_spec` returns data only (diagnostics, the JSON sections, the text sections, an exit status);
`ftspec check` reports it, and compile and `ftspec run` read it instead of re-scanning the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.core.artifacts import read_plan
from ftspec.compiler.core.diagnostics import Diagnostic, exit_code, sort_diagnostics
from ftspec.compiler.core.loader import LoadedSpec
from ftspec.compiler.core.resolve import resolve
from ftspec.compiler.lint.lint import LintOptions, lint_file, suppressed

SECTIONS = ("memory", "pins", "data")


@dataclass
class CheckResult:
    """What check found: `exit_code` is 0 (ok), 1 (findings) or 2 (the check could not run)."""

    spec: LoadedSpec | None
    diagnostics: list[Diagnostic]
    exit_code: int
    sections: dict[str, object] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    data_summary: dict | None = None
    lint_failed: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def check_spec(
    path: str | Path,
    lint: LintOptions | None = None,
    *,
    only: tuple[str, ...] | list[str] = SECTIONS,
    installed: bool = False,
    lock: Path | None = None,
) -> CheckResult:
    """Lint the spec (errors stop here), then run the chosen sections on the resolved spec."""
    result = lint_file(path, lint)
    if not result.ok:
        return CheckResult(
            result.spec, list(result.diagnostics), exit_code(result.diagnostics), lint_failed=True
        )
    spec = result.spec
    resolved = resolve(spec.data)
    diagnostics = list(result.diagnostics)  # lint warnings stay visible
    if lock is not None:
        from ftspec.compiler.check.lockfile import check_lock

        drift = check_lock(Path(lock), spec, resolved)
        if exit_code(drift) == 2:  # the lock cannot be read: the check cannot run
            return CheckResult(spec, drift, 2)
        diagnostics.extend(drift)
    out = CheckResult(spec, diagnostics, 0)
    if "data" in only:
        from ftspec.compiler.check.data.datacheck import check_data

        report = check_data(spec, resolved)
        diagnostics.extend(report.diagnostics)
        out.sections["data"] = report.summary
        out.texts.append(report.text())
        out.data_summary = report.summary
    if "memory" in only:
        from ftspec.compiler.check.feasibility import assess

        assessment = assess(spec, resolved, out.data_summary)
        diagnostics.extend(assessment.diagnostics)
        out.sections.update(assessment.to_json())
        out.texts.append(assessment.text())
    if "pins" in only:
        from ftspec.compiler.lint.pins import check_pins

        pins = check_pins(spec, resolved, installed=installed)
        diagnostics.extend(pins.diagnostics)
        out.sections["pins"] = pins.to_json()
        out.texts.append(pins.text())
    # lint and the pins section both report feature-need pins: show each finding once
    out.diagnostics = sort_diagnostics(suppressed(spec, list(dict.fromkeys(diagnostics))))
    out.exit_code = min(exit_code(out.diagnostics), 1)  # a finding of the data or pins, not a tool failure
    return out


def spec_of_build(lock: str | Path) -> str | None:
    """The spec a build folder was compiled from, by the plan.json beside its lock.json."""
    build = Path(lock).parent
    try:
        plan = read_plan(build / "plan.json")
        spec = build / plan["paths"]["spec_dir"] / plan["metadata"]["spec_file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(spec) if spec.is_file() else None
