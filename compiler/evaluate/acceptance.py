"""The acceptance gate: measured values of base and fine-tuned models x the spec's rules -> pass/fail.

Pure data in, data out: no files, no models. `judge` takes the values the evaluation measured, the
rules, and the integrity evidence (eval/train overlap, eval files against the lock) and returns one
row per threshold with the base value, the fine-tuned value, their difference and the threshold, plus
diagnostics. The gate passes only when every row holds and the evaluation itself can be trusted.

Direction: task, regression and format are scores (higher is better); eval_loss and perplexity are
losses (lower is better). "Gain" is the improvement in the metric's own direction, so
`min_gain_over_base: 0.1` on eval_loss means the loss fell by at least 0.1, and `max_drop_from_base`
bounds how much worse the fine-tuned model may be. `min`/`max` bound the fine-tuned value itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ftspec.compiler.core.diagnostics import Diagnostic, Location, make
from ftspec.compiler.evaluate.metrics import LOWER_IS_BETTER

THRESHOLDS = ("min_gain_over_base", "max_drop_from_base", "min", "max")
RELATIVE = frozenset({"min_gain_over_base", "max_drop_from_base"})
# Differences such as 0.7 - 0.65 land a few ulps below 0.05; a rule written as 0.05 means 0.05.
EPS = 1e-9

_HINTS = {
    "task": "the model did not learn the task well enough: train longer or at a higher learning rate, check the "
    "data and the chat template; the report shows example answers of both models",
    "regression": "the model lost general ability (catastrophic forgetting): lower the learning rate, prefer LoRA to "
    "full fine-tuning, train fewer steps, or mix general data into dataset.train with a fraction",
    "format": "answers break the required format: add more examples of the exact format, or check that the chat "
    "template and max_new_tokens leave room for a complete answer",
    "eval_loss": "the eval loss is too high: train longer, or check for a mismatch between train and eval data",
    "perplexity": "the eval perplexity is too high: train longer, or check for a mismatch between train and eval data",
    "preference": "the model does not prefer the chosen answers of held-out pairs often enough: train longer, raise "
    "training.beta, check that chosen and rejected are not swapped; the report lists the pairs that flipped",
}

Locate = Callable[[str], Location]


@dataclass(frozen=True)
class Check:
    """One threshold of one acceptance rule, measured."""

    index: int  # position of the rule in the spec's acceptance list
    metric: str  # task | regression | format | eval_loss | perplexity
    kind: str  # one of THRESHOLDS
    threshold: float
    base: float | None
    finetuned: float | None
    difference: float | None  # fine-tuned minus base, in the metric's own units (signed)
    passed: bool
    measured: str  # the metric as measured, e.g. "exact_match" for task; "" when not measured
    detail: str  # one line saying why it passed or failed

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    @property
    def gain(self) -> float | None:
        """Improvement in the metric's own direction (positive: the fine-tuned model is better)."""
        if self.difference is None:
            return None
        return self.difference if self.higher_is_better else -self.difference

    def to_json(self) -> dict:
        out = asdict(self)
        out["higher_is_better"] = self.higher_is_better
        out["gain"] = json_number(self.gain)
        for key in ("base", "finetuned", "difference"):
            out[key] = json_number(out[key])
        out["status"] = "pass" if self.passed else "fail"
        return out


@dataclass(frozen=True)
class IntegrityCheck:
    """A precondition for trusting the numbers at all (eval/train overlap, eval data unchanged)."""

    name: str  # contamination | regression_contamination | eval_data
    passed: bool | None  # None: could not be checked
    detail: str

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "status": {True: "pass", False: "fail", None: "unchecked"}[self.passed],
            "detail": self.detail,
        }


@dataclass
class GateResult:
    checks: list[Check] = field(default_factory=list)
    integrity: list[IntegrityCheck] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            all(c.passed for c in self.checks)
            and not any(i.passed is False for i in self.integrity)
            and not any(d.severity == "error" for d in self.diagnostics)
        )

    @property
    def failed_rules(self) -> list[int]:
        return sorted({c.index for c in self.checks if not c.passed})


def json_number(value: float | None) -> float | str | None:
    """A value for report.json: JSON has no NaN or Infinity, and null means "not measured", so a value
    that is not finite is written as metrics.json writes it: "nan", "inf" or "-inf"."""
    if value is None:
        return None
    return value if math.isfinite(value) else str(float(value))


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.4g}"


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "") + _fmt(value)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def judge_rule(index: int, rule: dict, base: dict, finetuned: dict, measured: dict) -> list[Check]:
    """The rows of one rule: one per threshold it sets."""
    metric = rule["metric"]
    b, f = _number(base.get(metric)), _number(finetuned.get(metric))
    lower = metric in LOWER_IS_BETTER
    label = f"{metric} ({measured[metric]})" if measured.get(metric) else metric
    rows = []
    for kind in THRESHOLDS:
        if kind not in rule:
            continue
        t = float(rule[kind])
        diff = None if b is None or f is None else f - b
        passed, detail = False, ""
        if f is None or (kind in RELATIVE and b is None):
            missing = "fine-tuned" if f is None else "base"
            detail = f"{label}: the {missing} value was not measured"
        elif math.isnan(f) or (kind in RELATIVE and b is not None and math.isnan(b)):
            detail = f"{label}: value is NaN"
        else:
            gain = None if diff is None else (-diff if lower else diff)
            if kind == "min_gain_over_base":
                assert gain is not None  # a relative threshold: the base was measured
                passed = gain >= t - EPS
                need = "at least" if passed else "below the required"
                detail = (
                    f"{label}: fine-tuned {_fmt(f)} vs base {_fmt(b)}, gain {_signed(gain)} "
                    f"({need} {_signed(t)})"
                )
            elif kind == "max_drop_from_base":
                assert gain is not None  # a relative threshold: the base was measured
                drop = -gain
                passed = drop <= t + EPS
                detail = (
                    f"{label}: fine-tuned {_fmt(f)} vs base {_fmt(b)}, drop {_fmt(max(drop, 0.0) + 0.0)} "
                    f"({'within' if passed else 'beyond'} the allowed {_fmt(t)})"
                )
            elif kind == "min":
                passed = f >= t - EPS
                detail = f"{label}: fine-tuned {_fmt(f)} ({'>=' if passed else '<'} min {_fmt(t)})"
            else:
                passed = f <= t + EPS
                detail = f"{label}: fine-tuned {_fmt(f)} ({'<=' if passed else '>'} max {_fmt(t)})"
        rows.append(
            Check(
                index=index,
                metric=metric,
                kind=kind,
                threshold=t,
                base=b,
                finetuned=f,
                difference=diff,
                passed=passed,
                measured=measured.get(metric) or "",
                detail=detail,
            )
        )
    return rows


def contamination_check(
    contamination: dict | None, max_contaminated: int, *, name: str = "contamination", what: str = "eval"
) -> IntegrityCheck:
    """`contamination`: {"ngram", "contaminated", "eval_examples", "examples": [...]} as measured for
    the `what` set (eval, or its "regression" entry)."""
    if not contamination:
        return IntegrityCheck(name, None, f"{what}/train overlap was not measured")
    count = int(contamination.get("contaminated", 0))
    total = int(contamination.get("eval_examples", 0))
    n = contamination.get("ngram")
    passed = count <= max_contaminated
    return IntegrityCheck(
        name,
        passed,
        f"{count} of {total} {what} examples share a {n}-word sequence with train (allowed: {max_contaminated})",
    )


def judge(
    rules: list[dict],
    values: dict,
    *,
    measured: dict | None = None,
    contamination: dict | None = None,
    max_contaminated: int = 0,
    data_findings: list[Diagnostic] | None = None,
    locate: Locate | None = None,
) -> GateResult:
    """Apply every acceptance rule to `values` = {"base": {metric: v}, "finetuned": {metric: v}}.

    `measured` names what each acceptance metric was computed as ({"task": "exact_match", ...});
    `data_findings` are the eval-data-versus-lock diagnostics (FT0804/FT0809/FT0813) already made.
    """
    locate = locate or (lambda pointer: Location(pointer=pointer))
    measured = measured or {}
    base, finetuned = values.get("base") or {}, values.get("finetuned") or {}
    result = GateResult()
    diags = result.diagnostics
    if not rules:
        diags.append(make("FT0810", locate("/acceptance")))
    for index, rule in enumerate(rules):
        rows = judge_rule(index, rule, base, finetuned, measured)
        result.checks.extend(rows)
        metric = rule["metric"]
        for row in rows:
            if row.passed:
                continue
            pointer = f"/acceptance/{index}/{row.kind}"
            if row.finetuned is None or (row.kind in RELATIVE and row.base is None):
                which = "fine-tuned" if row.finetuned is None else "base"
                diags.append(
                    make(
                        "FT0802",
                        locate(f"/acceptance/{index}/metric"),
                        index=index,
                        metric=metric,
                        detail=f" for the {which} model",
                    )
                )
            elif math.isnan(row.finetuned) or (
                row.kind in RELATIVE and row.base is not None and math.isnan(row.base)
            ):
                which = "fine-tuned" if math.isnan(row.finetuned) else "base"
                diags.append(
                    make("FT0811", locate(pointer), index=index, model=which, metric=metric, value="NaN")
                )
            else:
                diags.append(
                    make(
                        "FT0801",
                        locate(pointer),
                        index=index,
                        detail=row.detail,
                        hint=_HINTS.get(metric, ""),
                        extra={"check": row.to_json()},
                    )
                )
    if rules:
        check = contamination_check(contamination, max_contaminated)
        result.integrity.append(check)
        if check.passed is False:
            assert contamination is not None  # measured, or the check would not be False
            shown = contamination.get("examples") or []
            examples = ""
            if shown:
                where = ", ".join(_where(e) for e in shown[:3])
                examples = f" (e.g. {where}{', ...' if len(shown) > 3 else ''})"
            diags.append(
                make(
                    "FT0803",
                    locate("/dataset/checks/max_contaminated"),
                    count=contamination.get("contaminated"),
                    total=contamination.get("eval_examples"),
                    ngram=contamination.get("ngram"),
                    allowed=max_contaminated,
                    examples=examples,
                )
            )
        elif check.passed is None:
            diags.append(make("FT0814", locate("/dataset/checks"), detail=check.detail))
        regression = (contamination or {}).get("regression")
        if regression:
            check = contamination_check(
                regression, max_contaminated, name="regression_contamination", what="regression"
            )
            result.integrity.append(check)
            if not check.passed:
                shown = ", ".join(_where(e, "regression") for e in regression["examples"][:3])
                diags.append(
                    make(
                        "FT0815",
                        locate("/evaluation/regression/prompts"),
                        count=regression.get("contaminated"),
                        total=regression.get("eval_examples"),
                        ngram=regression.get("ngram"),
                        allowed=max_contaminated,
                        examples=shown,
                    )
                )
        findings = list(data_findings or [])
        errors = [d for d in findings if d.severity == "error"]
        result.integrity.append(
            IntegrityCheck(
                "eval_data",
                False if errors else (None if findings else True),
                "; ".join(d.message for d in findings) or "eval and train files match the lock",
            )
        )
        diags.extend(findings)
    return result


def _where(example: dict, what: str = "eval") -> str:
    return f"{what} {example.get('eval')} ~ train {example.get('train')}"
