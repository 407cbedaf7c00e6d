"""The built-in base models. `builtin:tiny-llama` is built here, locally, deterministically, without
downloads; `builtin:smollm2-135m` (a real model) is converted from a packaged GGUF file by
runtime/gguf_model.py. Both are made by `build_once` below, the one lock-and-rename home of every
cached model folder (layout in compiler/core/model_files.py).

What gets built, once per cache folder and version:
- a byte-level BPE tokenizer trained with `tokenizers` on a fixed corpus generated below (digits split
  one per token so that numbers tokenize the same way everywhere), wrapped in PreTrainedTokenizerFast
  with ftspec's ChatML template (from compiler.chat_templates) and the special tokens of all three
  built-in templates, so chatml, llama3 and alpaca specs all work with it;
- a LlamaConfig model (2 layers, hidden 128) pre-trained for a few seconds on a small *general skill*
  in the chat format: single-digit addition and word opposites. That skill is what the regression
  rule of the acceptance gate measures: a gentle LoRA fine-tune keeps it, an aggressive full
  fine-tune at a very high learning rate destroys it (catastrophic forgetting, caught by the gate).

The folder is written with save_pretrained into a temporary folder and renamed into place, under an
exclusive file lock, so concurrent ranks (or concurrent test processes) never see half a model and
never build it twice. The runtime then loads it through the same from_pretrained path as any local
model. Determinism: a fixed seed, one intra-op thread while pre-training, and a manifest recording
the SHA-256 of the weights, so two builds can be compared.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftspec.compiler.core import model_files
from ftspec.runtime.checkpoint import fsync_dir, fsync_file
from ftspec.runtime.log import log

NAME = "tiny-llama"
PREFIX = "builtin:"
# Bump when anything below changes what gets built: a new version builds into a new folder.
VERSION = "v1"

SPECIAL_TOKENS = [
    "<|endoftext|>",  # padding
    "<|im_start|>",
    "<|im_end|>",  # ChatML terminator and the model's EOS
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",  # Llama 3 markup, so chat_template: llama3 works with the built-in model
    "<s>",
    "</s>",  # Alpaca's default BOS/EOS
]

MODEL_CONFIG: dict[str, Any] = {  # LlamaConfig's keyword arguments
    "vocab_size": 1024,  # the tokenizer's final size is written in
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "attention_dropout": 0.0,
}

PRETRAIN: dict[str, Any] = {
    "seed": 1234,
    "steps": 1000,
    "batch_size": 32,
    "learning_rate": 3e-3,
    "warmup": 30,
}

OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("day", "night"),
    ("open", "closed"),
    ("light", "dark"),
    ("happy", "sad"),
    ("old", "young"),
    ("early", "late"),
    ("full", "empty"),
    ("hard", "soft"),
    ("high", "low"),
    ("left", "right"),
    ("loud", "quiet"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("wet", "dry"),
    ("near", "far"),
    ("good", "bad"),
]

# Words and names for the tokenizer corpus: the demo task (`name: X, age: N` -> JSON) uses these names.
NAMES = [
    "Alice",
    "Bob",
    "Carol",
    "David",
    "Emma",
    "Frank",
    "Grace",
    "Henry",
    "Irene",
    "Jack",
    "Karen",
    "Liam",
    "Maria",
    "Noah",
    "Olivia",
    "Paul",
    "Quinn",
    "Rosa",
    "Sam",
    "Tina",
    "Uma",
    "Victor",
    "Wendy",
    "Xavier",
    "Yara",
    "Zoe",
    "Aaron",
    "Bella",
    "Chris",
    "Diana",
    "Ethan",
    "Fiona",
    "George",
    "Hannah",
    "Ivan",
    "Julia",
    "Kevin",
    "Laura",
    "Mark",
    "Nina",
    "Oscar",
    "Petra",
    "Ralph",
    "Sofia",
    "Tom",
    "Ursula",
    "Vera",
    "Walter",
    "Ximena",
    "Yusuf",
    "Zara",
    "Amir",
    "Beth",
    "Caleb",
    "Dora",
    "Eli",
    "Flora",
    "Gus",
    "Hugo",
    "Ida",
]

_FILLER = (
    "the quick brown fox jumps over the lazy dog . a model reads text and writes an answer . "
    "convert the record to json with the name and the age . what is the sum of two numbers ? "
    "the opposite of a word is another word . please answer with one word or one number . "
    "name age city country email phone value key record field list object string number true false null"
)


def general_skill() -> list[dict[str, str]]:
    """The base model's general skill as {prompt, answer} pairs: every single-digit sum, then opposites
    both ways. The regression prompts of the demo spec are drawn from this list."""
    items = [{"prompt": f"What is {a}+{b}?", "answer": str(a + b)} for a in range(10) for b in range(10)]
    for word, other in OPPOSITES:
        items.append({"prompt": f"What is the opposite of {word}?", "answer": other})
        items.append({"prompt": f"What is the opposite of {other}?", "answer": word})
    # Copying: a general ability (names and numbers echoed back) that later tasks build on.
    rng = random.Random(11)
    for name in NAMES:
        for number in rng.sample(range(100), 3):
            items.append({"prompt": f"Repeat: {name} {number}", "answer": f"{name} {number}"})
    return items


def is_builtin(model_id: str) -> bool:
    return model_id.startswith(PREFIX)


def cache_root() -> Path:
    """$FTSPEC_CACHE/builtin, else $XDG_CACHE_HOME/ftspec/builtin, else ~/.cache/ftspec/builtin (one
    home with the converted GGUF models: compiler/core/model_files.py describes the layout)."""
    return model_files.cache_home() / "builtin"


def names() -> list[str]:
    """Every built-in model id: this module's own and the catalog's GGUF-based ones."""
    return sorted({PREFIX + NAME, *model_files.builtin_names()})


def model_dir(model_id: str = PREFIX + NAME) -> Path:
    full = model_id if is_builtin(model_id) else PREFIX + model_id
    if full == PREFIX + NAME:
        return cache_root() / f"{NAME}-{VERSION}"
    if model_files.gguf_builtin(full) is not None:
        return model_files.builtin_model_folder(full)
    raise ValueError(f"unknown built-in model {model_id!r}; the built-in ones are {', '.join(names())}")


def ensure_builtin(model_id: str = PREFIX + NAME, *, log=log) -> Path:
    """The folder of a built-in model, building it first when it is missing. Safe to call from many
    processes at once: one builds, the others wait on the lock and then find it complete."""
    full = model_id if is_builtin(model_id) else PREFIX + model_id
    target = model_dir(full)
    if full == PREFIX + NAME:
        return build_once(target, f"the built-in model {full} ({VERSION})", build, log=log)
    from ftspec.runtime import gguf_model  # transformers' GGUF loader; only for the GGUF-based ones

    return gguf_model.ensure_builtin_gguf(full, log=log)


def build_once(target: Path, label: str, builder, *, log=log) -> Path:
    """`target`, built by `builder(tmp_folder)` unless complete. Under an exclusive file lock, into a
    temporary sibling renamed into place; the builder writes the completion marker last. Every cached
    model folder (built-in, converted GGUF, tokenizer-only) is made here."""
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if _complete(target):  # built by another process while we waited
            return target
        started = time.monotonic()
        log(f"ftspec: building {label} into {target} ...")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            builder(tmp)
            if not _complete(tmp):
                raise RuntimeError(f"building {label} wrote no {model_files.COMPLETE_MARKER}")
            _fsync_tree(tmp)
            if target.exists():  # an incomplete leftover from a crashed build
                shutil.rmtree(target)
            os.rename(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f"ftspec: built {label} in {time.monotonic() - started:.1f}s")
    return target


def _complete(folder: Path) -> bool:
    return model_files.is_complete(folder)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fsync_file(path)
    fsync_dir(root)


# --- building -----------------------------------------------------------------------------------


def tokenizer_corpus() -> list[str]:
    """Fixed text the BPE merges are learned from: the chat markup, the general skill, the names and
    numbers of the demo task, and some plain English."""
    rng = random.Random(7)
    lines = [_FILLER] * 4
    for item in general_skill():
        lines.append(f"user\n{item['prompt']}\nassistant\n{item['answer']}\n")
    for name in NAMES:
        age = rng.randint(18, 90)
        lines.append(f"Convert to JSON: name: {name}, age: {age}")
        lines.append(json.dumps({"name": name, "age": age}))
    lines.extend(pretrain_text())
    lines.append(
        "### Instruction:\n### Response:\n### Input:\nBelow is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\nsystem\nYou are a helpful assistant."
    )
    return lines


def pretrain_text() -> list[str]:
    """Plain-text lines the base model also learns (every token trained), so that the embeddings of
    JSON punctuation, keys and names are trained: a model that has never seen `{"` has near-zero
    logits for it, which no LoRA can fix (the embedding and output head stay frozen). The records use
    other phrasings than the demo task, so the base model still cannot do the task itself."""
    rng = random.Random(5)
    keys = ["name", "city", "color", "age", "size", "count", "id", "score"]
    words = ["red", "blue", "green", "Paris", "Rome", "Oslo", "Lima", "small", "large", "open"]
    lines = []
    for _ in range(240):
        record: dict[str, int | str] = {}
        for key in rng.sample(keys, rng.randint(1, 3)):
            if key in ("age", "size", "count", "id", "score"):
                record[key] = rng.randint(0, 99)
            elif key == "name":
                record[key] = rng.choice(NAMES)
            else:
                record[key] = rng.choice(words)
        lines.append(json.dumps(record))
    for name in NAMES:
        lines.append(f"{name} is {rng.randint(18, 90)} years old and lives in {rng.choice(words[3:7])}.")
    return lines


def build_tokenizer():
    """A byte-level BPE tokenizer (tokenizers) wrapped for transformers, with ftspec's ChatML template."""
    from ftspec.compiler.dataset.chat_templates import template_source
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    core.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact, which the assistant-token mask relies on.
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=MODEL_CONFIG["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        padding_side="right",
    )
    tokenizer.chat_template = template_source("chatml")
    return tokenizer


def _pretrain_batches(tokenizer, seed: int):
    """Tokenized general-skill conversations with assistant-only labels (answer and <|im_end|>)."""
    import torch

    examples = []
    for item in general_skill():
        messages = [
            {"role": "user", "content": item["prompt"]},
            {"role": "assistant", "content": item["answer"]},
        ]
        enc = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(enc["input_ids"])
        targets = [t if m else -100 for t, m in zip(ids, enc["assistant_masks"], strict=True)]
        examples.append((ids, targets))
    for text in pretrain_text():  # plain text, every token trained
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.pad_token_id]
        examples.append((ids, list(ids)))
    gen = torch.Generator().manual_seed(seed)
    pad = tokenizer.pad_token_id
    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order) - PRETRAIN["batch_size"] + 1, PRETRAIN["batch_size"]):
            chunk = [examples[i] for i in order[start : start + PRETRAIN["batch_size"]]]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (ids, lab) in enumerate(chunk):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                labels[row, : len(lab)] = torch.tensor(lab)
                mask[row, : len(ids)] = 1
            yield input_ids, mask, labels


def skill_accuracy(model, tokenizer, items: list[dict[str, str]], max_new_tokens: int = 8) -> float:
    """Greedy exact match of the model on {prompt, answer} items (used to record the base skill)."""
    import torch

    tokenizer.padding_side = "left"
    correct = 0
    try:
        for start in range(0, len(items), 64):
            chunk = items[start : start + 64]
            prompts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": it["prompt"]}], tokenize=False, add_generation_prompt=True
                )
                for it in chunk
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            for it, row in zip(chunk, out[:, enc["input_ids"].shape[1] :], strict=True):
                text = tokenizer.decode(row, skip_special_tokens=True).strip()
                correct += text == it["answer"]
    finally:
        tokenizer.padding_side = "right"
    return correct / len(items)


def build(folder: Path) -> dict:
    """Build tokenizer and model into `folder` (which must exist). Returns the manifest."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

    started = time.monotonic()
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        **{**MODEL_CONFIG, "vocab_size": len(tokenizer)},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    # One thread: CPU matmul reductions can be blocked differently with more threads, and the same
    # bytes on every machine matter more here than a few seconds.
    torch.set_num_threads(1)
    try:
        torch.manual_seed(PRETRAIN["seed"])
        model = LlamaForCausalLM(config)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["learning_rate"], weight_decay=0.0)
        schedule = get_cosine_schedule_with_warmup(optimizer, PRETRAIN["warmup"], PRETRAIN["steps"])
        batches = _pretrain_batches(tokenizer, PRETRAIN["seed"])
        loss_value = float("nan")
        for _ in range(PRETRAIN["steps"]):
            input_ids, mask, labels = next(batches)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = float(loss.detach())
        model.eval()
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=False,
            max_new_tokens=32,
        )
        accuracy = skill_accuracy(model, tokenizer, general_skill())
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().contiguous().numpy().tobytes())
    manifest = {
        "model": PREFIX + NAME,
        "version": VERSION,
        "config": MODEL_CONFIG,
        "pretrain": PRETRAIN,
        "pretrain_final_loss": round(loss_value, 6),
        "general_skill_accuracy": accuracy,
        "weights_sha256": weights.hexdigest(),
        "tokenizer_sha256": hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest(),
        "build_seconds": round(time.monotonic() - started, 2),
    }
    # Written last: its presence is what marks the folder as complete.
    (folder / model_files.COMPLETE_MARKER).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


if __name__ == "__main__":  # python -m ftspec.runtime.builtin [MODEL_ID]: build if needed, print the folder
    import sys

    path = ensure_builtin(sys.argv[1] if len(sys.argv) > 1 else PREFIX + NAME)
    print(path)
    print((path / model_files.COMPLETE_MARKER).read_text())
