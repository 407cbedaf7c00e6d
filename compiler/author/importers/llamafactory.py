"""LLaMA-Factory YAML -> spec v1. Key tables live in compiler/data/import_llamafactory.json.

Datasets are names in a dataset_info.json (in `dataset_dir`, default `data`, beside the config);
when that file is here its entries give the data files and their formatting.
"""

from __future__ import annotations

from pathlib import Path

from ftspec.compiler.author.importers.common import (
    ImportOptions,
    ImportResult,
    Translation,
    describe,
    load_table,
    spec_name,
)
from ftspec.compiler.core.loader import LoadedSpec, load_spec


def _stage(t: Translation) -> None:
    """stage: sft, or dpo with pref_loss sigmoid (DPO) | orpo, to training.objective with pref_beta;
    kto, rm (reward modelling), ppo, pt and the other DPO losses stay refused at their line."""
    stage = t.take("stage", "sft")
    loss = t.take("pref_loss", "sigmoid")
    beta = t.take("pref_beta")
    if stage == "sft":
        return
    objective = {"sigmoid": "dpo", "orpo": "orpo"}.get(str(loss)) if stage == "dpo" else None
    if objective is None:
        detail = (
            f"stage: dpo with pref_loss: {loss} is a preference loss ftspec does not train (sigmoid and orpo)"
            if stage == "dpo"
            else f"stage: {stage} is not a stage ftspec trains (sft, and dpo with pref_loss sigmoid or orpo)"
        )
        t.unsupported(
            "/pref_loss" if stage == "dpo" else "/stage", detail, hint="import the sft stage's config instead"
        )
        return
    t.set("/training/objective", objective, t.origin("/stage"))
    if isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta > 0:
        t.set("/training/beta", beta, t.origin("/pref_beta"))


def translate(source: LoadedSpec, options: ImportOptions) -> ImportResult:
    table = load_table("import_llamafactory.json")
    t = Translation("llamafactory", "LLaMA-Factory", source, options)
    t.set("/version", 1, "")
    t.set("/name", options.name or spec_name(Path(source.path).stem), "from the config's file name")
    t.set("/description", f"Imported from the LLaMA-Factory config {Path(source.path).name}.", "")

    _stage(t)
    _model(t)
    t.direct(table["direct"])
    method = _method(t, table)
    _schedule(t)
    _cutoff(t)
    _datasets(t)
    if t.get("/training/objective") in ("dpo", "orpo"):  # pairs, whatever the dataset's prompt type
        t.set("/dataset/format", "preference", t.origin("/stage") + ": records {prompt, chosen, rejected}")
    out = t.take("output_dir")
    if out:
        t.output_dir("/output_dir", out)
    _report_to(t)
    ds = t.take("deepspeed")
    if ds:
        t.deepspeed("/deepspeed", ds)
    t.defaults(
        table["defaults"], adapter=method != "full", max_steps=t.get("/training/max_steps") is not None
    )
    if method != "full" and not t.has("lora_alpha"):
        rank = t.get("/adapter/r", 8)
        t.set("/adapter/alpha", rank * 2, "llamafactory default: lora_alpha = 2 x lora_rank")
        t.defaults_written.append(f"adapter.alpha: {rank * 2}")
    t.hardware()
    t.finish(table["ignored"], set(table["handled"]) | set(table["direct"]))
    return t.result()


def _model(t: Translation) -> None:
    model = t.take("model_name_or_path")
    if not model:
        t.report("FT0909", "", detail="the config has no model_name_or_path", hint="add it and import again")
    else:
        local = Path(t.source.path).resolve().parent / str(model)
        t.put("/model_name_or_path", "/model/id", t.spec_path(local) if local.is_dir() else str(model))
    remote = t.take("trust_remote_code")
    if remote is True and _builtin_architecture(str(model or "")):
        # every LLaMA-Factory example carries it as boilerplate; transformers ignores it for a model
        # it implements, and keeping it would make every imported spec fail lint (FT0231)
        t.note(
            "/trust_remote_code",
            f"trust_remote_code: true is dropped: {model} is an architecture transformers implements, "
            "so no repository code would run",
            hint="add model.trust_remote_code: true (and --allow-remote-code) only for a model that needs its own code",
        )
    elif remote is True:
        t.put("/trust_remote_code", "/model/trust_remote_code", True)
        t.note(
            "/trust_remote_code",
            "trust_remote_code: true is kept; `ftspec lint` rejects it unless the "
            "command is given --allow-remote-code",
            hint="set it to false if the model's architecture is built into transformers",
        )
    template = t.take("template")
    if template:
        t.chat_template("/template", template)


def _method(t: Translation, table: dict) -> str:
    kind = t.take("finetuning_type", "lora")
    bits = t.take("quantization_bit")
    quant_method = t.take("quantization_method", "bnb")
    quant_type = t.take("quantization_type")
    double = t.take("double_quantization")
    target = t.take("lora_target")
    if kind not in ("lora", "full"):
        t.unsupported(
            "/finetuning_type",
            f"finetuning_type: {kind} has no equivalent; ftspec trains lora, qlora or full",
            hint="the spec says method: lora; check that this is what you want",
        )
        kind = "lora"
    if kind == "full":
        for pointer in ("/adapter/r", "/adapter/alpha", "/adapter/dropout", "/adapter/dora"):
            t.unset(pointer)
        t.put("/finetuning_type", "/adapter/method", "full")
        if bits:
            t.unsupported(
                "/quantization_bit",
                "a quantized base cannot be fully fine-tuned",
                hint="remove quantization_bit or use finetuning_type: lora",
            )
        return "full"
    method = "lora"
    if bits:
        if quant_method != "bnb":
            t.unsupported(
                "/quantization_method",
                f"quantization_method: {quant_method} has no equivalent; ftspec quantizes with bitsandbytes",
                hint="use quantization_method: bnb",
            )
        if bits in (4, 8):
            method = "qlora"
            t.put("/quantization_bit", "/adapter/quantization/bits", int(bits))
            t.note(
                "/quantization_bit", f"LoRA over a {bits}-bit bitsandbytes base is method: qlora in ftspec"
            )
        else:
            t.unsupported(
                "/quantization_bit",
                f"{bits}-bit quantization has no equivalent; ftspec quantizes to 4 or 8 bits",
                hint="use quantization_bit: 4",
            )
        if quant_type in ("nf4", "fp4"):
            t.put("/quantization_type", "/adapter/quantization/quant_type", quant_type)
        if double is not None:
            t.put("/double_quantization", "/adapter/quantization/double_quant", bool(double))
    t.put("/finetuning_type", "/adapter/method", method)
    if target:
        names = [n.strip() for n in str(target).split(",") if n.strip()]
        if names == ["all"]:
            t.put("/lora_target", "/adapter/target_modules", table["lora_targets"]["all"])
        else:
            t.put("/lora_target", "/adapter/target_modules", list(dict.fromkeys(names)))
    else:
        t.set("/adapter/target_modules", "all-linear", "llamafactory default lora_target: all")
    return method


def _schedule(t: Translation) -> None:
    name = t.take("optim")
    if name:
        t.optimizer("/optim", name)
    scheduler = t.take("lr_scheduler_type")
    if scheduler:
        t.scheduler("/lr_scheduler_type", scheduler)
    if t.get("/training/max_steps") is not None and t.get("/training/epochs") is not None:
        t.unset("/training/epochs")
        t.note(
            "/num_train_epochs",
            "max_steps overrides num_train_epochs in transformers; the spec keeps max_steps",
        )
    if t.get("/training/warmup_steps") and t.get("/training/warmup_ratio") is not None:
        t.unset("/training/warmup_ratio")
        t.note(
            "/warmup_ratio",
            "warmup_steps wins over warmup_ratio in transformers; the spec keeps warmup_steps",
        )
    elif t.get("/training/warmup_steps") == 0 and t.get("/training/warmup_ratio") is not None:
        t.unset("/training/warmup_steps")
    bf16, fp16, pure = t.take("bf16"), t.take("fp16"), t.take("pure_bf16")
    if bf16 is True and pure is not True and t.get("/adapter/method") == "full":
        # the HF Trainer's bf16 is autocast over fp32 master weights: ftspec's bf16-mixed. Pure bf16
        # (pure_bf16: true) would lose small updates (lint FT0210), a problem the config does not have.
        t.put("/bf16", "/training/precision", "bf16-mixed")
    elif bf16 is True or pure is True:
        t.put("/pure_bf16" if pure is True else "/bf16", "/training/precision", "bf16")
    elif fp16 is True:
        t.put("/fp16", "/training/precision", "fp16")
    else:
        t.set("/training/precision", "fp32", "llamafactory default: neither bf16 nor fp16 set")
        t.defaults_written.append("training.precision: fp32")
    if t.get("/adapter/method") == "qlora" and t.get("/training/precision") in ("fp16", "fp32"):
        t.set(
            "/adapter/quantization/compute_dtype",
            t.get("/training/precision"),
            "llamafactory computes in the training dtype",
        )
    no_gc = t.take("disable_gradient_checkpointing")
    if no_gc is True:
        t.put("/disable_gradient_checkpointing", "/training/gradient_checkpointing", False)
    if t.take("train_on_prompt") is True:
        t.put("/train_on_prompt", "/training/loss_on", "all")
    if t.take("neat_packing") is True:
        t.put("/neat_packing", "/training/packing", True)
        t.note(
            "/neat_packing",
            "neat_packing keeps packed examples from attending to each other; "
            "ftspec's packing is written as packing: true",
        )
    strategy = t.take("eval_strategy")
    if strategy not in (None, "steps", "no"):
        t.drop(
            "/eval_strategy",
            f"ftspec evaluates every training.eval_steps steps, not per {strategy}",
            severity="warning",
        )


def _cutoff(t: Translation) -> None:
    """cutoff_len (default 2048) caps the tokenized prompt+answer of each example: written as
    training.sequence_len with the truncation policy LLaMA-Factory applies. Without packing it cuts
    (data/processor/supervised.py: infer_seqlen shortens each turn's prompt and answer, keeping the
    beginning of both); with packing it drops every example longer than cutoff_len."""
    given = t.has("cutoff_len")
    if given and "/training/sequence_len" not in t.values:
        return  # not an integer: reported by direct()
    if not given:
        default = next(
            e["value"] for e in load_table("import_llamafactory.json")["defaults"] if e["key"] == "cutoff_len"
        )
        t.set("/training/sequence_len", default, f"llamafactory default cutoff_len: {default}")
    length = t.get("/training/sequence_len")
    where = "/cutoff_len" if given else ""
    said = f"cutoff_len: {length}" if given else f"cutoff_len (unset, LLaMA-Factory's default {length})"
    packed = t.get("/training/packing") is True
    policy = "drop" if packed else "truncate"
    t.set(
        "/dataset/truncation",
        policy,
        (t.origin("/cutoff_len") if given else "llamafactory cutoff_len")
        + (": packing drops longer examples" if packed else ": cuts longer examples"),
    )
    detail = (
        f"{said} is the most tokens LLaMA-Factory keeps of an example, prompt and answer together; "
        f"it is written as training.sequence_len: {length} with dataset.truncation: {policy}. "
    )
    if packed:
        detail += (
            "With packing LLaMA-Factory drops every example longer than cutoff_len instead of cutting it, "
            "which is ftspec's truncation: drop"
        )
    else:
        detail += (
            "Both cut an example that is too long, but not the same tokens: LLaMA-Factory shortens each "
            "turn's prompt or answer, whichever is longer (both in proportion when both are), keeping "
            "the beginning of each and dropping the turns that no longer fit, while ftspec cuts the end "
            "of the whole conversation, so an answer after a prompt longer than sequence_len is lost "
            "and its example dropped"
        )
    t.note(
        where,
        detail,
        hint="run `ftspec check` to count the examples longer than sequence_len; raise it "
        "(or use p95) if there are many",
    )


def _dataset_info(t: Translation) -> tuple[dict | None, LoadedSpec | None, Path]:
    base = Path(t.source.path).resolve().parent
    written = str(t.take("dataset_dir", "data"))
    folders = [root / written for root in t.launch_roots()]  # LLaMA-Factory reads it from the launch folder
    folder = next((f for f in folders if f.is_dir()), folders[-1])
    for candidate in [f / "dataset_info.json" for f in folders] + [base / "dataset_info.json"]:
        if candidate.is_file():
            loaded = load_spec(candidate)
            if isinstance(loaded.data, dict):
                t.extra_sources.append(loaded)
                return loaded.data, loaded, candidate.parent
    return None, None, folder


def _one_dataset(
    t: Translation, pointer: str, name: str, info: dict | None, info_src: LoadedSpec | None, folder: Path
) -> tuple[str | None, str | None]:
    if info is None:  # a name in LLaMA-Factory's own data/dataset_info.json; its default formatting is alpaca
        return f"data/{name}.jsonl", "alpaca"
    assert info_src is not None  # _dataset_info returns both or neither
    entry = info.get(name)
    if not isinstance(entry, dict):
        t.unsupported(
            pointer, f"dataset '{name}' is not in {info_src.path}", hint="add it to dataset_info.json"
        )
        return None, None
    entry_ptr = f"/{name}"
    formatting = entry.get("formatting", "alpaca")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    fmt = _format(formatting, columns, tags)
    if fmt is None:
        t.diagnostics.append(
            _unsupported_at(
                info_src,
                entry_ptr,
                f"dataset '{name}' has formatting "
                f"{formatting} with columns {describe(columns)}; ftspec reads chatml, sharegpt "
                "or alpaca records with their usual field names",
            )
        )
    if entry.get("file_name"):
        path = folder / str(entry["file_name"])
        if path.is_file():
            return t.spec_path(path), fmt
        if path.is_dir():
            t.unsupported(pointer, f"dataset '{name}' is a folder ({path}); ftspec reads one file per entry")
            return None, fmt
        t.report(
            "FT0907",
            pointer,
            key=f"dataset {name}",
            path=entry["file_name"],
            looked=f"looked in {folder}",
            consequence="the spec names the path it should be at",
        )
        return t.spec_path(path), fmt
    hub = entry.get("hf_hub_url") or entry.get("ms_hub_url")
    if hub:
        return t.hub_dataset(pointer, str(hub), str(entry.get("split", "train")), entry.get("subset")), fmt
    t.unsupported(pointer, f"dataset '{name}' names no file_name or hf_hub_url")
    return None, None


def _unsupported_at(source: LoadedSpec, pointer: str, detail: str):
    from ftspec.compiler.core.diagnostics import make

    return make(
        "FT0906",
        source.locate(pointer, key=True),
        detail=detail,
        hint="convert the records to one of those formats",
    )


def _format(formatting: str, columns: dict, tags: dict) -> str | None:
    if formatting == "alpaca":
        renamed = {
            k: v
            for k, v in columns.items()
            if (k, v)
            not in (
                ("prompt", "instruction"),
                ("query", "input"),
                ("response", "output"),
                ("system", "system"),
            )
        }
        return "alpaca" if not renamed else None
    if formatting == "sharegpt":
        messages = columns.get("messages", "conversations")
        role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
        user, assistant = tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")
        if (messages, role, content, user, assistant) == ("conversations", "from", "value", "human", "gpt"):
            return "sharegpt"
        if (messages, role, content, user, assistant) == ("messages", "role", "content", "user", "assistant"):
            return "chatml"
    return None


def _datasets(t: Translation) -> None:
    names_raw = t.take("dataset")
    eval_raw = t.take("eval_dataset")
    val = t.take("val_size")
    if not names_raw:
        t.report("FT0909", "", detail="the config has no dataset", hint="add dataset and import again")
        return
    info, info_src, folder = _dataset_info(t)
    if info is None:
        t.report(
            "FT0907",
            "/dataset",
            key="dataset",
            path="dataset_info.json",
            looked=f"looked in {folder} and beside the config",
            consequence="each dataset name is written as data/<name>.jsonl in alpaca format "
            "(LLaMA-Factory's default formatting): export each dataset to that path",
        )
    names = [n.strip() for n in str(names_raw).split(",") if n.strip()]
    paths, formats = [], []
    for name in names:
        path, fmt = _one_dataset(t, "/dataset", name, info, info_src, folder)
        if path and path not in paths:
            paths.append(path)
        if fmt:
            formats.append(fmt)
    distinct = list(dict.fromkeys(formats))
    if len(distinct) > 1:
        t.unsupported(
            "/dataset",
            "the datasets mix formats (" + ", ".join(distinct) + "); a spec reads one format",
            hint="convert every file to one format",
        )
    if distinct:
        t.set(
            "/dataset/format", distinct[0], t.origin("/dataset") + (" via dataset_info.json" if info else "")
        )
    if paths:
        t.set("/dataset/train", paths[0] if len(paths) == 1 else paths, t.origin("/dataset"))
    if eval_raw:
        eval_names = [n.strip() for n in str(eval_raw).split(",") if n.strip()]
        path, _ = _one_dataset(t, "/eval_dataset", eval_names[0], info, info_src, folder)
        if len(eval_names) > 1:
            t.drop(
                "/eval_dataset",
                "ftspec evaluates on one held-out file; only the first is kept",
                severity="warning",
            )
        if path:
            t.set("/dataset/eval", path, t.origin("/eval_dataset"))
        if val:
            t.drop(
                "/val_size",
                "eval_dataset is the held-out set; a spec has eval or eval_split",
                severity="warning",
            )
    elif val is not None:
        out_dir = Path(t.options.output).resolve().parent
        t.eval_split("/val_size", val, [out_dir / p for p in paths])


def _report_to(t: Translation) -> None:
    value = t.take("report_to")
    if value is None:
        return
    items = value if isinstance(value, list) else [v.strip() for v in str(value).split(",")]
    keep = load_table("import_common.json")["report_to"]["keep"]
    kept = [v for v in items if v in keep]
    lost = [v for v in items if v not in keep and v != "all"]
    if kept:
        t.put("/report_to", "/output/report_to", kept)
    if lost or "all" in items:
        t.drop(
            "/report_to",
            f"{', '.join(lost or ['all'])} is not supported; ftspec reports to tensorboard, mlflow or none",
            severity="warning",
        )


def _builtin_architecture(model_id: str) -> bool:
    """Is `model_id` one of the catalog's models, whose architectures transformers implements?"""
    from ftspec.compiler.catalog.architecture import catalog_entry

    return bool(model_id) and catalog_entry(model_id) is not None
