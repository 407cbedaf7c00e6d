"""The tokenized-data cache of a run folder, stored as safetensors plus JSON: never a pickle.

A run folder can be written by someone else (a shared scratch folder, a committed `runs/`, a planted
`.ftspec/`), and the cache key is predictable for a hub model, so a pickle there would run as the
launching user. safetensors holds only tensors and string metadata; loading it cannot execute code.
A file that does not read back as exactly this layout is rebuilt, never trusted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ftspec.runtime.data import Example, Prepared

FORMAT = "ftspec-data-cache-1"
SUFFIX = ".safetensors"
_FIELDS = ("input_ids", "labels", "position_ids")


def _pack(examples: list[Example], prefix: str) -> dict:
    import torch

    lengths = [len(e.input_ids) for e in examples]
    out = {f"{prefix}.lengths": torch.tensor(lengths, dtype=torch.int64)}
    for name in _FIELDS:
        flat = [x for e in examples for x in getattr(e, name)]
        out[f"{prefix}.{name}"] = torch.tensor(flat, dtype=torch.int64)
    return out


def _unpack(tensors: dict, prefix: str) -> list[Example]:
    lengths = tensors[f"{prefix}.lengths"].tolist()
    columns = {name: tensors[f"{prefix}.{name}"].tolist() for name in _FIELDS}
    if any(len(col) != sum(lengths) for col in columns.values()):
        raise ValueError("cache columns do not match their lengths")
    examples, start = [], 0
    for n in lengths:
        examples.append(Example(*(columns[name][start : start + n] for name in _FIELDS)))
        start += n
    return examples


def save_prepared(prepared: Prepared, path: Path) -> None:
    """Write atomically (temp file, rename): a reader sees the old cache, the new one, or none."""
    from safetensors.torch import save_file

    pairs = bool(prepared.train) and hasattr(prepared.train[0], "chosen")  # preference pairs
    tensors = {}
    for split, examples in (("train", prepared.train), ("eval", prepared.eval)):
        if pairs:  # each side as its own column set: train.chosen.*, train.rejected.*
            tensors.update(_pack([p.chosen for p in examples], f"{split}.chosen"))
            tensors.update(_pack([p.rejected for p in examples], f"{split}.rejected"))
        else:
            tensors.update(_pack(examples, split))
    metadata = {
        "format": FORMAT,
        "stats": json.dumps(prepared.stats, allow_nan=False),
        "pairs": str(int(pairs)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:  # a full disk: no half-written cache file left behind
        tmp.unlink(missing_ok=True)
        raise


def load_prepared(path: Path) -> Prepared | None:
    """The cached data, or None when the file is missing, damaged or not this layout (then rebuild)."""
    from safetensors import safe_open

    if not path.is_file() or path.is_symlink():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            if metadata.get("format") != FORMAT:
                return None
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        stats = json.loads(metadata["stats"])
        if not isinstance(stats, dict):
            return None
        if metadata.get("pairs") == "1":
            from ftspec.runtime.preference import PairExample

            splits = [
                [
                    PairExample(c, r)
                    for c, r in zip(
                        _unpack(tensors, f"{split}.chosen"),
                        _unpack(tensors, f"{split}.rejected"),
                        strict=True,
                    )
                ]
                for split in ("train", "eval")
            ]
            return Prepared(splits[0], splits[1], stats)
        return Prepared(_unpack(tensors, "train"), _unpack(tensors, "eval"), stats)
    except Exception:  # noqa: BLE001 - any unreadable cache is rebuilt; nothing in it ran
        return None
