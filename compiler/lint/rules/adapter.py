"""Cross-field rules on `adapter`: what each method allows, QLoRA settings, and the guides' ranges."""

from __future__ import annotations

from collections.abc import Iterator

from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.lint.rules.context import RuleContext

# Fields that only mean something for a LoRA adapter. Checked on the RAW spec: the schema fills r,
# alpha, dropout and dora with defaults that full fine-tuning simply ignores.
_LORA_ONLY = ("r", "alpha", "dropout", "target_modules")

# The guides' ranges (spec-format.md, "warnings, not errors").
MAX_LR = {"lora": 5e-4, "qlora": 5e-4, "full": 1e-4}
ALPHA_R_RANGE = (1.0, 2.0)
HIGH_RANK, FEW_EXAMPLES = 64, 10_000

_PRECISION_FAMILY = {"bf16": "bf16", "bf16-mixed": "bf16", "fp16": "fp16", "fp32": "fp32"}


def method_fields(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0202 LoRA fields with full; FT0203 dora with full; FT0201 quantization without qlora."""
    method = ctx.method()
    if method is None or not isinstance(ctx.raw("/adapter"), dict):
        return
    if method == "full":
        for name in _LORA_ONLY:
            if ctx.given(f"/adapter/{name}"):
                yield ctx.diag("FT0202", f"/adapter/{name}", key=True, field=name)
        if ctx.given("/adapter/dora"):
            yield ctx.diag("FT0203", "/adapter/dora", key=True)
    if method != "qlora" and ctx.given("/adapter/quantization"):
        why = (
            "full fine-tuning updates every weight, and quantized weights cannot be trained"
            if method == "full"
            else "method lora keeps the base model in its own precision"
        )
        yield ctx.diag("FT0201", "/adapter/quantization", key=True, method=method, why=why)


def quantization_options(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0204: 4-bit-only options written for 8-bit quantization."""
    if ctx.method() != "qlora" or ctx.get("/adapter/quantization/bits", (4, 8)) != 8:
        return
    for name in ("quant_type", "double_quant"):
        if ctx.given(f"/adapter/quantization/{name}"):
            yield ctx.diag("FT0204", f"/adapter/quantization/{name}", key=True, field=name)


def compute_dtype_matches_precision(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0205: QLoRA compute dtype from another family than the training precision."""
    if ctx.method() != "qlora":
        return
    compute = ctx.get("/adapter/quantization/compute_dtype", ("bf16", "fp16", "fp32"))
    precision = ctx.get("/training/precision", ("bf16", "bf16-mixed", "fp16", "fp32"))
    if compute is None or precision is None:
        return
    if compute == "bf16":
        from ftspec.compiler.lint.rules.hardware import device

        dev = device(ctx)
        if dev is not None and dev.bf16 is False:
            return  # FT0207 (no bf16 on this GPU) is the finding that matters
    if _PRECISION_FAMILY[precision] != compute and precision != "fp32":
        pointer = "/adapter/quantization/compute_dtype"
        yield ctx.diag_at_first(
            "FT0205",
            (pointer, "/training/precision", "/adapter/method"),
            compute=compute,
            precision=precision,
            want=_PRECISION_FAMILY[precision],
        )


def learning_rate(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0237: learning rate above the guides' ceiling for the method."""
    method = ctx.method()
    lr = ctx.get("/training/learning_rate", "num")
    if method is None or lr is None or lr <= MAX_LR[method]:
        return
    given = ctx.given("/training/learning_rate")
    yield ctx.diag_at_first(
        "FT0237",
        ("/training/learning_rate", "/adapter/method"),
        lr=f"{lr:g}",
        origin="" if given else " (the default)",
        limit=f"{MAX_LR[method]:g}",
        method=method,
    )


def alpha_over_r(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0239: LoRA alpha/r far from the guides' 1-2."""
    if ctx.method() not in ("lora", "qlora"):
        return
    r, alpha = ctx.get("/adapter/r", "int"), ctx.get("/adapter/alpha", "num")
    if not r or not alpha or r <= 0:
        return
    ratio = alpha / r
    low, high = ALPHA_R_RANGE
    if low <= ratio <= high:
        return
    pointer = "/adapter/alpha" if ctx.given("/adapter/alpha") else "/adapter/r"
    yield ctx.diag(
        "FT0239",
        pointer,
        ratio=f"{ratio:g}",
        alpha=f"{alpha:g}",
        r=r,
        low=f"{r * low:g}",
        high=f"{r * high:g}",
    )


def rank_vs_data(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0240: a high LoRA rank over a small dataset (overfits; the guides start at 16)."""
    if ctx.method() not in ("lora", "qlora"):
        return
    r = ctx.get("/adapter/r", "int")
    if r is None or r <= HIGH_RANK:
        return
    from ftspec.compiler.lint.rules.data import train_example_count

    count = train_example_count(ctx, cap=FEW_EXAMPLES)
    if count is None or count >= FEW_EXAMPLES:
        return
    yield ctx.diag("FT0240", "/adapter/r", r=r, count=count, limit=HIGH_RANK, few=f"{FEW_EXAMPLES:,}")


RULES = [
    method_fields,
    quantization_options,
    compute_dtype_matches_precision,
    learning_rate,
    alpha_over_r,
    rank_vs_data,
]
