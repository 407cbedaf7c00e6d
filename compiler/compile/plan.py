"""The plan: the fully resolved spec plus every derived value, and where each value came from.

`plan.json` is the only thing the runtime reads (docs/contracts.md). Everything here is arithmetic on
the resolved spec and the data files' record counts; nothing depends on the machine that compiles,
so the same inputs give the same bytes.

Step arithmetic (the runtime follows the same formula):
    steps_per_epoch = ceil(train_examples / (micro_batch_size x world_size x gradient_accumulation_steps))
A partial last batch is kept, never dropped: the sampler pads each rank's share to ceil(N / world)
(DistributedSampler, drop_last=False), each rank's last micro batch may be short, and the last
optimizer step of an epoch accumulates however many micro batches remain. Because nested integer
ceilings compose (ceil(ceil(ceil(N/w)/m)/a) == ceil(N/(w*m*a))), that per-rank view gives exactly the
formula above. `total_steps` is authoritative: the runtime trains exactly that many optimizer steps
(max_steps), so examples dropped at run time (truncation: drop, packing) change epochs, not the
schedule the reviewer approved.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ftspec.compiler import __version__
from ftspec.compiler.core.artifacts import (  # noqa: F401 - re-exported for the build and its callers
    PLAN_KIND,
    PLAN_SCHEMA_VERSION,
    dumps_json,
    read_plan,
    spec_sha256,
    write_atomic,
    write_plan,
)
from ftspec.compiler.core.diagnostics import Diagnostic, has_errors, make
from ftspec.compiler.core.loader import LoadedSpec, join_pointer, split_pointer
from ftspec.compiler.core.resolve import resolve_strategy, world_size
from ftspec.compiler.core.schema import schema_default
from ftspec.compiler.dataset.sources import count_records, mixed_total, split_counts, train_entries

ACCELERATE_CONFIG = "accelerate.yaml"
DEEPSPEED_CONFIG = "deepspeed.json"

# accelerate's --mixed_precision values: autocast dtype per spec precision.
MIXED_PRECISION = {"bf16": "bf16", "bf16-mixed": "bf16", "fp16": "fp16", "fp32": "no"}


class PlanError(Exception):
    """The plan cannot be built; `.diagnostics` says why (at least one error)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        super().__init__("; ".join(d.message for d in diagnostics if d.severity == "error"))
        self.diagnostics = diagnostics


# ---------------------------------------------------------------------------------------- overrides


def override_pointer(key: str) -> str:
    """`training.learning_rate` or `/training/learning_rate` -> `/training/learning_rate`."""
    if key.startswith("/"):
        return key
    out = ""
    for token in key.split("."):
        out = join_pointer(out, token)
    return out


def set_pointer(data: dict, pointer: str, value: object) -> None:
    """Write `value` at `pointer`, creating mappings on the way; list items are addressed by index."""
    tokens = split_pointer(pointer)
    if not tokens:
        raise KeyError("an override needs a key")
    node: object = data
    for token in tokens[:-1]:
        if isinstance(node, list):
            node = node[int(token)]
        else:
            mapping = cast(dict, node)  # a scalar parent fails at .get, as before
            if not isinstance(mapping.get(token), (dict, list)):
                mapping[token] = {}
            node = mapping[token]
    last = tokens[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise KeyError(f"{pointer}: parent is not a mapping")


def apply_overrides(data: dict, overrides: dict | None) -> dict:
    """A deep copy of `data` with each override written in (keys: dotted names or JSON pointers)."""
    out = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        set_pointer(out, override_pointer(key), copy.deepcopy(value))
    return out


# ------------------------------------------------------------------------------------------- counts


def example_counts(spec: LoadedSpec, resolved: dict) -> tuple[dict, list[Diagnostic]]:
    """Train/eval example counts from the files (eval_split: ceil(split x N) go to eval, the
    convention of datasets' train_test_split, which the runtime uses with the training seed)."""
    dataset = resolved.get("dataset", {})
    base = spec.base_dir
    diags: list[Diagnostic] = []
    sources: list[dict] = []
    counts: list[tuple[int, float | None]] = []
    for entry in train_entries(dataset):
        written, pointer, fraction = entry.path, entry.pointer, entry.fraction
        try:
            n = count_records(base / written)
        except OSError as exc:
            diags.append(make("FT0602", spec.locate(pointer), path=written, detail=exc.strerror or str(exc)))
            n = 0
        counts.append((n, fraction))
        entry = {"path": written, "records": n}
        if fraction is not None:
            entry["fraction"] = fraction
        sources.append(entry)
    train = mixed_total(counts)
    eval_examples = 0
    if isinstance(dataset.get("eval"), str):
        try:
            eval_examples = count_records(base / dataset["eval"])
        except OSError as exc:
            diags.append(
                make(
                    "FT0602",
                    spec.locate("/dataset/eval"),
                    path=dataset["eval"],
                    detail=exc.strerror or str(exc),
                )
            )
    elif dataset.get("eval_split"):
        train, eval_examples = split_counts(train, dataset["eval_split"])
    return {"train_examples": train, "eval_examples": eval_examples, "train_sources": sources}, diags


# ------------------------------------------------------------------------------------------ sources


def value_sources(resolved: dict, given: dict, overrides: set[str], prefix: str = "/spec") -> dict[str, str]:
    """JSON pointer (inside the plan) -> spec | default | cli, for every leaf of the resolved spec."""
    out: dict[str, str] = {}

    def walk(value: object, given_value: object, present: bool, pointer: str) -> None:
        if pointer in overrides:
            out[prefix + pointer] = "cli"
            return
        if isinstance(value, dict) and value:
            for key in sorted(value):
                sub_given = given_value.get(key) if isinstance(given_value, dict) else None
                sub_present = present and isinstance(given_value, dict) and key in given_value
                walk(value[key], sub_given, sub_present, join_pointer(pointer, key))
            return
        if isinstance(value, list) and value and present and isinstance(given_value, list):
            for i, item in enumerate(value):
                sub_present = i < len(given_value)
                walk(item, given_value[i] if sub_present else None, sub_present, join_pointer(pointer, i))
            return
        out[prefix + (pointer or "")] = "spec" if present else "default"

    walk(resolved, given, True, "")
    return out


# --------------------------------------------------------------------------------------------- plan


def _sequence_len(
    spec: LoadedSpec, training: dict, data_summary: dict | None, resolved: dict
) -> tuple[int | None, list[Diagnostic], dict | None]:
    value = training.get("sequence_len", schema_default("/training/sequence_len"))
    if value != "p95":
        return int(value), [], data_summary
    if data_summary is None:
        try:
            from ftspec.compiler.check.data.datacheck import check_data
        except ImportError:
            check_data = None
        if check_data is not None:
            data_summary = check_data(spec, resolved).summary
    p95 = (data_summary or {}).get("sequence_len_p95")
    if not isinstance(p95, int) or p95 <= 0:
        return None, [make("FT0601", spec.locate("/training/sequence_len"))], data_summary
    # the schema's floor for a written sequence_len holds for the measured one too
    return max(16, p95), [], data_summary


ARCH_FIELDS = ("model_type", "decoder_layer_class", "params_b", "layers", "hidden")


def _catalog_architecture(model_id: str) -> dict | None:
    """The built-in model catalog's entry for `model_id` (by id or alias, case-insensitive)."""
    from importlib import resources

    raw = json.loads(
        resources.files("ftspec.compiler.data").joinpath("models.json").read_text(encoding="utf-8")
    )
    wanted = model_id.lower()
    for entry in raw.get("models", []):
        names = [entry.get("id", "")] + list(entry.get("aliases") or [])
        if wanted in (n.lower() for n in names):
            return entry
    return None


def architecture_summary(spec: LoadedSpec, resolved: dict) -> dict | None:
    """The shape fields the build needs (FSDP wrap class, DeepSpeed bucket sizes).

    Uses the feasibility stage's resolver when it is installed (spec > local config.json > catalog);
    otherwise the spec's own fields over the built-in catalog.
    """
    arch: dict | None = None
    try:
        from ftspec.compiler.catalog.architecture import resolve_architecture
    except ImportError:
        resolve_architecture = None
    if resolve_architecture is not None:
        arch, _diags = resolve_architecture(spec, resolved)  # check reports these diagnostics
    if arch is None:
        model = resolved.get("model", {})
        arch = dict(_catalog_architecture(str(model.get("id", ""))) or {})
        arch.update(model.get("architecture") or {})
    out = {k: arch.get(k) for k in ARCH_FIELDS}
    return out if any(v is not None for v in out.values()) else None


@dataclass(frozen=True)
class Schedule:
    """The batch shape and the length of the run, as the runtime will step it."""

    world: int
    micro: int
    accumulation: int
    effective: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def _example_counts(
    spec: LoadedSpec, resolved: dict, data_summary: dict | None
) -> tuple[dict, list[Diagnostic]]:
    counts, diags = example_counts(spec, resolved)
    if data_summary and isinstance(data_summary.get("train_examples"), int):
        # the data check counted usable records (valid JSON, right format): the runtime trains on those
        counts["train_examples"] = data_summary["train_examples"]
        counts["eval_examples"] = int(data_summary.get("eval_examples") or 0)
    return counts, diags


def _schedule(training: dict, hardware: dict, train_examples: int) -> Schedule:
    """Effective batch = micro x accumulation x world; steps from max_steps or epochs; warmup clamped."""
    world = world_size(hardware)
    micro = int(training.get("micro_batch_size", schema_default("/training/micro_batch_size")))
    accum = int(
        training.get("gradient_accumulation_steps", schema_default("/training/gradient_accumulation_steps"))
    )
    effective = micro * accum * world
    steps_per_epoch = math.ceil(train_examples / effective) if train_examples else 0
    if "max_steps" in training:
        total_steps = int(training["max_steps"])
    else:
        epochs = float(training.get("epochs", schema_default("/training/epochs")))
        total_steps = math.ceil(epochs * steps_per_epoch)
    if "warmup_steps" in training:
        warmup = int(training["warmup_steps"])
    else:
        warmup = math.ceil(float(training.get("warmup_ratio", 0.0)) * total_steps)
    return Schedule(world, micro, accum, effective, steps_per_epoch, total_steps, min(warmup, total_steps))


def _derived(spec: LoadedSpec, resolved: dict, schedule: Schedule, seq_len: int | None, counts: dict) -> dict:
    """plan.json's `derived` section: every value the launch and the runtime act on, computed once."""
    training = resolved.get("training", {})
    hardware = resolved.get("hardware", {})
    model = resolved.get("model", {})
    strategy = resolve_strategy(hardware)
    precision = training.get("precision", "bf16")
    model_id = str(model.get("id", ""))
    return {
        "strategy": strategy,
        "device": "cpu" if hardware.get("gpu") == "cpu" else "cuda",
        "nodes": int(hardware.get("nodes", 1)),
        "gpus_per_node": int(hardware.get("gpus_per_node", 1)),
        "world_size": schedule.world,
        "micro_batch_size": schedule.micro,
        "gradient_accumulation_steps": schedule.accumulation,
        "effective_batch": schedule.effective,
        "sequence_len": seq_len,
        "train_examples": counts["train_examples"],
        "eval_examples": counts["eval_examples"],
        "train_sources": counts["train_sources"],
        "steps_per_epoch": schedule.steps_per_epoch,
        "total_steps": schedule.total_steps,
        "warmup_steps": schedule.warmup_steps,
        "precision": precision,
        "mixed_precision": MIXED_PRECISION[precision],
        "zero_stage": int(hardware.get("zero_stage", 0)) if strategy == "deepspeed" else None,
        "offload": hardware.get("offload", "none"),
        "output_dir": resolved["output"]["dir"],  # resolve() names it runs/<name> when not given
        "model": {
            "id": model_id,
            "revision": model.get("revision"),
            "builtin": model_id.startswith("builtin:"),
        },
        "architecture": architecture_summary(spec, resolved),
        "launcher": hardware.get("launcher", "accelerate"),
        "main_process_port": int(hardware.get("main_process_port", 29500)),
    }


def _launch_section(derived: dict, options: dict, sources: dict[str, str]) -> dict:
    """plan.json's `launch` section (config file names; the image for Kubernetes), sources updated."""
    launch: dict = {
        "accelerate_config": ACCELERATE_CONFIG,
        "deepspeed_config": DEEPSPEED_CONFIG if derived["strategy"] == "deepspeed" else None,
    }
    if derived["launcher"] == "kubernetes":
        launch["image"] = options.get("image") or f"ftspec:{__version__}"
        launch["container_build_dir"] = options.get("container_build_dir") or "/workspace/build"
        sources["/launch/image"] = "cli" if options.get("image") else "default"
        sources["/launch/container_build_dir"] = "cli" if options.get("container_build_dir") else "default"
    return launch


def plan_with_diagnostics(
    spec: LoadedSpec,
    resolved: dict,
    *,
    build_dir: Path,
    overrides: dict | None = None,
    forced: bool = False,
    estimate: dict | None = None,
    data_summary: dict | None = None,
    launch_options: dict | None = None,
) -> tuple[dict | None, list[Diagnostic]]:
    """The plan.json content, or None with the error diagnostics that stopped it.

    Steps: overrides in, sequence length, example counts, the schedule (batch shape and length),
    the derived values, where each value came from, the launch section, the envelope.
    """
    override_ptrs = {override_pointer(k): v for k, v in (overrides or {}).items()}
    resolved = copy.deepcopy(resolved)
    for pointer, value in override_ptrs.items():  # idempotent when the caller applied them already
        set_pointer(resolved, pointer, copy.deepcopy(value))
    training = resolved.get("training", {})
    seq_len, diags, data_summary = _sequence_len(spec, training, data_summary, resolved)
    counts, count_diags = _example_counts(spec, resolved, data_summary)
    diags.extend(count_diags)
    schedule = _schedule(training, resolved.get("hardware", {}), counts["train_examples"])
    if schedule.total_steps <= 0 and not has_errors(diags):
        diags.append(make("FT0603", spec.locate("/dataset/train"), examples=counts["train_examples"]))
    derived = _derived(spec, resolved, schedule, seq_len, counts)
    sources = value_sources(resolved, spec.data if isinstance(spec.data, dict) else {}, set(override_ptrs))
    sources.update(_derived_sources(derived, sources, p95=training.get("sequence_len") == "p95"))
    launch = _launch_section(derived, dict(launch_options or {}), sources)
    if has_errors(diags):
        return None, diags
    plan = {
        "metadata": {
            "schema_version": PLAN_SCHEMA_VERSION,
            "kind": PLAN_KIND,
            "ftspec_version": __version__,
            "spec_sha256": spec_sha256(spec),
            "spec_file": Path(spec.path).name,
        },
        "spec": resolved,
        "paths": {"spec_dir": Path(os.path.relpath(spec.base_dir, Path(build_dir).resolve())).as_posix()},
        "derived": derived,
        "launch": launch,
        "sources": dict(sorted(sources.items())),
        "estimate": estimate,
        "forced": bool(forced),
    }
    return plan, diags


# derived values that pass a spec value through keep that value's origin
_PASS_THROUGH = {
    "nodes": "/spec/hardware/nodes",
    "gpus_per_node": "/spec/hardware/gpus_per_node",
    "micro_batch_size": "/spec/training/micro_batch_size",
    "gradient_accumulation_steps": "/spec/training/gradient_accumulation_steps",
    "precision": "/spec/training/precision",
    "offload": "/spec/hardware/offload",
    "output_dir": "/spec/output/dir",
    "launcher": "/spec/hardware/launcher",
    "main_process_port": "/spec/hardware/main_process_port",
}


def _derived_sources(derived: dict, spec_sources: dict[str, str], *, p95: bool) -> dict[str, str]:
    out = {}
    for key in derived:
        origin = "derived"
        if key in _PASS_THROUGH:
            origin = spec_sources.get(_PASS_THROUGH[key], "derived")
        elif key == "sequence_len":
            origin = "derived" if p95 else spec_sources.get("/spec/training/sequence_len", "default")
        out[f"/derived/{key}"] = origin
    return out


def build_plan(
    spec: LoadedSpec,
    resolved: dict,
    *,
    build_dir: Path,
    overrides: dict | None = None,
    forced: bool = False,
    estimate: dict | None = None,
    data_summary: dict | None = None,
    launch_options: dict | None = None,
) -> dict:
    """The plan.json content (docs/contracts.md). Raises PlanError when a value cannot be resolved."""
    plan, diags = plan_with_diagnostics(
        spec,
        resolved,
        build_dir=build_dir,
        overrides=overrides,
        forced=forced,
        estimate=estimate,
        data_summary=data_summary,
        launch_options=launch_options,
    )
    if plan is None:
        raise PlanError(diags)
    return plan
