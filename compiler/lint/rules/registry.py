"""Cross-field rules: the checks a JSON Schema cannot express (codes FT02xx, compiler/data/codes_rules.json).

Rules run on the raw spec even when the schema check failed, so every read goes through
`RuleContext.get`, which returns None for a value of the wrong type (or one the schema already
reported) instead of raising. Each rule lives in one module per spec section (`adapter`, `data`, ...) as a function
`rule(ctx) -> Iterable[Diagnostic]`; a rule that crashes anyway is reported as FT0299 rather than
taking the whole lint down (FTSPEC_DEBUG=1 re-raises it).
"""

from __future__ import annotations

import os

from ftspec.compiler.core.diagnostics import Diagnostic, Location, make
from ftspec.compiler.core.loader import LoadedSpec
from ftspec.compiler.lint.rules import adapter as rules_adapter
from ftspec.compiler.lint.rules import data as rules_data
from ftspec.compiler.lint.rules import environment as rules_environment
from ftspec.compiler.lint.rules import evaluation as rules_eval
from ftspec.compiler.lint.rules import hardware as rules_hardware
from ftspec.compiler.lint.rules import model as rules_model
from ftspec.compiler.lint.rules import preference as rules_preference
from ftspec.compiler.lint.rules import training as rules_training
from ftspec.compiler.lint.rules.context import MISSING, Rule, RuleContext, schema_default

__all__ = ["MISSING", "Rule", "RuleContext", "cross_field_diagnostics", "schema_default"]


def _all_rules() -> list[Rule]:
    out: list[Rule] = []
    for module in (
        rules_model,
        rules_adapter,
        rules_training,
        rules_preference,
        rules_hardware,
        rules_data,
        rules_eval,
        rules_environment,
    ):
        out.extend(module.RULES)
    return out


def cross_field_diagnostics(spec: LoadedSpec, options, schema_diags: list[Diagnostic]) -> list[Diagnostic]:
    """Run every cross-field rule over a loaded spec (schema-valid or not)."""
    if not isinstance(spec.data, dict):
        return []
    ctx = RuleContext(spec, options, schema_diags)
    out: list[Diagnostic] = []
    for rule in _all_rules():
        try:
            out.extend(rule(ctx))
        except Exception as exc:  # a bug in a rule must not hide the other findings
            if os.environ.get("FTSPEC_DEBUG"):
                raise
            out.append(
                make(
                    "FT0299",
                    Location(spec.path, 1, 1, ""),
                    rule=rule.__name__,
                    detail=f"{type(exc).__name__}: {exc}",
                )
            )
    return out
