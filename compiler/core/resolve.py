"""Fill a spec's defaults from the schema, so every later stage reads one fully resolved mapping.

Defaults live in the schema (editors show them); this module only walks it. The few defaults that
depend on other fields (quantization for qlora only, no LoRA fields for full fine-tuning, the output
folder named after the run) are applied after the walk.
"""

from __future__ import annotations

import copy
from typing import cast

from ftspec.compiler.core.schema import _deref, load_schema

LORA_FIELDS = ("r", "alpha", "dropout", "target_modules", "dora")


def _fill(value: object, schema: dict, root: dict) -> object:
    schema = _deref(schema, root)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, sub in props.items():
            sub_r = _deref(sub, root)
            if name not in value and "default" in sub_r:
                value[name] = copy.deepcopy(sub_r["default"])
            if name in value:
                value[name] = _fill(value[name], sub_r, root)
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_fill(item, schema["items"], root) for item in value]
    return value


def resolve(data: dict) -> dict:
    """A deep copy of a schema-valid spec with every default written in."""
    root = load_schema()
    out = cast(dict, _fill(copy.deepcopy(data), root, root))  # a mapping in, the same mapping out
    adapter = out.get("adapter", {})
    method = adapter.get("method", "lora")
    if method == "full":
        # The schema's LoRA defaults do not apply to full fine-tuning: drop those the user did not write.
        given = data.get("adapter", {}) or {}
        for name in LORA_FIELDS:
            if name not in given:
                adapter.pop(name, None)
    if method == "qlora":
        adapter["quantization"] = _fill(
            copy.deepcopy(adapter.get("quantization") or {}), root["$defs"]["quantization"], root
        )
    training = out.get("training", {})
    given_training = data.get("training", {}) or {}
    if "max_steps" in given_training and "epochs" not in given_training:
        training.pop("epochs", None)  # max_steps alone decides the length
    if "warmup_steps" in given_training and "warmup_ratio" not in given_training:
        training.pop("warmup_ratio", None)
    output = out.setdefault("output", {})
    output.setdefault("dir", f"runs/{out.get('name', 'run')}")
    return out


def world_size(hardware: dict | None) -> int:
    """Processes the job runs: nodes x gpus_per_node (each at least 1)."""
    hw = hardware if isinstance(hardware, dict) else {}
    return max(int(hw.get("nodes", 1) or 1), 1) * max(int(hw.get("gpus_per_node", 1) or 1), 1)


def resolve_strategy(hardware: dict | None, world: int | None = None) -> str:
    """`hardware.strategy`, with auto made concrete: single for one process, ddp for several."""
    hw = hardware if isinstance(hardware, dict) else {}
    strategy = hw.get("strategy", "auto") or "auto"
    if strategy != "auto":
        return strategy
    return "single" if (world_size(hw) if world is None else world) <= 1 else "ddp"
