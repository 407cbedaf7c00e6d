"""Cross-field rules on `hardware`: bf16 support, strategies, ZeRO/offload, nodes and launchers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ftspec.compiler.catalog import gpus
from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.lint.rules.context import RuleContext

STRATEGIES = ("auto", "single", "ddp", "fsdp", "deepspeed")
PRECISIONS = ("bf16", "bf16-mixed", "fp16", "fp32")
OFFLOADS = ("none", "optimizer", "optimizer_and_params")
MULTI_NODE_LAUNCHERS = ("slurm", "kubernetes")

# Used only when compiler/data/gpus.json (the GPU catalog `ftspec check` owns) cannot be read:
# the GPUs without bf16 that people still rent, so the bf16 rules keep working in a broken install.
_FALLBACK_NO_BF16 = {
    "t4": "T4",
    "tesla-t4": "T4",
    "v100": "V100",
    "v100-16gb": "V100-16GB",
    "v100-32gb": "V100-32GB",
    "p100": "P100",
}


@dataclass(frozen=True)
class Device:
    name: str
    bf16: bool | None  # None: not known
    known: bool  # in the catalog (or a custom device spelled out in the spec)
    cpu: bool = False


def gpu_catalog() -> dict[str, dict] | None:
    """The GPU catalog (catalog/gpus.py, its one reader); None when it is missing or unreadable, so
    lint still runs and falls back to the few names it must know."""
    try:
        return gpus.entries() or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def catalog_names() -> list[str]:
    return sorted({e["name"] for e in (gpu_catalog() or {}).values()})


def device(ctx: RuleContext) -> Device | None:
    gpu = ctx.get("/hardware/gpu", "str")
    if gpu is not None:
        if gpu.lower() == "cpu":
            return Device("cpu", True, True, cpu=True)
        cat = gpu_catalog()
        if cat is None:
            fallback = _FALLBACK_NO_BF16.get(gpu.lower())
            return Device(gpu, False if fallback else None, bool(fallback))
        entry = cat.get(gpu.lower())
        if entry is None:
            return Device(gpu, None, False)
        bf16 = entry.get("bf16")
        return Device(entry["name"], bf16 if isinstance(bf16, bool) else None, True)
    custom = ctx.get("/hardware/gpu", "dict")
    if custom is not None and isinstance(custom.get("name"), str):
        bf16 = custom.get("bf16", True)
        return Device(custom["name"], bf16 if isinstance(bf16, bool) else None, True)
    return None


def unknown_gpu(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0209: a GPU name the catalog does not know (bf16 and memory checks cannot run)."""
    dev = device(ctx)
    if dev is None or dev.known or gpu_catalog() is None:
        return
    # Suggest only names that extend the written one or that it extends, ignoring case and
    # punctuation (A100 -> A100-40GB or A100-80GB; a100-80 -> A100-80GB): a near miss in the digits
    # (RTX4080 vs RTX-4090) is another product with other memory, not a typo to correct.
    written = _norm(dev.name)
    best = sorted(
        {
            entry["name"]
            for alias, entry in (gpu_catalog() or {}).items()
            if written and (_norm(alias).startswith(written) or written.startswith(_norm(alias)))
        }
    )
    hint = ("did you mean " + " or ".join(f"'{n}'" for n in best[:3]) + "?") if best else None
    yield ctx.diag("FT0209", "/hardware/gpu", gpu=dev.name, hint=hint)


def bf16_support(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0206 bf16 precision / FT0207 QLoRA bf16 compute on a GPU without bf16; FT0208 fp16 where
    bf16 would do."""
    dev = device(ctx)
    if dev is None or dev.cpu or dev.bf16 is None:
        return
    precision = ctx.get("/training/precision", PRECISIONS)
    if not dev.bf16:
        if precision in ("bf16", "bf16-mixed"):
            pointer = "/training/precision"
            yield ctx.diag_at_first(
                "FT0206",
                (pointer, "/hardware/gpu"),
                precision=precision,
                gpu=dev.name,
                origin="" if ctx.given(pointer) else " (the default)",
            )
        if ctx.method() == "qlora":
            pointer = "/adapter/quantization/compute_dtype"
            if ctx.get(pointer, ("bf16", "fp16", "fp32")) == "bf16":
                yield ctx.diag_at_first(
                    "FT0207",
                    (pointer, "/adapter/method"),
                    gpu=dev.name,
                    origin="" if ctx.given(pointer) else " (the default)",
                )
    elif precision == "fp16":
        yield ctx.diag("FT0208", "/training/precision", gpu=dev.name)


def strategy_options(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0211 zero_stage without deepspeed; FT0212 deepspeed without zero_stage; FT0213 offload with a
    strategy that cannot offload; FT0214 offload the ZeRO stage cannot do; FT0215 FSDP optimizer-only
    offload."""
    strategy = ctx.get("/hardware/strategy", STRATEGIES)
    if strategy is None:
        return
    stage = ctx.get("/hardware/zero_stage", "int") if ctx.given("/hardware/zero_stage") else None
    offload = ctx.get("/hardware/offload", OFFLOADS)
    # auto decides later (single or ddp unless the model does not fit), so it promises no offload
    label = "auto (which may pick single or ddp)" if strategy == "auto" else strategy
    if ctx.given("/hardware/zero_stage") and strategy != "deepspeed":
        yield ctx.diag("FT0211", "/hardware/zero_stage", key=True, strategy=label)
    if strategy == "deepspeed" and not ctx.given("/hardware/zero_stage"):
        yield ctx.diag("FT0212", "/hardware/strategy")
    if offload in (None, "none"):
        return
    if strategy not in ("deepspeed", "fsdp"):
        yield ctx.diag("FT0213", "/hardware/offload", offload=offload, strategy=label)
    elif strategy == "deepspeed" and stage is not None:
        need = 3 if offload == "optimizer_and_params" else 1
        if stage < need:
            yield ctx.diag("FT0214", "/hardware/offload", offload=offload, stage=stage, need=need)
    elif strategy == "fsdp" and offload == "optimizer":
        yield ctx.diag("FT0215", "/hardware/offload")


def single_with_several(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0216: strategy single while the hardware section declares several devices."""
    if ctx.get("/hardware/strategy", STRATEGIES) != "single":
        return
    per_node = ctx.get("/hardware/gpus_per_node", "int")
    nodes = ctx.get("/hardware/nodes", "int")
    if per_node is None or nodes is None:
        return
    if per_node * nodes > 1:
        yield ctx.diag("FT0216", "/hardware/strategy", devices=per_node * nodes)


def multi_node_launcher(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0217: several nodes with a launcher that starts processes on one machine only."""
    nodes = ctx.get("/hardware/nodes", "int")
    launcher = ctx.get("/hardware/launcher", ("accelerate", "torchrun", "slurm", "kubernetes"))
    if nodes and nodes > 1 and launcher is not None and launcher not in MULTI_NODE_LAUNCHERS:
        pointer = "/hardware/launcher"
        yield ctx.diag_at_first("FT0217", (pointer, "/hardware/nodes"), nodes=nodes, launcher=launcher)


def optimizer_vs_device(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0218 paged optimizer on CPU; FT0253 bitsandbytes optimizer with DeepSpeed offload."""
    optimizer = ctx.get(
        "/training/optimizer", ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd")
    )
    if optimizer is None:
        return
    dev = device(ctx)
    if optimizer.startswith("paged_") and dev is not None and dev.cpu:
        yield ctx.diag(
            "FT0218",
            "/training/optimizer",
            optimizer=optimizer,
            plain=optimizer.replace("paged_", "").replace("adamw_32bit", "adamw_torch"),
        )
    if (
        optimizer in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
        and ctx.get("/hardware/strategy", STRATEGIES) == "deepspeed"
        and ctx.get("/hardware/offload", OFFLOADS) in ("optimizer", "optimizer_and_params")
    ):
        yield ctx.diag("FT0253", "/training/optimizer", optimizer=optimizer)


def fsdp_on_cpu(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0276: strategy fsdp with gpu cpu (the runtime's FT0704, at launch)."""
    gpu = ctx.get("/hardware/gpu", "str")
    if isinstance(gpu, str) and gpu.lower() == "cpu" and ctx.get("/hardware/strategy", STRATEGIES) == "fsdp":
        yield ctx.diag("FT0276", "/hardware/strategy")


RULES = [
    fsdp_on_cpu,
    unknown_gpu,
    bf16_support,
    strategy_options,
    single_with_several,
    multi_node_launcher,
    optimizer_vs_device,
]
