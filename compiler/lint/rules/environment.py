"""Cross-field rules on `environment`: pins too old for the features the spec uses.

The spec language makes this a lint rule ("zero_stage: 3 with method: qlora needs the versions that
support it"); it reads only the spec and compiler/data/version_rules.json (packaging, no imports of
the packages), so a reviewer sees it in the pull request. `ftspec check` adds the rest of the pin
analysis (known-bad versions, unpinned packages, the installed environment).
"""

from __future__ import annotations

from collections.abc import Iterator

from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.lint.rules.context import RuleContext


def feature_versions(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0403/FT0404: a pinned package that cannot (or may not) have what a used feature needs."""
    if not isinstance(ctx.raw("/environment/packages"), dict) or ctx.reported(""):
        return  # resolving defaults needs a spec the schema accepts
    from ftspec.compiler.core.resolve import resolve
    from ftspec.compiler.lint.pins import feature_findings

    yield from feature_findings(ctx.spec, resolve(ctx.data))


RULES = [feature_versions]
