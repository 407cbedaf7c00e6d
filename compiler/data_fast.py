"""Fast path of the data check for ChatML JSON Lines: recognise clean records in bulk.

The per-record checks in data_formats.py cost ~9 us a record in Python. Almost every record of a real
file is clean, so this module decodes each line with msgspec into typed structs (which already rejects
anything that is not `{"messages": [{"role": system|user|assistant, "content": str}, ...]}`), then
checks a whole block of records at once with C-level operations: role order by one regular expression
over a string of role letters, empty content, leaked markup and role labels by searches over the
block's joined text, token estimates with numpy, duplicate keys by one pass over the normalised text.

The fast path only has to *recognise* clean records exactly: a line it is not sure of (it fails to
decode, or its record trips any block-level test) goes back to the caller as a slow line, which the
per-record path checks and reports as before. A record comes out clean here only if the per-record
path finds no problem in it (tests/test_datacheck_fast.py compares the two on mutated records).

Blocks are independent, so the same function serves one process (blocks read in order) and several
(byte ranges of a large file, see `parallel_blocks`); the caller merges the results in line order.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Literal

from .data_dedup import ROLE_CODE, hash_bytes
from .data_lengths import Estimator

try:  # optional: without msgspec (or numpy, which datasketch brings) every record takes the per-record path
    import msgspec
    import numpy as np
except ImportError:  # pragma: no cover - depends on the environment
    msgspec = np = None

BLOCK_BYTES = 1 << 19  # big enough for the C-level passes to dominate, small enough that a block's
# working memory (~8x its bytes) stays a few MB
PARALLEL_MIN_BYTES = 64 << 20  # smaller files are checked in this process: starting workers costs more
MAX_WORKERS = 4
SYSTEM_LINES = 5  # as datacheck keeps: the first few records with and without a system prompt

Messages = list[tuple[str, str]]

if msgspec is not None:

    class _Turn(msgspec.Struct, gc=False):
        role: Literal["system", "user", "assistant"]
        content: str

    class _Record(msgspec.Struct, gc=False):
        messages: list[_Turn]

    _DECODE = msgspec.json.Decoder(_Record).decode
    # Ends each record in the flat list of turns; role "|" never decodes (the Literal rejects it).
    _END = _Turn(role="|", content="\x02")  # type: ignore[arg-type]
    _LEAD = _Turn(role="|", content="")  # type: ignore[arg-type]  # heads the list: text starts " \x00 "

AVAILABLE = msgspec is not None
_DECODE_ERRORS = (ValueError, RecursionError)  # msgspec.DecodeError; UnicodeDecodeError on bad UTF-8

_ROLE = attrgetter("role")
_CONTENT = attrgetter("content")
_LETTER = {**ROLE_CODE, "|": "|"}
# System prompt first only, then user/assistant pairs: what data_formats._check_order accepts silently.
_ONE_ORDER = {
    "consistent": re.compile(r"s?(?:ua)+"),
    "any": re.compile(r"s?(?:ua)+"),
    "required": re.compile(r"s(?:ua)+"),  # a record without one is FT0521: per-record path
    "forbidden": re.compile(r"(?:ua)+"),  # a record with one is FT0522: per-record path
}
_ORDER = {k: re.compile(rf"\|(?:{p.pattern}\|)*") for k, p in _ONE_ORDER.items()}  # a block: "|sua|ua|"
# In the block text every content sits between "\x00 " and " \x00" (see _scan).
_EMPTY = re.compile(r"\x00\s*(?=\x00)")
_LABEL_WORDS = ("assistant", "user", "human", "gpt", "system", "ai", "bot")  # LeakScanner's role labels
_LABEL = re.compile(r"\x00\s*(?:" + "|".join(_LABEL_WORDS) + r")\s*:", re.IGNORECASE)
_LABEL_PAIRS = sorted({ord(w[0]) << 8 | ord(w[1]) for w in _LABEL_WORDS})
_NEXT_TURN = re.compile(r"\n\s*(?:user|human)\s*:", re.IGNORECASE)
# A whitespace run that is not one plain space; str.split() and re's \s agree on what whitespace is.
_WS_RUN = re.compile(r"[^\S ]\s*| \s+")
_WS_CHARS = ("\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f")
_KEY_SEP = b" \x00 \x02 \x00 "  # between two records in the normalised text
_TAIL = len(" \x00 \x02")


def _single_spaced(text: str) -> bytes | None:
    """The text's bytes when it is ASCII and every whitespace run in it is one plain space; else None
    (which is always safe: the general path follows)."""
    if not text.isascii() or any(c in text for c in _WS_CHARS):
        return None
    # str.find("  ") crawls through text full of single spaces (~4 ns a char); numpy compares in SIMD.
    raw = text.encode("ascii")
    space = (np.frombuffer(raw, np.uint8) == 32).view(np.uint8)
    return None if np.any(space[1:] & space[:-1]) else raw


@dataclass(frozen=True)
class FastConfig:
    """What a block scan needs to know; picklable, for worker processes."""

    markers: tuple[str, ...]  # template markup that counts as leaked (LeakScanner's list)
    estimator: Estimator  # per-message token overhead of the template
    limit: int | None  # training.sequence_len (None: p95, resolved after the pass)
    loss_all: bool
    policy: str  # dataset.system_prompt
    samples: int  # messages kept for the first N clean records of a block (rendered samples)
    dedup: bool = True  # compute exact-duplicate key hashes


@dataclass
class Block:
    """One block of lines: clean records in bulk, the rest as raw lines for the per-record path."""

    nlines: int
    lines: list[int] | range  # 0-based line in the block of each clean record, ascending
    hashes: bytes  # exact-duplicate key hash of each clean record, 16 bytes each (data_dedup.hash_bytes)
    hist: Counter  # token length -> clean records, less those in `over`
    trained: int  # trained tokens of those records
    over: dict[int, tuple[int, list[tuple[int, int]]]]  # clean index -> (length, segments), added one by one
    with_system: int
    system_first: dict[bool, list[int]]  # clean indexes of the first records with / without a system turn
    samples: list[Messages]  # messages of the first clean records
    slow: list[tuple[int, bytes]] = field(default_factory=list)  # (0-based line in the block, raw line)


_markup_cache: dict[tuple[str, ...], tuple[re.Pattern | None, tuple[str, ...]]] = {}


def _markup(markers: tuple[str, ...]) -> tuple[re.Pattern | None, tuple[str, ...]]:
    found = _markup_cache.get(markers)
    if found is None:
        ordered = sorted({m for m in markers if m}, key=len, reverse=True)
        regex = re.compile("|".join(re.escape(m) for m in ordered)) if ordered else None
        found = _markup_cache[markers] = (regex, tuple({m[0] for m in ordered}))
    return found


def scan_block(data: bytes, cfg: FastConfig) -> Block:
    """Split a block of whole lines (without the last newline) into clean records, summarised, and
    lines for the per-record path."""
    lines = data.split(b"\n")
    # only \uXXXX can put a control character into a string (test b"\\" first: memchr is fast, memmem is not)
    escapes = b"\\" in data and b"\\u" in data
    forced: set[int] = set()
    while True:
        result = _scan(lines, cfg, forced, escapes)
        if isinstance(result, Block):
            return result
        forced |= result  # lines for the per-record path; scan the rest again


def _scan(lines: list[bytes], cfg: FastConfig, forced: set[int], escapes: bool) -> Block | set[int]:
    flat: list = [_LEAD]
    extend, append = flat.extend, flat.append
    decode, errors, end = _DECODE, _DECODE_ERRORS, _END
    bad: list[int] = []
    for i, raw in enumerate(lines):
        if forced and i in forced:
            bad.append(i)
            continue
        try:
            extend(decode(raw).messages)
        except errors:
            bad.append(i)
            continue
        append(end)
    good: list[int] | range
    if bad:
        skip = set(bad)
        good = [i for i in range(len(lines)) if i not in skip]
    else:
        good = range(len(lines))
    slow = [(i, lines[i]) for i in bad if lines[i].strip()]  # blank lines are no records
    n = len(good)
    if n == 0:
        return Block(len(lines), good, b"", Counter(), 0, {}, 0, {True: [], False: []}, [], slow)

    # Turn j of the block is flat[j + 1] (after the lead entry); the end markers count as turns here.
    letters = "".join(map(_LETTER.__getitem__, map(_ROLE, flat)))  # "|sua|ua|": a letter a turn
    codes = np.frombuffer(letters.encode("ascii"), np.uint8)[1:]
    is_end = codes == ord("|")
    is_assistant = codes == ord("a")
    ends = np.flatnonzero(is_end)  # turn index of each record's end marker
    contents = list(map(_CONTENT, flat))
    lens = np.fromiter(map(len, contents), np.int64, len(contents))[1:]
    # text = " \x00 c0 \x00 c1 \x00 \x02 \x00 c2 ...": turn j's content starts at starts[j]
    starts = np.empty(len(lens), np.int64)
    starts[0] = 3
    np.cumsum(lens[:-1] + 3, out=starts[1:])
    starts[1:] += 3
    text = " \x00 ".join(contents)

    suspects: set[int] = set()  # record indexes (in `good`) for the per-record path

    def flag(pos: int) -> None:  # the record holding character `pos` of `text`
        turn = int(np.searchsorted(starts, pos, side="right")) - 1
        suspects.add(int(np.searchsorted(ends, turn)))

    if _ORDER[cfg.policy].fullmatch(letters) is None:
        one = _ONE_ORDER[cfg.policy].fullmatch
        suspects.update(k for k, r in enumerate(letters[1:-1].split("|")) if one(r) is None)
    if escapes and (text.count("\x00") != len(flat) - 1 or text.count("\x02") != n):
        # A content holding \x00 or \x02 itself would blur the block text: per-record path.
        suspects.update(int(np.searchsorted(ends, j)) for j, c in enumerate(contents[1:])
                        if ("\x00" in c or "\x02" in c) and not is_end[j])
        return {good[k] for k in suspects}
    for j in np.flatnonzero(lens == 0).tolist():  # empty content (FT0511)
        suspects.add(int(np.searchsorted(ends, j)))
    raw = _single_spaced(text)
    simple = raw is not None
    if simple:
        # No whitespace but single spaces, no content starting with a space: a whitespace-only
        # content, a line break before "User:" or a label after spaces cannot occur. A label needs
        # a content to start with one of its words: compare the first two letters of every content
        # (ASCII | 0x20 lower-cases letters and no other byte into a letter), confirm with the pattern.
        chars = np.frombuffer(raw, np.uint8)
        second = np.minimum(starts + 1, len(raw) - 1)  # the last turn is an end marker: nothing follows
        pairs = (chars[starts] | 0x20).astype(np.uint16) << 8 | (chars[second] | 0x20)
        for j in np.flatnonzero(np.isin(pairs, _LABEL_PAIRS)).tolist():
            if _LABEL.match(text, int(starts[j]) - 2):
                flag(int(starts[j]))
    else:
        for match in _EMPTY.finditer(text):  # whitespace-only content (FT0511)
            flag(match.start() + 2)
        for match in _LABEL.finditer(text):  # a role label opens a turn (FT0514)
            flag(match.start() + 2)
        if "\n" in text:
            for match in _NEXT_TURN.finditer(text):  # a transcript continues in the turn (FT0514)
                flag(match.start())
    markup, firsts = _markup(cfg.markers)
    if markup is not None and any(first in text for first in firsts):
        for match in markup.finditer(text):  # template markup in content (FT0513)
            flag(match.start())
            flag(match.end() - 1)
    if suspects:
        return {good[k] for k in suspects}

    hashes = b""
    if cfg.dedup and simple:  # data_dedup.dedup_key of every record (all have the usual role order)
        # record k's key is text from its first turn to the " \x00 " before its end marker: hash slices
        first = starts[np.concatenate(([0], ends[:-1] + 1))].tolist()
        stop = (starts[ends] - 3).tolist()
        hashes = hash_bytes(map(memoryview(raw).__getitem__, map(slice, first, stop)))
    elif cfg.dedup:
        keys = _WS_RUN.sub(" ", text).encode("utf-8", "surrogatepass").split(_KEY_SEP)
        keys[0] = keys[0][3:]
        keys[-1] = keys[-1][:-_TAIL]
        hashes = hash_bytes(keys)

    # Token estimates as Estimator.measure: per message its overhead + ceil(chars / 4), + 1 for the
    # terminator of an assistant turn (trained, with the answer).
    tokens = (lens + 3) >> 2
    contributions = tokens + cfg.estimator.per_message + is_assistant
    contributions[is_end] = 0
    lengths = np.diff(np.cumsum(contributions)[ends], prepend=0)
    trained = int(lengths.sum()) if cfg.loss_all else int(((tokens + 1) * is_assistant).sum())
    over: dict[int, tuple[int, list[tuple[int, int]]]] = {}
    over_at = (np.arange(n) if cfg.limit is None else np.flatnonzero(lengths > cfg.limit)).tolist()
    for k in over_at:
        length, segments = cfg.estimator.measure(_messages(flat, ends, k))
        segments = [(0, length)] if cfg.loss_all else segments
        over[k] = (length, segments)
        trained -= sum(stop - start for start, stop in segments)
    if over_at:
        lengths = np.delete(lengths, over_at)
    values, counts = np.unique(lengths, return_counts=True)
    hist = Counter(dict(zip(values.tolist(), counts.tolist(), strict=True)))

    system_first: dict[bool, list[int]] = {True: [], False: []}
    for flag_, needle in ((True, "|s"), (False, "|u")):
        pos = letters.find(needle)
        while pos >= 0 and len(system_first[flag_]) < SYSTEM_LINES:
            system_first[flag_].append(letters.count("|", 0, pos))
            pos = letters.find(needle, pos + 1)
    samples = [_messages(flat, ends, k) for k in range(min(cfg.samples, n))]
    return Block(len(lines), good, hashes, hist, trained, over, letters.count("|s"), system_first,
                 samples, slow)


def _messages(flat: list, ends, k: int) -> Messages:
    start = int(ends[k - 1]) + 2 if k else 1  # flat[0] is the lead entry
    return [(t.role, t.content) for t in flat[start : int(ends[k]) + 1]]


# --- several processes ---------------------------------------------------------------------------


def worker_count() -> int:
    """Processes for a large file: the cores this process may use, at most MAX_WORKERS;
    FTSPEC_DATA_WORKERS overrides (1: one process)."""
    setting = os.environ.get("FTSPEC_DATA_WORKERS", "")
    if setting.isdigit() and int(setting) > 0:
        return int(setting)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def _ranges(path: Path, start: int, size: int, pieces: int) -> list[tuple[int, int]]:
    """Byte ranges of whole lines covering [start, size)."""
    bounds = [start]
    step = max(1, (size - start) // pieces)
    with open(path, "rb") as fh:
        for i in range(1, pieces):
            fh.seek(max(bounds[-1], start + i * step))
            fh.readline()  # to the start of the next line
            pos = fh.tell()
            if pos >= size:
                break
            if pos > bounds[-1]:
                bounds.append(pos)
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _scan_range(args: tuple[str, int, int, FastConfig]) -> list[Block]:
    path, start, stop, cfg = args
    out = []
    with open(path, "rb") as fh:
        fh.seek(start)
        remaining = stop - start
        pending = b""
        while remaining > 0:
            chunk = fh.read(min(BLOCK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            data = pending + chunk if pending else chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                pending = data
                continue
            pending = data[cut:]
            out.append(scan_block(data[: cut - 1], cfg))
        if pending:
            out.append(scan_block(pending, cfg))
    for block in out[1:]:  # the parent adds counts up in bulk: one histogram for the range
        out[0].hist.update(block.hist)
        out[0].trained += block.trained
        block.hist, block.trained = Counter(), 0
    return out


def start_pool(workers: int):
    """Worker processes (forked where the platform can: no re-import; start them before any thread)."""
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method).Pool(workers)


def parallel_blocks(pool, path: Path, start: int, size: int, cfg: FastConfig, workers: int) -> Iterator[Block]:
    """Blocks of [start, size) scanned by the pool's `workers` processes, in file order."""
    pieces = max(workers * 8, (size - start) // (16 << 20))  # small ranges keep the workers evenly busy
    jobs = [(str(path), a, b, cfg) for a, b in _ranges(path, start, size, pieces)]
    for blocks in pool.imap(_scan_range, jobs):
        yield from blocks
