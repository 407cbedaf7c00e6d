"""What a run folder hands to deployment: stop settings, a portable base reference, the model card.

- The template's end-of-turn token (the first special token after an assistant answer, found by
  the same span finder the training masks come from, compiler/dataset/assistant_spans.py) becomes
  the tokenizer's `eos_token` and the first `eos_token_id` of generation_config.json in adapter/,
  merged/ and tokenizer/. Plain `generate()`, vLLM or llama.cpp then stop where training taught
  the model to stop, and `ftspec evaluate` measures with exactly these settings.
- `adapter_config.json`'s `base_model_name_or_path` never names a path of the training machine:
  a hub id where the model has one (a hub model.id; builtin:smollm2-135m's original repository,
  with a note that ftspec trained over its Q4_1 weights dequantised; a GGUF whose metadata names
  its source repository), else a path relative to the run folder: the local model folder, or for
  builtin:tiny-llama (2 MB, no hub id) a copy of the base in `<run>/base/`, so a copied run folder
  loads with AutoPeftModelForCausalLM from inside it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from ftspec.compiler import __version__
from ftspec.compiler.core import model_files
from ftspec.compiler.dataset import assistant_spans
from ftspec.compiler.launch import model_card

_PROBE_ANSWER = "ftspec probe answer"
_SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")
BASE_COPY = "base"
BUILTINS_WITHOUT_HUB_ID = ("builtin:tiny-llama",)


# --- stop settings ------------------------------------------------------------------------------


def end_of_turn_token(tokenizer) -> str | None:
    """The token that ends an assistant turn in the tokenizer's chat template, or its EOS when the
    template writes nothing after the answer."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if not template:
        return tokenizer.eos_token
    special = {
        n: getattr(tokenizer, n) for n in _SPECIAL_NAMES if isinstance(getattr(tokenizer, n, None), str)
    }
    messages = [
        {"role": "user", "content": "ftspec probe question"},
        {"role": "assistant", "content": _PROBE_ANSWER},
    ]
    try:
        found = assistant_spans.trained_text(
            template, messages, special_tokens=special, markers=assistant_spans.marker_tokens(tokenizer)
        )
    except Exception:  # a template that cannot render the probe: keep the tokenizer's EOS
        return tokenizer.eos_token
    if not found.spans:
        return tokenizer.eos_token
    start, end = found.spans[-1]
    tail = found.text[start:end].split(_PROBE_ANSWER, 1)[-1].strip(" \t\r\n")
    markers = sorted(assistant_spans.marker_tokens(tokenizer), key=len, reverse=True)
    return next((m for m in markers if tail.startswith(m)), tokenizer.eos_token)


def align_stop_settings(tokenizer, generation_config) -> str | None:
    """Make the template's end-of-turn token the tokenizer's EOS and the generation config's first
    eos_token_id (other EOS ids the base listed stay after it); returns that token."""
    token = end_of_turn_token(tokenizer)
    token_id = tokenizer.convert_tokens_to_ids(token) if token else None
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None  # not one token of this vocabulary: nothing generate() could stop on
    pad = tokenizer.pad_token  # setting eos must not move padding (pad may be the old eos)
    tokenizer.eos_token = token
    if pad is not None:
        tokenizer.pad_token = pad
    previous = generation_config.eos_token_id
    previous = previous if isinstance(previous, list) else [previous] if previous is not None else []
    ids = list(dict.fromkeys([token_id, *previous]))
    generation_config.eos_token_id = ids[0] if len(ids) == 1 else ids
    if tokenizer.pad_token_id is not None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return token


def generation_config_of(model):
    """A copy of the model's generation config (a PEFT wrapper's base model's)."""
    from transformers import GenerationConfig

    config = getattr(model, "generation_config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = getattr(model.get_base_model(), "generation_config", None)
    return copy.deepcopy(config) if config is not None else GenerationConfig.from_model_config(model.config)


# --- the base model reference -------------------------------------------------------------------


def portable_base(model_spec: dict, source_path: str, spec_dir: Path, run_dir: Path) -> dict:
    """{name, is_hub_id, revision, notes, copy_from}: what adapter_config.json names as the base."""
    model_id = str(model_spec["id"])
    info = model_files.gguf_builtin(model_id)
    if info is not None:
        return {
            "name": info["hub_id"],
            "is_hub_id": True,
            "revision": None,
            "notes": [
                f"ftspec's {model_id}: {info['note']}; the exact base is rebuilt with "
                f"`python -m ftspec.runtime.builtin {model_id}`",
            ],
            "copy_from": None,
        }
    if model_id in BUILTINS_WITHOUT_HUB_ID:
        return {
            "name": BASE_COPY,
            "is_hub_id": False,
            "revision": None,
            "notes": [f"{model_id} has no hub id: its weights are copied into the run folder's {BASE_COPY}/"],
            "copy_from": source_path,
        }
    if model_files.is_gguf(model_id):
        manifest = _manifest(Path(source_path))
        hub = manifest.get("hub_id")
        notes = [
            f"converted from the GGUF file {Path(model_id).name} (SHA-256 {manifest.get('gguf_sha256', '?')})"
        ]
        if hub:
            notes.append(
                "the GGUF names this repository as its source; ftspec trained over its dequantised weights"
            )
            return {"name": hub, "is_hub_id": True, "revision": None, "notes": notes, "copy_from": None}
        notes.append("rebuild the converted folder with `python -m ftspec.runtime.gguf_model convert FILE`")
        return _relative(source_path, run_dir, notes)
    local = Path(source_path)
    if local.is_dir():
        return _relative(str(local), run_dir, [])
    return {
        "name": model_id,
        "is_hub_id": True,
        "revision": model_spec.get("revision"),
        "notes": [f"revision {model_spec['revision']}"] if model_spec.get("revision") else [],
        "copy_from": None,
    }


def _relative(path: str, run_dir: Path, notes: list[str]) -> dict:
    rel = os.path.relpath(Path(path).resolve(), run_dir.resolve())
    return {
        "name": Path(rel).as_posix(),
        "is_hub_id": False,
        "revision": None,
        "notes": notes,
        "copy_from": None,
    }


def _manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / model_files.COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def copy_base(base: dict, run_dir: Path) -> None:
    """The run folder's own copy of a small base without a hub id (weights, config, tokenizer)."""
    if not base.get("copy_from"):
        return
    target = run_dir / BASE_COPY
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base["copy_from"], target, ignore=shutil.ignore_patterns(model_files.COMPLETE_MARKER))


def point_adapter_at(adapter_dir: Path, base: dict) -> None:
    """adapter_config.json names the portable base (PEFT writes the loading path it was given)."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base["name"]
    if base.get("revision"):
        config["revision"] = base["revision"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- the model card -----------------------------------------------------------------------------


def card_facts(
    spec: dict,
    base: dict,
    *,
    spec_sha256: str | None,
    spec_file: str | None,
    data_sha256: dict[str, str],
    end_of_turn: str | None,
) -> dict:
    model = spec.get("model") or {}
    info = model_files.gguf_builtin(str(model.get("id", ""))) or {}
    return {
        "ftspec_version": __version__,
        "spec_name": spec.get("name"),
        "spec_file": spec_file,
        "spec_sha256": spec_sha256,
        "model_id": model.get("id"),
        "base_model": base["name"],
        "base_is_hub_id": bool(base["is_hub_id"]),
        "base_notes": list(base.get("notes") or []),
        "license": info.get("license"),
        "method": (spec.get("adapter") or {}).get("method", "lora"),
        "chat_template": model.get("chat_template", "model"),
        "end_of_turn": end_of_turn,
        "data_sha256": dict(data_sha256),
        "gate": None,
    }


def write_cards(run_dir: Path, facts: dict) -> list[str]:
    return model_card.write_cards(run_dir, facts)
