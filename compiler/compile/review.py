"""REVIEW.md: what a reviewer needs on one screen, from the plan, the data summary and the findings."""

from __future__ import annotations

import re

from ftspec.compiler.compile.render import FILE_DESCRIPTIONS, artifact_names, render_template
from ftspec.compiler.core.diagnostics import Diagnostic

MAX_DESCRIPTION = 300


_MD_LINKS = re.compile(r"([\\\[\]!])")


def md(text: object) -> str:
    """Free text made safe for one Markdown table cell or list item: one line, no HTML (so no `<!--`),
    no pipes, and no link or image (`[x](url)`, `![x](url)`: brackets and bangs are escaped), whatever
    a spec's description or a local config.json's model_type says."""
    value = re.sub(r"\s+", " ", str(text)).strip()
    value = _MD_LINKS.sub(r"\\\1", value).replace("](", "]\\(")  # not even an escaped `](` stays
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value.replace("|", "\\|").replace("`", "\\`")


def code(text: object) -> str:
    """Free text as a Markdown code span: one line, no backticks (a span cannot escape them), no pipes."""
    value = re.sub(r"\s+", " ", str(text)).strip().replace("`", "'").replace("|", "/")
    return f"`{value}`"


def _num(value: float) -> str:
    return f"{value:g}"


def _model(plan: dict) -> str:
    m = plan["derived"]["model"]
    arch = plan["derived"].get("architecture") or {}
    rev = f" @ {code(m['revision'][:12])}" if m.get("revision") else " (no revision pinned)"
    shape = []
    if arch.get("params_b"):
        shape.append(f"{_num(arch['params_b'])}B params")
    if arch.get("model_type"):
        shape.append(md(arch["model_type"]))
    if arch.get("layers"):
        shape.append(f"{arch['layers']} layers")
    return f"{code(m['id'])}{rev}" + (f" ({', '.join(shape)})" if shape else "")


def _adapter(spec: dict) -> str:
    a = spec["adapter"]
    method = a.get("method", "lora")
    if method == "full":
        return "full fine-tuning (every weight trained)"
    targets = a.get("target_modules", "all-linear")
    targets = targets if isinstance(targets, str) else ", ".join(targets)
    text = (
        f"{'QLoRA' if method == 'qlora' else 'LoRA'} r={a.get('r')} alpha={_num(a.get('alpha', 0))} "
        f"(alpha/r {_num(round(a.get('alpha', 0) / a.get('r', 1), 2))}), dropout {_num(a.get('dropout', 0))}, "
        f"targets {md(targets)}{', DoRA' if a.get('dora') else ''}"
    )
    if method == "qlora":
        q = a.get("quantization") or {}
        text += (
            f"; base in {q.get('bits', 4)}-bit {q.get('quant_type', 'nf4')}"
            f"{' + double quant' if q.get('double_quant') else ''}, compute {q.get('compute_dtype', 'bf16')}"
        )
    return text


def _data(plan: dict, summary: dict | None) -> str:
    d = plan["derived"]
    parts = []
    for src in d.get("train_sources", []):
        mix = f" ({_num(src['fraction'])} of the mix)" if src.get("fraction") is not None else ""
        parts.append(f"{code(src['path'])} {src['records']} records{mix}")
    ds = plan["spec"]["dataset"]
    if ds.get("eval"):
        eval_from = code(ds["eval"])
    elif ds.get("eval_split"):
        eval_from = f"eval_split {_num(ds['eval_split'])} of train"
    else:
        eval_from = "no eval set"
    text = f"{d['train_examples']} train / {d['eval_examples']} eval ({eval_from}); format {md(ds.get('format'))}"
    if parts:
        text += "; " + ", ".join(parts)
    if summary and summary.get("duplicates", {}).get("method") not in (None, "off"):
        text += f"; exact duplicates {summary['duplicates'].get('exact', 0)}"
    return text


def _lengths(plan: dict, summary: dict | None) -> str:
    d = plan["derived"]
    written = plan["spec"]["training"].get("sequence_len")
    seq = f"sequence_len {d['sequence_len']}" + (" (measured p95)" if written == "p95" else "")
    ln = (summary or {}).get("lengths") or {}
    if not ln or ln.get("p50") is None:
        return seq + "; lengths not measured (run `ftspec check`)"
    how = "tokenizer" if ln.get("method") == "tokenizer" else "estimated"
    lost = ln.get("dropped") if ln.get("truncation") == "drop" else ln.get("truncated")
    verb = "dropped" if ln.get("truncation") == "drop" else "truncated"
    return (
        f"{seq}; tokens ({how}) p50 {ln.get('p50')}, p95 {ln.get('p95')}, max {ln.get('max')}; "
        f"{lost or 0} {verb}"
    )


def _schedule(plan: dict) -> str:
    d = plan["derived"]
    t = plan["spec"]["training"]
    length = (
        f"max_steps {d['total_steps']}"
        if "max_steps" in t
        else f"{_num(t.get('epochs', 0))} epochs x {d['steps_per_epoch']} steps = {d['total_steps']} steps"
    )
    return (
        f"{length}, warmup {d['warmup_steps']}; lr {t.get('learning_rate'):g} {t.get('scheduler')}, "
        f"{t.get('optimizer')}, weight decay {_num(t.get('weight_decay', 0))}, clip {_num(t.get('max_grad_norm', 0))}; "
        f"eval every {t.get('eval_steps')}, save every {t.get('save_steps')}"
    )


def _batch(plan: dict) -> str:
    d = plan["derived"]
    return (
        f"effective {d['effective_batch']} = {d['micro_batch_size']} micro x "
        f"{d['gradient_accumulation_steps']} accumulation x {d['world_size']} processes"
        f"{'; packing' if plan['spec']['training'].get('packing') else ''}"
    )


def _precision(plan: dict) -> str:
    d = plan["derived"]
    gc = "on" if plan["spec"]["training"].get("gradient_checkpointing") else "off"
    return f"{d['precision']} (autocast {d['mixed_precision']}); gradient checkpointing {gc}"


def _hardware(plan: dict) -> str:
    d = plan["derived"]
    gpu = plan["spec"]["hardware"].get("gpu")
    gpu_name = gpu.get("name") if isinstance(gpu, dict) else gpu
    strategy = {
        "single": "single device",
        "ddp": "DDP",
        "fsdp": "FSDP2",
        "deepspeed": f"DeepSpeed ZeRO-{d.get('zero_stage')}",
    }[d["strategy"]]
    offload = f", offload {d['offload']}" if d.get("offload", "none") != "none" else ""
    return (
        f"{d['nodes']} node(s) x {d['gpus_per_node']} x {md(gpu_name)} ({d['device']}); {strategy}{offload}; "
        f"launcher {d['launcher']}"
    )


def _memory(estimate: dict | None) -> str:
    mem = (estimate or {}).get("memory")
    if not mem:
        return "no estimate"
    per = (mem.get("per_gpu") or {}).get("device_gib")
    cap, usable = mem.get("gpu_memory_gib"), mem.get("usable_gib")
    if per is None:
        return "no estimate"
    if cap is None:
        return f"{per:.1f} GiB (no device memory to compare: CPU processes)"
    verdict = {True: "fits", False: "DOES NOT FIT", None: "unknown"}[mem.get("fits")]
    return (
        f"{per:.1f} GiB of {cap:.1f} GiB ({100 * per / cap:.0f}%; usable {usable:.1f} GiB after "
        f"headroom): {verdict}"
    )


def _time(estimate: dict | None) -> str:
    hours = ((estimate or {}).get("time") or {}).get("hours")
    if hours is None:
        return "no estimate"
    if hours * 60 < 1:
        return "under a minute"
    return f"~{hours * 60:.0f} min" if hours < 1 else f"~{hours:.1f} h"


def _cost(estimate: dict | None) -> str:
    cost = (estimate or {}).get("cost") or {}
    if cost.get("total") is None:
        return "no estimate"
    return (
        f"~${cost['total']:,.2f} ({_num(cost.get('gpu_hours') or 0)} GPU-hours at "
        f"${_num(cost.get('price_per_gpu_hour') or 0)}/GPU-hour)"
    )


def render_review(plan: dict, *, data_summary: dict | None, diagnostics: list[Diagnostic]) -> str:
    spec = plan["spec"]
    estimate = plan.get("estimate")
    shown = [d for d in diagnostics if d.severity in ("error", "warning")]
    warnings = [
        f"{d.code} {d.severity}: {md(d.message)}" + (f" ({code(d.pointer)})" if d.pointer else "")
        for d in sorted(shown, key=lambda d: (d.severity != "error", d.code, d.pointer, d.message))
    ]
    description = md(spec.get("description", ""))
    if len(description) > MAX_DESCRIPTION:
        description = description[: MAX_DESCRIPTION - 1] + "…"
    meta = plan["metadata"]
    context = {
        "name": md(spec["name"]),
        "forced": plan.get("forced", False),
        "description": description,
        "model": _model(plan),
        "adapter": _adapter(spec),
        "data": _data(plan, data_summary),
        "lengths": _lengths(plan, data_summary),
        "schedule": _schedule(plan),
        "batch": _batch(plan),
        "precision": _precision(plan),
        "hardware": _hardware(plan),
        "memory": _memory(estimate),
        "time": _time(estimate),
        "cost": _cost(estimate),
        "output": f"{code(plan['derived']['output_dir'])} (save {spec['output'].get('save')}, relative to the spec folder)",
        "spec": f"{code(meta['spec_file'])} sha256 {code(meta['spec_sha256'][:16])}, ftspec {meta['ftspec_version']}",
        "warnings": warnings,
        "files": [{"name": n, "what": FILE_DESCRIPTIONS[n]} for n in artifact_names(plan)],
    }
    return render_template("REVIEW.md.j2", context, shell=False)
