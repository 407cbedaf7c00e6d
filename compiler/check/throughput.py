"""Training time and cost: tokens x FLOPs per token / (GPUs x dense rate x utilisation).

FLOPs per token for a decoder with N (active) parameters: the forward pass is 2N multiply-adds per
token plus attention (2 x layers x context x attention width, causal); full fine-tuning's backward
is twice the forward (activation and weight gradients); with frozen weights (LoRA/QLoRA) the backward
computes activation gradients only (about 1x the forward) plus the small adapter; gradient
checkpointing recomputes the forward once more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.catalog.arch_shapes import Shapes
from ftspec.compiler.check.memory import TrainSetup
from ftspec.compiler.core.schema import schema_default
from ftspec.compiler.dataset.sources import count_records, mixed_total, split_counts, train_entries

UTILISATION = 0.35  # model FLOPs utilisation typical of HF Trainer fine-tuning on one node
UTILISATION_4BIT = 0.25  # dequantizing NF4 weights on every matmul costs throughput


def _pairs(training: dict) -> bool:
    return str(training.get("objective") or "sft") in ("dpo", "orpo")


def _preference_cost(
    setup: TrainSetup, shapes: Shapes, training: dict, per_example: float, examples, tokens, assumptions
) -> float:
    """FLOPs of DPO's reference pass, with the assumption line that says how the reference is made.

    The runtime (runtime/preference.py) scores every pair once under the reference before the first
    step: for LoRA/QLoRA the base weights with the adapter disabled, for full fine-tuning the weights
    as loaded. So no second copy of the weights is held and no reference forward runs per step; the
    cost is one forward (2N per token) over both sides of every pair. (memory.setup_from_resolved
    counts two sequences per example in the micro batch.)"""
    objective = str(training.get("objective") or "sft")
    if objective == "orpo":
        assumptions.append("ORPO: two sequences per example (chosen and rejected), no reference model")
        return 0.0
    if objective != "dpo" or tokens is None:
        return 0.0
    how = "the starting weights" if setup.method == "full" else "the base weights, adapter disabled"
    per_pair = 2.0 * per_example
    pairs = examples if examples is not None else tokens / per_pair
    fwd = 2.0 * shapes.active_params + 2.0 * shapes.layers * setup.seq_len * shapes.q_dim
    flops = float(pairs) * per_pair * fwd
    assumptions.append(
        f"DPO: two sequences per example; reference = {how}, log-probabilities computed once before the "
        f"first step (no second copy of the weights in memory): one forward over {int(pairs)} pairs, "
        f"{flops / 1e15:.3g} PFLOP"
    )
    return flops


def flops_per_token(setup: TrainSetup, shapes: Shapes, adapter_params: float = 0.0) -> float:
    n = shapes.active_params
    attn_fwd = 2.0 * shapes.layers * setup.seq_len * shapes.q_dim  # QK^T and AV, causal half
    fwd = 2.0 * n + attn_fwd
    if setup.method == "full":
        total = 3.0 * fwd
    else:
        total = 2.0 * fwd + 6.0 * adapter_params  # activation gradients; adapter fwd+bwd
    if setup.grad_ckpt:
        total += fwd
    return total


@dataclass
class TimeEstimate:
    tokens: float | None
    tokens_source: str
    flops_per_token: float
    utilisation: float
    tflops: float | None
    world: int
    hours: float | None
    price_per_gpu_hour: float | None
    price_source: str | None
    assumptions: list[str] = field(default_factory=list)

    @property
    def cost(self) -> float | None:
        if self.hours is None or self.price_per_gpu_hour is None:
            return None
        return self.hours * self.world * self.price_per_gpu_hour

    def time_json(self) -> dict:
        return {
            "hours": None if self.hours is None else round(self.hours, 3),
            "training_tokens": None if self.tokens is None else int(self.tokens),
            "tokens_source": self.tokens_source,
            "flops_per_token": round(self.flops_per_token),
            "total_flops": None
            if self.tokens is None
            else float(f"{self.tokens * self.flops_per_token:.4g}"),
            "gpus": self.world,
            "tflops_per_gpu": self.tflops,
            "utilisation": self.utilisation,
            "assumptions": list(self.assumptions),
        }

    def cost_json(self) -> dict:
        return {
            "total": None if self.cost is None else round(self.cost, 2),
            "currency": "USD",
            "price_per_gpu_hour": self.price_per_gpu_hour,
            "gpu_hours": None if self.hours is None else round(self.hours * self.world, 3),
            "price_source": self.price_source,
        }


def count_examples(resolved: dict, base_dir: Path) -> tuple[int | None, str]:
    """Training examples by counting records in the train files, mixed and split as training will."""
    dataset = resolved.get("dataset") or {}
    counts: list[tuple[int, float | None]] = []
    for entry in train_entries(dataset):
        full = Path(entry.path) if Path(entry.path).is_absolute() else base_dir / entry.path
        try:
            counts.append((count_records(full), entry.fraction))
        except (OSError, ValueError) as exc:
            return None, f"cannot count records in {entry.path}: {exc}"
    train, _held_out = split_counts(mixed_total(counts), dataset.get("eval_split"))
    return train, "records counted in the train file(s)"


def estimate_time(
    setup: TrainSetup,
    shapes: Shapes,
    resolved: dict,
    *,
    base_dir: Path,
    gpu_tflops: float | None,
    price: float | None,
    price_source: str | None,
    data_summary: dict | None = None,
    adapter_params: float = 0.0,
) -> TimeEstimate:
    training = resolved.get("training", {}) or {}
    assumptions: list[str] = []
    util = UTILISATION_4BIT if setup.method == "qlora" else UTILISATION
    fpt = flops_per_token(setup, shapes, adapter_params)
    assumptions.append(
        f"FLOPs/token {fpt / 1e9:.1f} GFLOP: "
        + (
            "6N (forward 2N, backward 4N)"
            if setup.method == "full"
            else "4N (forward 2N, activation gradients 2N; frozen weights get no weight gradients)"
        )
        + (" + 2N recomputation (gradient checkpointing)" if setup.grad_ckpt else "")
        + f" + attention, N = {shapes.active_params / 1e9:.2f}B active parameters"
    )
    assumptions.append(
        f"utilisation {util:.0%} of the dense bf16 rate"
        + (" (4-bit weights are dequantized on every matmul)" if setup.method == "qlora" else "")
    )
    examples, source = None, ""
    per_example = float(setup.seq_len)
    if data_summary and data_summary.get("train_examples") is not None:
        examples = int(data_summary["train_examples"])
        lengths = data_summary.get("lengths") or {}
        mean, p95 = float(lengths.get("mean") or 0), float(lengths.get("p95") or 0)
        if mean:
            # packed: real tokens; padded batches: about the longest in each batch (~p95)
            per_example = min(mean if setup_packing(resolved) else max(p95, mean), setup.seq_len)
        source = (
            "data check (tokenized lengths)"
            if lengths.get("method") == "tokenizer"
            else "data check (estimated lengths)"
        )
    else:
        examples, source = count_examples(resolved, base_dir)
        if examples is not None:
            assumptions.append(
                f"every example counted at sequence_len ({setup.seq_len} tokens): an upper bound"
            )
    tokens: float | None = None
    effective = setup.micro_batch * setup.grad_accum * setup.world
    if training.get("max_steps"):
        tokens = float(training["max_steps"]) * effective * per_example
        source = f"max_steps x effective batch {effective} x {per_example:.0f} tokens"
    elif examples is not None:
        tokens = (
            examples * float(training.get("epochs", schema_default("/training/epochs")) or 1) * per_example
        )
        source = f"{examples} examples x {training.get('epochs', 1)} epoch(s) x {per_example:.0f} tokens ({source})"
    if tokens is not None and not training.get("max_steps") and _pairs(training):
        tokens *= 2  # each example is two sequences (the max_steps path counts sequences already)
    extra_flops = _preference_cost(setup, shapes, training, per_example, examples, tokens, assumptions)
    hours = None
    if tokens is not None and gpu_tflops:
        hours = (tokens * fpt + extra_flops) / (setup.world * gpu_tflops * 1e12 * util) / 3600
    return TimeEstimate(
        tokens, source, fpt, util, gpu_tflops, setup.world, hours, price, price_source, assumptions
    )


def setup_packing(resolved: dict) -> bool:
    return bool((resolved.get("training") or {}).get("packing", False))
