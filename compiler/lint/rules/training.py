"""Cross-field rules on `training`: exclusive settings, schedule, checkpoints and batch arithmetic."""

from __future__ import annotations

from collections.abc import Iterator

from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.lint.rules.context import RuleContext

MAX_EPOCHS = 3
EFFECTIVE_BATCH_RANGE = (8, 64)


def exclusive_lengths(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0235 epochs with max_steps; FT0236 warmup_steps with warmup_ratio (both written)."""
    if ctx.given("/training/epochs") and ctx.given("/training/max_steps"):
        yield ctx.diag("FT0235", "/training/max_steps", key=True)
    if ctx.given("/training/warmup_steps") and ctx.given("/training/warmup_ratio"):
        yield ctx.diag("FT0236", "/training/warmup_steps", key=True)


def epochs(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0238: more epochs than the guides' 1-3 (memorises the training set)."""
    if ctx.given("/training/max_steps"):
        return  # max_steps decides the length
    value = ctx.get("/training/epochs", "num")
    if value is not None and value > MAX_EPOCHS:
        yield ctx.diag("FT0238", "/training/epochs", epochs=f"{value:g}", limit=MAX_EPOCHS)


def constant_scheduler_warmup(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0242: warmup written with scheduler constant, which has no warmup phase."""
    if ctx.get("/training/scheduler", ("cosine", "linear", "constant", "constant_with_warmup")) != "constant":
        return
    for name in ("warmup_steps", "warmup_ratio"):
        value = ctx.get(f"/training/{name}", "num") if ctx.given(f"/training/{name}") else None
        if value:
            yield ctx.diag("FT0242", f"/training/{name}", key=True, field=name)


def _early_stopping_on(ctx: RuleContext) -> bool:
    patience = ctx.get("/training/early_stopping_patience", "int")
    return bool(patience) and patience > 0


def early_stopping(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0224 early stopping written without eval data; FT0225 checkpoints off the evaluation grid."""
    has_eval = ctx.has_eval_data()
    if not _early_stopping_on(ctx) or has_eval is None:
        return
    if not has_eval:
        # The default patience with no eval data simply turns early stopping off; only a written one
        # says the author expects it to work.
        if ctx.given("/training/early_stopping_patience"):
            yield ctx.diag(
                "FT0224",
                "/training/early_stopping_patience",
                patience=ctx.get("/training/early_stopping_patience", "int"),
            )
        return
    save = ctx.get("/training/save_steps", "int")
    every = ctx.get("/training/eval_steps", "int")
    if save and every and save % every:
        pointer = "/training/save_steps"
        yield ctx.diag_at_first(
            "FT0225",
            (pointer, "/training/eval_steps", "/training/early_stopping_patience"),
            save=save,
            eval=every,
            suggestion=max(every, save // every * every),
        )


def eval_never_runs(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0249: max_steps shorter than eval_steps, so no evaluation happens during training."""
    max_steps = ctx.get("/training/max_steps", "int") if ctx.given("/training/max_steps") else None
    every = ctx.get("/training/eval_steps", "int")
    if max_steps and every and every > max_steps and ctx.has_eval_data():
        pointer = "/training/eval_steps"
        yield ctx.diag_at_first("FT0249", (pointer, "/training/max_steps"), eval=every, max_steps=max_steps)


def world_size(ctx: RuleContext) -> int | None:
    """Processes the job runs on: one for strategy single, else devices per node times nodes."""
    strategy = ctx.get("/hardware/strategy", ("auto", "single", "ddp", "fsdp", "deepspeed"))
    per_node = ctx.get("/hardware/gpus_per_node", "int")
    nodes = ctx.get("/hardware/nodes", "int")
    if strategy is None or per_node is None or nodes is None or per_node < 1 or nodes < 1:
        return None
    return 1 if strategy == "single" else per_node * nodes


def effective_batch(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0241: micro batch x accumulation x world size outside the guides' 8-64."""
    micro = ctx.get("/training/micro_batch_size", "int")
    accum = ctx.get("/training/gradient_accumulation_steps", "int")
    world = world_size(ctx)
    if not micro or not accum or not world or micro < 1 or accum < 1:
        return
    total = micro * accum * world
    low, high = EFFECTIVE_BATCH_RANGE
    if low <= total <= high:
        return
    # Point at the accumulation: it is the knob that changes the batch without touching memory.
    pointer = "/training/gradient_accumulation_steps"
    target = low if total < low else high
    suggestion = max(1, target // (micro * world))
    yield ctx.diag_at_first(
        "FT0241",
        (pointer, "/training/micro_batch_size", "/hardware/gpus_per_node", "/hardware/nodes"),
        total=total,
        micro=micro,
        accum=accum,
        world=world,
        low=low,
        high=high,
        suggestion=suggestion,
        direction="below" if total < low else "above",
    )


def reduce_batch_at_one(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0246: on_oom: reduce_batch written while the micro batch is already 1."""
    if not ctx.given("/training/on_oom"):
        return
    if (
        ctx.get("/training/on_oom", ("fail", "reduce_batch")) == "reduce_batch"
        and ctx.get("/training/micro_batch_size", "int") == 1
    ):
        yield ctx.diag("FT0246", "/training/on_oom")


def full_pure_bf16(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0210: full fine-tuning with pure bf16 weights (updates below bf16 resolution are lost)."""
    if ctx.method() != "full":
        return
    if ctx.get("/training/precision", ("bf16", "bf16-mixed", "fp16", "fp32")) != "bf16":
        return
    # DeepSpeed's bf16 mode keeps fp32 master weights in its optimizer, so the trap does not apply.
    if ctx.get("/hardware/strategy", ("auto", "single", "ddp", "fsdp", "deepspeed")) == "deepspeed":
        return
    pointer = "/training/precision"
    yield ctx.diag_at_first("FT0210", (pointer, "/adapter/method"))


def warmup_beyond_run(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0257: warmup_steps at or above max_steps. The plan clamps warmup to the run, so the learning
    rate rises for the whole run and never reaches its peak; nothing else would say so."""
    if not (ctx.given("/training/warmup_steps") and ctx.given("/training/max_steps")):
        return
    warmup, steps = ctx.get("/training/warmup_steps", "num"), ctx.get("/training/max_steps", "num")
    if warmup is not None and steps is not None and warmup >= steps > 0:
        shown = f"{warmup:g}" if len(str(int(warmup))) <= 15 else f"a {len(str(int(warmup)))}-digit number"
        yield ctx.diag("FT0257", "/training/warmup_steps", warmup=shown, steps=f"{steps:g}")


RULES = [
    warmup_beyond_run,
    exclusive_lengths,
    epochs,
    constant_scheduler_warmup,
    early_stopping,
    eval_never_runs,
    effective_batch,
    reduce_batch_at_one,
    full_pure_bf16,
]
