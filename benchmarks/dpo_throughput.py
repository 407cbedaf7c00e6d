"""DPO training throughput: ftspec's runtime objective vs TRL's DPOTrainer, same CPU setting.

    .venv/bin/python benchmarks/dpo_throughput.py [--steps 30] [--batch 8] [--repeats 2]

Same model (builtin:tiny-llama + LoRA r16 alpha 16 dropout 0 on all-linear), same pairs (the first
batch x steps of the demo's specs/data/tiny-dpo-train.jsonl, each tokenized by its own contender with
the model's chat template; each counts the tokens it fed), same micro batch (--batch pairs per step, no accumulation), steps,
optimizer (torch AdamW, lr 2e-3, no weight decay, clipping at 1.0), beta 0.1, fp32, no gradient
checkpointing, one process, OMP_NUM_THREADS=1 (a shared 2-core machine), each contender in its own
subprocess, interleaved and repeated (--repeats, the fastest kept; every run is printed).

What each does per step, as each ships: ftspec computes the reference log-probabilities once before
the first step (adapter disabled) and then runs one forward and backward per step; TRL's DPOTrainer
(default, no precompute_ref_log_probs) runs a reference forward with the adapter disabled in every
step. ftspec's time includes its up-front reference pass, so the comparison is end to end.

Tokens: real (non-padding) tokens of both sides of every pair in the steps' batches (prompt twice). Time: the training loop (ftspec: reference pass + steps; TRL: on_train_begin to on_train_end).

Last line: JSON {"ftspec_tokens_per_second", "trl_tokens_per_second", "ratio", "goal", "met", ...};
exit 1 when the ratio is below the goal (1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "specs" / "data" / "tiny-dpo-train.jsonl"
GOAL = 1.0


def _setup(batch: int, steps: int):
    import torch
    from ftspec.runtime import preference as rpref
    from ftspec.runtime.builtin import ensure_builtin
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(42)
    folder = ensure_builtin("builtin:tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    )
    pairs, _ = rpref.tokenize_pairs(rpref.read_pairs(DATA), tokenizer, sequence_len=64, truncation="truncate")
    pairs = pairs[: batch * steps]
    return torch, rpref, tokenizer, model, pairs


def run_ftspec(batch: int, steps: int) -> dict:
    torch, rpref, tokenizer, model, pairs = _setup(batch, steps)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0
    )
    objective = rpref.Objective("dpo", beta=0.1)
    model.train()
    started = time.perf_counter()
    rpref.fill_reference(
        model,
        pairs,
        device="cpu",
        adapter_disabled=True,
        batch_size=batch,
        world=1,
        rank=0,
        all_reduce=None,
        pad_id=tokenizer.pad_token_id,
    )
    model.train()
    for step in range(steps):
        chunk = pairs[step * batch : (step + 1) * batch]
        loss = objective.loss_sum(model, rpref.collate(chunk, tokenizer.pad_token_id), "cpu") / len(chunk)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"tokens": rpref.input_tokens(pairs), "seconds": seconds, "final_loss": float(loss)}


def run_trl(batch: int, steps: int, out: str) -> dict:
    torch, rpref, tokenizer, model, pairs = _setup(batch, steps)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    # TRL tokenizes the same records with the same chat template itself (not timed)
    rows = [json.loads(x) for x in DATA.read_text(encoding="utf-8").splitlines()][: len(pairs)]
    timing = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timing["t0"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            timing["t1"] = time.perf_counter()

    args = DPOConfig(
        output_dir=out,
        beta=0.1,
        learning_rate=2e-3,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        per_device_train_batch_size=batch,
        max_steps=steps,
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=steps,
        save_strategy="no",
        seed=42,
        dataloader_num_workers=0,
        max_length=None,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()
    data = trainer.train_dataset
    tokens = sum(
        2 * len(p) + len(c) + len(r)
        for p, c, r in zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"], strict=True)
    )
    return {"tokens": tokens, "seconds": timing["t1"] - timing["t0"]}


def _worker(name: str, batch: int, steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, __file__, "--worker", name, "--batch", str(batch), "--steps", str(steps)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=["ftspec", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import tempfile

        with tempfile.TemporaryDirectory() as out:
            fn = (
                run_ftspec(args.batch, args.steps)
                if args.worker == "ftspec"
                else run_trl(args.batch, args.steps, out)
            )
        print(json.dumps(fn))
        return 0
    runs: dict[str, list[dict]] = {"ftspec": [], "trl": []}
    for _ in range(args.repeats):
        for name in runs:
            result = _worker(name, args.batch, args.steps)
            result["tokens_per_second"] = result["tokens"] / result["seconds"]
            runs[name].append(result)
            print(
                f"{name}: {result['tokens']} tokens in {result['seconds']:.2f}s = {result['tokens_per_second']:.0f} tok/s"
            )
    best = {name: max(r["tokens_per_second"] for r in rs) for name, rs in runs.items()}
    ratio = best["ftspec"] / best["trl"]
    summary = {
        "benchmark": "dpo_throughput",
        "steps": args.steps,
        "batch_pairs": args.batch,
        "tokens": runs["ftspec"][0]["tokens"],
        "ftspec_tokens_per_second": round(best["ftspec"], 1),
        "trl_tokens_per_second": round(best["trl"], 1),
        "ratio": round(ratio, 3),
        "goal": GOAL,
        "met": ratio >= GOAL,
    }
    print(json.dumps(summary))
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
