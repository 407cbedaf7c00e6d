"""Token lengths of training examples: exact (tokenizers + chat template) or estimated, percentiles,
and what `training.sequence_len` would cut.

Memory stays flat in the number of records: lengths are kept as a histogram (length -> count), and
only with `sequence_len: p95`, where the limit is known after the pass, each record's trained token
ranges are kept in compact integer arrays to count truncation once the limit is known.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text with BPE vocabularies
# An estimated first trained token this far beyond sequence_len is beyond it whatever the tokenizer
# (chars/4 is off by about a quarter either way for English and code), so its finding stays an error.
ESTIMATE_MARGIN = 1.25
MAX_LISTED = 20

Segments = Sequence[tuple[int, int]]  # trained token ranges [start, end)
Where = tuple[int, int]  # (source index, 1-based line)


def estimate_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


class Estimator:
    """Length and trained token ranges of a conversation without a tokenizer.

    The template's own text per message (role headers, markers) is measured once by rendering an
    empty conversation; markers count as one token each, as they are special tokens in real vocabularies.
    """

    def __init__(self, overhead_text: str = "", markers: Sequence[str] = (), messages_in_probe: int = 3):
        rest, specials = overhead_text, 0
        for marker in sorted(set(markers), key=len, reverse=True):
            if marker:
                specials += rest.count(marker)
                rest = rest.replace(marker, "")
        overhead = specials + estimate_tokens(rest) if overhead_text else 4 * messages_in_probe
        self.per_message = max(1, round(overhead / messages_in_probe))

    def measure(self, messages: Sequence[tuple[str, str]]) -> tuple[int, list[tuple[int, int]]]:
        cursor = 0
        segments = []
        per = self.per_message
        for role, content in messages:
            cursor += per
            tokens = (len(content) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
            if role == "assistant":
                segments.append((cursor, cursor + tokens + 1))  # + the end-of-turn token
                cursor += tokens + 1
            else:
                cursor += tokens
        return cursor, segments


def token_segments(encoding, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Trained token ranges for character spans, as transformers maps them (char_to_token of the
    first and last character of each span)."""
    out = []
    n = len(encoding.ids)
    for start, end in spans:
        if end <= start:
            continue
        first = _char_to_token(encoding, start, end, forward=True)
        last = _char_to_token(encoding, end - 1, start - 1, forward=False)
        if first is None or last is None or last < first:
            continue
        out.append((first, min(last + 1, n)))
    return out


def _char_to_token(encoding, pos: int, stop: int, forward: bool) -> int | None:
    step = 1 if forward else -1
    while pos != stop:  # characters no token covers (stripped whitespace) move to the nearest one that is
        token = encoding.char_to_token(pos)
        if token is not None:
            return token
        pos += step
    return None


def nearest_rank(hist: Counter, q: float) -> int:
    """Smallest length L with at least q of the examples no longer than L."""
    total = sum(hist.values())
    if not total:
        return 0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for length in sorted(hist):
        seen += hist[length]
        if seen >= rank:
            return length
    return max(hist)


@dataclass
class LengthStats:
    limit: int | None  # None: sequence_len is p95, known after the pass
    mode: str = "truncate"  # dataset.truncation: truncate | drop
    hist: Counter = field(default_factory=Counter)
    count: int = 0
    truncated: int = 0
    lost_tokens: int = 0
    dropped: int = 0
    trained_tokens: int = 0
    truncated_at: list[Where] = field(default_factory=list)
    wiped: list[tuple[Where, int, int]] = field(default_factory=list)  # (where, length, first trained)
    wiped_count: int = 0

    def __post_init__(self) -> None:
        self._src = array("H")
        self._line = array("I")
        self._len = array("I")
        self._nseg = array("H")
        self._segs = array("I")

    def add(self, where: Where, length: int, segments: Segments) -> None:
        self.hist[length] += 1
        self.count += 1
        for start, end in segments:
            self.trained_tokens += end - start
        if self.limit is None:
            self._src.append(where[0])
            self._line.append(where[1])
            self._len.append(length)
            self._nseg.append(min(len(segments), 65535))
            for start, end in segments[:65535]:
                self._segs.append(start)
                self._segs.append(end)
            return
        self._apply(where, length, segments, self.limit)

    def _apply(self, where: Where, length: int, segments: Segments, limit: int) -> None:
        if length <= limit:
            return
        if self.mode == "drop":
            self.dropped += 1
            if len(self.truncated_at) < MAX_LISTED:
                self.truncated_at.append(where)
            return
        self.truncated += 1
        if len(self.truncated_at) < MAX_LISTED:
            self.truncated_at.append(where)
        lost = 0
        for start, end in segments:
            if end > limit:
                lost += end - max(start, limit)
        self.lost_tokens += lost
        if segments and all(start >= limit for start, _ in segments):
            self.wiped_count += 1
            if len(self.wiped) < 200:
                self.wiped.append((where, length, min(s for s, _ in segments)))

    def finish(self, q: float = 0.95) -> int:
        """Fix the limit (p95 when it was deferred) and count truncation; returns the limit."""
        if self.limit is not None:
            return self.limit
        self.limit = nearest_rank(self.hist, q)
        k = 0
        for i in range(len(self._len)):
            n = self._nseg[i]
            segs = [(self._segs[k + 2 * j], self._segs[k + 2 * j + 1]) for j in range(n)]
            k += 2 * n
            self._apply((self._src[i], self._line[i]), self._len[i], segs, self.limit)
        self._src, self._line, self._len, self._nseg, self._segs = (
            array("H"),
            array("I"),
            array("I"),
            array("H"),
            array("I"),
        )
        return self.limit

    def percentiles(self) -> dict:
        if not self.count:
            return {"p50": 0, "p95": 0, "max": 0, "min": 0, "mean": 0.0}
        total = sum(length * n for length, n in self.hist.items())
        return {
            "min": min(self.hist),
            "p50": nearest_rank(self.hist, 0.5),
            "p95": nearest_rank(self.hist, 0.95),
            "max": max(self.hist),
            "mean": round(total / self.count, 1),
        }

    def histogram(self, bins: int = 10) -> list[list[int]]:
        """[low, high, count] rows covering min..max in equal-width bins (high inclusive)."""
        if not self.count:
            return []
        lo, hi = min(self.hist), max(self.hist)
        width = max(1, math.ceil((hi - lo + 1) / bins))
        rows = []
        for b in range(bins):
            start = lo + b * width
            if start > hi:
                break
            end = min(hi, start + width - 1)
            rows.append([start, end, 0])
        for length, n in self.hist.items():
            rows[min(len(rows) - 1, (length - lo) // width)][2] += n
        return rows
