"""`python -m ftspec.runtime.evaluate --run RUN_DIR --out METRICS_JSON`: measure base and fine-tuned.

Started by `ftspec evaluate` in a subprocess (the compiler never imports torch). For each model, one
after the other so only one sits in memory: greedy, batched generation (left padding) with the
training chat template (RUN_DIR/tokenizer) on the task eval set and the regression set, then the
eval loss over the same assistant tokens training optimised. Scores come from ftspec.compiler.evaluate.metrics
so the gate and the tests share one definition. Also measures eval/train n-gram overlap on the eval
set actually scored (with eval_split it exists only after the split).

Writes one JSON document (kind ftspec-eval-metrics, schema_version 1) atomically; every answer of
both models goes to predictions.jsonl beside it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ftspec.compiler import __version__
from ftspec.compiler.core.artifacts import dumps_json, write_atomic
from ftspec.compiler.core.schema import schema_default
from ftspec.compiler.dataset.assistant_spans import end_of_turn_tokens
from ftspec.compiler.dataset.formats import detect_format, to_messages
from ftspec.compiler.dataset.records import RecordReader
from ftspec.compiler.evaluate import metrics as M
from ftspec.compiler.evaluate.contamination import measure as measure_contamination
from ftspec.compiler.launch.run_folder import RunFolder, RunFolderError, open_run
from ftspec.runtime.log import log as log_line

METRICS_KIND = "ftspec-eval-metrics"
METRICS_SCHEMA_VERSION = 1
# The weight files PEFT's save_pretrained writes (safetensors by default, .bin when asked).
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# Turn terminators (compiler/data/end_of_turn.json, the one list): where the scored answer of the eval
# loss ends, never a stop setting: generation stops on the saved generation config's eos_token_id only.
TERMINATORS = end_of_turn_tokens()


def log(message: str) -> None:
    log_line(f"evaluate: {message}")


class EvalError(Exception):
    """Bad evaluation input (a file, a record, a schema): reported on one line, exit code 2."""


# --- examples -----------------------------------------------------------------------------------


def read_records(path: Path) -> list[tuple[int, dict]]:
    out = []
    try:
        for line, value, error in RecordReader(path):
            if error is not None:
                raise EvalError(f"{path}:{line}: {error}")
            if not isinstance(value, dict):
                raise EvalError(f"{path}:{line}: a record must be a JSON object")
            out.append((line, value))
    except OSError as exc:
        raise EvalError(f"cannot read {path}: {exc.strerror or exc}") from None
    return out


def split_example(messages: list[dict], where: str) -> tuple[list[dict], str]:
    """(prompt messages, reference answer): the reference is the last assistant turn."""
    if not messages or messages[-1].get("role") != "assistant":
        raise EvalError(f"{where}: the conversation must end with an assistant turn (the reference answer)")
    return messages[:-1], str(messages[-1].get("content", ""))


def regression_examples(path: Path) -> list[tuple[list[dict], str]]:
    """{prompt, answer} records (optionally with system), or chat records ending in the answer."""
    out = []
    for line, record in read_records(path):
        where = f"{path}:{line}"
        if "prompt" in record and "answer" in record:
            prompt = [{"role": "user", "content": str(record["prompt"])}]
            if record.get("system"):
                prompt.insert(0, {"role": "system", "content": str(record["system"])})
            out.append((prompt, str(record["answer"])))
            continue
        fmt = detect_format(record)
        if fmt not in ("chatml", "sharegpt", "alpaca"):
            raise EvalError(
                f"{where}: expected {{prompt, answer}} or a chat record, found keys {sorted(record)}"
            )
        try:
            out.append(split_example(to_messages(record, fmt), where))
        except ValueError as exc:
            raise EvalError(f"{where}: {exc}") from None
    return out


def _messages(record: dict, fmt: str, where: str) -> list[dict]:
    try:
        return to_messages(record, fmt)
    except ValueError as exc:
        raise EvalError(f"{where}: {exc}") from None


def train_paths(folder: RunFolder) -> list[str]:
    train = folder.spec["dataset"]["train"]
    entries = train if isinstance(train, list) else [train]
    return [e["path"] if isinstance(e, dict) else e for e in entries]


def task_sets(folder: RunFolder) -> tuple[list[list[dict]], Iterable[tuple[list[dict], str]], str]:
    """(eval conversations, training conversations with where-labels, how eval was chosen)."""
    dataset = folder.spec["dataset"]
    fmt = dataset.get("format", schema_default("/dataset/format"))
    if dataset.get("eval"):
        path = folder.data_path(dataset["eval"])
        evals = [_messages(r, fmt, f"{dataset['eval']}:{line}") for line, r in read_records(path)]

        def train_iter():
            for written in train_paths(folder):
                for line, record in read_records(folder.data_path(written)):
                    yield _messages(record, fmt, f"{written}:{line}"), f"{written}:{line}"

        return evals, train_iter(), f"file {dataset['eval']}"
    if dataset.get("eval_split"):
        train_part, eval_part = split_like_training(folder)
        return eval_part, train_part, f"eval_split {dataset['eval_split']} of train (seed {_seed(folder)})"
    raise EvalError("the spec names neither dataset.eval nor dataset.eval_split: there is no task eval set")


def _seed(folder: RunFolder) -> int:
    return int((folder.spec.get("training") or {}).get("seed", schema_default("/training/seed")))


def split_like_training(folder: RunFolder) -> tuple[list[tuple[list[dict], str]], list[list[dict]]]:
    """The eval_split exactly as training made it: the runtime's own split function, same seed."""
    from ftspec.runtime import data as rdata

    dataset = folder.spec["dataset"]
    fmt = dataset.get("format", schema_default("/dataset/format"))
    rows: list[tuple[list[dict], str]] = []
    for written in train_paths(folder):
        for line, record in read_records(folder.data_path(written)):
            rows.append((_messages(record, fmt, f"{written}:{line}"), f"{written}:{line}"))
    train_idx, eval_idx = rdata.split_indices(len(rows), float(dataset["eval_split"]), _seed(folder))
    return [rows[i] for i in train_idx], [rows[i][0] for i in eval_idx]


# --- models -------------------------------------------------------------------------------------


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype():
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def base_model_path(folder: RunFolder) -> tuple[str, dict]:
    """Where from_pretrained finds the base model (the runtime's own resolution: built-in cache folder,
    local folder relative to the spec, or hub id at its revision), and the keyword arguments for it."""
    from ftspec.runtime.model import SetupError, resolve_source

    model = folder.spec["model"]
    try:
        source = resolve_source(model, folder.spec_dir)
    except SetupError as exc:
        raise EvalError(f"cannot resolve model {model['id']}: {exc}") from None
    kwargs: dict = {"trust_remote_code": bool(model.get("trust_remote_code", False))}
    if source.revision:
        kwargs["revision"] = source.revision
    if not source.local and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        kwargs["local_files_only"] = True
    return source.path_or_id, kwargs


def _quantization(folder: RunFolder):
    """The bitsandbytes config a QLoRA run trained over, so the adapter meets the same base weights."""
    adapter = folder.spec.get("adapter") or {}
    if adapter.get("method") != "qlora":
        return None
    from ftspec.runtime.model import quantization_config

    return quantization_config(adapter.get("quantization") or {})


def load_base(folder: RunFolder):
    from transformers import AutoModelForCausalLM

    path, kwargs = base_model_path(folder)
    quant = _quantization(folder)
    if quant is not None:
        import torch

        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": 0 if torch.cuda.is_available() else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(), **kwargs)
    if quant is None:
        model.to(_device())
    return model.eval()


def finetuned_source(folder: RunFolder) -> str:
    """adapter/ (PEFT) when present, else merged/: what `ftspec evaluate` judges as the fine-tuned model."""
    adapter, merged = folder.path / "adapter", folder.path / "merged"
    if (adapter / "adapter_config.json").is_file():
        # Checked here, before minutes of base-model generation, so a half-copied adapter is one line.
        if not any((adapter / name).is_file() for name in ADAPTER_WEIGHTS):
            raise EvalError(
                f"{adapter} holds adapter_config.json but no weights ({' or '.join(ADAPTER_WEIGHTS)})"
            )
        return "adapter"
    if (merged / "config.json").is_file():
        return "merged"
    raise EvalError(
        f"{folder.path} holds no loadable adapter/ (adapter_config.json) or merged/ (config.json)"
    )


def load_finetuned(folder: RunFolder):
    source = finetuned_source(folder)
    if source == "adapter":
        from peft import PeftModel

        return PeftModel.from_pretrained(load_base(folder), str(folder.path / "adapter")).eval()
    from transformers import AutoModelForCausalLM

    trust = bool(folder.spec["model"].get("trust_remote_code", False))
    model = AutoModelForCausalLM.from_pretrained(
        str(folder.path / "merged"), dtype=_dtype(), trust_remote_code=trust
    )
    return model.to(_device()).eval()


def load_tokenizer(folder: RunFolder):
    from transformers import AutoTokenizer

    path = folder.path / "tokenizer"
    if not path.is_dir():
        raise EvalError(f"{path} is missing: the run folder must hold the tokenizer training used")
    # Always explicit, from the verified plan: left unset, transformers asks "run the custom code?
    # [y/N]" on a terminal (a keypress would run it regardless of the plan) or fails without one.
    trust = bool(folder.spec["model"].get("trust_remote_code", False))
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust)
    if not tokenizer.chat_template:
        raise EvalError(f"{path} has no chat template")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def saved_generation_config(folder: RunFolder):
    """The generation config training saved beside the tokenizer (its eos_token_id is the template's
    end of turn, runtime/outputs.py), or None for a run folder from before it was saved."""
    from transformers import GenerationConfig

    path = folder.path / "tokenizer"
    if not (path / "generation_config.json").is_file():
        return None
    return GenerationConfig.from_pretrained(str(path))


def stop_token_ids(tokenizer, model, saved=None) -> list[int]:
    """The EOS ids deployment stops on: the run folder's saved generation config when there is one,
    else the model's generation config and the tokenizer's EOS. No private list of terminators: a
    model that plain generate() (or vLLM, or llama.cpp) would not stop must not pass the gate."""
    sources = (
        [saved.eos_token_id]
        if saved is not None
        else [getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id]
    )
    ids = set()
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return sorted(ids)


# --- generation and loss ------------------------------------------------------------------------


def render_prompts(tokenizer, prompts: Sequence[list[dict]]) -> list[str]:
    return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]


def generate(
    model,
    tokenizer,
    prompts: Sequence[list[dict]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_ids: list[int],
) -> list[str]:
    """Greedy answers, batched with left padding; prompts sorted by length so batches pad little."""
    import torch

    texts = render_prompts(tokenizer, prompts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * len(texts)
    tokenizer.padding_side = "left"
    device = model.device if hasattr(model, "device") else _device()
    terminator_texts = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        # The chat template writes any BOS itself: add_special_tokens=False avoids a second one.
        enc = tokenizer(
            [texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        for i, row in zip(chunk, new, strict=True):
            text = tokenizer.decode(row, skip_special_tokens=True)
            for term in terminator_texts:  # a terminator that is not a special token survives decoding
                if term and term in text:
                    text = text.split(term, 1)[0]
            answers[i] = text.strip()
    return answers


def label_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation: only the last assistant turn (answer and terminator)
    is scored, which is what the task asks of the model; everything before it is context."""
    prompt, _reference = split_example(messages, "eval example")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if not full.startswith(head):
        raise EvalError(
            "the chat template renders the prompt differently on its own than inside the "
            "conversation; cannot tell which tokens are the answer"
        )
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    # Tokenisation can merge across the boundary; count the common prefix rather than trust len(head_ids).
    cut = 0
    while cut < min(len(ids), len(head_ids)) and ids[cut] == head_ids[cut]:
        cut += 1
    # Text the template adds after the terminator (a newline) is not part of the answer.
    tail = full[len(head) :]
    labels = [-100] * cut + ids[cut:]
    found = [(tail.find(term), term) for term in TERMINATORS if term in tail]
    if found:
        position, term = min(found)  # the first terminator after the answer ends it
        keep = tokenizer(head + tail[: position + len(term)], add_special_tokens=False)["input_ids"]
        labels = labels[: len(keep)] + [-100] * (len(ids) - len(keep))
    return ids, labels


def eval_loss(
    model, tokenizer, conversations: Sequence[list[dict]], *, batch_size: int, max_len: int | None
) -> tuple[float | None, int]:
    """Mean cross-entropy (nats per answer token) over every scored token of the eval set."""
    import torch
    import torch.nn.functional as F

    encoded = [label_conversation(tokenizer, c) for c in conversations]
    if max_len:
        encoded = [(ids[:max_len], labels[:max_len]) for ids, labels in encoded]
    total, count = 0.0, 0
    device = model.device if hasattr(model, "device") else _device()
    pad = tokenizer.pad_token_id
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids_t = torch.full((len(chunk), width), pad, dtype=torch.long)
        lab_t = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, labels) in enumerate(chunk):
            ids_t[row, : len(ids)] = torch.tensor(ids)
            lab_t[row, : len(labels)] = torch.tensor(labels)
            mask[row, : len(ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids_t.to(device), attention_mask=mask.to(device)).logits.float()
        shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
        shift_labels = lab_t[:, 1:].reshape(-1).to(device)
        total += float(F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum"))
        count += int((shift_labels != -100).sum())
    return (total / count if count else None), count


# --- the whole measurement ----------------------------------------------------------------------


def _load_json_schema(folder: RunFolder, written: str | None) -> dict | None:
    if not written:
        return None
    path = folder.data_path(written)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalError(f"cannot read JSON Schema {written}: {exc}") from None
    problem = M.check_schema(schema)
    if problem:
        raise EvalError(f"{written} is not a valid JSON Schema: {problem}")
    return schema


def score_model(
    model,
    tokenizer,
    *,
    task_prompts,
    task_refs,
    regression,
    task_scorer,
    regression_scorer,
    format_check,
    evaluation: dict,
    max_len: int | None,
    conversations,
    saved_generation=None,
) -> dict:
    started = time.monotonic()
    stops = stop_token_ids(tokenizer, model, saved_generation)
    gen: dict[str, Any] = {  # generate()'s keyword arguments
        "max_new_tokens": int(evaluation.get("max_new_tokens", 256)),
        "batch_size": int(evaluation.get("batch_size", 8)),
        "stop_ids": stops,
    }
    answers = generate(model, tokenizer, task_prompts, **gen)
    task_scores = [task_scorer(a, r) for a, r in zip(answers, task_refs, strict=True)]
    out: dict[str, Any] = {
        "answers": answers,
        "task_scores": task_scores,
        "values": {"task": M.mean(task_scores)},
    }
    if format_check is not None:
        format_scores = [format_check(a) for a in answers]
        out["format_scores"] = format_scores
        out["values"]["format"] = M.mean(format_scores)
    if regression:
        reg_answers = generate(model, tokenizer, [p for p, _ in regression], **gen)
        reg_scores = [regression_scorer(a, r) for a, (_, r) in zip(reg_answers, regression, strict=True)]
        out["regression_answers"] = reg_answers
        out["regression_scores"] = reg_scores
        out["values"]["regression"] = M.mean(reg_scores)
    loss, tokens = eval_loss(model, tokenizer, conversations, batch_size=gen["batch_size"], max_len=max_len)
    out["values"]["eval_loss"] = loss
    out["values"]["perplexity"] = M.perplexity(loss)
    out["loss_tokens"] = tokens
    out["seconds"] = round(time.monotonic() - started, 2)
    return out


def lm_eval_tasks(folder: RunFolder, tasks: list[str]) -> tuple[dict | None, str | None]:
    """Optional lm-eval-harness tasks on both models; (results, note). Skipped unless the package is
    installed, and run offline: tasks whose data is not cached fail and are reported as skipped."""
    if not tasks:
        return None, None
    if importlib.util.find_spec("lm_eval") is None:
        return None, f"lm-eval-harness tasks {', '.join(tasks)} skipped: the lm_eval package is not installed"
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        results = {}
        tokenizer = load_tokenizer(folder)
        for name, loader in (("base", load_base), ("finetuned", load_finetuned)):
            model = loader(folder)
            out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer), tasks=tasks)
            results[name] = out.get("results", {})
            del model
            gc.collect()
        return results, None
    except Exception as exc:  # offline data missing, task unknown: optional, so a note, not a failure
        return None, f"lm-eval-harness tasks {', '.join(tasks)} skipped: {type(exc).__name__}: {exc}"


def measure(folder: RunFolder, *, lm_eval: list[str] | None = None) -> tuple[dict, list[dict]]:
    """Everything the gate and the report need; (metrics document, prediction rows)."""
    spec = folder.spec
    evaluation = spec.get("evaluation") or {}
    task_cfg = evaluation.get("task") or {}
    format_cfg = evaluation.get("format") or {}
    regression_cfg = evaluation.get("regression") or {}
    notes: list[str] = []

    finetuned_source(folder)  # fail before generating with the base model, not after
    if (spec.get("dataset") or {}).get("format") == "preference":  # the `preference` metric, no generation
        return _measure_preference(folder), []
    schema = _load_json_schema(folder, task_cfg.get("json_schema"))
    task_metric = task_cfg.get("metric", "exact_match")
    task_scorer = M.scorer(task_metric, json_schema=schema, regex=task_cfg.get("regex"))
    format_check = M.format_checker(
        want_json=bool(format_cfg.get("json")), json_schema=schema, regex=format_cfg.get("regex")
    )

    conversations, train_iter, eval_source = task_sets(folder)
    if not conversations:
        raise EvalError("the task eval set is empty")
    pairs = [split_example(c, f"eval example {i}") for i, c in enumerate(conversations)]
    task_prompts, task_refs = [p for p, _ in pairs], [r for _, r in pairs]

    regression: list[tuple[list[dict], str]] = []
    regression_metric = None
    if regression_cfg.get("prompts"):
        regression = regression_examples(folder.data_path(regression_cfg["prompts"]))
        regression_metric = regression_cfg.get("metric", "exact_match")
    regression_scorer = (
        M.scorer(regression_metric, json_schema=schema, regex=task_cfg.get("regex"))
        if regression_metric
        else None
    )

    checks = (spec.get("dataset") or {}).get("checks") or {}
    contamination = measure_contamination(
        conversations,
        train_iter,
        int(checks.get("contamination_ngram", schema_default("/dataset/checks/contamination_ngram"))),
        regression=[[*prompt, {"role": "assistant", "content": answer}] for prompt, answer in regression]
        if regression
        else None,
    )
    log(
        f"eval set: {len(conversations)} examples ({eval_source}); regression set: {len(regression)}; "
        f"{contamination['contaminated']} eval example(s) overlap train"
        + (f", {contamination['regression']['contaminated']} regression example(s)" if regression else "")
    )

    max_len = (folder.plan.get("derived") or {}).get("sequence_len")
    tokenizer = load_tokenizer(folder)
    saved_generation = saved_generation_config(folder)
    results = {}
    for name, loader in (("base", load_base), ("finetuned", load_finetuned)):
        started = time.monotonic()
        model = loader(folder)
        log(f"{name} model loaded in {time.monotonic() - started:.1f}s; generating ...")
        results[name] = score_model(
            model,
            tokenizer,
            task_prompts=task_prompts,
            task_refs=task_refs,
            regression=regression,
            task_scorer=task_scorer,
            regression_scorer=regression_scorer,
            format_check=format_check,
            evaluation=evaluation,
            max_len=max_len if isinstance(max_len, int) else None,
            conversations=conversations,
            saved_generation=saved_generation,
        )
        v = results[name]["values"]
        shown = ", ".join(f"{k} {M_fmt(x)}" for k, x in v.items())
        log(f"{name}: {shown} ({results[name]['seconds']}s)")
        del model  # one model in memory at a time
        gc.collect()

    lm_results, lm_note = lm_eval_tasks(folder, lm_eval or [])
    if lm_note:
        notes.append(lm_note)

    examples: dict[str, list[dict]] = {"task": [], "regression": []}
    predictions: list[dict] = []
    for i, (prompt, ref) in enumerate(pairs):
        row = {
            "set": "task",
            "index": i,
            "prompt": _prompt_text(prompt),
            "reference": ref,
            "base": results["base"]["answers"][i],
            "finetuned": results["finetuned"]["answers"][i],
            "base_score": results["base"]["task_scores"][i],
            "finetuned_score": results["finetuned"]["task_scores"][i],
        }
        examples["task"].append(row)
        predictions.append(row)
    for i, (prompt, ref) in enumerate(regression):
        row = {
            "set": "regression",
            "index": i,
            "prompt": _prompt_text(prompt),
            "reference": ref,
            "base": results["base"]["regression_answers"][i],
            "finetuned": results["finetuned"]["regression_answers"][i],
            "base_score": results["base"]["regression_scores"][i],
            "finetuned_score": results["finetuned"]["regression_scores"][i],
        }
        examples["regression"].append(row)
        predictions.append(row)

    measured = {"task": task_metric, "eval_loss": "nats/token", "perplexity": "exp(eval_loss)"}
    if regression_metric:
        measured["regression"] = regression_metric
    if format_check is not None:
        parts = (["json" + (" + schema" if schema is not None else "")] if format_cfg.get("json") else []) + (
            [f"regex {format_cfg['regex']}"] if format_cfg.get("regex") else []
        )
        measured["format"] = " + ".join(parts)
    document = {
        "metadata": {
            "schema_version": METRICS_SCHEMA_VERSION,
            "kind": METRICS_KIND,
            "ftspec_version": __version__,
            "spec_sha256": (folder.plan.get("metadata") or {}).get("spec_sha256"),
        },
        "models": {"base": spec["model"]["id"], "finetuned": finetuned_source(folder)},
        "measured": measured,
        "counts": {"task": len(pairs), "regression": len(regression)},
        "loss_tokens": results["finetuned"]["loss_tokens"],
        "values": {name: _finite(results[name]["values"]) for name in ("base", "finetuned")},
        "contamination": contamination,
        "eval_source": eval_source,
        "generation": {
            "greedy": True,
            "max_new_tokens": int(evaluation.get("max_new_tokens", 256)),
            "batch_size": int(evaluation.get("batch_size", 8)),
            "padding": "left",
        },
        "examples": examples,
        "lm_eval": lm_results,
        "notes": notes,
        "seconds": {name: results[name]["seconds"] for name in results},
    }
    return document, predictions


def _measure_preference(folder: RunFolder) -> dict:
    from ftspec.runtime import preference_eval

    checks = (folder.spec.get("dataset") or {}).get("checks") or {}
    max_len = (folder.plan.get("derived") or {}).get("sequence_len")
    try:
        document = preference_eval.measure(
            folder,
            load_base=load_base,
            load_finetuned=load_finetuned,
            load_tokenizer=load_tokenizer,
            finetuned=finetuned_source(folder),
            sequence_len=max_len if isinstance(max_len, int) else None,
            ngram=int(
                checks.get("contamination_ngram", schema_default("/dataset/checks/contamination_ngram"))
            ),
        )
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    v = document["values"]
    log(
        f"preference: base {M_fmt(v['base']['preference'])}, finetuned {M_fmt(v['finetuned']['preference'])}; "
        f"{len(document['flipped'])} pair(s) flipped ({document['eval_source']})"
    )
    return document


def M_fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _finite(values: dict) -> dict:
    # JSON has no NaN/Infinity: a value that is not finite is recorded as a string the gate reads back.
    out = {}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def _prompt_text(prompt: list[dict]) -> str:
    return "\n".join(f"[{m.get('role')}] {m.get('content', '')}" for m in prompt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftspec.runtime.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--run", required=True, help="the run folder ftspec launch wrote")
    parser.add_argument(
        "--out", required=True, help="metrics JSON to write (predictions.jsonl goes beside it)"
    )
    parser.add_argument(
        "--lm-eval", default="", help="comma-separated lm-eval-harness tasks (optional extra)"
    )
    args = parser.parse_args(argv)
    from ftspec.runtime.quiet import quiet_known_noise

    quiet_known_noise()
    try:
        folder = open_run(args.run)
        started = time.monotonic()
        document, predictions = measure(folder, lm_eval=[t for t in args.lm_eval.split(",") if t])
    except (RunFolderError, EvalError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a model that will not load or generate: one line, the traceback on request
        if os.environ.get("FTSPEC_DEBUG", "") not in ("", "0"):
            raise
        print(f"evaluate: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        out.with_name("predictions.jsonl"),
        "".join(json.dumps(p, ensure_ascii=False, sort_keys=True) + "\n" for p in predictions),
    )
    write_atomic(out, dumps_json(document))
    log(f"wrote {out} in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
