"""Training throughput: the ftspec runtime vs a plain transformers Trainer script vs TRL's SFTTrainer.

    .venv/bin/python benchmarks/train_throughput.py [--steps 60] [--batch 16] [--seq 128]

Same model (builtin:tiny-llama + LoRA r16 all-linear), same data (specs/data/tiny-cpu-train.jsonl,
assistant-only labels), same micro batch, optimizer, learning rate and number of steps, one CPU process
each (each contender in its own subprocess, so peak memory is its own), OMP_NUM_THREADS=1 (on a shared
2-core machine two OpenMP threads stall whenever another job holds a core, which made single runs
vary by 10x), contenders interleaved and repeated (--repeats, best run kept). Reported per contender, with
and without packing: real (non-padding) tokens per second over the training loop, the ratios, and the
peak resident memory of the process.

Packing per contender: ftspec packs examples into rows of --seq tokens with position_ids restarting per
example (block-diagonal attention); the Trainer script uses transformers' DataCollatorWithFlattening
(the micro batch flattened into one row with position_ids); SFTTrainer uses its own `packing=True`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "specs" / "data" / "tiny-cpu-train.jsonl"
LR = 3e-3


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --- contenders (each runs in its own process) ----------------------------------------------------


def _model_and_tokenizer():
    from ftspec.runtime.builtin import ensure_builtin
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(ensure_builtin())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.config.use_cache = False
    config = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config), tok


def _conversations() -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in DATA.read_text(encoding="utf-8").splitlines()]


class _Counter:
    """Wraps a collator and counts the real tokens it hands to the model."""

    def __init__(self, inner, pad_id: int):
        self.inner, self.pad_id, self.tokens = inner, pad_id, 0

    def __call__(self, features):
        batch = self.inner(features)
        if "attention_mask" in batch:
            self.tokens += int(batch["attention_mask"].sum())
        else:  # flattened / padding-free batches carry no padding
            self.tokens += int(batch["input_ids"].numel())
        return batch


def _timed_train(trainer, counter) -> dict:
    from transformers import TrainerCallback

    marks = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            marks["end"] = time.perf_counter()

    trainer.add_callback(Clock())
    trainer.train()
    seconds = marks["end"] - marks["start"]
    return {"tokens": counter.tokens, "seconds": seconds, "tokens_per_second": counter.tokens / seconds}


def run_trainer(steps: int, batch: int, seq: int, packing: bool) -> dict:
    from datasets import Dataset
    from ftspec.runtime import data as rdata
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer, TrainingArguments

    model, tok = _model_and_tokenizer()
    rows = []
    for conv in _conversations():
        ex, _ = rdata.tokenize(conv, tok, loss_on="assistant", sequence_len=seq, truncation="truncate")
        if ex is not None:
            rows.append({"input_ids": ex.input_ids, "labels": ex.labels})
    inner = (DataCollatorWithFlattening() if packing else
             DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    counter = _Counter(inner, tok.pad_token_id)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=1, logging_steps=10**6,
                                 save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                                 seed=42, remove_unused_columns=False, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=counter)
        result = _timed_train(trainer, counter)
    return result


def run_sft(steps: int, batch: int, seq: int, packing: bool) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok = _model_and_tokenizer()
    data = Dataset.from_list([{"messages": c} for c in _conversations()])
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=LR,
                         lr_scheduler_type="cosine", warmup_steps=1, logging_steps=10**6, save_strategy="no",
                         report_to=[], use_cpu=True, seed=42, assistant_only_loss=True, max_length=seq,
                         packing=packing, disable_tqdm=True, dataloader_num_workers=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        counter = _Counter(trainer.data_collator, tok.pad_token_id)
        trainer.data_collator = counter
        result = _timed_train(trainer, counter)
    return result


def run_ftspec(steps: int, batch: int, seq: int, packing: bool) -> dict:
    """The real runtime: compile a one-process spec over the demo data, run ftspec.runtime.train."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "data").mkdir()
        (folder / "data" / DATA.name).write_bytes(DATA.read_bytes())
        spec = {
            "version": 1, "name": "bench",
            "model": {"id": "builtin:tiny-llama", "chat_template": "chatml"},
            "dataset": {"format": "chatml", "train": f"data/{DATA.name}", "min_examples": 10},
            "adapter": {"method": "lora", "r": 16, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear",
                        "dora": False},
            "training": {"max_steps": steps, "learning_rate": LR, "warmup_steps": 1, "optimizer": "adamw_torch",
                         "micro_batch_size": batch, "gradient_accumulation_steps": 1, "sequence_len": seq,
                         "packing": packing, "precision": "fp32", "gradient_checkpointing": False,
                         "logging_steps": max(1, steps // 6), "eval_steps": 10**6, "save_steps": 10**6,
                         "early_stopping_patience": 0, "seed": 42},
            "hardware": {"gpu": "cpu", "gpus_per_node": 1, "strategy": "single"},
            "output": {"dir": "runs/bench", "report_to": ["none"]},
        }
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
        cli = [sys.executable, "-m", "ftspec.compiler.cli"]
        for cmd in ([*cli, "compile", "spec.yaml", "-o", "build"],
                    [sys.executable, "-m", "ftspec.runtime.train", "--plan", "build/plan.json"]):
            proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
        events = [json.loads(x) for x in (folder / "runs/bench/metrics.jsonl").read_text().splitlines()]
    windows = [e for e in events if "window_tokens" in e]
    tokens = sum(e["window_tokens"] for e in windows)
    seconds = sum(e["window_seconds"] for e in windows)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "peak_rss_gib": max(e["memory"] for e in windows)}


CONTENDERS = {"ftspec": run_ftspec, "trainer": run_trainer, "sft": run_sft}


def worker(name: str, steps: int, batch: int, seq: int, packing: bool) -> None:
    result = CONTENDERS[name](steps, batch, seq, packing)
    result.setdefault("peak_rss_gib", peak_rss_gib())
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="runs per contender; the fastest is kept")
    parser.add_argument("--worker", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--packing", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.batch, args.seq, bool(args.packing))
        return
    results: dict[tuple[str, bool], dict] = {}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for _ in range(args.repeats):
        for packing in (False, True):
            for name in ("ftspec", "trainer", "sft"):
                cmd = [sys.executable, __file__, "--worker", name, "--packing", str(int(packing)), "--steps",
                       str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    print(f"{name} (packing={packing}) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                result = json.loads(line[len("RESULT "):])
                best = results.get((name, packing))
                if best is None or result["tokens_per_second"] > best["tokens_per_second"]:
                    results[(name, packing)] = result
    print(f"\nsteps {args.steps}, micro batch {args.batch}, sequence_len {args.seq}, one CPU process each, "
          f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, best of {args.repeats}\n")
    print(f"{'contender':<10} {'packing':<8} {'tokens/s':>10} {'vs Trainer':>11} {'vs SFT':>8} {'peak RSS GiB':>13}")
    for packing in (False, True):
        base_t = results.get(("trainer", False))
        base_s = results.get(("sft", False))
        for name in ("ftspec", "trainer", "sft"):
            r = results.get((name, packing))
            if r is None:
                continue
            vs_t = r["tokens_per_second"] / base_t["tokens_per_second"] if base_t else float("nan")
            vs_s = r["tokens_per_second"] / base_s["tokens_per_second"] if base_s else float("nan")
            print(f"{name:<10} {str(packing):<8} {r['tokens_per_second']:>10.0f} {vs_t:>10.2f}x {vs_s:>7.2f}x "
                  f"{r['peak_rss_gib']:>13.3f}")
    for packing in (False, True):
        f, t, s = (results.get((n, packing)) for n in ("ftspec", "trainer", "sft"))
        if f and t and s:
            print(f"packing={packing}: ftspec / Trainer = {f['tokens_per_second'] / t['tokens_per_second']:.2f}, "
                  f"ftspec / SFTTrainer = {f['tokens_per_second'] / s['tokens_per_second']:.2f} "
                  f"(each contender with packing={packing})")
    f, t, s = results.get(("ftspec", True)), results.get(("trainer", False)), results.get(("sft", False))
    if f and t and s:
        print(f"ftspec packed vs unpacked baselines: {f['tokens_per_second'] / t['tokens_per_second']:.2f}x Trainer, "
              f"{f['tokens_per_second'] / s['tokens_per_second']:.2f}x SFTTrainer")


if __name__ == "__main__":
    main()
