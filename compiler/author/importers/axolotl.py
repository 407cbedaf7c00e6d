"""Axolotl YAML -> spec v1. Key tables live in compiler/data/import_axolotl.json."""

from __future__ import annotations

from pathlib import Path

from ftspec.compiler.author.importers.common import (
    ImportOptions,
    ImportResult,
    Translation,
    describe,
    load_table,
    schema_default,
    spec_name,
)
from ftspec.compiler.core.loader import LoadedSpec

LORA_POINTERS = (
    "/adapter/r",
    "/adapter/alpha",
    "/adapter/dropout",
    "/adapter/dora",
    "/adapter/target_modules",
)


# rl: values ftspec trains (training.objective); every other rl (kto, ipo, simpo, grpo, ...) is refused
PREFERENCE_RL = {"dpo": "dpo", "orpo": "orpo"}


def _objective(t: Translation) -> None:
    """rl: dpo | orpo -> training.objective with beta (Axolotl: rl_beta for DPO, orpo_alpha, the
    ORPO paper's lambda, for ORPO); other rl methods stay refused at their line."""
    rl = t.take("rl")
    beta = t.take("rl_beta")
    alpha = t.take("orpo_alpha")
    if not rl:
        return
    objective = PREFERENCE_RL.get(str(rl).lower())
    if objective is None:
        t.unsupported(
            "/rl",
            f"rl: {rl} is a preference or reinforcement-learning method ftspec does not train "
            "(it trains sft, dpo and orpo)",
            hint="use rl: dpo or rl: orpo, or import the SFT stage's config instead",
        )
        return
    t.set("/training/objective", objective, t.origin("/rl"))
    strength, key = (alpha, "orpo_alpha") if objective == "orpo" else (beta, "rl_beta")
    if isinstance(strength, (int, float)) and not isinstance(strength, bool) and strength > 0:
        t.set("/training/beta", strength, t.origin(f"/{key}"))


def translate(source: LoadedSpec, options: ImportOptions) -> ImportResult:
    table = load_table("import_axolotl.json")
    t = Translation("axolotl", "Axolotl", source, options)
    t.set("/version", 1, "")
    t.set("/name", options.name or spec_name(Path(source.path).stem), "from the config's file name")
    t.set("/description", f"Imported from the Axolotl config {Path(source.path).name}.", "")

    _objective(t)
    _model(t)
    t.direct(table["direct"])
    method = _adapter(t)
    _targets(t, method)
    _schedule(t, table)
    _precision(t, method)
    _datasets(t, table)
    if t.get("/training/objective") in ("dpo", "orpo"):  # pairs, whatever the dataset's prompt type
        t.set("/dataset/format", "preference", t.origin("/rl") + ": records {prompt, chosen, rejected}")
    _excess_length(t)
    _eval(t)
    _output(t)
    _distributed(t)
    t.defaults(
        table["defaults"], adapter=method != "full", max_steps=t.get("/training/max_steps") is not None
    )
    _required(t, table, method)
    if not t.has("warmup_steps") and not t.has("warmup_ratio"):
        t.note(
            "",
            "Axolotl's default warmup is 3% of the steps capped at 100 steps; ftspec's "
            "warmup_ratio: 0.03 has no cap, which differs for runs longer than 3,333 steps",
            hint="set training.warmup_steps to fix the warmup length",
        )
    t.hardware()
    t.finish(table["ignored"], set(table["handled"]) | set(table["direct"]))
    return t.result()


def _required(t: Translation, table: dict, method: str) -> None:
    """Keys Axolotl has no default for (import_axolotl.json required): the original does not run
    without them, so the value the spec takes instead is said, not assumed."""
    for entry in table["required"]["keys"]:
        if entry.get("when") == "adapter" and method == "full":
            continue
        if t.has(entry["key"]):
            continue
        shown = entry["field"].strip("/").replace("/", ".")
        ours = schema_default(entry["field"])
        t.report(
            "FT0905",
            "",
            severity="warning",
            detail=f"{entry['key']} is not set and Axolotl has no default for it (the config does not run "
            f"without it); the spec uses ftspec's default {shown}: {describe(ours)}",
            hint=f"set {shown} to the value the original run used",
        )


def _model(t: Translation) -> None:
    base = t.take("base_model")
    if not base:
        t.report("FT0909", "", detail="the config has no base_model", hint="add base_model and import again")
        return
    local = Path(t.source.path).resolve().parent / str(base)
    if local.is_dir():
        t.put("/base_model", "/model/id", t.spec_path(local))
    else:
        t.put("/base_model", "/model/id", str(base))
    template = t.take("chat_template")
    if template:
        t.chat_template("/chat_template", template)


def _adapter(t: Translation) -> str:
    adapter = t.take("adapter")
    in4 = t.take("load_in_4bit", False) is True
    in8 = t.take("load_in_8bit", False) is True
    quant_type = t.take("bnb_4bit_quant_type")
    double = t.take("bnb_4bit_use_double_quant")
    if adapter is None:
        method = "full"
        if in4 or in8:
            t.unsupported(
                "/load_in_4bit" if in4 else "/load_in_8bit",
                "a quantized base without an adapter cannot be trained (Axolotl refuses it too)",
                hint="set adapter: lora or qlora, or turn quantization off for full fine-tuning",
            )
        for pointer in LORA_POINTERS:
            if pointer in t.values:
                t.unset(pointer)
        for key in ("lora_r", "lora_alpha", "lora_dropout", "peft_use_dora"):
            if t.has(key):
                t.drop(
                    f"/{key}",
                    "there is no adapter (full fine-tuning), so LoRA settings do not apply",
                    severity="info",
                )
    elif adapter in ("lora", "qlora"):
        method = adapter
        if adapter == "lora" and (in4 or in8):
            bits = 4 if in4 else 8
            method = "qlora"
            t.set("/adapter/quantization/bits", bits, t.origin("/load_in_4bit" if in4 else "/load_in_8bit"))
            t.note(
                "/load_in_4bit" if in4 else "/load_in_8bit",
                f"adapter: lora over a base loaded in {bits} bits is written as method: qlora with quantization.bits: "
                f"{bits} (ftspec's name for LoRA on a bitsandbytes-quantized base)",
            )
        elif adapter == "qlora":
            t.set("/adapter/quantization/bits", 4, t.origin("/load_in_4bit" if in4 else "/adapter"))
            if not in4:
                t.note(
                    "/adapter",
                    "adapter: qlora without load_in_4bit: true is refused by Axolotl; "
                    "the spec uses a 4-bit base as QLoRA means",
                )
    else:
        method = "lora"
        t.unsupported(
            "/adapter",
            f"adapter: {adapter} has no equivalent; ftspec trains lora, qlora or full",
            hint="the spec says method: lora; check that this is what you want",
        )
    t.set(
        "/adapter/method",
        method,
        t.origin("/adapter") if adapter else "axolotl: no adapter = full fine-tuning",
    )
    if method == "qlora":
        if quant_type:
            if str(quant_type) in ("nf4", "fp4"):
                t.put("/bnb_4bit_quant_type", "/adapter/quantization/quant_type", str(quant_type))
            else:
                t.drop("/bnb_4bit_quant_type", f"{quant_type} is not nf4 or fp4", severity="warning")
        if double is not None:
            t.put("/bnb_4bit_use_double_quant", "/adapter/quantization/double_quant", bool(double))
    return method


def _targets(t: Translation, method: str) -> None:
    modules = t.take("lora_target_modules")
    linear = t.take("lora_target_linear")
    if method == "full":
        return
    if linear:
        t.put("/lora_target_linear", "/adapter/target_modules", "all-linear")
        if modules:
            t.note(
                "/lora_target_modules",
                "lora_target_linear: true already covers every linear layer; "
                "the listed modules are inside all-linear",
            )
        return
    if modules:
        if isinstance(modules, str):
            if any(c in modules for c in "*[]()|\\^$+?"):
                t.changed(
                    "/lora_target_modules",
                    modules,
                    "/adapter/target_modules",
                    "all-linear",
                    "a regular expression of module names has no equivalent; ftspec takes all-linear "
                    "or a list of names",
                    hint="list the module names the pattern matched",
                )
                return
            modules = [modules]
        t.put("/lora_target_modules", "/adapter/target_modules", [str(m) for m in dict.fromkeys(modules)])
        return
    t.note(
        "",
        "the config names no LoRA target modules, so PEFT would pick the model type's defaults "
        "(q_proj and v_proj for Llama); the spec uses ftspec's default all-linear, which trains more",
        hint="set adapter.target_modules: [q_proj, v_proj] to keep the original's modules",
    )


def _schedule(t: Translation, table: dict) -> None:
    name = t.take("optimizer")
    if name:
        t.optimizer("/optimizer", name, table.get("optimizers_extra"))
    scheduler = t.take("lr_scheduler")
    if scheduler:
        t.scheduler("/lr_scheduler", scheduler)
    if t.get("/training/max_steps") is not None and t.get("/training/epochs") is not None:
        t.unset("/training/epochs")
        t.note(
            "/num_epochs",
            "max_steps and num_epochs are both set; transformers stops at max_steps, "
            "so the spec keeps max_steps only",
        )
    if t.get("/training/warmup_steps") is not None and t.get("/training/warmup_ratio") is not None:
        t.unset("/training/warmup_ratio")
        t.note(
            "/warmup_ratio",
            "warmup_steps and warmup_ratio are both set; warmup_steps wins in "
            "transformers, so the spec keeps warmup_steps only",
        )
    for key, target in (("eval_steps", "/training/eval_steps"), ("save_steps", "/training/save_steps")):
        value = t.take(key)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            t.put(f"/{key}", target, value)
        else:
            t.drop(
                f"/{key}",
                f"{describe(value)} is a fraction of the total steps; ftspec counts {key} in optimizer steps",
                severity="warning",
                hint=f"set training.{key} once `ftspec check` reports the total steps",
            )
    if t.take("train_on_inputs") is True:
        t.put("/train_on_inputs", "/training/loss_on", "all")
    gc = t.take("gradient_checkpointing")
    if gc is not None:
        if isinstance(gc, bool):
            t.put("/gradient_checkpointing", "/training/gradient_checkpointing", gc)
        else:
            t.changed(
                "/gradient_checkpointing",
                gc,
                "/training/gradient_checkpointing",
                True,
                "ftspec recomputes activations but does not offload them to CPU; GPU memory is higher",
            )
            t.set("/training/gradient_checkpointing", True, t.origin("/gradient_checkpointing"))


def _precision(t: Translation, method: str) -> None:
    bf16 = t.take("bf16")
    fp16 = t.take("fp16")
    if t.take("tf32") is True:
        t.drop("/tf32", "TF32 matmuls are a device setting, not a spec setting", severity="info")
    for key in ("bfloat16", "float16"):
        if t.take(key) is True:
            t.note(
                f"/{key}",
                f"{key}: true loads the weights in 16-bit; training.precision decides that in ftspec",
            )
    if bf16 == "auto":
        t.put("/bf16", "/training/precision", "bf16")
        t.note(
            "/bf16",
            "bf16: auto uses bf16 where the GPU supports it; the spec says bf16, which "
            "`ftspec lint` rejects on GPUs without bf16 (T4, V100): use fp16 there",
        )
    elif bf16 == "full":
        t.put("/bf16", "/training/precision", "bf16")
    elif bf16 is True:
        t.put("/bf16", "/training/precision", "bf16")
    elif fp16 is True:
        t.put("/fp16", "/training/precision", "fp16")
    else:
        t.set("/training/precision", "fp32", "axolotl default: neither bf16 nor fp16 set")
        t.defaults_written.append("training.precision: fp32")
    if method == "qlora" and t.get("/training/precision") in ("fp16", "fp32"):
        compute = "fp16" if t.get("/training/precision") == "fp16" else "fp32"
        t.set("/adapter/quantization/compute_dtype", compute, "axolotl computes in the training dtype")


def _dataset_entry(t: Translation, pointer: str, entry: object, table: dict) -> tuple[str | None, str | None]:
    """(spec path, format) of one datasets[] item; None where it cannot be translated."""
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or not entry.get("path"):
        t.report("FT0909", pointer, detail="a dataset entry without a path", hint="give each dataset a path")
        return None, None
    handled = set(load_table("import_axolotl.json")["dataset_keys_handled"])
    for key, value in entry.items():
        if key not in handled and not (value is None or value == "" or value == []):
            t.drop(
                f"{pointer}/{key}",
                "ftspec has no per-dataset setting for it",
                hint="check whether it changes how the examples are read",
            )
    dtype = entry.get("type")
    fmt: str | None
    if isinstance(dtype, dict) or dtype is None:
        t.unsupported(
            f"{pointer}/type",
            "a dataset without a type, or with a custom prompt format, has no "
            "equivalent; ftspec reads chatml, sharegpt or alpaca records",
            hint="convert the records to one of those formats",
        )
        fmt = None
    else:
        known = table["dataset_types"].get(str(dtype))
        fmt = known.get("format") if known else None
        if fmt is None:
            t.unsupported(
                f"{pointer}/type",
                f"dataset type {dtype} has no equivalent; ftspec reads chatml, sharegpt or alpaca records",
                hint="convert the records to one of those formats",
            )
        else:
            if known.get("chat_template") and "/model/chat_template" not in t.values:
                t.set("/model/chat_template", known["chat_template"], t.origin(f"{pointer}/type"))
            if known.get("note"):
                t.note(f"{pointer}/type", known["note"], once=True)
        if fmt == "chatml":
            fmt = _chat_fields(t, pointer, entry)
    if entry.get("chat_template") and "/model/chat_template" not in t.values:
        t.chat_template(f"{pointer}/chat_template", entry["chat_template"])
    roles = entry.get("roles_to_train")
    if roles and set(roles) - {"assistant", "gpt"}:
        t.changed(
            f"{pointer}/roles_to_train",
            roles,
            "/training/loss_on",
            "all",
            "ftspec trains on the assistant turns or on every token",
        )
        t.set("/training/loss_on", "all", t.origin(f"{pointer}/roles_to_train"))
    if entry.get("train_on_eos") not in (None, "turn", "last"):
        t.drop(
            f"{pointer}/train_on_eos", "ftspec trains each assistant turn's terminator", severity="warning"
        )
    path = str(entry.get("data_files") or entry["path"])
    if isinstance(entry.get("data_files"), list):
        path = str(entry["data_files"][0])
    local = Path(t.source.path).resolve().parent / path
    if local.is_file():
        if local.suffix not in (".jsonl", ".json"):
            t.unsupported(
                f"{pointer}/path",
                f"{path} is not JSON Lines; ftspec reads .jsonl or .json files",
                hint="convert it to JSON Lines",
            )
        return t.spec_path(local), fmt
    if local.is_dir():
        t.unsupported(
            f"{pointer}/path",
            f"{path} is a folder; ftspec reads one file per dataset entry",
            hint="list the folder's files as separate training sources",
        )
        return None, fmt
    split = str(entry.get("split") or "train")
    return t.hub_dataset(f"{pointer}/path", str(entry["path"]), split, entry.get("name")), fmt


def _chat_fields(t: Translation, pointer: str, entry: dict) -> str:
    field = entry.get("field_messages") or "messages"
    mapping = dict(entry.get("message_property_mappings") or {})
    if entry.get("message_field_role"):
        mapping["role"] = entry["message_field_role"]
    if entry.get("message_field_content"):
        mapping["content"] = entry["message_field_content"]
    role, content = mapping.get("role", "role"), mapping.get("content", "content")
    if field == "conversations" and role == "from" and content == "value":
        return "sharegpt"
    if field == "messages" and role == "role" and content == "content":
        return "chatml"
    t.unsupported(
        f"{pointer}/field_messages" if entry.get("field_messages") else pointer,
        f"messages under '{field}' with fields {role}/{content} are neither chatml "
        "(messages: role/content) nor sharegpt (conversations: from/value)",
        hint="rename the fields in the data file",
    )
    return "chatml"


def _datasets(t: Translation, table: dict) -> None:
    items = t.take("datasets")
    if not items:
        t.report(
            "FT0909", "", detail="the config has no datasets", hint="add a datasets list and import again"
        )
        return
    if not isinstance(items, list):
        items = [items]
    paths: list[str] = []
    formats: list[str] = []
    for index, entry in enumerate(items):
        path, fmt = _dataset_entry(t, f"/datasets/{index}", entry, table)
        if path is None:
            continue
        if path in paths:
            if t.take("dataset_exact_deduplication") is True:
                t.note(
                    f"/datasets/{index}",
                    f"{path} is listed twice; with dataset_exact_deduplication "
                    "Axolotl keeps one copy of each example, so the spec lists it once",
                )
            else:
                t.changed(
                    f"/datasets/{index}",
                    path,
                    "/dataset/train",
                    path,
                    "listed twice, Axolotl trains on it twice; the spec lists it once",
                    hint="duplicate the file's records if the double weight was intended",
                )
            continue
        paths.append(path)
        if fmt:
            formats.append(fmt)
    if t.take("dataset_exact_deduplication") is True:
        t.note(
            "/dataset_exact_deduplication",
            "Axolotl removes exact duplicates while loading; ftspec "
            "reports them in `ftspec check` (dataset.checks.dedup: exact) so they can be removed from the file",
        )
    distinct = list(dict.fromkeys(formats))
    if len(distinct) > 1:
        t.unsupported(
            "/datasets",
            "the datasets mix formats (" + ", ".join(distinct) + "); a spec reads one format",
            hint="convert every file to one format",
        )
    if distinct:
        t.set("/dataset/format", distinct[0], t.origin("/datasets/0/type"))
    if paths:
        t.set("/dataset/train", paths[0] if len(paths) == 1 else paths, t.origin("/datasets"))


def _excess_length(t: Translation) -> None:
    """Rows longer than sequence_len: Axolotl drops them unless told to truncate; unset, the table's
    default writes dataset.truncation: drop (ftspec's own default truncates)."""
    strategy = t.take("excess_length_strategy")
    if strategy is None:
        return
    if strategy in ("drop", "truncate"):
        t.put("/excess_length_strategy", "/dataset/truncation", strategy)
    else:
        t.changed(
            "/excess_length_strategy",
            strategy,
            "/dataset/truncation",
            "drop",
            "ftspec drops or truncates long rows; `ftspec check` reports every row longer than "
            "sequence_len before training, which is where raise would have stopped",
            severity="warning",
        )
        t.set("/dataset/truncation", "drop", t.origin("/excess_length_strategy"))


def _eval(t: Translation) -> None:
    tests = t.take("test_datasets")
    val = t.take("val_set_size")
    if tests:
        items = tests if isinstance(tests, list) else [tests]
        table = load_table("import_axolotl.json")
        path, _fmt = _dataset_entry(t, "/test_datasets/0", items[0], table)
        for index in range(1, len(items)):
            t.drop(
                f"/test_datasets/{index}",
                "ftspec evaluates on one held-out file",
                severity="warning",
                hint="concatenate the evaluation files",
            )
        if path:
            t.set("/dataset/eval", path, t.origin("/test_datasets"))
        if val:
            t.drop(
                "/val_set_size",
                "test_datasets is the held-out set; a spec has eval or eval_split, not both",
                severity="warning",
            )
        return
    if val is not None:
        train = t.get("/dataset/train")
        files = [train] if isinstance(train, str) else list(train or [])
        out_dir = Path(t.options.output).resolve().parent
        t.eval_split("/val_set_size", val, [out_dir / f for f in files if isinstance(f, str)])


def _output(t: Translation) -> None:
    out = t.take("output_dir")
    if out:
        t.output_dir("/output_dir", out)
    sinks = []
    if t.take("use_tensorboard") is True:
        sinks.append("tensorboard")
    if t.take("use_mlflow") is True or t.take("mlflow_tracking_uri"):
        sinks.append("mlflow")
    if sinks:
        t.set(
            "/output/report_to",
            sinks,
            t.origin("/use_tensorboard" if "tensorboard" in sinks else "/use_mlflow"),
        )


def _distributed(t: Translation) -> None:
    ds = t.take("deepspeed")
    fsdp = t.take("fsdp")
    fsdp_config = t.take("fsdp_config") or {}
    t.take("fsdp_version")
    if ds:
        t.deepspeed("/deepspeed", ds)
    if fsdp or fsdp_config:
        if ds:
            t.unsupported("/fsdp", "the config sets both deepspeed and fsdp", hint="keep one of them")
            return
        t.set("/hardware/strategy", "fsdp", t.origin("/fsdp" if fsdp else "/fsdp_config"))
        if isinstance(fsdp, list) and "offload" in fsdp:
            t.set("/hardware/offload", "optimizer_and_params", t.origin("/fsdp"))
        if not isinstance(fsdp_config, dict):
            return
        for key, value in fsdp_config.items():
            ptr = f"/fsdp_config/{key}"
            short = key.removeprefix("fsdp_")
            if short == "offload_params":
                if value is True:
                    t.set("/hardware/offload", "optimizer_and_params", t.origin(ptr))
            elif short in ("sharding_strategy", "reshard_after_forward"):
                if value not in ("FULL_SHARD", True, 1):  # FULL_SHARD is what ftspec's fsdp does
                    t.changed(
                        ptr,
                        value,
                        "/hardware/strategy",
                        "fsdp",
                        "ftspec's fsdp shards parameters, gradients and optimizer states (FULL_SHARD)",
                    )
            elif short == "transformer_layer_cls_to_wrap":
                t.note(
                    ptr,
                    f"ftspec wraps each decoder layer ({value}) itself, from the model catalog or "
                    "the model's config.json",
                )
            else:
                t.drop(
                    ptr,
                    "ftspec's compile writes the FSDP settings; this one changes loading, "
                    "speed or checkpoint layout, not the result",
                    severity="info",
                )
