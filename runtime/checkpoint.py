"""Atomic checkpoints: a partial or corrupt write never becomes "the latest".

Layout under `<output_dir>/checkpoints/`:
    checkpoint-<step>/        complete checkpoints only (renamed into place after everything is on disk)
        complete              JSON marker written last: step, and the size (and SHA-256 for files up
                              to HASH_LIMIT bytes) of every other file
        trainer_state.json    step, epoch position, batch sizes, early-stopping state
        ...                   what accelerator.save_state wrote (model/optimizer/scheduler/RNG per rank,
                              or the DeepSpeed / FSDP sharded states)
    .tmp-checkpoint-<step>/   being written; never read, removed at start-up

Writing: every rank writes into the temp folder (accelerate's save_state), all files are fsynced,
the main process writes the marker, fsyncs it, renames the folder, fsyncs the parent. A crash at any
point leaves either the old set of checkpoints or the old set plus one complete new one.

Reading: checkpoints are tried newest first; one whose marker is missing, unreadable, or whose files
do not match it is skipped (and reported) for the one before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ftspec.compiler.core.artifacts import write_json

MARKER = "complete"
STATE = "trainer_state.json"
PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
HASH_LIMIT = 256 << 20  # files above this are checked by size only (hashing them costs too much time)

_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: object) -> None:
    """JSON written whole and durably (core.artifacts, the one atomic write): the old or the new file."""
    write_json(path, data, durable=True)


def temp_dir(root: Path, step: int) -> Path:
    return root / f"{TMP_PREFIX}{step}"


def final_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step}"


def clean_partial(root: Path) -> list[Path]:
    """Remove temp folders left by a crash mid-write (main process, before training starts)."""
    removed = []
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(TMP_PREFIX) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def seal(tmp: Path, final: Path, step: int) -> None:
    """Main process, after every rank finished writing into `tmp`: fsync, mark complete, rename."""
    files = {}
    for path in sorted(tmp.rglob("*")):
        if path.is_file():
            fsync_file(path)
            rel = path.relative_to(tmp).as_posix()
            size = path.stat().st_size
            files[rel] = {"size": size, "sha256": _sha256(path) if size <= HASH_LIMIT else None}
    for folder in sorted(
        {p.parent for p in tmp.rglob("*")} | {tmp}, key=lambda p: len(p.parts), reverse=True
    ):
        fsync_dir(folder)
    marker = tmp / MARKER
    with open(marker, "w", encoding="utf-8") as fh:
        json.dump({"step": step, "files": files}, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(tmp)
    if final.exists():  # the same step saved again (a resumed run re-reaching it): replace whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(final.parent)


def verify(path: Path) -> str | None:
    """None when the checkpoint folder is complete and intact, else the reason it is not."""
    marker = path / MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        files = data["files"]
    except FileNotFoundError:
        return "no completion marker"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable completion marker"
    if not (path / STATE).is_file():
        return f"no {STATE}"
    for rel, meta in files.items():
        file = path / rel
        try:
            size = file.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != meta.get("size"):
            return f"{rel} has {size} bytes, the marker says {meta.get('size')}"
        if meta.get("sha256") and _sha256(file) != meta["sha256"]:
            return f"{rel} does not match its recorded SHA-256"
    return None


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Checkpoint folders by step, oldest first (complete or not: see verify)."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_dir():
                found.append(Checkpoint(int(match.group(1)), path))
    return sorted(found, key=lambda c: c.step)


def latest_valid(root: Path, report: Callable[[Checkpoint, str], None] | None = None) -> Checkpoint | None:
    """The newest checkpoint that verifies; each skipped one is passed to `report` with the reason."""
    for ckpt in reversed(list_checkpoints(root)):
        problem = verify(ckpt.path)
        if problem is None:
            return ckpt
        if report is not None:
            report(ckpt, problem)
    return None


def prune(root: Path, keep: int) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `keep` (main process, after a save)."""
    complete = [c for c in list_checkpoints(root) if (c.path / MARKER).is_file()]
    removed = []
    for ckpt in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(ckpt.path, ignore_errors=True)
        removed.append(ckpt.path)
    return removed


SCHEDULER = "ftspec_scheduler.json"
LEGACY_SCHEDULER = "ftspec_scheduler.pt"


def save_scheduler(state: dict, folder: Path) -> None:
    """The LR scheduler's state as JSON: it is plain numbers, and JSON cannot carry code."""
    (folder / SCHEDULER).write_text(
        json.dumps(state, allow_nan=False, sort_keys=True) + "\n", encoding="utf-8"
    )


def load_scheduler(folder: Path) -> dict:
    """The scheduler state saved by `save_scheduler`. A checkpoint from before it holds a torch file:
    that is read with weights_only=True, which refuses any pickled object (a checkpoint folder may be
    writable by others), never with the pickle loader."""
    path = folder / SCHEDULER
    if path.is_file():
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError(f"{path}: not a JSON object")
        return state
    import torch

    return torch.load(folder / LEGACY_SCHEDULER, weights_only=True, map_location="cpu")


def read_state(ckpt: Checkpoint) -> dict:
    return json.loads((ckpt.path / STATE).read_text(encoding="utf-8"))


# --- what a checkpoint was trained under ----------------------------------------------------------
# A checkpoint's optimizer, scheduler and data position only make sense for the plan that built them.
# Everything in the plan's spec and derived sections counts, except what RESUMABLE lists: fields that
# only change what is logged, evaluated, kept or reported, or how the same global batch is split in
# memory. The list names what may change (not what may not), so a field added to the spec later is
# protected by default.
RESUMABLE: tuple[str, ...] = (
    "/spec/name",
    "/spec/description",
    "/spec/version",
    "/spec/environment",
    "/spec/evaluation",
    "/spec/acceptance",
    "/spec/output",  # output.dir / save / report_to: where and what is written at the end
    "/spec/model/architecture",  # estimate hints; the model itself is /spec/model/id + revision
    "/spec/dataset/eval",
    "/spec/dataset/checks",
    "/spec/dataset/min_examples",  # eval data, compile checks
    "/spec/training/logging_steps",
    "/spec/training/eval_steps",
    "/spec/training/save_steps",
    "/spec/training/save_total_limit",
    "/spec/training/early_stopping_patience",
    "/spec/training/on_oom",
    "/spec/training/gradient_checkpointing",  # recomputes the same activations: memory, not numerics
    # The global batch of a step is a function of (seed, step, effective batch) only (data.Schedule),
    # so splitting it differently into micro batches is harmless: the out-of-memory retry does exactly
    # that. derived.effective_batch and derived.world_size stay protected.
    "/spec/training/micro_batch_size",
    "/spec/training/gradient_accumulation_steps",
    "/derived/micro_batch_size",
    "/derived/gradient_accumulation_steps",
    "/spec/hardware/gpu",
    "/spec/hardware/gpus_per_node",
    "/spec/hardware/nodes",
    "/spec/hardware/headroom",
    "/spec/hardware/price_per_gpu_hour",
    "/spec/hardware/launcher",
    "/spec/hardware/main_process_port",
    "/derived/architecture",
    "/derived/eval_examples",
    "/derived/main_process_port",
    "/derived/output_dir",
    "/derived/launcher",
    "/derived/gpus_per_node",
    "/derived/nodes",
)


def _flatten(value: object, pointer: str, out: dict[str, object]) -> None:
    if any(pointer == p or pointer.startswith(p + "/") for p in RESUMABLE):
        return
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _flatten(value[key], f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}", out)
    else:
        out[pointer] = value


def training_identity(plan: dict, train_sha256: dict[str, str]) -> dict[str, object]:
    """JSON pointer -> value of every plan field a resumed run must share with its checkpoint, plus the
    SHA-256 of each training data file (`/data/<path>`): editing a file changes the data position's meaning."""
    out: dict[str, object] = {}
    _flatten(plan.get("spec", {}), "/spec", out)
    _flatten(plan.get("derived", {}), "/derived", out)
    for path, digest in sorted(train_sha256.items()):
        out[f"/data/{path}"] = digest
    return out


def identity_sha256(identity: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def identity_changes(old: dict[str, object], new: dict[str, object]) -> list[tuple[str, object, object]]:
    """(pointer, old, new) for every field that differs; a field present on one side only shows as None."""
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def recorded_identity(root: Path) -> tuple[Checkpoint, dict[str, object]] | None:
    """The identity recorded in the newest checkpoint that has a readable state (every checkpoint of a run
    folder shares it: resume refuses a plan that differs). None when no checkpoint records one (none
    saved yet, or written before identities were recorded)."""
    for ckpt in reversed(list_checkpoints(root)):
        try:
            identity = read_state(ckpt).get("training_identity")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(identity, dict):
            return ckpt, identity
    return None
