"""The accelerator catalog (data/gpus.json) and custom devices written in the spec."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

GB_PER_GIB = 1024**3 / 1e9


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float | None  # device total as the driver reports it
    bf16: bool
    tflops_bf16: float | None
    price_per_hour: float | None
    price_note: str | None = None
    is_cpu: bool = False
    known: bool = True


@lru_cache(maxsize=1)
def _catalog() -> dict[str, dict]:
    raw = json.loads(resources.files("ftspec.compiler.data").joinpath("gpus.json").read_text("utf-8"))
    out: dict[str, dict] = {}
    for entry in raw["gpus"]:
        for name in [entry["name"], *entry.get("aliases", [])]:
            out[name.lower()] = entry
    return out


def entries() -> dict[str, dict]:
    """Lower-cased name and aliases -> catalog entry (data/gpus.json, read once)."""
    return _catalog()


def catalog_names() -> list[str]:
    return sorted({e["name"] for e in _catalog().values()})


def lookup_gpu(value: object) -> Gpu | None:
    """`hardware.gpu` as a Gpu: a catalog name (case-insensitive, aliases), `cpu`, or a custom mapping.
    None for a name the catalog does not know."""
    if isinstance(value, dict):
        mem = value.get("memory_gb")
        return Gpu(
            name=str(value.get("name", "custom")),
            memory_gib=float(mem) / GB_PER_GIB if mem else None,
            bf16=bool(value.get("bf16", True)),
            tflops_bf16=value.get("tflops_bf16"),
            price_per_hour=value.get("price_per_hour"),
            price_note="from the spec",
        )
    name = str(value or "")
    if name.lower() == "cpu":
        return Gpu("cpu", None, True, None, None, is_cpu=True)
    entry = _catalog().get(name.lower())
    if entry is None:
        return None
    price_note = f"{entry['price_note']}, {entry['price_source']} ({entry['price_date']})"
    return Gpu(
        entry["name"],
        float(entry["memory_gib"]),
        bool(entry["bf16"]),
        float(entry["tflops_bf16"]),
        float(entry["price_per_hour"]),
        price_note,
    )
