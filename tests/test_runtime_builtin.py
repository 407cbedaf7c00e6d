"""The built-in model: a real BPE tokenizer, built deterministically, once, safely under concurrency,
with a general skill the regression rule can measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ftspec.compiler.dataset.chat_templates import has_generation_blocks
from ftspec.runtime import builtin

ROOT = Path(__file__).resolve().parent.parent


def test_tokenizer_is_deterministic_and_byte_level():
    a, b = builtin.build_tokenizer(), builtin.build_tokenizer()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    text = 'Convert to JSON: name: Zoë, age: 34 {"ok": true} 日本'
    assert a.decode(a(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: nothing is unknown
    for token in builtin.SPECIAL_TOKENS:
        assert len(a(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert a.eos_token == "<|im_end|>" and a.pad_token == "<|endoftext|>"
    # digits are single tokens, so numbers read the same in prompts and answers
    assert [a.decode([i]) for i in a("age: 34", add_special_tokens=False)["input_ids"]][-2:] == ["3", "4"]
    assert has_generation_blocks(a.chat_template)


def test_unknown_builtin_model_and_cache_location(monkeypatch, tmp_path):
    with pytest.raises(ValueError):
        builtin.model_dir("builtin:huge-llama")
    monkeypatch.setenv("FTSPEC_CACHE", str(tmp_path))
    assert builtin.model_dir() == tmp_path / "builtin" / f"tiny-llama-{builtin.VERSION}"


def test_regression_prompts_are_fresh_instances_of_the_general_skill():
    skill = {s["prompt"] for s in builtin.general_skill()}
    rows = [json.loads(x) for x in (ROOT / "specs/data/tiny-cpu-regression.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and all(r["prompt"].startswith("Repeat: ") for r in rows)
    assert not skill & {r["prompt"] for r in rows}


@pytest.mark.slow
def test_concurrent_builds_build_once_and_reproduce_the_weights(tmp_path):
    code = "from ftspec.runtime.builtin import ensure_builtin; print(ensure_builtin())"
    env = {**os.environ, "FTSPEC_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = [out.strip().splitlines()[-1] for out, _ in outs]  # libraries may log to stdout first
    assert paths[0] == paths[1]
    assert sum("building the built-in model" in err for _, err in outs) == 1
    folder = Path(paths[0])
    manifest = json.loads((folder / "ftspec-builtin.json").read_text())
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]
    # the same bytes as the copy built earlier in the default cache (another process, another day)
    default = builtin.ensure_builtin()
    other = json.loads((default / "ftspec-builtin.json").read_text())
    assert manifest["weights_sha256"] == other["weights_sha256"]
    assert manifest["tokenizer_sha256"] == other["tokenizer_sha256"]
    assert manifest["general_skill_accuracy"] >= 0.9


@pytest.mark.slow
def test_base_model_answers_the_regression_prompts_and_not_the_task():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = builtin.ensure_builtin()
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    regression = [
        json.loads(x) for x in (ROOT / "specs/data/tiny-cpu-regression.jsonl").read_text().splitlines()
    ]
    assert builtin.skill_accuracy(model, tok, regression, 10) >= 0.9
    task = []
    for line in (ROOT / "specs/data/tiny-cpu-eval.jsonl").read_text().splitlines()[:50]:
        messages = json.loads(line)["messages"]
        task.append({"prompt": messages[0]["content"], "answer": messages[1]["content"]})
    assert builtin.skill_accuracy(model, tok, task, 24) <= 0.05


def test_qlora_keeps_16bit_weights_in_the_precision_the_spec_names(tmp_path):
    """Regression: PEFT's prepare_model_for_kbit_training cast embeddings, lm_head and norms to fp32
    (~2 GiB more for an 8B model than `precision: bf16` and the memory estimate say)."""
    import torch
    from ftspec.runtime.model import load_model, resolve_source

    spec = {
        "model": {"id": "builtin:tiny-llama"},
        "adapter": {
            "method": "qlora",
            "r": 4,
            "alpha": 4,
            "target_modules": "all-linear",
            "quantization": {"bits": 4, "quant_type": "nf4", "compute_dtype": "bf16"},
        },
        "training": {"precision": "bf16", "gradient_checkpointing": True},
    }
    model = load_model(
        resolve_source(spec["model"], tmp_path), spec, device="cpu", local_rank=0, ds_config=None
    )
    base = model.get_base_model()
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert base.lm_head.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for n, p in base.named_parameters() if "norm" in n)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
