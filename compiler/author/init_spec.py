"""`ftspec init`: a new spec from four answers (model, data file, GPU and count, goal metric).

It inspects the data (format, example count, estimated token lengths), starts from the guides'
defaults (LoRA r=16, alpha=r, all-linear, DoRA, lr 2e-4, 1-3 epochs, a held-out eval split, the base
model benchmarked first through `min_gain_over_base`) and walks down a ladder of setups, running the
memory estimate on each, until one fits the GPU: gradient checkpointing, smaller micro batches,
sharding across GPUs, then QLoRA. Every value gets a comment saying why it was chosen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.core.diagnostics import Diagnostic, Location, make

TARGET_EFFECTIVE_BATCH = 16  # the guides' 8-64 range, at its lower middle for small data sets
METRICS = ("exact_match", "f1", "rouge_l", "accuracy", "contains", "json_schema", "regex")


@dataclass
class InitAnswers:
    model: str
    data: str  # path as given (relative to the current folder)
    gpu: str
    gpus: int = 1
    metric: str = "exact_match"
    output: Path = Path("ftspec.yaml")
    name: str | None = None


@dataclass
class DataSummary:
    path: Path
    format: str
    examples: int
    p50_tokens: int
    p95_tokens: int
    max_tokens: int
    bad_records: int = 0


@dataclass
class InitResult:
    values: dict[str, tuple[object, str]] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    summary: DataSummary | None = None
    estimate: dict | None = None  # the chosen setup's memory estimate (to_json)
    text: str = ""
    data: dict = field(default_factory=dict)


def _percentile(values: list[int], q: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def inspect_data(path: Path, shown: str) -> tuple[DataSummary | None, list[Diagnostic]]:
    """Format (by the keys of the first records), example count and estimated token lengths."""
    from ftspec.compiler.check.data.lengths import estimate_tokens
    from ftspec.compiler.dataset.formats import FORMATS, detect_format, to_messages
    from ftspec.compiler.dataset.records import DataFileError, RecordReader

    loc = Location(shown, None, None, "/dataset/train")
    counts: dict[str, int] = {}
    lengths: list[int] = []
    bad = 0
    reader = RecordReader(path)
    try:
        for _line, value, error in reader:
            if error is not None or not isinstance(value, dict):
                bad += 1
                continue
            fmt = detect_format(value)
            if fmt not in FORMATS:
                bad += 1
                continue
            counts[fmt] = counts.get(fmt, 0) + 1
            try:
                messages = to_messages(value, fmt)
            except (KeyError, TypeError, AttributeError, ValueError):
                bad += 1
                continue
            # role header and end-of-turn tokens: about 4 per message in chatml/llama3 templates
            lengths.append(sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in messages))
    except DataFileError as exc:
        return None, [make("FT0920", loc, path=shown, detail=str(exc))]
    if not counts:
        detail = (
            f"no chatml, sharegpt or alpaca records found ({bad} unusable)" if bad else "the file is empty"
        )
        return None, [make("FT0920", loc, path=shown, detail=detail)]
    fmt = max(counts, key=lambda k: counts[k])
    summary = DataSummary(
        path=path,
        format=fmt,
        examples=counts[fmt],
        p50_tokens=_percentile(lengths, 0.5),
        p95_tokens=_percentile(lengths, 0.95),
        max_tokens=max(lengths),
        bad_records=bad,
    )
    out = []
    if len(counts) > 1 or bad:
        out.append(
            make(
                "FT0924",
                loc,
                severity="warning",
                detail=f"{shown}: {counts[fmt]} {fmt} records, {sum(counts.values()) - counts[fmt] + bad} "
                "others that `ftspec check` will report",
                hint="one format per file",
            )
        )
    return summary, out


def _sequence_len(p95: int) -> int:
    """The p95 length rounded up to a multiple of 256, at least 512: few examples are truncated."""
    return max(512, -(-p95 // 256) * 256)


def _epochs(examples: int) -> int:
    """The guides' 1-3 epochs: more passes over small sets, one over large ones."""
    if examples < 1000:
        return 3
    return 2 if examples < 10_000 else 1


def _ladder(gpus: int, bf16: bool) -> list[dict]:
    """Setups from the guides' defaults down to the most memory-frugal, in the order they are tried."""
    base = {
        "method": "lora",
        "ckpt": False,
        "micro": 4,
        "strategy": "auto",
        "optimizer": "adamw_torch",
        "offload": "none",
        "why": "the guides' defaults fit",
    }
    steps = [
        dict(base),
        dict(base, ckpt=True, why="gradient checkpointing was needed to fit"),
        dict(base, ckpt=True, micro=2, why="gradient checkpointing and micro batch 2 were needed to fit"),
        dict(base, ckpt=True, micro=1, why="gradient checkpointing and micro batch 1 were needed to fit"),
    ]
    if gpus > 1:
        steps += [
            dict(
                base,
                ckpt=True,
                micro=2,
                strategy="fsdp",
                why="the 16-bit model does not fit one GPU: FSDP shards it across the GPUs",
            ),
            dict(
                base,
                ckpt=True,
                micro=1,
                strategy="fsdp",
                why="FSDP sharding with micro batch 1 was needed to fit",
            ),
        ]
    steps += [
        dict(
            base,
            method="qlora",
            ckpt=True,
            micro=2,
            optimizer="paged_adamw_8bit",
            why="LoRA on the 16-bit model does not fit: QLoRA keeps the base in 4 bits",
        ),
        dict(
            base,
            method="qlora",
            ckpt=True,
            micro=1,
            optimizer="paged_adamw_8bit",
            why="QLoRA with micro batch 1 was needed to fit",
        ),
    ]
    if gpus > 1:
        steps += [
            dict(
                base,
                method="qlora",
                ckpt=True,
                micro=1,
                strategy="fsdp",
                optimizer="paged_adamw_8bit",
                why="QLoRA sharded with FSDP was needed to fit",
            )
        ]
    steps += [
        dict(
            base,
            method="qlora",
            ckpt=True,
            micro=1,
            strategy="deepspeed",
            optimizer="adamw_torch",
            offload="optimizer",
            why="QLoRA with the optimizer offloaded to CPU was needed to fit",
        )
    ]
    return steps


def _describe(step: dict) -> str:
    """A ladder step in words: `qlora, micro batch 1, gradient checkpointing, fsdp`."""
    parts = [step["method"], f"micro batch {step['micro']}"]
    if step["ckpt"]:
        parts.append("gradient checkpointing")
    if step["strategy"] != "auto":
        parts.append(step["strategy"])
    if step["offload"] != "none":
        parts.append(f"{step['offload']} offloaded to CPU")
    return ", ".join(parts)


def _architecture(model: str, base_dir: Path) -> dict | None:
    from ftspec.compiler.catalog.architecture import catalog_entry, from_config, local_model_dir

    folder = local_model_dir(model, base_dir)
    if folder is not None:
        try:
            return from_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None
    entry = catalog_entry(model)
    return dict(entry) if entry else None


def _spec_values(
    answers: InitAnswers, summary: DataSummary | None, step: dict, bf16: bool, train_rel: str, name: str
) -> dict[str, tuple[object, str]]:
    examples = summary.examples if summary else 0
    seq = _sequence_len(summary.p95_tokens) if summary else 2048
    world = max(1, answers.gpus)
    accum = max(1, TARGET_EFFECTIVE_BATCH // (step["micro"] * world))
    v: dict[str, tuple[object, str]] = {
        "/version": (1, ""),
        "/name": (name, ""),
        "/description": (
            f"Fine-tune {answers.model} on {Path(answers.data).name}; written by `ftspec init`.",
            "",
        ),
        "/model/id": (answers.model, "pin model.revision to the commit you benchmark"),
        "/model/chat_template": (
            "model",
            "the tokenizer's own template; chatml/llama3/alpaca for base models",
        ),
        "/dataset/format": (summary.format if summary else "chatml", "detected from the records' keys"),
        "/dataset/train": (train_rel, f"{examples} examples" if summary else "not inspected"),
        "/dataset/eval_split": (
            0.1 if examples < 10_000 else 0.05,
            "held out to measure the fine-tuned model against the base",
        ),
        "/adapter/method": (step["method"], step["why"]),
        "/adapter/r": (16, "the guides' starting rank"),
        "/adapter/alpha": (16, "alpha = r: the update scale stays 1 when r changes"),
        "/adapter/dropout": (0.05, "light regularisation for small data sets"),
        "/adapter/target_modules": ("all-linear", "every linear layer: the guides' default for quality"),
        "/adapter/dora": (True, "DoRA: closer to full fine-tuning at LoRA's size"),
        "/training/epochs": (_epochs(examples), f"1-3 epochs by data size ({examples} examples)"),
        "/training/learning_rate": (2.0e-4, "the guides' LoRA learning rate"),
        "/training/scheduler": ("cosine", ""),
        "/training/warmup_ratio": (0.03, ""),
        "/training/optimizer": (
            step["optimizer"],
            "paged 8-bit states, as in the QLoRA paper" if step["optimizer"] == "paged_adamw_8bit" else "",
        ),
        "/training/micro_batch_size": (step["micro"], "largest that fits the memory estimate"),
        "/training/gradient_accumulation_steps": (accum, f"effective batch {step['micro'] * world * accum}"),
        "/training/sequence_len": (
            seq,
            f"estimated p95 of the examples is {summary.p95_tokens} tokens"
            if summary
            else "ftspec's default",
        ),
        "/training/precision": ("bf16" if bf16 else "fp16", "" if bf16 else "the GPU has no bf16"),
        "/training/gradient_checkpointing": (
            step["ckpt"],
            "needed to fit" if step["ckpt"] else "off: the setup fits without it and trains ~30% faster",
        ),
        "/hardware/gpu": (answers.gpu, ""),
        "/hardware/gpus_per_node": (world, ""),
        "/evaluation/task/metric": (answers.metric, "the goal metric"),
        "/acceptance": (
            [{"metric": "task", "min_gain_over_base": 0.05}],
            "the base model is benchmarked first; the adapter must beat it by 5 points",
        ),
    }
    if step["strategy"] != "auto":
        v["/hardware/strategy"] = (step["strategy"], "sharding was needed to fit")
    if step["strategy"] == "deepspeed":
        v["/hardware/zero_stage"] = (2, "ZeRO-2 shards optimizer states and gradients")
    if step["offload"] != "none":
        v["/hardware/offload"] = (step["offload"], "the optimizer state lives in CPU memory")
    if step["method"] == "qlora" and not bf16:
        v["/adapter/quantization/compute_dtype"] = ("fp16", "the GPU has no bf16")
    return v


def build(answers: InitAnswers) -> InitResult:
    """Decide every value; the result holds the commented YAML in `.text`."""
    from ftspec.compiler.author.importers.render import build as build_yaml
    from ftspec.compiler.author.importers.render import dump
    from ftspec.compiler.catalog.gpus import catalog_names, lookup_gpu
    from ftspec.compiler.core.resolve import resolve

    out = InitResult()
    shown = str(answers.output)
    gpu = lookup_gpu(answers.gpu)
    if gpu is None:
        out.diagnostics.append(
            make(
                "FT0921",
                Location(shown, None, None, "/hardware/gpu"),
                gpu=answers.gpu,
                hint="known GPUs: " + ", ".join(catalog_names()) + ", or cpu",
            )
        )
        return out
    if answers.metric not in METRICS:
        out.diagnostics.append(
            make(
                "FT0925",
                Location(shown, None, None, "/evaluation/task/metric"),
                detail=f"unknown metric '{answers.metric}'",
                hint="one of " + ", ".join(METRICS),
            )
        )
        return out
    data_path = Path(answers.data)
    summary, diags = inspect_data(data_path, answers.data)
    out.diagnostics.extend(diags)
    out.summary = summary
    if summary is None:
        return out
    spec_dir = Path(answers.output).resolve().parent
    train_rel = Path(os.path.relpath(data_path.resolve(), spec_dir)).as_posix()
    name = answers.name or _name(answers.output, data_path)
    arch = _architecture(answers.model, spec_dir)
    bf16 = gpu.bf16
    ladder = _ladder(answers.gpus, bf16)
    chosen, estimate = ladder[0], None
    if gpu.is_cpu:
        chosen = dict(ladder[0], ckpt=True, micro=2, why="CPU processes: no device memory to fit")
    elif arch is None:
        out.diagnostics.append(
            make(
                "FT0923",
                Location(shown, None, None, "/model/id"),
                model=answers.model,
                detail="it is not in the model catalog and is not a local folder with config.json",
            )
        )
        chosen = dict(
            ladder[1],
            why="no memory estimate for this model: LoRA with gradient checkpointing, "
            "unchecked against the GPU",
        )
    else:
        from ftspec.compiler.check.memory import estimate_memory

        smallest = None
        for step in ladder:
            values = _spec_values(answers, summary, step, bf16, train_rel, name)
            resolved = resolve(_plain(values))
            # as `ftspec check` does: unpacked batches are padded only to their longest example
            rows = min(
                resolved["training"]["sequence_len"],
                summary.max_tokens or resolved["training"]["sequence_len"],
            )
            est = estimate_memory(resolved, arch, gpu_memory_gib=gpu.memory_gib, seq_len=rows)
            if smallest is None or est.device_gib < smallest[1].device_gib:
                smallest = (step, est)
            if est.fits:
                chosen, estimate = step, est
                break
        if estimate is None:
            assert smallest is not None  # the ladder is never empty
            step, estimate = smallest
            # say what the spec holds: the smallest setup tried, which still does not fit
            chosen = dict(step, why=f"nothing fits; the smallest setup tried is {_describe(step)}")
            out.diagnostics.append(
                make(
                    "FT0922",
                    Location(shown, None, None, "/adapter/method"),
                    model=answers.model,
                    gpus=answers.gpus,
                    gpu=gpu.name,
                    need_gib=f"{estimate.device_gib:.1f}",
                    have_gib=f"{estimate.usable_gib:.1f}",
                )
            )
        out.estimate = estimate.to_json()
    out.values = _spec_values(answers, summary, chosen, bf16, train_rel, name)
    if estimate is not None:
        method, value = out.values["/adapter/method"]
        out.values["/adapter/method"] = (
            method,
            f"{value}: ~{estimate.device_gib:.1f} of {estimate.usable_gib:.1f} GiB usable per GPU",
        )
        if not estimate.fits:
            for pointer in ("/training/micro_batch_size", "/training/gradient_checkpointing"):
                held, _why = out.values[pointer]
                out.values[pointer] = (held, "the smallest setup tried; it still does not fit")
    out.diagnostics.append(
        make(
            "FT0924",
            Location(shown, None, None, "/adapter/method"),
            detail=f"{summary.examples} {summary.format} examples, p95 ~{summary.p95_tokens} "
            f"tokens; chose {chosen['method']} ({chosen['why']})",
            hint="",
        )
    )
    if summary.examples < 500:
        out.diagnostics.append(
            make(
                "FT0924",
                Location(shown, None, None, "/dataset/train"),
                severity="warning",
                detail=f"{summary.examples} examples is below dataset.min_examples (500): "
                "`ftspec check` will stop there",
                hint="the guides ask for 500-10,000",
            )
        )
    out.data, root = build_yaml(out.values)
    out.text = dump(
        root,
        [
            "Written by `ftspec init`. Each comment says why a value was chosen;",
            "run `ftspec check` (data, memory, cost) and `ftspec compile` next.",
        ],
    )
    return out


def _plain(values: dict[str, tuple[object, str]]) -> dict:
    from ftspec.compiler.author.importers.render import build as build_yaml

    data, _root = build_yaml(values)
    return data


def _name(output: Path, data: Path) -> str:
    from ftspec.compiler.author.importers.common import spec_name

    stem = Path(output).stem
    return spec_name(data.stem if stem in ("ftspec", "spec") else stem)
