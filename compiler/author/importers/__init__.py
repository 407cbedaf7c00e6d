"""Translate peer fine-tuning configs (Axolotl, LLaMA-Factory, torchtune) into spec v1."""

from __future__ import annotations

import importlib

from ftspec.compiler.author.importers.common import ImportOptions, ImportResult
from ftspec.compiler.core.loader import LoadedSpec

TOOLS = ("axolotl", "llamafactory", "torchtune")


def translate(tool: str, source: LoadedSpec, options: ImportOptions) -> ImportResult:
    """The spec for `source` (a loaded peer config) and every difference, as diagnostics."""
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}")
    module = importlib.import_module(f"{__name__}.{tool}")
    return module.translate(source, options)


__all__ = ["TOOLS", "ImportOptions", "ImportResult", "translate"]
