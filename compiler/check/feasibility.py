"""`ftspec check` memory / time / cost: will the spec fit on its hardware, how long, how much.

`assess(spec, resolved)` resolves the architecture and the GPU, estimates per-GPU memory
(compiler/memory.py), ranks computed suggestions when it does not fit (compiler/suggestions.py) and
estimates time and cost (compiler/throughput.py). Returns data; rendering is `Assessment.text()`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from ftspec.compiler.catalog.arch_shapes import Shapes
from ftspec.compiler.catalog.architecture import resolve_architecture
from ftspec.compiler.catalog.gpus import Gpu, catalog_names, lookup_gpu
from ftspec.compiler.check.memory import (
    GIB,
    MemoryEstimate,
    TrainSetup,
    estimate_memory,
    estimate_setup,
    setup_from_resolved,
)
from ftspec.compiler.check.suggestions import Suggestion, suggest
from ftspec.compiler.check.throughput import TimeEstimate, estimate_time
from ftspec.compiler.core.diagnostics import Diagnostic, make
from ftspec.compiler.core.loader import LoadedSpec
from ftspec.compiler.core.schema import schema_default

__all__ = ["Assessment", "assess", "estimate_memory", "MemoryEstimate"]

TIGHT_FRACTION = 0.05  # less than this share of the GPU left over the usable limit: warn
DEFAULT_P95_SEQ = 2048


def _label(key: str, method: str | None) -> str:
    if key == "weights" and method == "full":
        return "weights (trained)"
    return LABELS.get(key, key)


LABELS = {
    "weights": "weights (frozen base)",
    "gathered_weights": "gathered shards (FSDP/ZeRO-3)",
    "adapter": "adapter weights",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "optimizer_states_paged": "optimizer states (paged)",
    "activations": "activations",
    "logits_and_loss": "logits + loss (fp32)",
    "temporaries": "temporaries",
    "comm_buffers": "communication buffers",
    "stream_pools": "cached by FSDP streams",
    "allocator_reserve": "allocator reserve",
    "cuda_context": "CUDA context / NCCL",
}


@dataclass
class Assessment:
    diagnostics: list[Diagnostic] = field(default_factory=list)
    arch: dict | None = None
    gpu: Gpu | None = None
    setup: TrainSetup | None = None
    memory: MemoryEstimate | None = None
    suggestions: list[Suggestion] = field(default_factory=list)
    time: TimeEstimate | None = None
    seq_len_note: str | None = None

    @property
    def fits(self) -> bool | None:
        return None if self.memory is None else self.memory.fits

    def to_json(self) -> dict:
        memory = None
        if self.memory is not None:
            memory = self.memory.to_json()
            memory["gpu"] = self.gpu.name if self.gpu else None
            memory["architecture_source"] = (self.arch or {}).get("source")
            memory["sequence_len"] = self.setup.seq_len if self.setup else None
            memory["suggestions"] = [s.to_json() for s in self.suggestions]
        return {
            "memory": memory,
            "time": None if self.time is None else self.time.time_json(),
            "cost": None if self.time is None else self.time.cost_json(),
        }

    def text(self, *, width: int = 28) -> str:
        if self.memory is None:
            return "memory: no estimate (see the findings below)"
        m = self.memory
        assert self.setup is not None  # assess() sets it with the memory estimate
        fancy = _fancy(sys.stdout)
        lines = []
        gpu = self.gpu.name if self.gpu else "?"
        world = self.setup.world if self.setup else 1
        unit = "process" if not m.applicable else "GPU"
        lines.append(
            f"memory per {unit} ({world} x {gpu}, {self.setup.method}, micro batch {self.setup.micro_batch} x "
            f"{self.setup.seq_len} tokens, peak in {m.peak_phase.replace('_', '/')})"
        )
        parts = [(k, v / GIB) for k, v in m.components.items() if v / GIB >= 0.005]
        biggest = max((v for _k, v in parts), default=1.0) or 1.0
        for key, gib in parts:
            bar = _bar(gib / biggest, width, fancy)
            lines.append(
                f"  {_label(key, self.setup.method if self.setup else None):30} {gib:8.2f} GiB  {bar}"
            )
        lines.append(
            f"  {'allocated / reserved / device':30} {m.allocated_gib:.2f} / {m.reserved_gib:.2f} / "
            f"{m.device_gib:.2f} GiB"
        )
        if m.fits is None:
            verdict = "no GPU memory check (cpu)" if not m.applicable else "no verdict (GPU memory unknown)"
        else:
            state = ("FITS (tight)" if m.verdict == "tight" else "FITS") if m.fits else "DOES NOT FIT"
            verdict = (
                f"{state}: {m.device_gib:.1f} GiB of {m.usable_gib:.1f} GiB usable "
                f"({m.gpu_memory_gib:.1f} GiB, headroom {m.headroom:.0%})"
            )
        lines.append(f"  verdict: {verdict}")
        for note in m.notes:
            lines.append(f"  note: {note}")
        if self.seq_len_note:
            lines.append(f"  note: {self.seq_len_note}")
        if self.suggestions:
            lines.append("  changes that help (estimated again with each change):")
            for s in self.suggestions:
                mark = "fits" if s.fits else "still too big"
                lines.append(
                    f"    - {s.change}: saves {s.saves_gib:.1f} GiB -> {s.device_gib:.1f} GiB ({mark}); "
                    f"{s.speed}"
                )
        if self.time is not None:
            t = self.time
            lines.append("time and cost")
            if t.hours is not None:
                cost = f", ~${t.cost:,.2f} at ${t.price_per_gpu_hour}/GPU-hour" if t.cost is not None else ""
                lines.append(f"  ~{_duration(t.hours)} on {t.world} GPU(s){cost}")
            else:
                lines.append("  not estimated (no GPU rate or no example count)")
            if t.tokens is not None:
                lines.append(f"  training tokens: {t.tokens:,.0f} ({t.tokens_source})")
            for a in t.assumptions:
                lines.append(f"  assumes: {a}")
            if t.price_source:
                lines.append(f"  price: {t.price_source}")
        return "\n".join(lines)


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.1f} min"
    return f"{hours:.1f} h"


def _fancy(stream) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or (hasattr(stream, "isatty") and stream.isatty())


def _bar(fraction: float, width: int, fancy: bool) -> str:
    n = max(0, min(width, round(fraction * width)))
    if n == 0 and fraction > 0:  # a small component still shows that it is there
        return "▏" if fancy else "."
    return ("█" if fancy else "#") * n


def _seq_len(resolved: dict, data_summary: dict | None) -> tuple[int | None, str | None]:
    """The tokens per row the memory peak sees, with a note on where it came from.

    Packed rows are always full length. Unpacked batches are padded to their longest example, so
    with the data check's lengths the peak batch is min(sequence_len, longest example)."""
    training = resolved.get("training") or {}
    raw = training.get("sequence_len", schema_default("/training/sequence_len"))
    lengths = (data_summary or {}).get("lengths") or {}
    seq: int | None
    note: str | None
    seq, note = (raw, None) if isinstance(raw, int) else (None, None)
    if seq is None:
        p95 = (data_summary or {}).get("sequence_len_p95") or lengths.get("sequence_len")
        if isinstance(p95, int) and p95 > 0:
            seq, note = p95, f"sequence_len p95 = {p95} tokens (from the data check)"
        else:
            return DEFAULT_P95_SEQ, None
    longest = lengths.get("max")
    if not training.get("packing") and isinstance(longest, int) and 0 < longest < seq:
        note = (
            f"{'' if note is None else note + '; '}rows are not packed and the longest example has {longest} "
            f"tokens, so batches are padded to at most {longest}, not {seq}"
        )
        seq = longest
    return seq, note


def assess(spec: LoadedSpec, resolved: dict, data_summary: dict | None = None) -> Assessment:
    """Memory verdict with suggestions, time and cost for one resolved spec."""
    out = Assessment()
    arch, diags = resolve_architecture(spec, resolved)
    out.diagnostics.extend(diags)
    out.arch = arch
    hardware = resolved.get("hardware", {}) or {}
    gpu = lookup_gpu(hardware.get("gpu"))
    if gpu is None:
        names = ", ".join(catalog_names()[:6]) + ", ..."
        out.diagnostics.append(
            make("FT0304", spec.locate("/hardware/gpu"), gpu=hardware.get("gpu"), names=names)
        )
    out.gpu = gpu
    if arch is None:
        return out
    seq, seq_note = _seq_len(resolved, data_summary)
    out.seq_len_note = seq_note
    if not isinstance((resolved.get("training") or {}).get("sequence_len"), int) and seq_note is None:
        out.diagnostics.append(make("FT0316", spec.locate("/training/sequence_len"), seq_len=seq))
    setup = setup_from_resolved(resolved, seq_len=seq)
    out.setup = setup
    shapes = Shapes.from_arch(arch)
    headroom = float(hardware.get("headroom", 0.1))
    on_cpu = bool(gpu and gpu.is_cpu)
    capacity = gpu.memory_gib if gpu else None
    est = estimate_setup(setup, shapes, gpu_memory_gib=capacity, headroom=headroom, on_cpu=on_cpu)
    out.memory = est
    _memory_findings(out, spec, est, shapes, setup, headroom)
    price = hardware.get("price_per_gpu_hour")
    price_source = "hardware.price_per_gpu_hour in the spec" if price is not None else None
    if price is None and gpu is not None and gpu.price_per_hour is not None:
        price, price_source = gpu.price_per_hour, f"list price: {gpu.price_note}"
    tflops = gpu.tflops_bf16 if gpu else None
    out.time = estimate_time(
        setup,
        shapes,
        resolved,
        base_dir=spec.base_dir,
        gpu_tflops=tflops,
        price=price,
        price_source=price_source,
        data_summary=data_summary,
        adapter_params=0 if setup.method == "full" else est.trainable_params,
    )
    _time_findings(out, spec, gpu)
    return out


def _memory_findings(
    out: Assessment, spec: LoadedSpec, est: MemoryEstimate, shapes: Shapes, setup: TrainSetup, headroom: float
) -> None:
    gpu = out.gpu
    for note in est.notes:
        if note.startswith("target modules"):
            out.diagnostics.append(make("FT0315", spec.locate("/adapter/target_modules"), detail=note))
        elif note.startswith("paged"):
            out.diagnostics.append(make("FT0314", spec.locate("/training/optimizer"), detail=note))
        elif note.startswith("CPU offload"):
            out.diagnostics.append(make("FT0317", spec.locate("/hardware/offload"), detail=note))
    if gpu is not None and gpu.is_cpu:
        out.diagnostics.append(
            make(
                "FT0313", spec.locate("/hardware/gpu"), world=setup.world, host_gib=f"{est.allocated_gib:.2f}"
            )
        )
        return
    if est.fits is None:
        return
    assert gpu is not None  # a verdict needs the GPU's memory
    room = est.usable_gib - est.device_gib
    # tight: little room, or the estimate's high end (unpacked data's shape cache, a partly known
    # config) overflows; still a fit (memory.fits stays True), never a substitute for "does not fit"
    tight = est.fits and (room < TIGHT_FRACTION * est.gpu_memory_gib or est.verdict == "tight")
    if not est.fits or tight:
        out.suggestions = suggest(setup, shapes, est, gpu_memory_gib=est.gpu_memory_gib, headroom=headroom)
    fields = dict(
        device_gib=f"{est.device_gib:.1f}",
        allocated_gib=f"{est.allocated_gib:.1f}",
        reserved_gib=f"{est.reserved_gib:.1f}",
        usable_gib=f"{est.usable_gib:.1f}",
        memory_gib=f"{est.gpu_memory_gib:.1f}",
        headroom=f"{headroom:.0%}",
        gpu=gpu.name,
        phase=est.peak_phase.replace("_", "/"),
    )
    largest = sorted(((v, k) for k, v in est.components.items()), reverse=True)[:3]
    fields["largest"] = ", ".join(f"{_label(k, setup.method)} {v / GIB:.1f} GiB" for v, k in largest)
    fixing = [s for s in out.suggestions if s.fits]
    if fixing:
        best = fixing[0]
        fields["fix"] = f"{best.change} brings it to {best.device_gib:.1f} GiB ({best.speed})"
    elif out.suggestions:
        fields["fix"] = (
            f"no single change fits; {out.suggestions[0].change} saves the most ({out.suggestions[0].saves_gib:.1f} GiB)"
        )
    else:
        fields["fix"] = "use a GPU with more memory"
    loc = spec.locate("/hardware/gpu")
    if not est.fits:
        out.diagnostics.append(make("FT0310", loc, **fields))
    elif tight:
        out.diagnostics.append(make("FT0311", loc, **fields))
    else:
        out.diagnostics.append(make("FT0312", loc, **fields))


def _time_findings(out: Assessment, spec: LoadedSpec, gpu: Gpu | None) -> None:
    t = out.time
    if t is None:
        return
    if gpu is not None and gpu.is_cpu:
        out.diagnostics.append(
            make(
                "FT0321",
                spec.locate("/hardware/gpu"),
                detail="hardware.gpu is cpu: no dense rate to estimate training time from",
            )
        )
        return
    if t.tokens is None:
        out.diagnostics.append(
            make(
                "FT0322",
                spec.locate("/dataset/train"),
                detail=t.tokens_source or "the train file could not be read",
            )
        )
        return
    if t.hours is None:
        if gpu is None:
            return  # FT0304 already says the GPU is unknown and time and cost are skipped
        out.diagnostics.append(
            make(
                "FT0321",
                spec.locate("/hardware/gpu"),
                detail="the GPU's dense bf16 rate is unknown: give tflops_bf16",
            )
        )
        return
    cost = (
        f", ~${t.cost:,.2f} at ${t.price_per_gpu_hour}/GPU-hour" if t.cost is not None else ", no price known"
    )
    out.diagnostics.append(
        make(
            "FT0320",
            spec.locate("/hardware/gpu"),
            hours=f"{t.hours:.3g}",
            world=t.world,
            gpu=gpu.name if gpu else "?",
            tokens=f"{t.tokens:,.0f}",
            tflops=t.tflops,
            util=f"{t.utilisation:.0%}",
            cost=cost,
        )
    )
