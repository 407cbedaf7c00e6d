"""Peak GPU memory of real LoRA / QLoRA training steps against ftspec's estimate (issue 14, item 4).

For each configuration: a randomly initialised Llama-shaped model (no download: the weights' values do
not change memory) is written once to a local folder and loaded as ftspec's runtime loads it
(bf16; QLoRA through bitsandbytes NF4 with double quantization), PEFT LoRA on all linear layers,
gradient checkpointing as stated, AdamW (torch, fused off as in the runtime), ftspec's loss
(runtime/loss.py: lm_head and cross-entropy on trained positions, in chunks), full-length batches
(packed data: fixed shapes). A few optimizer steps run; the peak is read from
torch.cuda.max_memory_allocated / max_memory_reserved and, for what nvidia-smi would show, the
device's used memory (torch.cuda.mem_get_info) at the end, and printed next to the estimate
(compiler/check/memory.py estimate_setup with the same TrainSetup) with the signed error.

    .venv/bin/python benchmarks/gpu_memory.py [--dry-run] [--steps 3] [--only NAME,...] [--json OUT.json]

--dry-run prints the configurations and their estimates without torch or a GPU (CPU-testable).
Exit status: 0 when every configuration ran (the errors are information: no tolerance is asserted
on hardware nobody has measured yet), 1 when one failed, 2 without CUDA (and no --dry-run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

# Llama-shaped architectures (TinyLlama-1.1B's and Llama-3.2-1B's published shapes; random weights)
TINYLLAMA_1B = dict(
    params_b=1.10, layers=22, hidden=2048, intermediate=5632, heads=32, kv_heads=4, vocab=32000
)
LLAMA32_1B = dict(
    params_b=1.24,
    layers=16,
    hidden=2048,
    intermediate=8192,
    heads=32,
    kv_heads=8,
    vocab=128256,
    tie_embeddings=True,
)
COMMON = dict(precision="bf16", optimizer="adamw_torch", grad_accum=1, lora_dropout=0.05, r=16)
CONFIGS = {
    "lora-1b-ckpt-4x2048": (
        TINYLLAMA_1B,
        dict(COMMON, method="lora", micro_batch=4, seq_len=2048, grad_ckpt=True),
    ),
    "qlora-1b-ckpt-4x2048": (
        TINYLLAMA_1B,
        dict(COMMON, method="qlora", micro_batch=4, seq_len=2048, grad_ckpt=True),
    ),
    "lora-1b-nockpt-2x1024": (
        TINYLLAMA_1B,
        dict(COMMON, method="lora", micro_batch=2, seq_len=1024, grad_ckpt=False),
    ),
    "qlora-llama32-1b-ckpt-2x4096": (
        LLAMA32_1B,
        dict(COMMON, method="qlora", micro_batch=2, seq_len=4096, grad_ckpt=True),
    ),
}


def estimate(arch: dict, setup: dict) -> dict:
    from ftspec.compiler.catalog.arch_shapes import Shapes
    from ftspec.compiler.check.memory import TrainSetup, estimate_setup

    est = estimate_setup(TrainSetup(**setup, loss="trained_chunks"), Shapes.from_arch(arch))
    return {
        "allocated_gib": round(est.allocated_gib, 2),
        "reserved_gib": round(est.reserved_gib, 2),
        "device_gib": round(est.device_gib, 2),
        "components_gib": est.components_gib(),
    }


def _hf_config(arch: dict):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=arch["hidden"],
        intermediate_size=arch["intermediate"],
        num_hidden_layers=arch["layers"],
        num_attention_heads=arch["heads"],
        num_key_value_heads=arch["kv_heads"],
        vocab_size=arch["vocab"],
        tie_word_embeddings=bool(arch.get("tie_embeddings", False)),
        max_position_embeddings=8192,
        torch_dtype="bfloat16",
    )


def _model_folder(arch: dict, root: Path) -> Path:
    """A random-weight checkpoint of `arch`, written once (bf16 safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = root / f"llama-{arch['layers']}x{arch['hidden']}-v{arch['vocab']}"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_hf_config(arch), torch_dtype=torch.bfloat16)
        model.save_pretrained(folder, safe_serialization=True)
        del model
    return folder


def measure(arch: dict, setup: dict, root: Path, steps: int) -> dict:
    import gc

    import torch
    from ftspec.runtime import loss as rloss
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    folder = _model_folder(arch, root)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free0, total = torch.cuda.mem_get_info()
    kwargs = dict(torch_dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": 0})
    if setup["method"] == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    model.config.use_cache = False
    if setup["grad_ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(
        model,
        LoraConfig(
            r=setup["r"],
            lora_alpha=2 * setup["r"],
            lora_dropout=setup["lora_dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    head = rloss.install(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=False)
    b, s = setup["micro_batch"], setup["seq_len"]
    g = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    used_peak = 0
    for _ in range(steps):
        ids = torch.randint(0, arch["vocab"], (b, s), device="cuda", generator=g)
        labels = ids.clone()
        labels[:, : s // 4] = -100  # a prompt: trained positions are 3/4 of each row
        loss = rloss.loss_sum(model, head, {"input_ids": ids}, labels) / max(int((labels != -100).sum()), 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        free, _total = torch.cuda.mem_get_info()
        used_peak = max(used_peak, free0 - free)
    seconds = time.perf_counter() - started
    out = {
        "allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        # what nvidia-smi adds: this process's share of the device after the steps (context included
        # only if created inside; the CUDA context existed before free0, so it is added from the estimate)
        "device_used_since_start_gib": round(used_peak / 2**30, 2),
        "steps": steps,
        "seconds": round(seconds, 1),
        "loss": float(loss.detach()),
    }
    del model, optimizer, params, head
    gc.collect()
    torch.cuda.empty_cache()
    return out


def markdown(rows: list[dict], gpu: str) -> str:
    lines = [
        f"GPU check {dt.date.today().isoformat()} on {gpu} (`benchmarks/gpu_check.sh`): peak memory of real "
        "steps against the estimate",
        "",
        "| configuration | allocated measured / estimated GiB | reserved measured / estimated GiB | error (reserved) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        m, e = r.get("measured"), r["estimate"]
        if not m:
            what = "failed" if r.get("error") else "not measured"
            lines.append(
                f"| {r['name']} | {what} / {e['allocated_gib']} | {what} / {e['reserved_gib']} | "
                f"{r.get('error', '')[:60]} |"
            )
            continue
        err = (
            (e["reserved_gib"] - m["reserved_gib"]) / m["reserved_gib"] if m["reserved_gib"] else float("nan")
        )
        lines.append(
            f"| {r['name']} | {m['allocated_gib']} / {e['allocated_gib']} | {m['reserved_gib']} / "
            f"{e['reserved_gib']} | {err:+.0%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="estimates only: no torch, no GPU")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", default="", help="comma list of configuration names")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--models", default="/tmp/ftspec-gpu-models", help="folder for the random checkpoints"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(CONFIGS)
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    rows = []
    gpu = "dry run (no GPU)"
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run for the estimates only", file=sys.stderr)
            return 2
        gpu = torch.cuda.get_device_name(0)
    failed = False
    for name in names:
        arch, setup = CONFIGS[name]
        row = {"name": name, "arch": arch, "setup": setup, "estimate": estimate(arch, setup)}
        if not args.dry_run:
            try:
                row["measured"] = measure(arch, setup, Path(args.models), args.steps)
            except Exception as exc:  # one configuration failing must not hide the others
                failed = True
                row["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = markdown(rows, gpu)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
