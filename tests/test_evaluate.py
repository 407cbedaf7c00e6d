"""runtime/evaluate.py and `ftspec evaluate` on a hand-made run folder with a tiny model built here.

The model: a 2-layer LlamaConfig with the built-in BPE tokenizer (runtime.builtin.build_tokenizer,
trained in about a second), random weights, saved to tmp. The "fine-tuned" model is a PEFT LoRA adapter
on it. Fast enough for the default tier (a few seconds), no downloads.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from ftspec.compiler.core.artifacts import dumps_json  # noqa: E402
from ftspec.compiler.core.resolve import resolve  # noqa: E402

NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack"]


def _chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from ftspec.runtime.builtin import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_run(
    root: Path,
    model_dir: Path,
    *,
    acceptance: list[dict],
    eval_rows=None,
    train_rows=None,
    adapter_scale: float = 0.0,
    lock: bool = True,
    evaluation: dict | None = None,
) -> Path:
    """A run folder as `ftspec launch` leaves it (docs/contracts.md), with a LoRA adapter whose B matrices
    are scaled noise (0.0: the adapter changes nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec_dir = root / "project"
    train_rows = train_rows or [
        _chat(f"Convert to JSON: name: {n}, age: {20 + i}", json.dumps({"name": n, "age": 20 + i}))
        for i, n in enumerate(NAMES)
    ]
    eval_rows = eval_rows or [
        _chat(f"Convert to JSON: name: {n}, age: {60 + i}", json.dumps({"name": n, "age": 60 + i}))
        for i, n in enumerate(NAMES[:6])
    ]
    _write_jsonl(spec_dir / "data/train.jsonl", train_rows)
    _write_jsonl(spec_dir / "data/eval.jsonl", eval_rows)
    _write_jsonl(
        spec_dir / "data/regression.jsonl",
        [
            {"prompt": "What is 2+3?", "answer": "5"},
            {"prompt": "What is 1+1?", "answer": "2"},
            _chat("What is the opposite of hot?", "cold"),
        ],
    )
    (spec_dir / "schema.json").write_text(
        json.dumps(
            {"type": "object", "required": ["name", "age"], "properties": {"age": {"type": "integer"}}}
        )
    )
    spec = {
        "version": 1,
        "name": "tiny",
        "model": {"id": str(model_dir)},
        "dataset": {"train": "data/train.jsonl", "eval": "data/eval.jsonl", "min_examples": 1},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dora": False},
        "training": {"max_steps": 3, "sequence_len": 128},
        "hardware": {"gpu": "cpu"},
        "evaluation": evaluation
        or {
            "task": {"metric": "exact_match", "json_schema": "schema.json"},
            "format": {"json": True},
            "regression": {"prompts": "data/regression.jsonl", "metric": "exact_match"},
            "max_new_tokens": 12,
            "batch_size": 4,
        },
        "acceptance": acceptance,
        "output": {"dir": "runs/tiny"},
    }
    (spec_dir / "spec.yaml").write_text(json.dumps(spec))  # JSON is YAML
    run = spec_dir / "runs/tiny"
    run.mkdir(parents=True)
    plan = {
        "metadata": {
            "schema_version": 1,
            "kind": "ftspec-plan",
            "ftspec_version": "0.1.0",
            "spec_sha256": _sha(spec_dir / "spec.yaml"),
            "spec_file": "spec.yaml",
        },
        "spec": resolve(spec),
        "paths": {"spec_dir": "../.."},  # as compiled into a build folder two levels down
        "derived": {"output_dir": "runs/tiny", "sequence_len": 128, "world_size": 1},
    }
    (run / "plan.json").write_text(dumps_json(plan))  # as compile writes it: lock.json records its digest
    run_info = {"exit_status": "ok", "final_step": 3, "world_size": 1, "plan_sha256": _sha(run / "plan.json")}
    (run / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "loss": 3.0 - 0.5 * s, **({"eval_loss": 2.9 - 0.4 * s} if s % 2 else {})})
            + "\n"
            for s in range(1, 4)
        )
        + '{"step": 4, "loss": 1.'
    )  # a torn last line is skipped
    if lock:
        files = ["data/train.jsonl", "data/eval.jsonl", "data/regression.jsonl", "schema.json"]
        roles = ["train", "eval", "regression", "json_schema"]  # the layout compiler/lockfile.py writes
        (run / "lock.json").write_text(
            json.dumps(
                {
                    "metadata": {"spec_sha256": plan["metadata"]["spec_sha256"], "overrides": {}},
                    "plan_sha256": _sha(run / "plan.json"),
                    "data": [
                        {"role": r, "path": f, "sha256": _sha(spec_dir / f)}
                        for r, f in zip(roles, files, strict=True)
                    ],
                }
            )
        )
        run_info["lock_sha256"] = _sha(run / "lock.json")
    (run / "run.json").write_text(json.dumps(run_info))  # the digests the runtime records
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.save_pretrained(run / "tokenizer")
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    if adapter_scale:
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * adapter_scale)
    model.save_pretrained(run / "adapter")
    return run


def _evaluate(run: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "evaluate", str(run), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_identity_adapter_scores_exactly_like_the_base(tmp_path, tiny_model_dir):
    """A zero LoRA (B = 0) is the base model: every measured value must agree, so a 0-gain rule passes
    and a positive-gain rule fails."""
    run = make_run(
        tmp_path,
        tiny_model_dir,
        acceptance=[
            {"metric": "eval_loss", "max_drop_from_base": 0.0},
            {"metric": "task", "min_gain_over_base": 0.05},
        ],
    )
    proc = _evaluate(run, "--format", "json", "--lm-eval", "hellaswag")
    assert proc.returncode == 1, proc.stderr
    body = json.loads(proc.stdout)
    report = body["report"]
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:  # the optional extra is skipped with a note, not an error
        assert any("hellaswag skipped" in n for n in report["notes"])
        assert any(d["code"] == "FT0812" for d in body["diagnostics"])
    base, ft = report["metrics"]["base"], report["metrics"]["finetuned"]
    assert base["eval_loss"] == pytest.approx(ft["eval_loss"], rel=1e-5)
    assert base["task"] == ft["task"] and base["regression"] == ft["regression"]
    assert [r["status"] for r in report["rules"]] == ["pass", "fail"]
    assert report["summary"] == "FAIL: rule 1 (task)"
    codes = [d["code"] for d in body["diagnostics"]]
    assert "FT0801" in codes
    failing = next(d for d in body["diagnostics"] if d["code"] == "FT0801")
    assert failing["file"].endswith("spec.yaml") and failing["line"] is not None  # points into the spec
    # Everything the evaluation wrote is there, and the report is schema-valid.
    out = run / "eval"
    for name in ("metrics.json", "predictions.jsonl", "report.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    from ftspec.compiler.evaluate.report import validate_report

    assert validate_report(json.loads((out / "report.json").read_text())) == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["task"] == 6 and metrics["counts"]["regression"] == 3
    assert metrics["contamination"]["contaminated"] == 0
    assert report["training"]["curves"]["train_loss"] == [[1, 2.5], [2, 2.0], [3, 1.5]]
    assert report["training"]["curves"]["eval_loss"] == [[1, 2.5], [3, pytest.approx(1.7)]]


def test_changed_adapter_changes_the_numbers_and_reuse_regates(tmp_path, tiny_model_dir):
    run = make_run(
        tmp_path,
        tiny_model_dir,
        adapter_scale=0.5,
        acceptance=[{"metric": "eval_loss", "max": 1000.0}, {"metric": "format", "min": 0.0}],
    )
    proc = _evaluate(run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "acceptance gate: PASS" in proc.stdout
    metrics = json.loads((run / "eval/metrics.json").read_text())
    assert metrics["values"]["base"]["eval_loss"] != pytest.approx(
        metrics["values"]["finetuned"]["eval_loss"]
    )
    # Re-gating the stored metrics: a tampered eval file now fails the gate without re-measuring.
    eval_file = run.parent.parent / "data/eval.jsonl"
    eval_file.write_text(
        eval_file.read_text() + json.dumps(_chat("Convert to JSON: name: Zoe, age: 1", "{}")) + "\n"
    )
    proc = _evaluate(run, "--reuse-metrics")
    assert proc.returncode == 1
    assert "FT0804" in proc.stdout and "data/eval.jsonl changed since it was locked" in proc.stdout
    # Evaluating again never loses the earlier report silently: it is kept in eval/previous/.
    assert "previous evaluation (status PASS) was copied to" in proc.stderr
    previous = json.loads((run / "eval/previous/report.json").read_text())
    assert previous["status"] == "pass" and (run / "eval/previous/metrics.json").is_file()
    assert json.loads((run / "eval/report.json").read_text())["status"] == "fail"


def test_adapter_without_weights_is_one_line_and_exit_2(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir, acceptance=[{"metric": "eval_loss", "max": 1000.0}])
    for weights in (run / "adapter").glob("adapter_model.*"):
        weights.unlink()
    proc = _evaluate(run)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "holds adapter_config.json but no weights" in proc.stderr and "FT0807" in proc.stdout
    assert "loaded" not in proc.stderr  # refused before the base model was loaded and run


def test_contaminated_eval_set_fails_the_gate(tmp_path, tiny_model_dir):
    train = [
        _chat(
            f"Convert to JSON: name: {n}, age: {20 + i}, city: Paris, country: France, job: baker",
            json.dumps({"name": n, "age": 20 + i}),
        )
        for i, n in enumerate(NAMES)
    ]
    evals = train[:2] + [_chat("Convert to JSON: name: Zed, age: 99", '{"name": "Zed", "age": 99}')]
    run = make_run(
        tmp_path,
        tiny_model_dir,
        train_rows=train,
        eval_rows=evals,
        acceptance=[{"metric": "eval_loss", "max": 1000.0}],
    )
    proc = _evaluate(run, "--format", "json")
    assert proc.returncode == 1, proc.stderr
    body = json.loads(proc.stdout)
    (diag,) = [d for d in body["diagnostics"] if d["code"] == "FT0803"]
    assert "2 of 3 eval examples" in diag["message"] and "data/train.jsonl:1" in diag["message"]
    assert body["report"]["rules"][0]["status"] == "pass"  # the rule held; the data did not


def test_not_a_run_folder_is_exit_2(tmp_path):
    proc = _evaluate(tmp_path)
    assert proc.returncode == 2
    assert "FT0805" in proc.stdout
    (tmp_path / "plan.json").write_text(
        json.dumps(
            {"metadata": {"kind": "ftspec-plan", "schema_version": 1}, "spec": {}, "paths": {"spec_dir": "."}}
        )
    )
    (tmp_path / "run.json").write_text(json.dumps({"exit_status": "failed"}))
    proc = _evaluate(tmp_path)
    assert proc.returncode == 2 and "FT0806" in proc.stdout


def test_batched_left_padded_generation_matches_one_by_one(tiny_model_dir):
    from ftspec.runtime.evaluate import generate, stop_token_ids
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [
        [{"role": "user", "content": text}]
        for text in (
            "hi",
            "What is the opposite of hot?",
            "Convert to JSON: name: Alice, age: 31, city: Rome",
        )
    ]
    stops = stop_token_ids(tokenizer, model)
    batched = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3, stop_ids=stops)
    single = [
        generate(model, tokenizer, [p], max_new_tokens=8, batch_size=1, stop_ids=stops)[0] for p in prompts
    ]
    assert batched == single
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stops


def test_loss_labels_cover_the_answer_and_terminator_only(tiny_model_dir):
    from ftspec.runtime.evaluate import label_conversation
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = _chat("Convert to JSON: name: Bob, age: 4", '{"name": "Bob", "age": 4}')["messages"]
    ids, labels = label_conversation(tokenizer, messages)
    scored = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    assert scored == '{"name": "Bob", "age": 4}<|im_end|>'


def test_eval_split_rebuilds_exactly_the_eval_set_training_held_out(tmp_path):
    """With eval_split, evaluate must score the rows training held out: the same rows the runtime's
    load_conversations returns, and its contamination scan covers only the rows training kept."""
    from ftspec.compiler.launch.run_folder import open_run
    from ftspec.runtime.data import load_conversations
    from ftspec.runtime.evaluate import task_sets

    project = tmp_path / "project"
    rows = [
        _chat(f"Convert to JSON: name: {n}, age: {a}", json.dumps({"name": n, "age": a}))
        for n in NAMES
        for a in (1, 2, 3)
    ]
    _write_jsonl(project / "data/a.jsonl", rows[:20])
    _write_jsonl(project / "data/b.jsonl", rows[20:])
    spec = resolve(
        {
            "version": 1,
            "name": "split",
            "model": {"id": "builtin:tiny-llama"},
            "dataset": {
                "train": [{"path": "data/a.jsonl"}, {"path": "data/b.jsonl", "fraction": 0.2}],
                "eval_split": 0.2,
            },
            "training": {"seed": 7},
            "hardware": {"gpu": "cpu"},
            "output": {"dir": "runs/split"},
        }
    )
    run = project / "runs/split"
    (run / "adapter").mkdir(parents=True)
    (run / "plan.json").write_text(
        json.dumps(
            {
                "metadata": {"kind": "ftspec-plan", "schema_version": 1},
                "spec": spec,
                "paths": {"spec_dir": "../.."},
                "derived": {"output_dir": "runs/split"},
            }
        )
    )
    (run / "run.json").write_text(json.dumps({"exit_status": "completed"}))
    evals, train_iter, source = task_sets(open_run(run))
    _mixed, expected = load_conversations(spec, project)
    assert evals == expected and len(evals) == 6
    train = list(train_iter)
    assert len(train) == 24 and not any(messages in evals for messages, _where in train)
    assert "eval_split 0.2" in source and "seed 7" in source
