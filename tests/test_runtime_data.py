"""Tokenisation and batching: assistant-only labels on every format and template, truncation, packing
that keeps examples apart, the step schedule, mixing and the eval split."""

from __future__ import annotations

import json
import math
from functools import lru_cache

import pytest
from ftspec.compiler.dataset.chat_templates import builtin_template, template_source
from ftspec.compiler.dataset.formats import to_messages
from ftspec.runtime import data as rdata

RECORDS = {
    "chatml": {
        "messages": [
            {"role": "system", "content": "You convert records."},
            {"role": "user", "content": "name: Alice, age: 34"},
            {"role": "assistant", "content": '{"name": "Alice", "age": 34}'},
            {"role": "user", "content": "and name: Bob, age: 5"},
            {"role": "assistant", "content": '{"name": "Bob", "age": 5}'},
        ]
    },
    "sharegpt": {
        "conversations": [
            {"from": "human", "value": "What is 3+4?"},
            {"from": "gpt", "value": "7"},
            {"from": "human", "value": "What is the opposite of hot?"},
            {"from": "gpt", "value": "cold"},
        ]
    },
    "alpaca": {"instruction": "Repeat the record.", "input": "name: Carol", "output": "name: Carol"},
}


@lru_cache(maxsize=1)
def _tokenizer():
    from ftspec.runtime.builtin import build_tokenizer

    return build_tokenizer()  # the built-in BPE tokenizer: built in ~1 s, no model needed


def tokenizer_with(template: str):
    tok = _tokenizer()
    tok.chat_template = template_source(template)
    return tok


@pytest.mark.parametrize("template", ["chatml", "llama3", "alpaca"])
@pytest.mark.parametrize("fmt", ["chatml", "sharegpt", "alpaca"])
def test_labels_train_exactly_the_answers_and_their_terminators(fmt, template):
    tok = tokenizer_with(template)
    messages = to_messages(RECORDS[fmt], fmt)
    example, status = rdata.tokenize(
        messages, tok, loss_on="assistant", sequence_len=512, truncation="truncate"
    )
    assert status == "ok"
    info = builtin_template(template)
    terminator = info.terminator_text({"eos_token": tok.eos_token})
    # the trained tokens, decoded run by run, are each assistant answer followed by its terminator
    runs, current = [], []
    for tid, label in zip(example.input_ids, example.labels, strict=True):
        if label != -100:
            assert label == tid
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    expected = [(a.strip() if template == "llama3" else a) + terminator for a in answers]
    assert [tok.decode(r) for r in runs] == expected
    # every prompt token is masked: the masked text holds every user/system content
    masked = tok.decode([t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab == -100])
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"].strip() in masked
    assert terminator and all(tok.decode(r).endswith(terminator) for r in runs)


def test_loss_on_all_trains_every_token():
    tok = tokenizer_with("chatml")
    example, _ = rdata.tokenize(
        to_messages(RECORDS["chatml"], "chatml"), tok, loss_on="all", sequence_len=512, truncation="truncate"
    )
    assert example.labels == example.input_ids


def test_template_without_generation_blocks_trains_located_answers():
    """No {% generation %} blocks: each answer and the special token after it train, nothing else."""
    tok = tokenizer_with("chatml")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    rdata.check_template(tok, "assistant")  # a fast tokenizer: no longer refused up front
    messages = to_messages(RECORDS["chatml"], "chatml")
    example, status = rdata.tokenize(
        messages, tok, loss_on="assistant", sequence_len=512, truncation="truncate"
    )
    assert status == "ok"
    runs = _trained_runs(example)
    assert [tok.decode(r) for r in runs] == [
        '{"name": "Alice", "age": 34}<|im_end|>',
        '{"name": "Bob", "age": 5}<|im_end|>',
    ]


def test_record_that_cannot_be_masked_stops_with_its_line(tmp_path):
    tok = tokenizer_with("chatml")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # no marker at all
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(RECORDS["chatml"]) + "\n", encoding="utf-8")
    (conversation,) = rdata.read_conversations(path, "chatml")
    with pytest.raises(rdata.DataError) as err:
        rdata.tokenize(conversation, tok, loss_on="assistant", sequence_len=512, truncation="truncate")
    assert err.value.code == "FT0713" and err.value.fields["where"] == f"{path}:1"
    assert "turn 2 (assistant)" in err.value.fields["detail"]
    example, _ = rdata.tokenize(conversation, tok, loss_on="all", sequence_len=512, truncation="truncate")
    assert example.labels == example.input_ids


def _trained_runs(example: rdata.Example) -> list[list[int]]:
    runs, current = [], []
    for tid, label in zip(example.input_ids, example.labels, strict=True):
        if label != -100:
            assert label == tid
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_truncation_policy():
    tok = tokenizer_with("chatml")
    messages = to_messages(RECORDS["chatml"], "chatml")
    full, _ = rdata.tokenize(messages, tok, loss_on="assistant", sequence_len=512, truncation="truncate")
    cut = len(full.input_ids) - 3
    truncated, status = rdata.tokenize(
        messages, tok, loss_on="assistant", sequence_len=cut, truncation="truncate"
    )
    assert status == "truncated" and len(truncated.input_ids) == cut and truncated.labels == full.labels[:cut]
    dropped, status = rdata.tokenize(messages, tok, loss_on="assistant", sequence_len=cut, truncation="drop")
    assert dropped is None and status == "too_long"
    # cut before any answer: nothing left to train, dropped either way
    none, status = rdata.tokenize(messages, tok, loss_on="assistant", sequence_len=16, truncation="truncate")
    assert none is None and status == "nothing_trained"


def test_packing_restarts_positions_and_masks_boundaries():
    examples = [
        rdata.Example([1, 2, 3], [-100, 2, 3], [0, 1, 2]),
        rdata.Example([4, 5], [4, 5], [0, 1]),
        rdata.Example([6, 7, 8, 9], [-100, -100, 8, 9], [0, 1, 2, 3]),
    ]
    rows = rdata.pack(examples, sequence_len=6, seed=0)
    assert sum(len(r.input_ids) for r in rows) == 9 and all(len(r.input_ids) <= 6 for r in rows)
    for row in rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        assert all(row.labels[i] == -100 for i in starts)  # nothing predicted across a boundary
    batch = rdata.collate(rows, pad_id=0, packed=True)
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape


def _split_packed(row: rdata.Example) -> list[tuple[list[int], list[int]]]:
    starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
    return [(row.input_ids[a:b], row.labels[a:b]) for a, b in zip(starts, starts[1:], strict=False)]


def test_packing_fills_rows_tightly_and_keeps_every_example_once():
    """Best-fit decreasing: the demo's mix of 36- and 19-token examples fills 128-token rows as
    3 x 36 + 19 = 127 (greedy next-fit in a random order leaves rows of 108 and adds rows); every example
    lands in exactly one row, whole, with its labels and only its first label masked."""
    examples, next_id = [], 1000
    for n in [36] * 30 + [19] * 10:
        ids = list(range(next_id, next_id + n))
        next_id += n
        examples.append(rdata.Example(ids, [-100] * 10 + ids[10:], list(range(n))))
    rows = rdata.pack(examples, sequence_len=128, seed=5)
    assert len(rows) == 10 and all(len(r.input_ids) == 127 for r in rows)
    pieces = [piece for row in rows for piece in _split_packed(row)]
    assert sorted(ids for ids, _ in pieces) == sorted(e.input_ids for e in examples)
    by_first = {e.input_ids[0]: e for e in examples}
    for ids, labels in pieces:
        assert labels == [-100] + by_first[ids[0]].labels[1:]
    assert [r.input_ids for r in rdata.pack(examples, 128, seed=5)] == [r.input_ids for r in rows]  # seeded
    assert [r.input_ids for r in rdata.pack(examples, 128, seed=6)] != [r.input_ids for r in rows]
    # an example longer than a row (never produced by tokenize, which truncates or drops) stays whole
    long = rdata.Example(list(range(10)), list(range(10)), list(range(10)))
    assert [len(r.input_ids) for r in rdata.pack([long, examples[-1]], sequence_len=8, seed=0)] == [19, 10]


def test_packed_examples_do_not_attend_to_each_other():
    """Logits of an example inside a packed row equal its logits alone (SDPA and eager on CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    for impl in ("sdpa", "eager"):
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            attn_implementation=impl,
        )
        model = LlamaForCausalLM(config).eval()
        a, b = [5, 6, 7, 8, 9], [10, 11, 12]
        packed = rdata.collate(
            [rdata.Example(a + b, [-100] * 8, list(range(5)) + list(range(3)))], 0, packed=True
        )
        with torch.no_grad():
            # no KV cache: transformers only reads packed boundaries from position_ids in training-style calls
            together = model(
                input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
            ).logits[0, 5:]
            alone = model(input_ids=torch.tensor([b])).logits[0]
        assert torch.allclose(together, alone, atol=1e-5), impl


def test_schedule_is_a_pure_function_of_seed_and_step():
    s = rdata.Schedule(n=50, micro_batch_size=2, gradient_accumulation_steps=3, world_size=2, seed=1)
    assert s.steps_per_epoch == math.ceil(50 / 12)
    # each step's global batch is split between ranks and micro batches without overlap
    seen = []
    for step in range(s.steps_per_epoch - 1):
        parts = [i for rank in range(2) for mb in s.micro_batches(step, rank) for i in mb]
        assert sorted(parts) == sorted(s.step_indices(step)) and len(set(parts)) == 12
        seen += parts
    assert len(set(seen)) == len(seen)  # no example twice within an epoch (before the wrap-around)
    # the same (seed, step) gives the same batch; halving micro batch x doubling accumulation keeps it
    halved = rdata.Schedule(n=50, micro_batch_size=1, gradient_accumulation_steps=6, world_size=2, seed=1)
    assert all(s.step_indices(k) == halved.step_indices(k) for k in range(10))
    assert s.step_indices(4) != s.step_indices(4 + s.steps_per_epoch)  # a new order each epoch


def test_eval_shards_give_every_rank_the_same_number_of_batches():
    shards = [rdata.eval_shards(7, 2, 3, r) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    real = sorted(i for s in shards for chunk in s for i in chunk if i is not None)
    assert real == list(range(7))


def test_mix_fraction_and_eval_split(tmp_path):
    task = [[{"role": "user", "content": f"t{i}"}, {"role": "assistant", "content": "x"}] for i in range(80)]
    general = [
        [{"role": "user", "content": f"g{i}"}, {"role": "assistant", "content": "y"}] for i in range(10)
    ]
    mixed = rdata.mix_sources([(task, None), (general, 0.2)], seed=3)
    assert len(mixed) == 100 and sum(1 for m in mixed if m[0]["content"].startswith("g")) == 20
    with pytest.raises(rdata.DataError):
        rdata.mix_sources([(task, None), (general, 0.6), (general, 0.5)], seed=3)
    train, evals = rdata.split_indices(90, 0.1, 42)
    assert len(evals) == 9 and sorted(train + evals) == list(range(90))  # ceil(0.1 x 90) to eval
    assert rdata.split_indices(90, 0.1, 42) == (train, evals)


def test_load_conversations_reads_sources_relative_to_the_spec(tmp_path):
    (tmp_path / "d").mkdir()
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(20)]
    (tmp_path / "d" / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "dataset": {"format": "alpaca", "train": ["d/t.jsonl"], "eval_split": 0.2},
        "training": {"seed": 1},
    }
    train, evals = rdata.load_conversations(spec, tmp_path)
    assert len(evals) == 4 and len(train) == 16
    assert {m[0]["content"] for m in train}.isdisjoint({m[0]["content"] for m in evals})
    (tmp_path / "d" / "bad.jsonl").write_text('{"instruction": "q"}\n')
    with pytest.raises(rdata.DataError) as err:
        rdata.load_conversations({"dataset": {"format": "alpaca", "train": "d/bad.jsonl"}}, tmp_path)
    assert err.value.code == "FT0711" and err.value.fields["line"] == 1


def test_a_data_file_that_vanished_after_compile_is_a_finding_not_a_traceback(tmp_path):
    from types import SimpleNamespace

    from ftspec.runtime import train

    spec = {"dataset": {"format": "chatml", "train": "data/gone.jsonl"}, "training": {"sequence_len": 64}}
    with pytest.raises(rdata.DataError) as info:
        train.cached_prepare(
            spec,
            {"sequence_len": 64},
            tmp_path,
            SimpleNamespace(chat_template="t"),
            tmp_path,
            SimpleNamespace(path_or_id="m"),
        )
    assert info.value.code == "FT0711" and "gone.jsonl" in info.value.fields["file"]
