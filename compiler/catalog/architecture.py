"""Where a model's shape comes from: the spec, a local config.json (read as JSON), or the catalog.

Order: `model.architecture` in the spec wins field by field; missing fields come from a local
`config.json` (when `model.id` is a folder next to the spec) or from the built-in catalog
(data/models.json, a source per entry). transformers is never imported: config.json is plain JSON.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ftspec.compiler.core import model_files
from ftspec.compiler.core.diagnostics import Diagnostic, make
from ftspec.compiler.core.loader import LoadedSpec
from ftspec.compiler.core.paths import MODEL_FILE_MAX_BYTES, read_bounded_text

REQUIRED = ("layers", "hidden", "intermediate", "heads", "vocab")
FIELDS = (
    "params_b",
    "layers",
    "hidden",
    "intermediate",
    "heads",
    "kv_heads",
    "head_dim",
    "vocab",
    "experts",
    "experts_per_token",
    "tie_embeddings",
    "decoder_layer_class",
)
BUILTIN_PREFIX = "builtin:"

# config.json keys by family -> our field names (first present wins).
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "kv_heads": ("num_key_value_heads", "multi_query_group_num", "n_kv_heads", "num_kv_heads"),
    "head_dim": ("head_dim", "kv_channels"),
    "vocab": ("vocab_size", "padded_vocab_size", "n_vocab"),
    "experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
    "experts_per_token": ("num_experts_per_tok", "moe_top_k", "num_experts_per_token"),
    "intermediate": ("intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim", "d_ff"),
}
_CAUSAL_LM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*ForCausalLM$")

# model_type -> decoder layer class (FSDP auto-wrap), where the name does not follow <Type>DecoderLayer.
LAYER_CLASSES = {
    "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer",
    "mixtral": "MixtralDecoderLayer",
    "qwen2": "Qwen2DecoderLayer",
    "qwen3": "Qwen3DecoderLayer",
    "qwen3_moe": "Qwen3MoeDecoderLayer",
    "qwen2_moe": "Qwen2MoeDecoderLayer",
    "gemma": "GemmaDecoderLayer",
    "gemma2": "Gemma2DecoderLayer",
    "gemma3": "Gemma3DecoderLayer",
    "gemma3_text": "Gemma3DecoderLayer",
    "phi3": "Phi3DecoderLayer",
    "phi": "PhiDecoderLayer",
    "gpt2": "GPT2Block",
    "gpt_neox": "GPTNeoXLayer",
    "falcon": "FalconDecoderLayer",
    "olmo2": "Olmo2DecoderLayer",
    "granite": "GraniteDecoderLayer",
    "starcoder2": "Starcoder2DecoderLayer",
}


@lru_cache(maxsize=1)
def catalog() -> dict[str, dict]:
    """Lower-cased hub id (and alias) -> catalog entry."""
    raw = json.loads(resources.files("ftspec.compiler.data").joinpath("models.json").read_text("utf-8"))
    out: dict[str, dict] = {}
    for entry in raw["models"]:
        for name in [entry["id"], *entry.get("aliases", [])]:
            out[name.lower()] = entry
    return out


def catalog_entry(model_id: str) -> dict | None:
    return catalog().get(model_id.strip().lower())


def from_config(config: dict) -> dict:
    """Our architecture fields from a transformers config.json dict (multimodal: its text_config)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
    cfg = {**config, **text} if text else config
    out: dict = {}
    for name, keys in CONFIG_KEYS.items():
        for key in keys:
            value = cfg.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                out[name] = int(value)
                break
    experts = out.get("experts", 1)
    if experts > 1 and isinstance(cfg.get("moe_intermediate_size"), int):
        out["intermediate"] = cfg["moe_intermediate_size"]  # per-expert size is what the estimate needs
    if "kv_heads" not in out and "heads" in out:
        out["kv_heads"] = out["heads"]
    if (
        out.get("head_dim")
        and out.get("hidden")
        and out.get("heads")
        and out["head_dim"] * out["heads"] == out["hidden"]
    ):
        out.pop("head_dim")  # only kept where it differs
    out["experts"] = experts
    tie = config.get("tie_word_embeddings", cfg.get("tie_word_embeddings"))
    out["tie_embeddings"] = bool(tie) if tie is not None else False
    model_type = str(cfg.get("model_type") or config.get("model_type") or "")
    if model_type:
        out["model_type"] = model_type
    archs = config.get("architectures") or []
    layer_cls = LAYER_CLASSES.get(model_type)
    if layer_cls is None and archs and isinstance(archs[0], str) and _CAUSAL_LM.match(archs[0]):
        # only a Python class name: a local config.json is untrusted, and the name reaches the
        # generated accelerate.yaml (a bad one was an "internal error" FT0619, not the config's fault)
        layer_cls = archs[0][: -len("ForCausalLM")] + "DecoderLayer"
    if layer_cls:
        out["decoder_layer_class"] = layer_cls
    return out


def local_model_dir(model_id: str, base_dir: Path) -> Path | None:
    """`model.id` as a folder holding config.json: relative to the spec, or absolute."""
    if model_id.startswith(BUILTIN_PREFIX) or not model_id:
        return None
    candidate = Path(model_id)
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    return candidate if (candidate / "config.json").is_file() else None


def gguf_architecture(spec: LoadedSpec, model_id: str) -> tuple[dict, str, list[Diagnostic]]:
    """Fields from a GGUF file's metadata (the gguf package, numpy only), else from the folder a
    launch converted it into; ({}, "spec", diagnostics) when neither can be read."""
    path = model_files.gguf_file(model_id, spec.base_dir)
    if not path.is_file():
        return {}, "spec", []  # lint reports the missing file (FT0259)
    if model_files.gguf_available():
        try:
            return (
                from_config(model_files.config_from_gguf(model_files.read_gguf_metadata(path))),
                (f"{path} (GGUF metadata)"),
                [],
            )
        except ValueError as exc:
            return {}, "spec", [make("FT0303", spec.locate("/model/id"), path=str(path), detail=str(exc))]
    converted = model_files.converted_model_folder(model_id, spec.base_dir)
    for folder in (converted, model_files.tokenizer_folder(converted)) if converted else ():
        if (folder / "config.json").is_file():
            try:
                return (
                    from_config(json.loads(read_bounded_text(folder / "config.json", MODEL_FILE_MAX_BYTES))),
                    (f"{folder / 'config.json'}"),
                    [],
                )
            except (OSError, ValueError):
                continue
    return {}, "spec", []


def yaml_hint(model_id: str) -> str:
    return (
        f"'{model_id}' is not in ftspec's model catalog; give its shape (from the model's config.json) under "
        "model:\n  architecture:\n    params_b: 8.03\n    layers: 32\n    hidden: 4096\n    intermediate: 14336\n"
        "    heads: 32\n    kv_heads: 8\n    vocab: 128256\n    decoder_layer_class: LlamaDecoderLayer"
    )


def resolve_architecture(spec: LoadedSpec, resolved: dict) -> tuple[dict | None, list[Diagnostic]]:
    """The architecture dict (schema fields + model_type, decoder_layer_class, `source`) or None."""
    model = resolved.get("model", {}) or {}
    model_id = str(model.get("id", ""))
    given = dict(model.get("architecture") or {})
    diags: list[Diagnostic] = []
    base: dict = {}
    origin = "spec"
    folder = local_model_dir(model_id, spec.base_dir)
    if folder is None and model_files.is_gguf(model_id):
        base, origin, gguf_diags = gguf_architecture(spec, model_id)
        diags.extend(gguf_diags)
    elif folder is not None:
        try:
            config = json.loads(read_bounded_text(folder / "config.json", MODEL_FILE_MAX_BYTES))
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
            base = from_config(config)
            origin = f"{folder / 'config.json'}"
        except (OSError, ValueError) as exc:
            diags.append(
                make("FT0303", spec.locate("/model/id"), path=str(folder / "config.json"), detail=str(exc))
            )
    else:
        entry = catalog_entry(model_id)
        if entry is not None:
            base = {k: v for k, v in entry.items() if k not in ("id", "aliases", "source", "note", "gguf")}
            origin = entry["source"]
    arch = {**base, **given}
    if given and base:
        origin = f"spec, completed from {origin}"
    missing = [f for f in REQUIRED if not arch.get(f)]
    if missing:
        if not base and not given:
            close = difflib.get_close_matches(model_id.lower(), list(catalog()), n=1, cutoff=0.75)
            extra = f" (did you mean '{catalog()[close[0]]['id']}'?)" if close else ""
            diags.append(
                make(
                    "FT0301",
                    spec.locate("/model/id"),
                    model=model_id,
                    suggestion=extra,
                    hint=yaml_hint(model_id),
                )
            )
        else:
            pointer = "/model/architecture" if given else "/model/id"
            diags.append(
                make(
                    "FT0302",
                    spec.locate(pointer, key=True),
                    model=model_id,
                    missing=", ".join(missing),
                    hint=yaml_hint(model_id),
                )
            )
        return None, diags
    arch.setdefault("kv_heads", arch["heads"])
    arch.setdefault("experts", 1)
    arch.setdefault("tie_embeddings", False)
    if not arch.get("params_b"):
        from ftspec.compiler.catalog.arch_shapes import Shapes

        arch["params_b"] = round(Shapes.from_arch(arch).computed_params / 1e9, 4)
    arch["source"] = origin
    return arch, diags
