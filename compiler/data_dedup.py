"""Across-record checks that keep only hashes and sketches: exact duplicates, near duplicates
(MinHash LSH from datasketch), and eval-versus-train contamination by word n-gram overlap.

Memory grows with the number of records only by a fixed few bytes each (a 64-bit hash and a line for
exact duplicates; a compact MinHash signature for near duplicates, which is opt-in with dedup: near),
never with their text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_WORD = re.compile(r"\w+")

Where = tuple[int, int]  # (source index, 1-based line)


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class ExactDedup:
    """Whitespace-normalised exact duplicates: hash -> first (source, line)."""

    seen: dict[int, Where] = field(default_factory=dict)
    count: int = 0

    def add(self, key: str, where: Where) -> Where | None:
        """Record `key`; the first place it was seen when it is a duplicate, else None."""
        h = hash(key)  # per-process salted, which is fine: hashes never leave this run
        first = self.seen.get(h)
        if first is not None:
            self.count += 1
            return first
        self.seen[h] = where
        return None


class NearDedup:
    """Near duplicates: MinHash signatures over word 3-gram shingles, candidates from MinHashLSH,
    confirmed by the signatures' estimated Jaccard similarity."""

    SHINGLE = 3

    def __init__(self, threshold: float, num_perm: int = 128):
        from datasketch import MinHash, MinHashLSH

        self._minhash = MinHash
        self._template = MinHash(num_perm=num_perm)  # shared permutations: creating them per record is slow
        # datasketch 2 needs the hashing scheme named when permutations are passed in; 1.x has no such argument
        scheme = getattr(self._template, "scheme", None)
        self._scheme = {"scheme": scheme} if scheme is not None else {}
        # datasketch's default (0.5, 0.5) weighting finds only ~40% of pairs right at the threshold;
        # weighting false negatives up finds ~95% there and ~99% just above, and the false positives
        # it lets through are dropped by comparing signatures below.
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
        self.threshold = threshold
        self.num_perm = num_perm
        self._signatures: list[bytes] = []  # uint32 signature per inserted record, 4 bytes x num_perm
        self._where: list[Where] = []
        self.count = 0

    def signature(self, words: Sequence[str]):
        n = self.SHINGLE
        if len(words) < n:
            shingles = {" ".join(words).encode()}
        else:
            shingles = {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}
        m = self._minhash(num_perm=self.num_perm, permutations=self._template.permutations,
                          **self._scheme)
        m.update_batch(shingles)
        return m

    def add(self, words: Sequence[str], where: Where) -> tuple[Where, float] | None:
        """Insert a record; the most similar earlier record at or above the threshold, if any."""
        import numpy as np

        if not words:
            return None
        m = self.signature(words)
        best: tuple[Where, float] | None = None
        candidates = self._lsh.query(m)
        if candidates:
            mine = m.hashvalues.astype(np.uint32)
            for key in candidates:
                other = np.frombuffer(self._signatures[key], dtype=np.uint32)
                similarity = float(np.count_nonzero(mine == other)) / self.num_perm
                if similarity >= self.threshold and (best is None or similarity > best[1]):
                    best = (self._where[key], similarity)
        if best is not None:
            self.count += 1
            return best  # a near duplicate is not inserted: later copies match the first one
        key = len(self._signatures)
        self._signatures.append(m.hashvalues.astype(np.uint32).tobytes())
        self._where.append(where)
        self._lsh.insert(key, m)
        return None


class Contamination:
    """Eval examples sharing an n-word sequence with training data.

    Eval is small: its n-gram hashes are kept (with the first word of each as a cheap pre-filter), and
    every training record is scanned against them as it streams by. Eval texts shorter than n words
    count only when a training text is the same words exactly.
    """

    def __init__(self, n: int):
        self.n = n
        self._grams: dict[int, list[int]] = {}
        self._anchors: set[str] = set()
        self._short: dict[int, list[int]] = {}
        self.eval_lines: list[int] = []
        self.hits: dict[int, Where] = {}  # eval index -> first training (source, line) overlapping it

    @property
    def active(self) -> bool:
        return bool(self._grams or self._short)

    def add_eval(self, words: Sequence[str], line: int) -> None:
        index = len(self.eval_lines)
        self.eval_lines.append(line)
        n = self.n
        if len(words) < n:
            if words:
                self._short.setdefault(hash(tuple(words)), []).append(index)
            return
        for i in range(len(words) - n + 1):
            gram = hash(tuple(words[i : i + n]))
            bucket = self._grams.setdefault(gram, [])
            if not bucket or bucket[-1] != index:
                bucket.append(index)
            self._anchors.add(words[i])

    def scan_train(self, words: Sequence[str], where: Where) -> None:
        n = self.n
        if self._short and len(words) < n:
            for index in self._short.get(hash(tuple(words)), ()):
                self.hits.setdefault(index, where)
        if len(words) < n or not self._grams:
            return
        anchors, grams = self._anchors, self._grams
        for i in range(len(words) - n + 1):
            if words[i] in anchors:
                found = grams.get(hash(tuple(words[i : i + n])))
                if found:
                    for index in found:
                        self.hits.setdefault(index, where)

    @property
    def count(self) -> int:
        return len(self.hits)
