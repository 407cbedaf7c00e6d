"""ftspec's DPO and ORPO losses equal TRL's on the same batch (within 1e-5), so the objective is the
published one. The batch is ftspec's (runtime/preference.collate lays it out as TRL's collator does);
TRL's trainers compute their loss on it with their own code."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

PAIRS = [
    {
        "prompt": [{"role": "user", "content": f"Convert to JSON: name: {name}, age: {age}"}],
        "chosen": [{"role": "assistant", "content": f'{{"name": "{name}", "age": {age}}}'}],
        "rejected": [{"role": "assistant", "content": f'{{"name": "{name}"}}'}],
    }
    for name, age in (("Alice", 31), ("Bob", 47), ("Carol", 22), ("David", 68))
]


@pytest.fixture(scope="module")
def setup():
    from ftspec.runtime import preference as rpref
    from ftspec.runtime.builtin import ensure_builtin
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ensure_builtin("builtin:tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    )
    with torch.no_grad():  # a trained-looking adapter, so policy and reference differ
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.eval()
    examples, counts = rpref.tokenize_pairs(
        [rpref.PairRecord(p, f"pair {i}") for i, p in enumerate(PAIRS)],
        tokenizer,
        sequence_len=64,
        truncation="truncate",
    )
    assert counts["ok"] == len(PAIRS)
    return model, tokenizer, examples


def _dataset():
    from datasets import Dataset

    return Dataset.from_list(PAIRS)


def test_dpo_loss_equals_trl(setup, tmp_path):
    from ftspec.runtime import preference as rpref
    from trl import DPOConfig, DPOTrainer

    model, tokenizer, examples = setup
    rpref.fill_reference(
        model,
        examples,
        device="cpu",
        adapter_disabled=True,
        batch_size=8,
        world=1,
        rank=0,
        all_reduce=None,
        pad_id=tokenizer.pad_token_id,
    )
    batch = rpref.collate(examples, tokenizer.pad_token_id)
    objective = rpref.Objective("dpo", beta=0.1)

    # the reference is the base model: the same numbers as a model that never had the adapter
    base = model.get_base_model()
    with model.disable_adapter(), torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums = rpref.token_logps(logits, batch["labels"])[0].sum(-1)
    n = len(examples)
    assert torch.allclose(sums[:n], batch["ref_chosen_logps"], atol=1e-5)
    assert torch.allclose(sums[n:], batch["ref_rejected_logps"], atol=1e-5)

    # TRL's loss from the same reference log-probabilities (its precomputed-reference path)
    args = DPOConfig(
        output_dir=str(tmp_path), beta=0.1, report_to=[], use_cpu=True, precompute_ref_log_probs=True
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=_dataset(), processing_class=tokenizer)
    keys = ("input_ids", "attention_mask", "completion_mask", "ref_chosen_logps", "ref_rejected_logps")
    with torch.no_grad():
        theirs = float(trainer.compute_loss(trainer.model, {k: batch[k] for k in keys}))
        ours = float(objective.loss_sum(model, batch, "cpu")) / n
    assert abs(ours - theirs) <= 1e-5, (ours, theirs)
    assert ours != pytest.approx(0.6931, abs=1e-3)  # policy differs from the reference: not log 2


@pytest.mark.parametrize("loss_on", ["all", "assistant"])
def test_orpo_loss_equals_trl(setup, tmp_path, loss_on):
    from ftspec.runtime import preference as rpref
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tokenizer, examples = setup
    batch = rpref.collate(examples, tokenizer.pad_token_id)
    objective = rpref.Objective("orpo", beta=0.1, loss_on=loss_on)
    with torch.no_grad():
        ours = float(objective.loss_sum(model, batch, "cpu")) / len(examples)

    args = ORPOConfig(output_dir=str(tmp_path), beta=0.1, report_to=[], use_cpu=True, max_length=64)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=_dataset(), processing_class=tokenizer)
    n = len(examples)
    trl_batch = {
        "chosen_input_ids": batch["input_ids"][:n],
        "chosen_attention_mask": batch["attention_mask"][:n],
        "chosen_labels": batch["labels"][:n],
        "rejected_input_ids": batch["input_ids"][n:],
        "rejected_attention_mask": batch["attention_mask"][n:],
        "rejected_labels": batch["labels"][n:],
    }
    with torch.no_grad():
        if loss_on == "all":  # TRL's NLL runs over every real token of the chosen side
            theirs = float(trainer.get_batch_loss_metrics(model, trl_batch)[0])
        else:  # the answer-only NLL (the ORPO paper's L_SFT) plus TRL's odds-ratio term
            out = trainer.concatenated_forward(model, trl_batch)
            losses = trainer.odds_ratio_loss(out[0], out[1])[0]
            logits = model(
                input_ids=batch["input_ids"][:n], attention_mask=batch["attention_mask"][:n]
            ).logits
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                batch["labels"][:n, 1:].reshape(-1),
                ignore_index=-100,
            )
            theirs = float(nll - losses.mean())
    assert abs(ours - theirs) <= 1e-5, (ours, theirs)
