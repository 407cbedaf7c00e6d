"""Run folder outputs the Hugging Face way, and stop settings that deployment and the gate share.

One short training run of the built-in tiny model (adapter and merged), then: the adapter folder
holds the tokenizer, template, generation config and a model card; adapter_config.json names no path
of the training machine; a copy of the run folder on another path loads with
AutoPeftModelForCausalLM and AutoTokenizer; the template's end of turn is the saved EOS everywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ftspec.compiler.dataset.chat_templates import template_source
from ftspec.compiler.launch import model_card
from ftspec.runtime import outputs
from ftspec.runtime.builtin import build_tokenizer
from runtime_helpers import launch, write_spec


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    spec = write_spec(
        root,
        train_rows=64,
        eval_rows=8,
        training={"max_steps": 4, "eval_steps": 4, "save_steps": 4, "logging_steps": 2},
        hardware={"gpus_per_node": 1, "strategy": "single"},
        output={"dir": "runs/t", "save": "both", "report_to": ["none"]},
    )
    proc = launch(spec, build=root / "build")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "runs" / "t"


def test_adapter_folder_holds_tokenizer_template_card_and_a_portable_base(run_dir):
    adapter = run_dir / "adapter"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (adapter / name).is_file(), name
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = config["base_model_name_or_path"]
    assert not Path(base).is_absolute() and base == outputs.BASE_COPY
    assert (run_dir / base / "config.json").is_file()  # builtin:tiny-llama travels with the run
    for folder in ("adapter", "merged"):
        card = (run_dir / folder / "README.md").read_text()
        assert "rt-test" in card and "builtin:tiny-llama" in card
        assert "data/train.jsonl" in card and "Not evaluated yet" in card
        facts = json.loads((run_dir / model_card.FACTS_FILE).read_text())
        assert facts["spec_sha256"] and facts["spec_sha256"] in card
    assert str(Path.home()) not in (adapter / "README.md").read_text()


def test_template_end_of_turn_is_the_saved_eos_in_every_folder(run_dir):
    from transformers import AutoTokenizer, GenerationConfig

    for folder in ("adapter", "merged", "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(run_dir / folder)
        assert tokenizer.eos_token == "<|im_end|>", folder
        generation = GenerationConfig.from_pretrained(run_dir / folder)
        eos = generation.eos_token_id
        first = eos[0] if isinstance(eos, list) else eos
        assert first == tokenizer.convert_tokens_to_ids("<|im_end|>"), folder
        assert generation.pad_token_id == tokenizer.pad_token_id


def test_a_copied_run_folder_loads_with_auto_classes(run_dir, tmp_path, monkeypatch):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(run_dir, copy)
    monkeypatch.chdir(copy)  # base_model_name_or_path is relative to the run folder
    model = AutoPeftModelForCausalLM.from_pretrained("adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained("adapter")
    merged = AutoModelForCausalLM.from_pretrained("merged").eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Convert to JSON: name: Bob, age: 4"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        adapter_logits = model(**prompt).logits
        merged_logits = merged(**prompt).logits
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-4)
    out = model.generate(**prompt, max_new_tokens=24, do_sample=False)  # the saved generation config
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_evaluate_records_the_gate_in_the_cards(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    report = {
        "status": "pass",
        "summary": "PASS: 2 acceptance check(s) held",
        "metrics": {"base": {"task": 0.0, "regression": 1.0}, "finetuned": {"task": 0.9, "regression": None}},
    }
    assert model_card.record_gate(copy, report) == ["adapter", "merged"]
    card = (copy / "adapter" / "README.md").read_text()
    assert "PASS: 2 acceptance check(s) held" in card and "| task | 0 | 0.9 |" in card
    assert "Not evaluated yet" not in card


def test_end_of_turn_follows_the_template_not_the_tokenizer_default():
    from transformers import GenerationConfig

    tokenizer = build_tokenizer()  # EOS <|im_end|>, and the Llama 3 markup in its vocabulary
    tokenizer.chat_template = template_source("llama3")
    generation = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert outputs.align_stop_settings(tokenizer, generation) == "<|eot_id|>"
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.pad_token == "<|endoftext|>"
    eot, im_end = tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|im_end|>"])
    assert generation.eos_token_id == [eot, im_end]  # the template's first, the base's kept after it


def test_template_writing_nothing_after_the_answer_stops_on_eos():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert outputs.end_of_turn_token(tokenizer) == tokenizer.eos_token


def test_evaluate_stops_only_where_the_saved_generation_config_says(tmp_path):
    """The gate's generation uses the run folder's saved eos ids, never a private terminator list: a
    model whose saved config does not name the template's terminator keeps generating past it."""
    from ftspec.runtime.evaluate import stop_token_ids
    from transformers import GenerationConfig

    tokenizer = build_tokenizer()

    class Model:
        generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)

    saved = GenerationConfig(eos_token_id=tokenizer.pad_token_id)  # <|endoftext|> only
    assert stop_token_ids(tokenizer, Model(), saved) == [tokenizer.pad_token_id]
    # An old run folder (no saved config): the model's and tokenizer's EOS, nothing else.
    assert stop_token_ids(tokenizer, Model()) == [tokenizer.eos_token_id]


def test_portable_base_names_never_an_absolute_path(tmp_path):
    run = tmp_path / "specs" / "runs" / "x"
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    run.mkdir(parents=True)
    local = outputs.portable_base({"id": "../models/m"}, str(model), tmp_path / "specs", run)
    assert local["name"] == "../../../models/m" and not local["is_hub_id"]
    hub = outputs.portable_base({"id": "org/name", "revision": "a" * 40}, "org/name", tmp_path, run)
    assert hub["name"] == "org/name" and hub["revision"] == "a" * 40
    smol = outputs.portable_base({"id": "builtin:smollm2-135m"}, str(tmp_path / "cache"), tmp_path, run)
    assert smol["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "Q4_1" in smol["notes"][0]
