"""Reading a run folder for evaluate (compiler/run_folder.py) and the eval/train overlap measure
(compiler/contamination.py): pure Python, no models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from ftspec.compiler.evaluate.contamination import measure
from ftspec.compiler.launch.run_folder import RunFolderError, check_eval_data, locate_spec_dir, open_run


def _chat(user: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _run_folder(root: Path, *, lock: dict | None, spec_dir_written: str = "../..") -> Path:
    project = root / "project"
    (project / "data").mkdir(parents=True)
    (project / "data/eval.jsonl").write_text('{"messages": []}\n')
    (project / "data/reg.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n')
    run = project / "runs/demo"
    run.mkdir(parents=True)
    spec = {
        "name": "demo",
        "model": {"id": "m"},
        "dataset": {"train": "data/train.jsonl", "eval": "data/eval.jsonl"},
        "evaluation": {"regression": {"prompts": "data/reg.jsonl"}},
        "output": {"dir": "runs/demo"},
    }
    plan = {
        "metadata": {"kind": "ftspec-plan", "schema_version": 1, "spec_file": "demo.yaml"},
        "spec": spec,
        "paths": {"spec_dir": spec_dir_written},
        "derived": {"output_dir": "runs/demo"},
    }
    (run / "plan.json").write_text(json.dumps(plan))
    (run / "run.json").write_text(json.dumps({"exit_status": "ok"}))
    (run / "adapter").mkdir()
    if lock is not None:
        (run / "lock.json").write_text(json.dumps(lock))
    return run


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("written", ["../..", "../../build/demo/../..", "wrong/place"])
def test_spec_dir_is_found_whatever_the_copied_plan_says(tmp_path, written):
    run = _run_folder(tmp_path, lock=None, spec_dir_written=written)
    plan = json.loads((run / "plan.json").read_text())
    assert locate_spec_dir(run, plan) == (tmp_path / "project").resolve()


def test_lock_layouts_and_a_changed_file(tmp_path):
    project = tmp_path / "project"
    run = _run_folder(tmp_path, lock={})
    eval_sha = _sha(project / "data/eval.jsonl")
    reg_sha = _sha(project / "data/reg.jsonl")
    for data in (
        [
            {"role": "eval", "path": "data/eval.jsonl", "sha256": eval_sha},  # compiler/lockfile.py
            {"role": "regression", "path": "./data/reg.jsonl", "sha256": reg_sha},
        ],
        {"data/eval.jsonl": eval_sha, "./data/reg.jsonl": _sha(project / "data/reg.jsonl")},
        {
            "data/eval.jsonl": {"sha256": eval_sha},
            "x": {"path": "data/reg.jsonl", "sha256": _sha(project / "data/reg.jsonl")},
        },
    ):
        (run / "lock.json").write_text(json.dumps({"data": data}))
        assert check_eval_data(open_run(run)) == []
    (project / "data/reg.jsonl").write_text('{"prompt": "1+1", "answer": "3"}\n')
    (diag,) = check_eval_data(open_run(run))
    assert diag.code == "FT0804" and "regression file data/reg.jsonl changed" in diag.message
    assert diag.pointer == "/evaluation/regression/prompts"


def test_a_train_file_changed_after_the_run_fails_the_data_check(tmp_path):
    # The overlap check reads the train files: removing leaked eval rows from train after training must
    # not clear a model that trained on them.
    project = tmp_path / "project"
    run = _run_folder(tmp_path, lock={})
    (project / "data/train.jsonl").write_text('{"messages": []}\n')
    locked = [
        {"role": "train", "path": "data/train.jsonl", "sha256": _sha(project / "data/train.jsonl")},
        {"role": "eval", "path": "data/eval.jsonl", "sha256": _sha(project / "data/eval.jsonl")},
        {"role": "regression", "path": "data/reg.jsonl", "sha256": _sha(project / "data/reg.jsonl")},
    ]
    (run / "lock.json").write_text(json.dumps({"data": locked}))
    assert check_eval_data(open_run(run)) == []
    (project / "data/train.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    (diag,) = check_eval_data(open_run(run))
    assert diag.code == "FT0804" and diag.severity == "error"
    assert "train file data/train.jsonl changed" in diag.message and diag.pointer == "/dataset/train"


def test_missing_lock_and_unlocked_files_are_warnings(tmp_path):
    run = _run_folder(tmp_path, lock=None)
    assert [d.code for d in check_eval_data(open_run(run))] == ["FT0809"]
    (run / "lock.json").write_text(json.dumps({"data": {}}))
    diags = check_eval_data(open_run(run))
    assert [d.code for d in diags] == ["FT0813", "FT0813"] and all(d.severity == "warning" for d in diags)


def test_unfinished_or_foreign_folders_are_refused(tmp_path):
    run = _run_folder(tmp_path, lock=None)
    (run / "run.json").write_text(json.dumps({"exit_status": "failed"}))
    with pytest.raises(RunFolderError) as info:
        open_run(run)
    assert info.value.code == "FT0806"
    (run / "run.json").write_text(json.dumps({"exit_status": "ok"}))
    (run / "adapter").rmdir()
    with pytest.raises(RunFolderError, match="neither adapter/ nor merged/"):
        open_run(run)
    (run / "plan.json").write_text(json.dumps({"metadata": {"kind": "something-else"}}))
    with pytest.raises(RunFolderError, match="not a plan"):
        open_run(run)


def test_contamination_measure_names_the_training_record():
    long = "please convert this customer record into a json object with name age city and country fields now"
    evals = [_chat(long, "{}"), _chat("short prompt", "ok"), _chat("unrelated words only here", "x")]
    train = [
        (_chat("hello", "world"), "train.jsonl:1"),
        (_chat("intro " + long, "{}"), "train.jsonl:2"),
        (_chat("short prompt", "ok"), "train.jsonl:3"),
    ]
    result = measure(evals, iter(train), 13)
    assert result["eval_examples"] == 3 and result["contaminated"] == 2
    assert result["examples"] == [
        {"eval": 0, "train": "train.jsonl:2"},
        {"eval": 1, "train": "train.jsonl:3"},
    ]
    assert measure(evals, iter(train[:1]), 13)["contaminated"] == 0


def test_regression_prompts_in_train_are_measured_and_fail_the_gate():
    from ftspec.compiler.evaluate.acceptance import judge

    long = "please convert this customer record into a json object with name age city and country fields now"
    evals = [_chat("unrelated words only here", "x")]
    regression = [_chat("what is the capital of france", "paris"), _chat(long, "{}")]
    train = [(_chat("hello", "world"), "train.jsonl:1"), (_chat("intro " + long, "{}"), "train.jsonl:2")]
    result = measure(evals, iter(train), 13, regression=regression)
    assert result["contaminated"] == 0
    assert result["regression"]["contaminated"] == 1
    assert result["regression"]["examples"] == [{"eval": 1, "train": "train.jsonl:2"}]
    rules = [{"metric": "regression", "max_drop": 0.05}]
    values = {"base": {"regression": 0.5}, "finetuned": {"regression": 0.5}}
    gate = judge(rules, values, contamination=result)
    assert not gate.passed and "FT0815" in [d.code for d in gate.diagnostics]
    assert [i.name for i in gate.integrity if i.passed is False] == ["regression_contamination"]
    clean = measure(evals, iter(train[:1]), 13, regression=regression)
    assert judge(rules, values, contamination=clean).passed
