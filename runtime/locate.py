"""Where a runtime finding points: the spec file the plan was compiled from (never `<spec>`), at the
line and column of the field that governs the finding while that file is still the one compiled.

The plan records the spec's folder (relative to the build folder), its file name and its SHA-256;
the spec text is read and parsed (compiler/core/loader, ruamel) only when a finding is printed, so a
run that finds nothing pays nothing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

from ftspec.compiler.core.diagnostics import Diagnostic

# The spec field each runtime finding is about (codes_runtime.json); findings not listed point at the
# spec file itself.
GOVERNING: dict[str, str] = {
    "FT0701": "/hardware/gpus_per_node",
    "FT0702": "/model/id",
    "FT0703": "/model/chat_template",
    "FT0704": "/hardware/strategy",
    "FT0705": "/training/optimizer",
    "FT0706": "/training/learning_rate",
    "FT0707": "/training/micro_batch_size",
    "FT0708": "/training/micro_batch_size",
    "FT0711": "/dataset/train",
    "FT0712": "/dataset/train",
    "FT0713": "/model/chat_template",
    "FT0714": "/dataset/train",
    "FT0715": "/training/sequence_len",
    "FT0716": "/dataset/train",
    "FT0718": "/output/report_to",
    "FT0719": "/training/early_stopping_patience",
    "FT0722": "/training/max_steps",
    "FT0723": "/output/dir",
    "FT0724": "/output/dir",
    "FT0730": "/output/export",
    "FT0738": "/model/id",
    "FT0747": "/output/dir",
}
SPEC_READ_LIMIT = 1 << 20  # as lint's spec limit: a spec is small; anything larger is not parsed here


def shown_path(path: Path) -> str:
    """`path` relative to the working folder when it lies below it (as lint prints specs), else whole."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


class SpecLocator:
    """Calling it with a diagnostic that has no file gives it the spec file's location."""

    def __init__(self, plan: dict, plan_path: Path):
        meta = plan.get("metadata") or {}
        name = meta.get("spec_file")
        folder = (plan.get("paths") or {}).get("spec_dir")
        self.path = (Path(plan_path).parent / folder / name).resolve() if name and folder else None
        self.file = shown_path(self.path) if self.path is not None else None
        self.sha256 = meta.get("spec_sha256")
        self._spec = None
        self._loaded = False

    def _load(self):
        """The parsed spec when the file is the one compiled (same SHA-256), else None."""
        if self._loaded:
            return self._spec
        self._loaded = True
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(SPEC_READ_LIMIT + 1)
        except (OSError, TypeError):
            return None
        if len(raw) > SPEC_READ_LIMIT or hashlib.sha256(raw).hexdigest() != self.sha256:
            return None  # edited since compile: its lines may not be the plan's any more
        from ftspec.compiler.core.loader import load_text

        try:
            self._spec = load_text(raw.decode("utf-8-sig"), self.file or "")
        except Exception:  # noqa: BLE001 - a location is a courtesy; never fail a report over it
            self._spec = None
        return self._spec

    def __call__(self, diag: Diagnostic) -> Diagnostic:
        if diag.file is not None or self.file is None:
            return diag
        pointer = diag.pointer or GOVERNING.get(diag.code, "")
        spec = self._load() if pointer else None
        if spec is None or not isinstance(spec.data, dict):
            return replace(diag, file=self.file, pointer=pointer)
        return diag.at(spec.locate(pointer))

    def source(self, file: str | None, line: int | None) -> str | None:
        """The spec's source line, for the caret under a located finding."""
        if file != self.file or not line:
            return None
        spec = self._load()
        return spec.source_line(line) if spec is not None else None
