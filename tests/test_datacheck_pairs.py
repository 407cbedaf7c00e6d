"""The data check on preference pairs: each finding at its record's line."""

from __future__ import annotations

import json
from pathlib import Path

from ftspec.compiler.check.data.datacheck import check_data
from ftspec.compiler.core.loader import load_spec
from ftspec.compiler.core.resolve import resolve


def _pair(prompt, chosen, rejected) -> str:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected})


def _check(tmp_path: Path, train: list[str], evals: list[str] | None = None, seq: int = 64):
    (tmp_path / "train.jsonl").write_text("\n".join(train) + "\n")
    lines = ["version: 1", "name: p", "model: {id: 'builtin:tiny-llama', chat_template: chatml}", "dataset:"]
    lines += ["  format: preference", "  train: train.jsonl", "  min_examples: 1"]
    if evals is not None:
        (tmp_path / "eval.jsonl").write_text("\n".join(evals) + "\n")
        lines.append("  eval: eval.jsonl")
    lines += ["training: {objective: dpo, sequence_len: " + str(seq) + "}", "hardware: {gpu: cpu}"]
    (tmp_path / "spec.yaml").write_text("\n".join(lines) + "\n")
    spec = load_spec(tmp_path / "spec.yaml")
    report = check_data(spec, resolve(spec.data))
    return report, [(d.code, d.line) for d in report.diagnostics if d.file and d.file.endswith(".jsonl")]


def test_pair_findings_at_their_lines(tmp_path):
    user = [{"role": "user", "content": "hi"}]
    answer = [{"role": "assistant", "content": "hello"}]
    train = [
        _pair("Say hi", "hello there", "go away"),  # 1: fine, plain text
        _pair(
            user, answer, [{"role": "assistant", "content": "  hello "}]
        ),  # 2: identical (whitespace aside)
        _pair(user, answer, ""),  # 3: empty rejected
        _pair(user, [{"role": "user", "content": "hello"}], answer),  # 4: a user turn in chosen
        _pair(
            [*user, *answer], answer, [{"role": "assistant", "content": "no"}]
        ),  # 5: prompt ends with assistant
        json.dumps({"prompt": "x", "chosen": "y"}),  # 6: no rejected
        _pair("Say hi", "hello there", "go away"),  # 7: duplicate of line 1 (whole pair)
        _pair("Say hi", "hello there", "leave now"),  # 8: same prompt and chosen, another pair: fine
    ]
    report, found = _check(tmp_path, train)
    assert ("FT0570", 2) in found and ("FT0571", 3) in found and ("FT0572", 4) in found
    assert ("FT0572", 5) in found and ("FT0505", 6) in found and ("FT0523", 7) in found
    assert not [f for f in found if f[1] in (1, 8)]
    assert report.summary["pairs"]["pairs"] >= 3


def test_what_sequence_len_cuts_from_chosen_and_rejected(tmp_path):
    long_answer = "word " * 60
    train = [_pair("Convert this", long_answer, "short"), _pair("word " * 100, "a", "b")]
    report, found = _check(tmp_path, train, seq=32)
    too_long = {line: d for d in report.diagnostics if d.code == "FT0573" for line in [d.line]}
    assert too_long[1].severity == "warning" and "of chosen's" in too_long[1].message
    assert " 0 of rejected's" in too_long[1].message  # the short rejected answer fits whole
    assert too_long[2].severity == "error" and "prompt alone fills it" in too_long[2].message


def test_eval_pairs_overlapping_train_are_contamination(tmp_path):
    text = "please convert the following record into a json object with name and age fields now"
    report, found = _check(tmp_path, [_pair(text, "ok fine", "no")], evals=[_pair(text, "ok fine", "no")])
    assert any(d.code in ("FT0526", "FT0527") for d in report.diagnostics)
