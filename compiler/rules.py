"""Cross-field rules: the checks a JSON Schema cannot express. (Filled in by the rules work.)"""

from __future__ import annotations

from .diagnostics import Diagnostic


def cross_field_diagnostics(spec, options, schema_diags: list[Diagnostic]) -> list[Diagnostic]:
    return []
