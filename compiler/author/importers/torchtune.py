"""torchtune YAML -> spec v1. Builders (`_component_`) and keys are mapped in
compiler/data/import_torchtune.json."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ftspec.compiler.author.importers.common import (
    ImportOptions,
    ImportResult,
    Translation,
    describe,
    load_table,
    spec_name,
)
from ftspec.compiler.core.loader import LoadedSpec

_BUILDER = re.compile(r"^(?:torchtune\.models\.[a-z0-9_]+\.)(?P<prefix>q?lora_)?(?P<name>[a-z0-9_]+)$")
_SPLIT = re.compile(r"^(?P<name>\w+)\[(?P<a>\d*)%?:(?P<b>\d*)%?\]$")


def translate(source: LoadedSpec, options: ImportOptions) -> ImportResult:
    table = load_table("import_torchtune.json")
    t = Translation("torchtune", "torchtune", source, options)
    t.set("/version", 1, "")
    t.set("/name", options.name or spec_name(Path(source.path).stem), "from the config's file name")
    t.set("/description", f"Imported from the torchtune config {Path(source.path).name}.", "")
    method = _model(t, table)
    _dataset(t, table)
    _optimizer(t, table)
    _schedule(t)
    _output(t, method)
    t.defaults(
        table["defaults"], adapter=method != "full", max_steps=t.get("/training/max_steps") is not None
    )
    _distributed(t)
    t.hardware()
    t.finish(table["ignored"], set())
    return t.result()


_NPROC = re.compile(r"^#.*\btune\s+run\s+--nproc_per_node\s+(\d+)\s+(\S+)", re.M)
_SHARDED_KEYS = (
    "fsdp_cpu_offload",
    "custom_sharded_layers",
    "fsdp_reshard_after_forward",
    "tensor_parallel_dim",
)


def _distributed(t: Translation) -> None:
    """A torchtune distributed recipe (its launch line `tune run --nproc_per_node N ..._distributed`,
    or FSDP keys) trains on N GPUs with FSDP; written as one GPU, check and compile planned a 405B
    QLoRA for a single device. The header's N wins; FSDP keys alone mean the sharded default."""
    if t.options.gpus is not None or t.get("/hardware/gpus_per_node") is not None:
        return
    launch = _NPROC.search(t.source.text)
    if launch and "single_device" not in launch.group(2):
        gpus, origin = (
            int(launch.group(1)),
            f"torchtune launch line: tune run --nproc_per_node {launch.group(1)}",
        )
    elif "single_device" not in Path(t.source.path).name and any(k in t.config for k in _SHARDED_KEYS):
        gpus = load_table("import_common.json")["default_hardware"]["gpus_per_node_sharded"]
        origin = "assumed: the config shards with FSDP but does not say how many GPUs"
    else:
        return
    if gpus > 1:
        t.set("/hardware/gpus_per_node", gpus, origin)
        if t.get("/hardware/strategy") is None:
            t.set("/hardware/strategy", "fsdp", "torchtune's distributed recipes shard with FSDP")


def _component(value: object) -> str:
    return str(value.get("_component_", "")) if isinstance(value, dict) else ""


def _model(t: Translation, table: dict) -> str:
    model = t.take("model")
    checkpointer = t.config.get("checkpointer") or {}
    builder = _component(model)
    match = _BUILDER.match(builder)
    if not match:
        t.report(
            "FT0909",
            "/model",
            detail=f"model builder {builder or '(none)'} is not a torchtune model builder",
            hint="the config needs model._component_ such as torchtune.models.llama3_1.lora_llama3_1_8b",
        )
        return "lora"
    prefix, name = match.group("prefix") or "", match.group("name")
    method = {"lora_": "lora", "qlora_": "qlora", "": "full"}[prefix]
    hub = table["models"].get(name)
    folder = checkpointer.get("checkpoint_dir") if isinstance(checkpointer, dict) else None
    local = Path(t.source.path).resolve().parent / str(folder) if folder else None
    if local is not None and (local / "config.json").is_file():
        t.set("/model/id", t.spec_path(local), t.origin("/checkpointer/checkpoint_dir"))
    elif hub:
        chosen = _catalog_match(Path(str(folder)).name if folder else "", hub)
        t.set("/model/id", chosen, f"torchtune {builder.rsplit('.', 1)[-1]}, line {t.line('/model')}")
        if folder:
            t.note(
                "/checkpointer/checkpoint_dir",
                f"torchtune reads the weights from {folder}, which is not "
                f"here; the spec names the Hub model they were downloaded from ({chosen})",
                hint="set model.id to a local folder holding config.json to train from local weights",
            )
    else:
        t.report(
            "FT0909",
            "/model/_component_",
            detail=f"model builder {builder} is not in ftspec's table of torchtune models",
            hint="set model.id in the written spec",
        )
    t.set("/adapter/method", method, t.origin("/model/_component_"))
    if not isinstance(model, dict):
        return method
    for key, value in model.items():
        ptr = f"/model/{key}"
        if key in ("_component_", "lora_attn_modules", "apply_lora_to_mlp", "apply_lora_to_output"):
            continue
        if key == "lora_rank":
            t.put_typed(ptr, "/adapter/r", value, "int")
        elif key == "lora_alpha":
            t.put_typed(ptr, "/adapter/alpha", value, "number")
        elif key == "lora_dropout":
            t.put_typed(ptr, "/adapter/dropout", value, "number")
        elif key == "use_dora":
            t.set("/adapter/dora", bool(value), t.origin(ptr))
        elif key == "quantize_base" and value is True and method == "lora":
            method = "qlora"
            t.set("/adapter/method", "qlora", t.origin(ptr))
        elif value is not None:
            t.drop(
                ptr,
                "ftspec has no setting for this builder argument",
                hint="check whether it changes the model or the adapter",
            )
    if method == "qlora":
        t.set("/adapter/quantization/bits", 4, t.origin("/model/_component_"))
    if method != "full":
        _targets(t, model, table)
    return method


def _catalog_match(folder: str, hub: str) -> str:
    """The catalog id whose name (or alias) is the checkpoint folder's name, else the builder's base id."""
    catalog = load_table("models.json").get("models", [])
    wanted = folder.lower().strip("/")
    for entry in catalog:
        for candidate in [entry["id"], *entry.get("aliases", [])]:
            if candidate.split("/")[-1].lower() == wanted:
                return candidate
    return hub


def _targets(t: Translation, model: dict, table: dict) -> None:
    names = table["lora_modules"]
    attn = model.get("lora_attn_modules") or []
    targets: list[str] = []
    for module in attn:
        mapped = names.get(str(module))
        if mapped is None:
            t.drop(
                "/model/lora_attn_modules",
                f"module {module} has no Hugging Face equivalent",
                severity="warning",
            )
        else:
            targets.append(mapped)
    if model.get("apply_lora_to_mlp"):
        targets += names["mlp"]
    if model.get("apply_lora_to_output"):
        targets.append(names["output"])
    every = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    if set(targets) == every:
        t.set("/adapter/target_modules", "all-linear", t.origin("/model/lora_attn_modules"))
    elif targets:
        t.set("/adapter/target_modules", targets, t.origin("/model/lora_attn_modules"))
        t.note(
            "/model/lora_attn_modules",
            "torchtune module names are written as their Hugging Face names "
            "(output_proj = o_proj, w1/w3/w2 = gate_proj/up_proj/down_proj)",
            once=True,
        )


def _split(value: object) -> tuple[str, float | None, float | None] | None:
    """`train[:95%]` -> ("train", None, 0.95); None when the split is not a percentage slice."""
    if value is None:
        return ("train", None, None)
    match = _SPLIT.match(str(value).replace(" ", ""))
    if not match:
        return (str(value), None, None) if re.fullmatch(r"\w+", str(value)) else None
    a, b = match.group("a"), match.group("b")
    return match.group("name"), (int(a) / 100 if a else None), (int(b) / 100 if b else None)


def _dataset(t: Translation, table: dict) -> None:
    ds = t.take("dataset")
    val = t.take("dataset_val")
    builder = _component(ds)
    entry = table["datasets"].get(builder)
    if not isinstance(ds, dict) or entry is None:
        t.unsupported(
            "/dataset",
            f"dataset builder {builder or describe(ds)} has no equivalent; ftspec reads "
            "chatml, sharegpt or alpaca JSON Lines files",
            hint="export the data to one of those formats",
        )
        return
    split = _split(ds.get("split"))
    if split is None:
        t.unsupported(
            "/dataset/split", f"split {ds.get('split')} is not a percentage slice ftspec can rebuild"
        )
        split = ("train", None, None)
    fmt = entry["format"]
    if builder == "torchtune.datasets.chat_dataset":
        style = ds.get("conversation_style")
        fmt = {"openai": "chatml", "sharegpt": "sharegpt"}.get(str(style))
        if fmt is None:
            t.unsupported("/dataset/conversation_style", f"conversation_style {style} has no equivalent")
            fmt = "chatml"
        source = str(ds.get("source", ""))
        files = ds.get("data_files")
        if source in ("json", "jsonl") and files:
            local = Path(t.source.path).resolve().parent / str(files[0] if isinstance(files, list) else files)
            path = t.spec_path(local)
        else:
            path = t.hub_dataset("/dataset/source", source, split[0])
    else:
        path = t.hub_dataset("/dataset/_component_", entry["hub"], split[0])
        if entry.get("chat_template"):
            t.set("/model/chat_template", entry["chat_template"], t.origin("/dataset/_component_"))
    t.set("/dataset/format", fmt, t.origin("/dataset/_component_"))
    t.set("/dataset/train", path, t.origin("/dataset/_component_"))
    held_out = None
    if split[2] is not None and split[1] is None:
        held_out = round(1 - split[2], 6)
    elif split[1] is not None or split[2] is not None:
        t.unsupported("/dataset/split", f"split {ds.get('split')} trains on a middle slice of the data")
    if held_out:
        if 0 < held_out < 0.5:
            t.set("/dataset/eval_split", held_out, t.origin("/dataset/split"))
            t.note(
                "/dataset/split",
                f"split {ds.get('split')} holds out the last {held_out:.0%} in file order; "
                f"ftspec's eval_split: {held_out} holds out a random {held_out:.0%} drawn with training.seed",
            )
        else:
            t.drop(
                "/dataset/split",
                f"holding out {held_out:.0%} is outside eval_split's range (0-50%)",
                severity="warning",
            )
    if isinstance(val, dict) and _component(val) == builder and held_out:
        t.note(
            "/dataset_val",
            f"dataset_val reads the held-out {held_out:.0%} of the same data: it is dataset.eval_split",
        )
    elif isinstance(val, dict):
        t.drop(
            "/dataset_val",
            "ftspec's held-out set comes from the same data (eval_split) or a local file (dataset.eval)",
            severity="warning",
        )
    for key, value in ds.items():
        ptr = f"/dataset/{key}"
        if key in ("_component_", "split", "source", "data_files", "conversation_style"):
            continue
        if key == "packed":
            if value is not None:
                t.set("/training/packing", bool(value), t.origin(ptr))
        elif key == "train_on_input":
            if value is not None:
                t.set("/training/loss_on", "all" if value is True else "assistant", t.origin(ptr))
        elif value is not None:
            t.drop(
                ptr, "ftspec has no per-dataset setting for it", hint="check whether it changes the examples"
            )
    _dataset_defaults(t, builder, ds, entry)
    if fmt == "alpaca":
        t.note(
            "/dataset/_component_",
            "torchtune's alpaca prompt puts a non-empty input under its own "
            "'### Input:' heading; ftspec's alpaca template folds the input into the instruction block",
        )


def _dataset_defaults(t: Translation, builder: str, ds: dict, entry: dict) -> None:
    """The builder's own defaults for the arguments the config leaves unset (import_torchtune.json
    datasets.<builder>.defaults). alpaca_dataset and alpaca_cleaned_dataset train on the prompt too
    (train_on_input=True), which is ftspec's loss_on: all, not its default assistant-only loss."""
    name = builder.rsplit(".", 1)[-1]
    fields: dict[str, tuple[str, Callable[[object], object]]] = {
        "train_on_input": ("/training/loss_on", lambda v: "all" if v else "assistant"),
        "packed": ("/training/packing", bool),
    }
    for key, default in entry.get("defaults", {}).items():
        if ds.get(key) is not None or key not in fields:
            continue
        field, convert = fields[key]
        value = convert(default)
        written = t.peer_default(
            field,
            value,
            f"torchtune default for unset dataset.{key} ({name}: {default})",
            f"torchtune's {name} defaults to {key}={default}",
        )
        if written and key == "train_on_input":
            t.note(
                "/dataset/_component_",
                f"torchtune's {name} trains on the prompt as well as the answer "
                f"(train_on_input defaults to True); the spec writes training.loss_on: all so the loss "
                "stays the same, where ftspec's default (assistant) would train on the answers only",
                hint="set training.loss_on: assistant to train on the answers only",
            )


def _optimizer(t: Translation, table: dict) -> None:
    opt = t.take("optimizer")
    builder = _component(opt)
    entry = table["optimizers"].get(builder)
    if entry is None or entry["to"] is None:
        t.changed(
            "/optimizer/_component_" if builder else "/optimizer",
            builder or opt,
            "/training/optimizer",
            "adamw_torch",
            "ftspec's optimizers are AdamW (torch, 8-bit, paged) and SGD",
        )
        t.set("/training/optimizer", "adamw_torch", f"replaces torchtune {builder} (not supported)")
    else:
        t.set("/training/optimizer", entry["to"], t.origin("/optimizer/_component_"))
        if entry.get("note"):
            t.note("/optimizer/_component_", entry["note"])
    if not isinstance(opt, dict):
        return
    for key, value in opt.items():
        ptr = f"/optimizer/{key}"
        if key == "_component_" or value is None:
            continue  # null: unset, the optimizer's default applies
        if key == "lr":
            t.put_typed(ptr, "/training/learning_rate", value, "number")
        elif key == "weight_decay":
            t.put_typed(ptr, "/training/weight_decay", value, "number")
        elif key in ("fused", "foreach"):
            continue  # kernel choice: the same update
        else:
            t.drop(ptr, "ftspec uses the optimizer's defaults for its other arguments", severity="warning")
    _optimizer_defaults(t, builder, opt, entry)


def _optimizer_defaults(t: Translation, builder: str, opt: dict, entry: dict | None) -> None:
    """The optimizer class's own lr and weight_decay where the config leaves them unset."""
    fields = {"lr": "/training/learning_rate", "weight_decay": "/training/weight_decay"}
    name = builder.rsplit(".", 1)[-1] if builder else "optimizer"
    for key, default in ((entry or {}).get("defaults") or {}).items():
        if opt.get(key) is not None or key not in fields:
            continue
        t.peer_default(
            fields[key],
            default,
            f"torchtune default for unset optimizer.{key} ({builder}: {default})",
            f"{name}'s default {key}",
        )
    if opt.get("lr") is None and "/training/learning_rate" not in t.values:
        t.note(
            "/optimizer",
            f"the config sets no optimizer.lr and ftspec does not know {builder or 'its'} "
            "default; the spec uses ftspec's learning_rate",
            hint="set training.learning_rate",
        )


def _schedule(t: Translation) -> None:
    table = load_table("import_torchtune.json")
    sched = t.take("lr_scheduler")
    builder = _component(sched)
    if sched is None:
        t.set("/training/scheduler", "constant", "torchtune: no lr_scheduler = constant learning rate")
        t.set("/training/warmup_steps", 0, "torchtune: no lr_scheduler = no warmup")
        t.defaults_written.append("training.scheduler: constant, training.warmup_steps: 0")
    elif builder in table["schedulers"]:
        t.set("/training/scheduler", table["schedulers"][builder], t.origin("/lr_scheduler/_component_"))
        for key, value in sched.items():
            if key == "num_warmup_steps":
                t.set("/training/warmup_steps", int(value), t.origin(f"/lr_scheduler/{key}"))
            elif key != "_component_":
                t.drop(
                    f"/lr_scheduler/{key}",
                    "ftspec's cosine schedule takes no other arguments",
                    severity="warning",
                )
        if "num_warmup_steps" not in sched:
            t.set("/training/warmup_steps", 0, "torchtune scheduler without num_warmup_steps")
    else:
        t.changed(
            "/lr_scheduler/_component_",
            builder,
            "/training/scheduler",
            "cosine",
            "ftspec's schedules are cosine, linear, constant and constant_with_warmup",
        )
        t.set("/training/scheduler", "cosine", f"replaces torchtune {builder}")
    epochs, per_epoch = t.take("epochs"), t.take("max_steps_per_epoch")
    if epochs is not None:
        t.set("/training/epochs", epochs, t.origin("/epochs"))
    if per_epoch is not None:
        total = int(per_epoch) * int(epochs or 1)
        t.changed(
            "/max_steps_per_epoch",
            per_epoch,
            "/training/max_steps",
            total,
            "ftspec caps the whole run, not each epoch; equal when every epoch reaches the cap",
        )
        t.set("/training/max_steps", total, t.origin("/max_steps_per_epoch"))
        t.unset("/training/epochs")
    for key, target in (
        ("batch_size", "/training/micro_batch_size"),
        ("gradient_accumulation_steps", "/training/gradient_accumulation_steps"),
        ("log_every_n_steps", "/training/logging_steps"),
    ):
        value = t.take(key)
        if value is not None:
            t.set(target, int(value), t.origin(f"/{key}"))
    clip = t.take("clip_grad_norm")
    if clip is not None:
        t.set("/training/max_grad_norm", float(clip), t.origin("/clip_grad_norm"))
    seed = t.take("seed")
    if seed is None:
        t.note(
            "/seed" if "seed" in t.config else "",
            "torchtune picks a random seed when seed is null; "
            "the spec keeps ftspec's fixed seed (training.seed: 42) so runs repeat",
        )
    else:
        t.set("/training/seed", int(seed), t.origin("/seed"))
    dtype = t.take("dtype", "bf16")
    precision = {"bf16": "bf16", "fp32": "fp32"}.get(str(dtype))
    if precision is None:
        t.changed("/dtype", dtype, "/training/precision", "bf16", "torchtune trains in bf16 or fp32")
        precision = "bf16"
    t.set(
        "/training/precision",
        precision,
        t.origin("/dtype") if "dtype" in t.config else "torchtune default dtype",
    )
    ac = t.take("enable_activation_checkpointing")
    if ac is not None:
        t.set("/training/gradient_checkpointing", bool(ac), t.origin("/enable_activation_checkpointing"))
    if t.take("fsdp_cpu_offload") is True:
        t.set("/hardware/strategy", "fsdp", t.origin("/fsdp_cpu_offload"))
        t.set("/hardware/offload", "optimizer_and_params", t.origin("/fsdp_cpu_offload"))
    tokenizer = t.config.get("tokenizer")
    if isinstance(tokenizer, dict):
        if tokenizer.get("max_seq_len"):
            t.set("/training/sequence_len", int(tokenizer["max_seq_len"]), t.origin("/tokenizer/max_seq_len"))
        else:
            t.note(
                "/tokenizer/max_seq_len" if "max_seq_len" in tokenizer else "/tokenizer",
                "torchtune does not truncate when max_seq_len is null; ftspec truncates at "
                "training.sequence_len (2048 by default)",
                hint="run `ftspec check` for the longest example and raise sequence_len (or use p95)",
            )


def _output(t: Translation, method: str) -> None:
    out = t.take("output_dir")
    if out:
        t.output_dir("/output_dir", out)
    if method != "full":
        only = t.take("save_adapter_weights_only")
        if only is True:
            t.set("/output/save", "adapter", t.origin("/save_adapter_weights_only"))
        else:
            t.set(
                "/output/save",
                "both",
                t.origin("/save_adapter_weights_only")
                if only is False
                else "torchtune default: adapter and merged weights",
            )
    logger = _component(t.config.get("metric_logger"))
    if logger.endswith("TensorBoardLogger"):
        t.set("/output/report_to", ["tensorboard"], t.origin("/metric_logger/_component_"))
    elif logger.endswith(("WandBLogger", "CometLogger")):
        t.drop(
            "/metric_logger/_component_",
            f"{logger.rsplit('.', 1)[-1]} is not supported; ftspec reports to "
            "metrics.jsonl, tensorboard or mlflow",
            severity="warning",
        )
    elif logger.endswith("MLFlowLogger"):
        t.set("/output/report_to", ["mlflow"], t.origin("/metric_logger/_component_"))
