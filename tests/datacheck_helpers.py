"""Small local "model folders" (tokenizer.json + tokenizer_config.json) for the data-check tests,
built with the `tokenizers` library in milliseconds; no hub, no transformers."""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<s>",
    "</s>",
]
CORPUS = (
    "which colour goes with item in catalogue page is sold order code the answer user assistant "
    "system question you answer red green blue 0 1 2 3 4 5 6 7 8 9 . ? ; -"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 20, trainer)
    return tok


def write_model_dir(
    folder: Path, chat_template: str | None = None, *, eos: str = "<|im_end|>", template_file: bool = False
) -> Path:
    """A folder with config.json, tokenizer.json and tokenizer_config.json (its chat_template inline,
    or in chat_template.jinja when template_file)."""
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": None}
    if chat_template is not None and not template_file:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if chat_template is not None and template_file:
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    return folder


def chatml(user: str, answer: str, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_spec(
    folder: Path, dataset: dict, *, model: dict | None = None, training: dict | None = None
) -> Path:
    """spec.yaml in `folder` (YAML via JSON, which YAML reads)."""
    spec = {
        "version": 1,
        "name": "dc-test",
        "model": model or {"id": "builtin:tiny-llama", "chat_template": "chatml"},
        "dataset": {"min_examples": 1, **dataset},
        "hardware": {"gpu": "cpu"},
    }
    if training:
        spec["training"] = training
    path = folder / "spec.yaml"
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return path


def check(spec_path: Path):
    from ftspec.compiler.check.data.datacheck import check_data
    from ftspec.compiler.core.loader import load_spec
    from ftspec.compiler.core.resolve import resolve

    spec = load_spec(spec_path)
    assert spec.ok, spec.diagnostics
    return check_data(spec, resolve(spec.data))


def found(report, code: str) -> list[int | None]:
    return [d.line for d in report.diagnostics if d.code == code]
