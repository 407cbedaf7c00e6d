"""The training sources of a spec, the one home: train entries, record counts, the mix and the eval split.

Every stage that needs "how many examples will train" (lint's rough count, check, compile's
total_steps, the runtime's dataset, evaluate's rebuilt eval set) reads it from here, so the numbers
agree across stages.

The mix: entries without a fraction are used whole; an entry with fraction f supplies f of the final
mix, round(total x f) examples where total = (examples without a fraction) / (1 - sum of fractions).
Fractions summing to 1 or more leave no room for the rest: the mix is then the files taken whole and
`Mix.over` says so (lint FT0226 and check FT0533 report it at the spec's line).

The split: `eval_split` x N rounded up goes to eval (datasets' train_test_split, which the runtime
uses with the training seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainEntry:
    """One `dataset.train` entry: the path as written, the JSON pointer of that path, its fraction."""

    path: str
    pointer: str
    fraction: float | None = None


def train_entries(dataset: object) -> list[TrainEntry]:
    """The `dataset.train` entries (a path, or a list of paths and `{path, fraction}`), in order.

    Entries of the wrong shape are skipped: the schema reports them, and every reader agrees on the rest.
    """
    train = dataset.get("train") if isinstance(dataset, dict) else None
    if isinstance(train, str):
        return [TrainEntry(train, "/dataset/train")]
    out: list[TrainEntry] = []
    for i, item in enumerate(train if isinstance(train, list) else []):
        if isinstance(item, str):
            out.append(TrainEntry(item, f"/dataset/train/{i}"))
        elif isinstance(item, dict) and isinstance(item.get("path"), str):
            fraction = item.get("fraction")
            share = (
                float(fraction)
                if isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
                else None
            )
            out.append(TrainEntry(item["path"], f"/dataset/train/{i}/path", share))
    return out


@dataclass(frozen=True)
class Mix:
    """What the mix takes from each entry (`wanted`, in entry order) and the total."""

    wanted: tuple[int, ...]
    total: int
    fraction_total: float
    over: bool  # fractions add up to 1 or more: every file is taken whole


def mix(counts: Sequence[tuple[int, float | None]]) -> Mix:
    """The mix for (usable examples, fraction) per entry, in entry order (module docstring)."""
    base = sum(n for n, f in counts if f is None)
    fraction_total = sum(f for _, f in counts if f is not None)
    if fraction_total >= 1 or base == 0 or not fraction_total:
        wanted = tuple(n for n, _ in counts)
        return Mix(wanted, sum(wanted), fraction_total, over=fraction_total >= 1)
    total = base / (1 - fraction_total)
    wanted = tuple(n if f is None else round(total * f) for n, f in counts)
    return Mix(wanted, sum(wanted), fraction_total, over=False)


def mixed_total(counts: Sequence[tuple[int, float | None]]) -> int:
    """Training examples after mixing (before any eval_split)."""
    return mix(counts).total


def eval_count(examples: int, eval_split: float | None) -> int:
    """Examples an eval_split holds out of `examples`: ceil(split x N), as train_test_split does."""
    if not eval_split or not examples:
        return 0
    return math.ceil(examples * float(eval_split))


def split_counts(examples: int, eval_split: float | None) -> tuple[int, int]:
    """(train, eval) examples after an eval_split."""
    held = eval_count(examples, eval_split)
    return examples - held, held


def count_records(path: Path) -> int:
    """Records in a data source: a JSON Lines file (non-blank lines), a JSON array (its length), cheaply.

    Lines are counted without parsing; the data check is what reports malformed records. Parquet,
    CSV and save_to_disk sources are counted by readers.count_rows (their metadata or rows).
    """
    from ftspec.compiler.dataset.readers import count_rows, source_kind

    if source_kind(path) != "json":
        return count_rows(path)
    with open(path, "rb") as fh:
        head = fh.read(4096)
        probe = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        if probe.lstrip()[:1] == b"[":
            from ftspec.compiler.dataset.records import RecordReader  # streams the array, never whole

            return sum(1 for _line, value, error in RecordReader(path) if error is None and value is not None)
        fh.seek(0)
        return sum(1 for line in fh if line.strip())
