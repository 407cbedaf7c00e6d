"""Changes that make a spec fit, found by re-running the estimate on changed copies of its setup.

Nothing here is canned: each candidate is applied to the setup, estimated again, and ranked by
whether it fits and by the GiB it saves. The speed cost is computed where the model allows (FLOPs
for recomputation and method changes, utilisation for 4-bit weights) and stated otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ftspec.compiler.catalog.arch_shapes import Shapes
from ftspec.compiler.check.memory import GIB, MemoryEstimate, TrainSetup, estimate_setup
from ftspec.compiler.check.throughput import UTILISATION, UTILISATION_4BIT, flops_per_token

MAX_GPUS_PER_NODE = 8
MAX_COMBINED = 5  # e.g. checkpointing + three halvings of the micro batch + an 8-bit optimizer


@dataclass
class Suggestion:
    change: str  # what to write in the spec
    settings: dict  # JSON pointer -> new value (None: remove the key)
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


def _to_fsdp(setup: TrainSetup) -> tuple[dict, TrainSetup]:
    """Settings and setup for switching to FSDP, kept lint-clean: no zero_stage (FT0211), and an
    optimizer-only offload becomes FSDP's parameter-and-optimizer offload (FT0215)."""
    settings: dict = {"/hardware/strategy": "fsdp"}
    if setup.strategy == "deepspeed":
        settings["/hardware/zero_stage"] = None
    offload = setup.offload
    if offload == "optimizer":
        offload = settings["/hardware/offload"] = "optimizer_and_params"
    return settings, replace(setup, strategy="fsdp", zero_stage=None, offload=offload)


def _candidates(setup: TrainSetup, shapes: Shapes) -> list[tuple[str, dict, TrainSetup, str]]:
    """(change, settings, new setup, speed note) for every change that applies to this setup."""
    out: list[tuple[str, dict, TrainSetup, str]] = []

    def add(
        change: str, settings: dict, new: TrainSetup, note: str = "", *, slower: str | None = None
    ) -> None:
        # `slower`: a slowdown the FLOP model cannot see (host-side optimizer step, small matmuls);
        # it replaces "about the same speed", which would contradict the note.
        ratio = _time_ratio(setup, new, shapes)
        text = _speed_text(ratio, note)
        if slower and abs(ratio - 1) < 0.02:
            text = slower + (f"; {note}" if note else "")
        out.append((change, settings, new, text))

    if not setup.grad_ckpt:
        add(
            "training.gradient_checkpointing: true",
            {"/training/gradient_checkpointing": True},
            replace(setup, grad_ckpt=True),
            "recomputes each layer's forward in the backward pass",
        )
    if setup.micro_batch > 1:
        mb = setup.micro_batch // 2
        add(
            f"training.micro_batch_size: {mb} with gradient_accumulation_steps: {setup.grad_accum * 2}"
            " (same effective batch)",
            {"/training/micro_batch_size": mb, "/training/gradient_accumulation_steps": setup.grad_accum * 2},
            replace(setup, micro_batch=mb, grad_accum=setup.grad_accum * 2),
            "smaller matmuls use the GPU less efficiently",
            slower="somewhat slower",
        )
    if setup.optimizer in ("adamw_torch", "paged_adamw_32bit"):
        add(
            "training.optimizer: adamw_8bit",
            {"/training/optimizer": "adamw_8bit"},
            replace(setup, optimizer="adamw_8bit"),
            "bitsandbytes 8-bit states; needs bitsandbytes",
        )
    if setup.method == "lora":
        settings: dict = {"/adapter/method": "qlora"}
        words = "adapter.method: qlora (4-bit NF4 base weights)"
        if setup.precision == "fp16":
            # the quantization's compute dtype defaults to bf16, an error where fp16 was chosen (FT0207)
            settings["/adapter/quantization"] = {"compute_dtype": "fp16"}
            words += " with quantization.compute_dtype: fp16"
        add(words, settings, replace(setup, method="qlora"), "needs bitsandbytes; slightly lower quality")
    if setup.method == "full":
        add(
            "adapter.method: lora (train an adapter, freeze the base)",
            {"/adapter/method": "lora"},
            replace(setup, method="lora"),
            "trains far fewer parameters",
        )
    sharded = setup.strategy == "fsdp" or (setup.strategy == "deepspeed" and (setup.zero_stage or 0) >= 3)
    if setup.world > 1 and not sharded:
        fsdp_settings, fsdp_setup = _to_fsdp(setup)
        add(
            "hardware.strategy: fsdp (shard weights, gradients and optimizer states)",
            fsdp_settings,
            fsdp_setup,
            "all-gathers every layer: more communication",
        )
        add(
            "hardware.strategy: deepspeed with zero_stage: 3",
            {"/hardware/strategy": "deepspeed", "/hardware/zero_stage": 3},
            replace(setup, strategy="deepspeed", zero_stage=3),
            "all-gathers every layer: more communication",
        )
        if setup.strategy != "deepspeed" or (setup.zero_stage or 0) < 2:
            add(
                "hardware.strategy: deepspeed with zero_stage: 2",
                {"/hardware/strategy": "deepspeed", "/hardware/zero_stage": 2},
                replace(setup, strategy="deepspeed", zero_stage=2),
                "shards gradients and optimizer states",
            )
    if setup.offload == "none" and setup.optimizer not in ("sgd",):
        if setup.strategy == "fsdp":
            # FSDP offloads parameters and optimizer states together (FT0215: never the optimizer alone)
            offload, strategy, stage = "optimizer_and_params", "fsdp", None
        else:
            offload, strategy = "optimizer", "deepspeed"
            stage = setup.zero_stage if setup.strategy == "deepspeed" and (setup.zero_stage or 0) >= 1 else 2
        settings = {"/hardware/offload": offload}
        if strategy != setup.strategy:
            settings["/hardware/strategy"] = strategy
        if strategy == "deepspeed" and stage != setup.zero_stage:
            settings["/hardware/zero_stage"] = stage
        add(
            f"hardware.offload: {offload} ({strategy}{f' ZeRO-{stage}' if stage is not None else ''})",
            settings,
            replace(setup, offload=offload, strategy=strategy, zero_stage=stage),
            "the optimizer step runs on the CPU and needs host RAM",
            slower="much slower steps",
        )
    per_node = max(setup.world // max(setup.nodes, 1), 1)
    if per_node < MAX_GPUS_PER_NODE:
        for n in (2, 4, 8):
            if n > per_node:
                # Keep the effective batch (micro x accumulation x GPUs) where the accumulation divides.
                grow = n // per_node if n % per_node == 0 else 0
                accum = (
                    setup.grad_accum // grow if grow and setup.grad_accum % grow == 0 else setup.grad_accum
                )
                settings, new = ({}, setup) if sharded else _to_fsdp(setup)
                new = replace(new, world=n * setup.nodes, grad_accum=accum)
                settings = {"/hardware/gpus_per_node": n, **settings}
                words = f"hardware.gpus_per_node: {n}" + ("" if sharded else " with strategy: fsdp")
                if accum != setup.grad_accum:
                    settings["/training/gradient_accumulation_steps"] = accum
                    words += f" and gradient_accumulation_steps: {accum} (same effective batch)"
                    note = f"{n // per_node}x the GPUs: about the same GPU-hours"
                else:
                    note = (
                        f"{n // per_node}x the GPUs: about the same GPU-hours; the effective batch grows "
                        f"{n / per_node:g}x (adjust learning_rate)"
                    )
                add(words, settings, new, note)
    if setup.seq_len > 512:
        seq = setup.seq_len // 2
        add(
            f"training.sequence_len: {seq}",
            {"/training/sequence_len": seq},
            replace(setup, seq_len=seq),
            f"examples longer than {seq} tokens get truncated (see the data report)",
        )
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
            if not est.fits and settings["/hardware/gpus_per_node"] < MAX_GPUS_PER_NODE:
                continue
            seen_gpus = True
        found.append(Suggestion(change, settings, saves, est.device_gib, est.fits, speed))
    found.sort(key=lambda s: (not s.fits, -s.saves_gib))
    if found and not any(s.fits for s in found):
        combo = _combine(setup, shapes, base, gpu_memory_gib=gpu_memory_gib, headroom=headroom)
        if combo is not None:
            found.insert(0, combo)
    return found[:limit]


def _combine(
    setup: TrainSetup, shapes: Shapes, base: MemoryEstimate, *, gpu_memory_gib: float, headroom: float
) -> Suggestion | None:
    """Greedy: apply the change that saves most, re-derive the candidates, up to MAX_COMBINED changes."""
    current, settings = setup, {}
    changes: dict[frozenset, str] = {}  # a later change to the same fields replaces the earlier one's text
    for _ in range(MAX_COMBINED):
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
        changes[frozenset(best[1])] = best[0]
        settings.update(best[1])
        current = best[3]
        if best[2].fits:
            ratio = _time_ratio(setup, current, shapes)
            return Suggestion(
                " + ".join(changes.values()),
                settings,
                (base.device - best[2].device) / GIB,
                best[2].device_gib,
                True,
                _speed_text(ratio, "combined changes"),
            )
    return None
