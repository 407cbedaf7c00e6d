"""The DeepSpeed JSON for a plan: concrete numbers only, nothing left as "auto".

No `optimizer` or `scheduler` block is ever written: the runtime builds both from the spec (a
DeepSpeed scheduler block silently overrides the trainer's, Axolotl PR #909), so there is exactly
one place where the learning-rate schedule lives.
"""

from __future__ import annotations

# DeepSpeed's own defaults, used when the hidden size is unknown (deepspeed/runtime/zero/config.py).
DEFAULT_REDUCE_BUCKET = 500_000_000
DEFAULT_ALLGATHER_BUCKET = 500_000_000
DEFAULT_PREFETCH_BUCKET = 50_000_000
DEFAULT_PERSISTENCE_THRESHOLD = 100_000

# Optimizers DeepSpeed's ZeRO accepts without `zero_allow_untested_optimizer` (torch Adam/AdamW are
# in its ZERO_SUPPORTED_OPTIMIZERS; bitsandbytes' 8-bit and paged optimizers and SGD are not).
ZERO_TESTED_OPTIMIZERS = {"adamw_torch"}


def deepspeed_config(plan: dict) -> dict:
    derived = plan["derived"]
    training = plan["spec"]["training"]
    stage = int(derived["zero_stage"] or 0)
    offload = derived.get("offload", "none")
    micro = int(derived["micro_batch_size"])
    accum = int(derived["gradient_accumulation_steps"])
    world = int(derived["world_size"])
    precision = derived["mixed_precision"]
    hidden = (derived.get("architecture") or {}).get("hidden")

    zero: dict = {"stage": stage}
    if stage in (1, 2):
        zero.update(
            {
                "allgather_partitions": True,
                "allgather_bucket_size": DEFAULT_ALLGATHER_BUCKET,
                "overlap_comm": True,
                "reduce_scatter": True,
                "reduce_bucket_size": DEFAULT_REDUCE_BUCKET,
                "contiguous_gradients": True,
            }
        )
    elif stage == 3:
        # HF's recipe for the "auto" values, made concrete: buckets sized from the hidden size.
        zero.update(
            {
                "overlap_comm": True,
                "contiguous_gradients": True,
                "reduce_bucket_size": hidden * hidden if hidden else DEFAULT_REDUCE_BUCKET,
                "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden)
                if hidden
                else DEFAULT_PREFETCH_BUCKET,
                "stage3_param_persistence_threshold": 10 * hidden
                if hidden
                else DEFAULT_PERSISTENCE_THRESHOLD,
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                "sub_group_size": 1_000_000_000,
                # the runtime saves the final model through this (sharded weights otherwise)
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if stage >= 1 and offload in ("optimizer", "optimizer_and_params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3 and offload == "optimizer_and_params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    config: dict = {
        # DeepSpeed asserts train_batch_size == micro x accumulation x world size at start-up
        "train_batch_size": micro * accum * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": float(training.get("max_grad_norm", 1.0)),
        "steps_per_print": int(training.get("logging_steps", 10)),
        "wall_clock_breakdown": False,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale": 0,  # dynamic loss scaling
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_optimization": zero,
    }
    if stage >= 1 and training.get("optimizer", "adamw_torch") not in ZERO_TESTED_OPTIMIZERS:
        config["zero_allow_untested_optimizer"] = True
    return config


def batch_arithmetic_holds(config: dict, world_size: int) -> bool:
    """DeepSpeed's own start-up assertion, checked for the target world size (trap 8: its config
    class assumes world size 1 outside a launch)."""
    return config["train_batch_size"] == (
        config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * world_size
    )
