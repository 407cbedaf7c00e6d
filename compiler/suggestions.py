"""Changes that make a spec fit, found by re-running the estimate on changed copies of its setup.

Nothing here is canned: each candidate is applied to the setup, estimated again, and ranked by
whether it fits and by the GiB it saves. The speed cost is computed where the model allows (FLOPs
for recomputation and method changes, utilisation for 4-bit weights) and stated otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .arch_shapes import Shapes
from .memory import GIB, MemoryEstimate, TrainSetup, estimate_setup
from .throughput import UTILISATION, UTILISATION_4BIT, flops_per_token

MAX_GPUS_PER_NODE = 8


@dataclass
class Suggestion:
    change: str  # what to write in the spec
    settings: dict  # JSON pointer -> new value
    saves_gib: float
    device_gib: float
    fits: bool | None
    speed: str

    def to_json(self) -> dict:
        return {
            "change": self.change,
            "settings": self.settings,
            "saves_gib": round(self.saves_gib, 2),
            "device_gib": round(self.device_gib, 2),
            "fits": self.fits,
            "speed": self.speed,
        }


def _time_ratio(old: TrainSetup, new: TrainSetup, shapes: Shapes) -> float:
    def step_time(s: TrainSetup) -> float:
        util = UTILISATION_4BIT if s.method == "qlora" else UTILISATION
        return flops_per_token(s, shapes) / (util * max(s.world, 1))

    return step_time(new) / step_time(old)


def _speed_text(ratio: float, extra: str = "") -> str:
    if abs(ratio - 1) < 0.02:
        text = "about the same speed"
    elif ratio > 1:
        text = f"~{(ratio - 1) * 100:.0f}% longer training"
    else:
        text = f"~{(1 - ratio) * 100:.0f}% shorter training"
    return text + (f"; {extra}" if extra else "")


def _candidates(setup: TrainSetup, shapes: Shapes) -> list[tuple[str, dict, TrainSetup, str]]:
    """(change, settings, new setup, speed note) for every change that applies to this setup."""
    out: list[tuple[str, dict, TrainSetup, str]] = []

    def add(change: str, settings: dict, new: TrainSetup, note: str = "") -> None:
        out.append((change, settings, new, _speed_text(_time_ratio(setup, new, shapes), note)))

    if not setup.grad_ckpt:
        add("training.gradient_checkpointing: true", {"/training/gradient_checkpointing": True},
            replace(setup, grad_ckpt=True), "recomputes each layer's forward in the backward pass")
    if setup.micro_batch > 1:
        mb = setup.micro_batch // 2
        add(f"training.micro_batch_size: {mb} with gradient_accumulation_steps: {setup.grad_accum * 2}"
            " (same effective batch)",
            {"/training/micro_batch_size": mb, "/training/gradient_accumulation_steps": setup.grad_accum * 2},
            replace(setup, micro_batch=mb, grad_accum=setup.grad_accum * 2),
            "smaller matmuls use the GPU less efficiently")
    if setup.optimizer in ("adamw_torch", "paged_adamw_32bit"):
        add("training.optimizer: adamw_8bit", {"/training/optimizer": "adamw_8bit"},
            replace(setup, optimizer="adamw_8bit"), "bitsandbytes 8-bit states; needs bitsandbytes")
    if setup.method == "lora":
        add("adapter.method: qlora (4-bit NF4 base weights)", {"/adapter/method": "qlora"},
            replace(setup, method="qlora"), "needs bitsandbytes; slightly lower quality")
    if setup.method == "full":
        add("adapter.method: lora (train an adapter, freeze the base)", {"/adapter/method": "lora"},
            replace(setup, method="lora"), "trains far fewer parameters")
    sharded = setup.strategy == "fsdp" or (setup.strategy == "deepspeed" and (setup.zero_stage or 0) >= 3)
    if setup.world > 1 and not sharded:
        add("hardware.strategy: fsdp (shard weights, gradients and optimizer states)",
            {"/hardware/strategy": "fsdp"}, replace(setup, strategy="fsdp", zero_stage=None),
            "all-gathers every layer: more communication")
        add("hardware.strategy: deepspeed with zero_stage: 3", {"/hardware/strategy": "deepspeed",
                                                                "/hardware/zero_stage": 3},
            replace(setup, strategy="deepspeed", zero_stage=3), "all-gathers every layer: more communication")
        if setup.strategy != "deepspeed" or (setup.zero_stage or 0) < 2:
            add("hardware.strategy: deepspeed with zero_stage: 2", {"/hardware/strategy": "deepspeed",
                                                                    "/hardware/zero_stage": 2},
                replace(setup, strategy="deepspeed", zero_stage=2), "shards gradients and optimizer states")
    if setup.offload == "none" and setup.optimizer not in ("sgd",):
        strategy = setup.strategy if setup.strategy in ("deepspeed", "fsdp") else "deepspeed"
        stage = setup.zero_stage if strategy == "deepspeed" and setup.zero_stage else (2 if strategy == "deepspeed" else None)
        settings = {"/hardware/offload": "optimizer"}
        if strategy != setup.strategy:
            settings.update({"/hardware/strategy": strategy, "/hardware/zero_stage": stage})
        add(f"hardware.offload: optimizer ({strategy}{f' ZeRO-{stage}' if stage is not None else ''})", settings,
            replace(setup, offload="optimizer", strategy=strategy, zero_stage=stage),
            "optimizer step runs on the CPU: much slower steps, needs host RAM")
    if setup.world < MAX_GPUS_PER_NODE:
        for n in (2, 4, 8):
            if n > setup.world:
                new = replace(setup, world=n, strategy="fsdp" if not sharded else setup.strategy)
                settings = {"/hardware/gpus_per_node": n}
                if not sharded:
                    settings["/hardware/strategy"] = "fsdp"
                add(f"hardware.gpus_per_node: {n}" + ("" if sharded else " with strategy: fsdp"), settings, new,
                    f"{n}x the GPUs: about the same GPU-hours")
    if setup.seq_len > 512:
        seq = setup.seq_len // 2
        add(f"training.sequence_len: {seq}", {"/training/sequence_len": seq}, replace(setup, seq_len=seq),
            f"examples longer than {seq} tokens get truncated (see the data report)")
    return out


def suggest(
    setup: TrainSetup,
    shapes: Shapes,
    base: MemoryEstimate,
    *,
    gpu_memory_gib: float,
    headroom: float,
    limit: int = 6,
) -> list[Suggestion]:
    """Single changes ranked (fits first, then GiB saved); if none fits, the best combination too."""
    found: list[Suggestion] = []
    seen_gpus = False
    for change, settings, new, speed in _candidates(setup, shapes):
        if "/hardware/gpus_per_node" in settings:
            if seen_gpus:
                continue  # only the smallest GPU count that fits is worth showing
        est = estimate_setup(new, shapes, gpu_memory_gib=gpu_memory_gib, headroom=headroom)
        saves = (base.device - est.device) / GIB
        if saves <= 0.05:
            continue
        if "/hardware/gpus_per_node" in settings:
            if not est.fits and new.world < MAX_GPUS_PER_NODE:
                continue
            seen_gpus = True
        found.append(Suggestion(change, settings, saves, est.device_gib, est.fits, speed))
    found.sort(key=lambda s: (not s.fits, -s.saves_gib))
    if found and not any(s.fits for s in found):
        combo = _combine(setup, shapes, base, gpu_memory_gib=gpu_memory_gib, headroom=headroom)
        if combo is not None:
            found.insert(0, combo)
    return found[:limit]


def _combine(setup: TrainSetup, shapes: Shapes, base: MemoryEstimate, *, gpu_memory_gib: float,
             headroom: float) -> Suggestion | None:
    """Greedy: apply the change that saves most, re-derive the candidates, up to three changes."""
    current, changes, settings = setup, [], {}
    for _ in range(4):
        best = None
        for change, sets, new, _speed in _candidates(current, shapes):
            keeps_scope = "/hardware/gpus_per_node" not in sets and "/training/sequence_len" not in sets
            if not keeps_scope or (setup.method == "full" and new.method == "lora"):
                continue  # combinations keep the hardware, the data and what is trained as written
            est = estimate_setup(new, shapes, gpu_memory_gib=gpu_memory_gib, headroom=headroom)
            if best is None or est.device < best[2].device:
                best = (change, sets, est, new)
        if best is None:
            return None
        changes.append(best[0])
        settings.update(best[1])
        current = best[3]
        if best[2].fits:
            ratio = _time_ratio(setup, current, shapes)
            return Suggestion(" + ".join(changes), settings, (base.device - best[2].device) / GIB,
                              best[2].device_gib, True, _speed_text(ratio, "combined changes"))
    return None
