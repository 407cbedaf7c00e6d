"""Cross-field rules on `evaluation`, `acceptance` and `output`: every gate metric must be produced,
every threshold reachable, every pattern and schema file usable."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.lint.rules.context import RuleContext

# Metrics that are shares in [0, 1] (exact match, F1, ROUGE-L, accuracy, pass rates).
_SCORE_METRICS = ("task", "regression", "format", "preference")
SCHEMA_FILE_MAX_BYTES = 5 * 1024 * 1024


def _rules(ctx: RuleContext) -> list[tuple[int, dict]]:
    acceptance = ctx.raw("/acceptance")
    if not isinstance(acceptance, list):
        return []
    return [(i, r) for i, r in enumerate(acceptance) if isinstance(r, dict)]


def _num(value: object) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def acceptance_needs_eval(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0220: acceptance rules while neither eval nor eval_split gives evaluation data."""
    acceptance = ctx.raw("/acceptance")
    if isinstance(acceptance, list) and acceptance and ctx.has_eval_data() is False:
        yield ctx.diag("FT0220", "/acceptance", key=True, count=len(acceptance))


def metrics_produced(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0221: an acceptance metric the evaluation section does not produce."""
    has_regression = isinstance(ctx.raw("/evaluation/regression"), dict)
    fmt = ctx.raw("/evaluation/format")
    has_format = isinstance(fmt, dict) and (
        fmt.get("json") is True or (isinstance(fmt.get("regex"), str) and bool(fmt.get("regex")))
    )
    for i, rule in _rules(ctx):
        metric = rule.get("metric")
        pointer = f"/acceptance/{i}/metric"
        if metric == "regression" and not has_regression:
            yield ctx.diag(
                "FT0221",
                pointer,
                metric=metric,
                needs="evaluation.regression.prompts",
                hint="add `evaluation: {regression: {prompts: data/regression.jsonl}}`",
            )
        elif metric == "format" and not has_format:
            yield ctx.diag(
                "FT0221",
                pointer,
                metric=metric,
                needs="evaluation.format.json or .regex",
                hint="add `evaluation: {format: {json: true}}` (or a regex)",
            )


def task_metric_settings(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0222: metric json_schema without task.json_schema, or regex without task.regex, on the task
    or the regression set. The evaluator scores both with the task's schema and pattern, and refuses
    a metric without them ("metric regex needs evaluation.task.regex") only after training; lint
    refuses it at the metric's line instead."""
    metrics = ("exact_match", "f1", "rouge_l", "accuracy", "contains", "json_schema", "regex")
    for section in ("task", "regression"):
        pointer = f"/evaluation/{section}/metric"
        metric = ctx.get(pointer, metrics)
        for name in ("json_schema", "regex"):
            if metric == name and not ctx.given(f"/evaluation/task/{name}"):
                yield ctx.diag("FT0222", pointer, section=section, metric=name, field=name)


def thresholds(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0223 a threshold no result can meet; FT0254 min above max in one rule."""
    for i, rule in _rules(ctx):
        metric = rule.get("metric")
        low, high = _num(rule.get("min")), _num(rule.get("max"))
        gain = _num(rule.get("min_gain_over_base"))
        base = f"/acceptance/{i}"
        if low is not None and high is not None and low > high:
            yield ctx.diag("FT0254", f"{base}/min", low=f"{low:g}", high=f"{high:g}")
            continue
        if metric in _SCORE_METRICS:
            if low is not None and low > 1:
                yield ctx.diag(
                    "FT0223",
                    f"{base}/min",
                    metric=metric,
                    field="min",
                    value=f"{low:g}",
                    why="scores are shares between 0 and 1",
                )
            if high is not None and high < 0:
                yield ctx.diag(
                    "FT0223",
                    f"{base}/max",
                    metric=metric,
                    field="max",
                    value=f"{high:g}",
                    why="scores are shares between 0 and 1",
                )
            if gain is not None and gain > 1:
                yield ctx.diag(
                    "FT0223",
                    f"{base}/min_gain_over_base",
                    metric=metric,
                    field="min_gain_over_base",
                    value=f"{gain:g}",
                    why="a score can rise by at most 1 over the base model",
                )
        elif metric in ("eval_loss", "perplexity"):
            floor = 1.0 if metric == "perplexity" else 0.0
            if high is not None and high < floor:
                yield ctx.diag(
                    "FT0223",
                    f"{base}/max",
                    metric=metric,
                    field="max",
                    value=f"{high:g}",
                    why=f"{metric} is never below {floor:g}",
                )


def regex_patterns(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0243: a regex that does not compile."""
    for pointer in ("/evaluation/task/regex", "/evaluation/format/regex"):
        pattern = ctx.raw(pointer)
        if not isinstance(pattern, str) or not pattern:
            continue
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError, ValueError) as exc:
            where = getattr(exc, "pos", None)
            detail = getattr(exc, "msg", None) or str(exc)
            if where is not None:
                detail += f" at position {where}"
            yield ctx.diag("FT0243", pointer, detail=detail)


def json_schema_file(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0244: the task's JSON Schema file is not JSON, or not a valid JSON Schema."""
    from ftspec.compiler.lint.rules.data import _is_absolute, readable_in_repo, resolve_data_path

    path = ctx.raw("/evaluation/task/json_schema")
    if not isinstance(path, str) or not path or not ctx.check_files or _is_absolute(path):
        return
    target = resolve_data_path(ctx, path)
    if not readable_in_repo(ctx, target):  # path_rules reports why
        return
    try:
        if not target.is_file() or target.stat().st_size > SCHEMA_FILE_MAX_BYTES:
            return
        document = json.loads(target.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        yield ctx.diag("FT0244", "/evaluation/task/json_schema", path=path, detail="not UTF-8")
        return
    except ValueError as exc:
        yield ctx.diag("FT0244", "/evaluation/task/json_schema", path=path, detail=f"not valid JSON ({exc})")
        return
    except OSError:
        return
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        if not isinstance(document, (dict, bool)):
            raise SchemaError(f"a schema is an object or a boolean, not {type(document).__name__}")
        # types-jsonschema's Validator protocol takes a dict only; jsonschema checks boolean schemas too
        validator_for(document).check_schema(document)  # type: ignore[arg-type]
    except SchemaError as exc:
        yield ctx.diag(
            "FT0244",
            "/evaluation/task/json_schema",
            path=path,
            detail=f"not a valid JSON Schema ({exc.message})",
        )
    except Exception as exc:  # jsonschema raises assorted errors on exotic $schema values
        yield ctx.diag(
            "FT0244",
            "/evaluation/task/json_schema",
            path=path,
            detail=f"not a usable JSON Schema ({type(exc).__name__})",
        )


def report_to(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0245: report_to lists none together with real sinks."""
    sinks = ctx.raw("/output/report_to")
    if isinstance(sinks, list) and "none" in sinks and len(sinks) > 1:
        yield ctx.diag("FT0245", f"/output/report_to/{sinks.index('none')}")


RULES = [
    acceptance_needs_eval,
    metrics_produced,
    task_metric_settings,
    thresholds,
    regex_patterns,
    json_schema_file,
    report_to,
]
