"""Run by test_runtime_fsdp2.py under torchrun (2 CPU processes, gloo): LoRA on the built-in model with
plain FSDP2 (`fully_shard` per decoder layer and at the root), checked against an unsharded copy
trained on the same global batches in the same process."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from ftspec.runtime import data as rdata
from ftspec.runtime.builtin import ensure_builtin
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer

STEPS, MICRO = 4, 4


def make_model(path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def loss_sum(model, examples):
    batch = rdata.collate(examples, 0, packed=False)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def main() -> None:
    out, data_file = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    path = ensure_builtin()
    tok = AutoTokenizer.from_pretrained(str(path))
    with open(data_file, encoding="utf-8") as fh:
        convs = [json.loads(line)["messages"] for line in fh][: STEPS * MICRO * world]
    examples = [
        rdata.tokenize(c, tok, loss_on="assistant", sequence_len=64, truncation="truncate")[0] for c in convs
    ]

    reference = make_model(path)
    sharded = make_model(path)
    for layer in sharded.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    opt_ref = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-2)
    opt = torch.optim.AdamW([p for p in sharded.parameters() if p.requires_grad], lr=1e-2)
    for step in range(STEPS):
        group = examples[step * MICRO * world : (step + 1) * MICRO * world]
        n = sum(rdata.count_trained([e]) for e in group)
        # reference: the whole global batch, unsharded
        (loss_sum(reference, group) / n).backward()
        opt_ref.step()
        opt_ref.zero_grad()
        # FSDP2: this rank's micro batch; reduce-scatter averages over ranks, hence x world
        mine = group[rank * MICRO : (rank + 1) * MICRO]
        (loss_sum(sharded, mine) * world / n).backward()
        opt.step()
        opt.zero_grad()
    ref_params = dict(reference.named_parameters())
    max_diff, changed, sharded_params, local, full = 0.0, 0.0, 0, 0, 0
    base = make_model(path)
    base_params = dict(base.named_parameters())
    for name, param in sharded.named_parameters():
        whole = param.full_tensor() if hasattr(param, "full_tensor") else param
        if hasattr(param, "to_local"):
            sharded_params += 1
            local += param.to_local().numel()
            full += whole.numel()
        max_diff = max(max_diff, float((whole.detach() - ref_params[name].detach()).abs().max()))
        if param.requires_grad:
            changed = max(changed, float((whole.detach() - base_params[name].detach()).abs().max()))
    result = {
        "rank": rank,
        "world": world,
        "max_diff": max_diff,
        "max_change": changed,
        "sharded_params": sharded_params,
        "local_numel": local,
        "full_numel": full,
    }
    with open(os.path.join(out, f"fsdp2-rank{rank}.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # cpu-notes trap 6


if __name__ == "__main__":
    main()
