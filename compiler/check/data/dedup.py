"""Across-record checks that keep only hashes and sketches: exact duplicates, near duplicates
(MinHash LSH from datasketch), and eval-versus-train contamination by word n-gram overlap.

Memory grows with the number of records only by a fixed few bytes each (a 128-bit hash and a packed place
for exact duplicates; a compact MinHash signature for near duplicates, which is opt-in with dedup: near),
never with their text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _json_string  # json.dumps's string encoder (ensure_ascii=False)

_WORD = re.compile(r"\w+")

Where = tuple[int, int]  # (source index, 1-based line)


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


ROLE_CODE = {"system": "s", "user": "u", "assistant": "a"}


def dedup_key(messages: Sequence[tuple[str, str]]) -> str:
    """Whitespace-normalised conversation: two records with the same key are exact duplicates.

    The conversation as json.dumps writes it (ensure_ascii=False) with every content whitespace-
    normalised (each whitespace run one space, none at either end):
    `{"messages": [{"role": "user", "content": "..."}, ...]}`. JSON spells each conversation one way,
    so the key tells any two apart, and a record already written that way (the usual case) is its
    own key: data_fast hashes such lines straight from the file's bytes, and builds the same string
    for a whole block of other records at once.
    """
    return (
        '{"messages": ['
        + ", ".join(
            [
                '{"role": '
                + _json_string(role)
                + ', "content": '
                + _json_string(" ".join(content.split()))
                + "}"
                for role, content in messages
            ]
        )
        + "]}"
    )


def _encode(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")  # the stdlib parser lets lone surrogates through


try:  # 128-bit keys: collisions are negligible even across billions of records
    from xxhash import xxh3_128_digest

    _xxh3_128: Callable[[bytes], bytes] | None = xxh3_128_digest
except ImportError:  # pragma: no cover - depends on the environment
    _xxh3_128 = None

DIGEST = 16  # bytes of one key hash


def _blake2b_16(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=DIGEST).digest()


def hash_bytes(keys: Iterable[bytes]) -> bytes:
    """128-bit hashes of UTF-8 dedup keys, concatenated (16 bytes a key), stable across processes
    (unlike hash()). One bytes object rather than a list of ints: a worker sends it to the parent as
    one buffer, and the parent finds duplicates with numpy instead of a dict of a million ints."""
    return b"".join(map(_xxh3_128 or _blake2b_16, keys))


def hash_keys(keys: Iterable[str]) -> list[bytes]:
    """The 16-byte hash of each key."""
    return list(map(_xxh3_128 or _blake2b_16, map(_encode, keys)))


_SOURCE_SHIFT = 40  # a place packed into one int: source index above, line below
_LINE_MASK = (1 << _SOURCE_SHIFT) - 1


def _unpack(packed: int) -> Where:
    return packed >> _SOURCE_SHIFT, packed & _LINE_MASK


@dataclass
class ExactDedup:
    """Whitespace-normalised exact duplicates, in one of two modes.

    Immediate (`deferred=False`): key hash -> first place (packed as one int) in a dict, and `add`
    answers at once; needed when a later check depends on the answer (near duplicates skip exact ones).
    Deferred: hashes and places are only appended, in the order records are read, as flat buffers (24
    bytes a record, no Python object per record); `resolve()` finds every duplicate at the end with one
    numpy sort. Both give the same duplicates, each with the first place its key was seen, in read order.
    """

    deferred: bool = False
    seen: dict[bytes, int] = field(default_factory=dict)
    count: int = 0
    _digests: list[bytes] = field(default_factory=list)  # deferred: chunks of 16-byte hashes
    _places: list = field(default_factory=list)  # deferred: packed places (numpy int64 arrays or lists)
    _one_digests: list[bytes] = field(default_factory=list)  # deferred: single adds not yet in a chunk
    _one_places: list[int] = field(default_factory=list)

    def add(self, key: str, where: Where) -> Where | None:
        """Record `key`; the first place it was seen when it is a duplicate, else None (always None
        when deferred: `resolve()` reports duplicates)."""
        h = hash_keys((key,))[0]
        packed = where[0] << _SOURCE_SHIFT | where[1]
        if self.deferred:
            self._one_digests.append(h)
            self._one_places.append(packed)
            return None
        first = self.seen.setdefault(h, packed)
        if first == packed:
            return None
        self.count += 1
        return _unpack(first)

    def _flush_ones(self) -> None:
        if self._one_places:
            self._digests.append(b"".join(self._one_digests))
            self._places.append(self._one_places)
            self._one_digests, self._one_places = [], []

    def add_block(self, digests: bytes, source: int, lines) -> None:
        """Deferred mode: many records of one source in read order; `digests` holds 16 bytes a record,
        `lines` their 1-based lines (a numpy integer array)."""
        import numpy as np

        self._flush_ones()
        self._digests.append(digests)
        self._places.append(np.asarray(lines, np.int64) | np.int64(source << _SOURCE_SHIFT))

    def resolve(self) -> list[tuple[Where, Where]]:
        """Deferred mode: (place, first place of its key) of every duplicate, in read order; the buffers
        are released."""
        import numpy as np

        self._flush_ones()
        if not self._digests:
            return []
        keys = np.frombuffer(b"".join(self._digests), np.uint64).reshape(-1, 2)
        places = np.concatenate([np.asarray(p, np.int64) for p in self._places])
        self._digests, self._places = [], []
        # Sort on the first 64 bits only (fast); rows sharing them are few (the duplicates, and a
        # chance collision once in ~2^64 pairs), and those are settled exactly on all 128 bits below.
        order = np.argsort(keys[:, 0])
        high = keys[order, 0]
        same = np.flatnonzero(high[1:] == high[:-1])
        if same.size == 0:
            return []
        rows = np.sort(order[np.union1d(same, same + 1)])  # in read order
        seen: dict[tuple[int, int], int] = {}
        out: list[tuple[Where, Where]] = []
        for (a, b), packed in zip(keys[rows].tolist(), places[rows].tolist(), strict=True):
            first = seen.setdefault((a, b), packed)
            if first != packed:
                out.append((_unpack(packed), _unpack(first)))
        self.count += len(out)
        return out


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
        m = self._minhash(num_perm=self.num_perm, permutations=self._template.permutations, **self._scheme)
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
