"""Cross-field rules for preference tuning (`training.objective: dpo | orpo`, `dataset.format:
preference`): the objective and the data must agree, beta must be a usable strength, and settings
that mean nothing for pairs are named instead of silently ignored."""

from __future__ import annotations

from collections.abc import Iterator

from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.lint.rules.context import RuleContext

OBJECTIVES = ("sft", "dpo", "orpo")
PREFERENCE_OBJECTIVES = ("dpo", "orpo")
# Outside this range the published recipes do not go: DPO's beta below 0.01 lets the policy drift
# arbitrarily far from the reference, above 1 it barely moves; ORPO's lambda above 1 lets the
# odds-ratio term outweigh the NLL that keeps the answers fluent.
BETA_RANGE = (0.01, 1.0)
_FORMATS = ("chatml", "sharegpt", "alpaca", "preference", "completion", "text")


def _objective(ctx: RuleContext) -> str | None:
    return ctx.get("/training/objective", OBJECTIVES)


def objective_matches_data(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0270 dpo/orpo without preference pairs; FT0271 preference pairs trained with sft."""
    objective = _objective(ctx)
    fmt = ctx.get("/dataset/format", _FORMATS)
    if objective is None or fmt is None:
        return
    if objective in PREFERENCE_OBJECTIVES and fmt != "preference":
        yield ctx.diag_at_first("FT0270", ("/training/objective",), objective=objective, format=fmt)
    elif objective == "sft" and fmt == "preference":
        yield ctx.diag_at_first("FT0271", ("/dataset/format", "/training/objective"))


def beta(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0272 beta outside the published range; FT0273 beta written for sft, which has none."""
    if not ctx.given("/training/beta"):
        return
    value = ctx.get("/training/beta", "num")
    objective = _objective(ctx)
    if value is None or objective is None:
        return
    if objective not in PREFERENCE_OBJECTIVES:
        yield ctx.diag("FT0273", "/training/beta", key=True, objective=objective)
        return
    low, high = BETA_RANGE
    if not low <= value <= high:
        yield ctx.diag(
            "FT0272",
            "/training/beta",
            value=f"{value:g}",
            objective=objective,
            low=f"{low:g}",
            high=f"{high:g}",
        )


def meaningless_settings(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0274: a setting the preference objective cannot honour (packing: pairs are compared as whole
    sequences; loss_on with dpo: DPO always scores exactly the answer tokens)."""
    objective = _objective(ctx)
    if objective not in PREFERENCE_OBJECTIVES:
        return
    if ctx.get("/training/packing", "bool") is True:
        yield ctx.diag(
            "FT0274",
            "/training/packing",
            severity="error",
            field="packing: true",
            objective=objective,
            why="each pair's chosen and rejected answers are scored as whole sequences, so examples "
            "cannot share a row",
            fix="remove `packing` (or set it to false)",
        )
    if (
        objective == "dpo"
        and ctx.given("/training/loss_on")
        and ctx.get("/training/loss_on", ("assistant", "all"))
    ):
        yield ctx.diag(
            "FT0274",
            "/training/loss_on",
            field=f"loss_on: {ctx.get('/training/loss_on', ('assistant', 'all'))}",
            objective=objective,
            why="DPO compares the log-probabilities of the answer tokens only; nothing else is trained",
            fix="remove `loss_on` (it only chooses ORPO's NLL tokens and SFT's labels)",
        )


def preference_metric(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0221 (shared with the evaluation rules): an acceptance rule on `preference` without
    preference pairs to measure it on."""
    acceptance = ctx.raw("/acceptance")
    if not isinstance(acceptance, list):
        return
    fmt = ctx.get("/dataset/format", _FORMATS)
    if fmt is None or fmt == "preference":
        return
    for i, rule in enumerate(acceptance):
        if isinstance(rule, dict) and rule.get("metric") == "preference":
            yield ctx.diag(
                "FT0221",
                f"/acceptance/{i}/metric",
                metric="preference",
                needs="dataset.format: preference (held-out chosen/rejected pairs)",
                hint="train on preference pairs (`dataset.format: preference`), or gate on another metric",
            )


RULES = [objective_matches_data, beta, meaningless_settings, preference_metric]
