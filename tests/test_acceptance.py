"""The acceptance gate (compiler/acceptance.py): rules x measured values -> verdicts and diagnostics."""

import json
import math

import pytest
from ftspec.compiler.core.diagnostics import make
from ftspec.compiler.evaluate.acceptance import judge

VALUES = {
    "base": {"task": 0.10, "regression": 0.90, "format": 0.50, "eval_loss": 2.0, "perplexity": math.exp(2.0)},
    "finetuned": {
        "task": 0.80,
        "regression": 0.87,
        "format": 1.0,
        "eval_loss": 0.5,
        "perplexity": math.exp(0.5),
    },
}
CLEAN = {"ngram": 13, "eval_examples": 100, "contaminated": 0, "examples": []}


def gate(rules, values=VALUES, **kw):
    kw.setdefault("contamination", CLEAN)
    return judge(rules, values, measured={"task": "exact_match"}, **kw)


def test_all_rules_hold():
    result = gate(
        [
            {"metric": "task", "min_gain_over_base": 0.5},
            {"metric": "regression", "max_drop_from_base": 0.05},
            {"metric": "format", "min": 0.98},
            {"metric": "eval_loss", "max": 1.0, "min_gain_over_base": 1.0},
        ]
    )
    assert result.passed
    assert [c.passed for c in result.checks] == [True] * 5
    task = result.checks[0]
    assert (task.base, task.finetuned, task.threshold) == (0.10, 0.80, 0.5)
    assert task.difference == pytest.approx(0.70)
    assert task.measured == "exact_match"
    loss_gain = result.checks[-2]  # thresholds in THRESHOLDS order: gain first, max last
    assert loss_gain.kind == "min_gain_over_base"
    assert loss_gain.difference == pytest.approx(-1.5)
    assert loss_gain.gain == pytest.approx(1.5)  # lower is better for losses
    assert not [d for d in result.diagnostics if d.severity == "error"]


def test_task_rule_fails_with_numbers_in_the_message():
    result = gate([{"metric": "task", "min_gain_over_base": 0.75}, {"metric": "format", "min": 0.5}])
    assert not result.passed
    assert result.failed_rules == [0]
    (diag,) = [d for d in result.diagnostics if d.severity == "error"]
    assert diag.code == "FT0801"
    assert diag.pointer == "/acceptance/0/min_gain_over_base"
    assert "fine-tuned 0.8 vs base 0.1" in diag.message and "+0.7" in diag.message
    assert "learn the task" in diag.hint


def test_regression_drop_beyond_allowance_fails():
    result = gate([{"metric": "regression", "max_drop_from_base": 0.02}])
    assert not result.passed
    row = result.checks[0]
    assert row.difference == pytest.approx(-0.03)
    assert "forgetting" in result.diagnostics[0].hint


def test_boundaries_hold_despite_float_noise():
    values = {"base": {"task": 0.65}, "finetuned": {"task": 0.7}}  # 0.7 - 0.65 = 0.04999999999999993
    assert gate([{"metric": "task", "min_gain_over_base": 0.05}], values).passed
    values = {"base": {"regression": 0.9}, "finetuned": {"regression": 0.88}}
    assert gate([{"metric": "regression", "max_drop_from_base": 0.02}], values).passed
    assert not gate([{"metric": "regression", "max_drop_from_base": 0.019}], values).passed


def test_loss_drop_from_base_means_loss_went_up():
    values = {"base": {"eval_loss": 1.0}, "finetuned": {"eval_loss": 1.3}}
    assert not gate([{"metric": "eval_loss", "max_drop_from_base": 0.2}], values).passed
    assert gate([{"metric": "eval_loss", "max_drop_from_base": 0.3}], values).passed


def test_missing_metric_fails_the_rule():
    result = gate([{"metric": "format", "min": 0.9}], {"base": {}, "finetuned": {"task": 1.0}})
    assert not result.passed
    assert [d.code for d in result.diagnostics] == ["FT0802"]


def test_nan_value_fails_with_its_own_code():
    values = {"base": {"eval_loss": 1.0}, "finetuned": {"eval_loss": float("nan")}}
    result = gate([{"metric": "eval_loss", "max": 5}], values)
    assert not result.passed
    assert [d.code for d in result.diagnostics] == ["FT0811"]


def test_contamination_beyond_allowance_fails_even_when_rules_hold():
    dirty = {
        "ngram": 13,
        "eval_examples": 100,
        "contaminated": 3,
        "examples": [{"eval": 1, "train": "train.jsonl:4"}, {"eval": 5, "train": "train.jsonl:9"}],
    }
    rules = [{"metric": "task", "min_gain_over_base": 0.1}]
    result = gate(rules, contamination=dirty, max_contaminated=2)
    assert not result.passed
    assert all(c.passed for c in result.checks)
    (diag,) = [d for d in result.diagnostics if d.code == "FT0803"]
    assert "3 of 100" in diag.message and "train.jsonl:4" in diag.message
    assert gate(rules, contamination=dirty, max_contaminated=3).passed


def test_changed_eval_file_fails_the_gate():
    finding = make("FT0804", None, role="eval", path="data/eval.jsonl", actual="aaa", expected="bbb")
    result = gate([{"metric": "task", "min_gain_over_base": 0.1}], data_findings=[finding])
    assert not result.passed
    assert [i.passed for i in result.integrity] == [True, False]


def test_unmeasured_contamination_is_a_warning_not_a_pass():
    result = gate([{"metric": "task", "min_gain_over_base": 0.1}], contamination=None)
    assert result.passed
    assert [d.code for d in result.diagnostics] == ["FT0814"]
    assert result.integrity[0].passed is None


def test_no_rules_passes_with_a_warning():
    result = gate([])
    assert result.passed
    assert [d.code for d in result.diagnostics] == ["FT0810"]


def test_check_to_json_is_json_safe():
    values = {"base": {"perplexity": 10.0}, "finetuned": {"perplexity": math.inf}}
    (row,) = gate([{"metric": "perplexity", "max": 20}], values).checks
    data = row.to_json()
    json.dumps(data, allow_nan=False)
    # Not null: null means "not measured"; an infinite perplexity was measured, and the report says so.
    assert data["finetuned"] == "inf" and data["difference"] == "inf" and data["gain"] == "-inf"
    assert data["status"] == "fail" and data["higher_is_better"] is False


def test_unchanged_value_shows_no_negative_zero_drop():
    (row,) = gate(
        [{"metric": "regression", "max_drop_from_base": 0.1}],
        {"base": {"regression": 0.0}, "finetuned": {"regression": 0.0}},
    ).checks
    assert row.passed and "drop 0 " in row.detail and "-0" not in row.detail
