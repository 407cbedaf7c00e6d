"""Fast path of the data check for ChatML JSON Lines: recognise clean records in bulk.

The per-record checks in data_formats.py cost ~9 us a record in Python. Almost every record of a real
file is clean, so this module checks a whole block of lines (~512 KB) at once, in one of two ways:

- The plain path (`_scan_plain`) takes a block whose every line is a clean record exactly as
  json.dumps writes it, ASCII without escapes: with no backslash every double quote delimits a
  string, so numpy finds every content between the quotes and compares the markup between contents
  with the few strings it can be, byte for byte; no Python object is made per record. Such a line,
  its contents whitespace-normalised, is also its own exact-duplicate key (data_dedup.dedup_key).
- The decoding path (`_scan`) decodes the block with msgspec into typed structs (one call when every
  line holds one record, else line by line), which already rejects anything that is not
  `{"messages": [{"role": system|user|assistant, "content": str}, ...]}`, then checks the block with
  C-level operations: role order against the one clean order for each number of turns, empty
  content, leaked markup and role labels by searches over the block's joined text, token estimates
  with numpy, duplicate keys built for the whole block as one string.

Both only have to *recognise* clean records exactly: a line they are not sure of (it fails to decode,
or its record trips any block-level test) goes back to the caller as a slow line, which the
per-record path checks and reports as before. A record comes out clean here only if the per-record
path finds no problem in it (tests/test_datacheck_fast.py compares them on mutated records).

Blocks are independent, so the same functions serve one process (blocks read in order) and several
(byte ranges of a large file, see `parallel_blocks`); the caller merges the results in line order.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, repeat
from json.encoder import encode_basestring as _json_string  # as json.dumps (ensure_ascii=False)
from operator import attrgetter, is_not
from pathlib import Path
from typing import Any, Literal

import msgspec  # core dependencies (pyproject): typed decoding of clean records, bulk scans
import numpy as np
from ftspec.compiler.check.data.dedup import ROLE_CODE, dedup_key, hash_bytes
from ftspec.compiler.check.data.lengths import Estimator
from ftspec.compiler.dataset.records import CHUNK, whole_lines

BLOCK_BYTES = 1 << 19  # big enough for the C-level passes to dominate, small enough that a block's
# working memory stays a few MB
DECODE_BYTES = 1 << 18  # a block the decoding path takes is scanned in pieces this big: its working
# memory is ~10x the bytes (a Python object per turn)
PARALLEL_MIN_BYTES = 64 << 20  # smaller files are checked in this process: starting workers costs more
MAX_WORKERS = 4
SYSTEM_LINES = 5  # as datacheck keeps: the first few records with and without a system prompt

Messages = list[tuple[str, str]]

if msgspec is not None:
    # Tool calling (a record's `tools`, a turn's `tool_calls`) is decoded only to be seen: a record
    # holding either, even null, is checked by the per-record path (formats.check_record).
    class _Turn(msgspec.Struct, gc=False):
        role: Literal["system", "user", "assistant"]
        content: str
        tool_calls: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET

    class _Record(msgspec.Struct, gc=False):
        messages: list[_Turn]
        tools: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET

    _DECODER = msgspec.json.Decoder(_Record)
    _DECODE, _DECODE_LINES = _DECODER.decode, _DECODER.decode_lines

AVAILABLE = msgspec is not None
_DECODE_ERRORS = (ValueError, RecursionError)  # msgspec.DecodeError; UnicodeDecodeError on bad UTF-8

_MESSAGES = attrgetter("messages")
_ROLE = attrgetter("role")
_CONTENT = attrgetter("content")
_TOOLS = attrgetter("tools")
_TOOL_CALLS = attrgetter("tool_calls")
_UNSET = msgspec.UNSET if msgspec is not None else None
_LETTER = ROLE_CODE


class _Canonical(dict):
    """Turns -> the one role order data_formats._check_order accepts silently for that many turns:
    a system prompt first when the number is odd, then user/assistant pairs, as the roles joined
    ("systemuserassistant") or as letters (letters=True: "sua")."""

    def __init__(self, letters: bool = False):
        super().__init__()
        self.names = ("s", "u", "a") if letters else ("system", "user", "assistant")

    def __missing__(self, size: int) -> str:
        system, user, assistant = self.names
        order = (system if size % 2 else "") + (user + assistant) * (size // 2)
        if size < 256:
            self[size] = order
        return order


_CANONICAL = _Canonical()
_CANONICAL_LETTERS = _Canonical(letters=True)
# dataset.system_prompt -> the parity of a clean record's number of turns (1: with a system prompt);
# a record without one under "required" is FT0521, with one under "forbidden" FT0522: per-record path
_PARITY = {"consistent": None, "any": None, "required": 1, "forbidden": 0}
# In the block text every content sits between "\x00 " and " \x00" (see _scan).
_EMPTY = re.compile(r"\x00\s*(?=\x00)")
_LABEL_WORDS = ("assistant", "user", "human", "gpt", "system", "ai", "bot")  # LeakScanner's role labels
_LABEL = re.compile(r"\x00\s*(?:" + "|".join(_LABEL_WORDS) + r")\s*:", re.IGNORECASE)
_LABEL_OPENS = re.compile(
    rb"\s*(?:" + "|".join(_LABEL_WORDS).encode() + rb")\s*:", re.IGNORECASE
)  # in ASCII bytes
_LABEL_PAIRS = sorted({ord(w[0]) << 8 | ord(w[1]) for w in _LABEL_WORDS})
if np is not None:  # the first two letters of a content, lower-cased, as an index: could a label start here?
    _LABEL_START = np.zeros(1 << 16, bool)
    _LABEL_START[_LABEL_PAIRS] = True
_NEXT_TURN = re.compile(r"\n\s*(?:user|human)\s*:", re.IGNORECASE)
# A control character JSON escapes that whitespace normalisation leaves (NUL is the block's separator).
_CONTROL = re.compile("[\x01-\x08\x0e-\x1b]")
# A whitespace run that is not one plain space; str.split() and re's \s agree on what whitespace is.
_WS_RUN = re.compile(r"[^\S ]\s*| \s+")
_WS_CHARS = ("\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f")


def _single_spaced(text: str, raw: bytes, escaped: bool = True) -> bytes | None:
    """`raw` (the text's UTF-8) when the text is ASCII and every whitespace run in it is one plain
    space; else None (which is always safe: the general path follows). Without `escaped` (the block
    holds no backslash) the text holds no control character: JSON strings cannot hold one unescaped."""
    if not text.isascii() or (escaped and any(c in text for c in _WS_CHARS)):
        return None
    return None if _double_space(raw) else raw


class _Scratch(threading.local):
    """Work arrays reused from block to block. A block's temporaries are a few hundred KB each: freed
    and allocated afresh, malloc hands such blocks back to the system and takes them again, and every
    page faults on first touch (~0.3 us a record). One set per thread."""

    def __init__(self):
        self.arrays: dict[tuple[str, str], Any] = {}  # numpy arrays

    def get(self, name: str, shape, dtype):
        """An uninitialised array of `shape` (int or tuple) and `dtype`, valid until the next get(name)."""
        count = shape if isinstance(shape, int) else shape[0] * shape[1]
        key = (name, np.dtype(dtype).str)
        have = self.arrays.get(key)
        if have is None or have.size < count:
            have = self.arrays[key] = np.empty(count, dtype)
        return have[:count].reshape(shape)

    def release(self) -> None:
        self.arrays.clear()


_SCRATCH = _Scratch()


def release_scratch() -> None:
    """Free the work arrays of this thread (a few MB) once a file is scanned."""
    _SCRATCH.release()


def _double_space(raw: bytes, end: int | None = None) -> bool:
    """Two spaces in a row anywhere in raw[:end]. bytes.find(b"  ") crawls through text full of single
    spaces (~1 ns a byte); numpy compares the bytes in pairs, as 16-bit words at even offsets, then
    at odd ones."""
    end = len(raw) if end is None else end
    if end < 2:
        return False
    for offset in (0, 1):
        pairs = np.ndarray(((end - offset) // 2,), "<u2", raw, offset)
        if bool((pairs == 0x2020).any()):
            return True
    return False


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
    # (0-based line in the block, raw line); a column scan's rows (scan_arrow_batch): the record itself
    slow: list[tuple[int, object]] = field(default_factory=list)


_markup_cache: dict[tuple[str, ...], tuple[re.Pattern | None, tuple[str, ...]]] = {}


def _markup(markers: tuple[str, ...]) -> tuple[re.Pattern | None, tuple[str, ...]]:
    found = _markup_cache.get(markers)
    if found is None:
        ordered = sorted({m for m in markers if m}, key=len, reverse=True)
        regex = re.compile("|".join(re.escape(m) for m in ordered)) if ordered else None
        found = _markup_cache[markers] = (regex, tuple({m[0] for m in ordered}))
    return found


def scan_blocks(data: bytes, cfg: FastConfig, end: int | None = None) -> Iterator[Block]:
    """scan_block on data[:end], in pieces of at most DECODE_BYTES (split between lines) where the
    plain path does not take it whole."""
    if end is None:
        end = len(data)
    if data.find(b"\\", 0, end) < 0:
        block = _scan_plain(data, end, cfg)
        if block is not None:
            yield block
            return
    if end <= DECODE_BYTES:
        yield scan_block(data, cfg, end, plain=False)
        return
    start = 0
    while True:
        stop = end
        if end - start > DECODE_BYTES:
            stop = data.rfind(b"\n", start, start + DECODE_BYTES)
            if stop < 0:  # a line longer than a piece
                stop = data.find(b"\n", start + DECODE_BYTES, end)
                stop = end if stop < 0 else stop
        yield scan_block(data[start:stop], cfg, plain=False)
        if stop >= end:
            return
        start = stop + 1


def scan_block(data: bytes, cfg: FastConfig, end: int | None = None, plain: bool = True) -> Block:
    """Split a block of whole lines (without the last newline) into clean records, summarised, and
    lines for the per-record path. With `end`, the block is data[:end] (what follows is ignored);
    plain=False skips the plain path."""
    if end is None:
        end = len(data)
    # without a backslash (memchr: fast) no string holds a quote, a backslash or a control character
    backslash = data.find(b"\\", 0, end) >= 0
    if plain and not backslash:
        block = _scan_plain(data, end, cfg)
        if block is not None:
            return block
    nlines, good, records, lines = _decode(data, end)
    bad: list[
        int
    ] = []  # lines for the per-record path: those that do not decode (blank lines are no records)
    if lines is not None and len(good) < nlines:
        decoded = set(good)
        bad = [i for i, raw in enumerate(lines) if i not in decoded and raw.strip()]
    while True:
        result = _scan(records, cfg, backslash)
        if isinstance(result, Block):
            break
        # suspects (indexes into `records`) go to the per-record path; scan the rest again
        bad.extend(good[k] for k in result)
        keep = [k for k in range(len(records)) if k not in result]
        good = [good[k] for k in keep]
        records = [records[k] for k in keep]
    if bad:
        if lines is None:
            lines = (data[:end] if end < len(data) else data).split(b"\n")
        result.slow = [(i, lines[i]) for i in sorted(bad)]
    result.nlines, result.lines = nlines, good
    return result


def _decode(data: bytes, end: int) -> tuple[int, list[int] | range, list, list[bytes] | None]:
    """(number of lines, 0-based lines of the records that decode, those records, the lines or None).

    One call decodes the whole block when values map to lines safely: every newline sits between a
    closing brace and an opening one, which JSON allows nowhere inside a value (a string holds no raw
    newline), so each newline separates two values; as many values as lines then means one a line.
    Anything else (a line that fails, blank lines, CRLF, spaces around a record) goes line by line."""
    if data[:1] == b"{" and data[end - 1 : end] == b"}":
        chars = np.frombuffer(data, np.uint8, end)
        newlines = np.flatnonzero(chars == 10)
        if not newlines.size or (
            bool((chars[newlines - 1] == 125).all()) and bool((chars[newlines + 1] == 123).all())
        ):
            try:
                records = _DECODE_LINES(memoryview(data)[:end] if end < len(data) else data)
            except _DECODE_ERRORS:
                records = None
            if records is not None and len(records) == newlines.size + 1:
                return len(records), range(len(records)), records, None
    lines = (data[:end] if end < len(data) else data).split(b"\n")
    decode, errors = _DECODE, _DECODE_ERRORS
    good: list[int] = []
    records = []
    for i, raw in enumerate(lines):
        try:
            records.append(decode(raw))
        except errors:
            continue
        good.append(i)
    return len(lines), good, records, lines


def _scan(records: list, cfg: FastConfig, backslash: bool) -> Block | set[int]:
    """The decoded records of a block as a Block when every one is clean, else the indexes of those
    this path is not sure of."""
    n = len(records)
    if n == 0:
        return Block(0, [], b"", Counter(), 0, {}, 0, {True: [], False: []}, [])
    if any(map(is_not, map(_TOOLS, records), repeat(_UNSET))):
        return {k for k, record in enumerate(records) if record.tools is not _UNSET}
    turns_of = list(map(_MESSAGES, records))
    sizes = list(map(len, turns_of))
    flat = list(chain.from_iterable(turns_of))  # every turn of the block, record after record
    if any(map(is_not, map(_TOOL_CALLS, flat), repeat(_UNSET))):
        return {k for k, turns in enumerate(turns_of) if any(t.tool_calls is not _UNSET for t in turns)}
    return scan_turns(sizes, list(map(_ROLE, flat)), list(map(_CONTENT, flat)), cfg, backslash)


def scan_turns(
    sizes: list[int], roles: list[str], contents: list[str], cfg: FastConfig, backslash: bool
) -> Block | set[int]:
    """_scan on a block given as columns: each record's number of turns, then every turn's role and
    content, record after record (the Parquet and Arrow path hands its columns straight here). Roles
    must be system, user or assistant. `backslash`: a content may hold any character (else the
    caller knows none holds a control character)."""
    # Role order: the roles joined against the one clean order for each record's number of turns
    # ([system,] user, assistant, ...: data_formats._check_order accepts exactly these silently).
    # Roles are "system", "user" or "assistant" (the decoder checks), and their lengths differ.
    counts = np.array(sizes, np.int64)
    parity = _PARITY[cfg.policy]  # turns % 2: 1 with a system prompt, 0 without
    if (
        "".join(roles) != "".join(map(_CANONICAL.__getitem__, sizes))
        or int(counts.min()) < 2
        or (parity is not None and bool((counts & 1 != parity).any()))
    ):
        letters = "".join(map(_LETTER.__getitem__, roles))
        misplaced: set[int] = set()
        at = 0
        for k, size in enumerate(sizes):
            if (
                size < 2
                or letters[at : at + size] != _CANONICAL_LETTERS[size]
                or (parity is not None and size & 1 != parity)
            ):
                misplaced.add(k)
            at += size
        return misplaced
    ends = np.cumsum(counts)  # one past each record's last turn
    lens = np.fromiter(map(len, contents), np.int64, len(contents))
    # text = " \x00 c0 \x00 c1 \x00 ... \x00 cN \x00 ": every content between "\x00 " and " \x00";
    # turn j's content starts at starts[j]
    text = " \x00 ".join(chain(("",), contents, ("",)))
    starts = np.empty(len(lens), np.int64)
    starts[0] = 3
    np.cumsum(lens[:-1] + 3, out=starts[1:])
    starts[1:] += 3

    suspects: set[int] = set()  # record indexes for the per-record path

    def flag(pos: int) -> None:  # the record holding character `pos` of `text`
        turn = int(np.searchsorted(starts, pos, side="right")) - 1
        suspects.add(int(np.searchsorted(ends, turn, side="right")))

    encoded = text.encode("utf-8", "surrogatepass")
    if backslash and int(np.count_nonzero(np.frombuffer(encoded, np.uint8) == 0)) != len(lens) + 1:
        # A content holding a NUL itself (only \u0000 writes one) would blur the block text: per-record path.
        return {int(np.searchsorted(ends, j, side="right")) for j, c in enumerate(contents) if "\x00" in c}
    for j in np.flatnonzero(lens == 0).tolist():  # empty content (FT0511)
        suspects.add(int(np.searchsorted(ends, j, side="right")))
    raw = _single_spaced(text, encoded, backslash)
    simple = raw is not None
    if raw is not None:
        # No whitespace but single spaces, no content starting with a space: a whitespace-only
        # content, a line break before "User:" or a label after spaces cannot occur.
        for j in _label_candidates(np.frombuffer(raw, np.uint8), starts):
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
    markup, firsts_of_markers = _markup(cfg.markers)
    if markup is not None and any(first in text for first in firsts_of_markers):
        for match in markup.finditer(text):  # template markup in content (FT0513)
            flag(match.start())
            flag(match.end() - 1)
    if suspects:
        return suspects

    def key_hashes() -> bytes:
        # The contents whitespace-normalised, joined by " \x00 " (no content is empty or holds a NUL),
        # and whether one holds a character JSON escapes (none can without a backslash in the block)
        if simple:
            joined, escape = text[3:-3], backslash and _escapes(raw, len(lens) + 1)
        else:
            joined, escape = _normalised(text, encoded, len(lens) + 1)
            escape = escape and backslash
        if not escape:
            return _key_hashes(sizes, contents if simple else joined.split(" \x00 "))
        if _CONTROL.search(joined) is None:
            # Only quotes and backslashes to escape (whitespace is normalised away, no other control
            # character is left): escape just the contents holding one, as json.dumps would.
            pieces = list(contents) if simple else joined.split(" \x00 ")
            del joined
            for i in [i for i, piece in enumerate(pieces) if '"' in piece or "\\" in piece]:
                pieces[i] = _json_string(pieces[i])[1:-1]
            return _key_hashes(sizes, pieces)
        # encode the whole text at once (a NUL becomes \u0000, and only the separators hold one)
        escaped = _json_string(joined)
        del joined
        pieces = escaped.split(" \\u0000 ")
        del escaped
        pieces[0], pieces[-1] = pieces[0][1:], pieces[-1][:-1]  # the quotes around the whole
        return _key_hashes(sizes, pieces)

    def messages(first: int, stop: int) -> Messages:
        return list(zip(roles[first:stop], contents[first:stop], strict=True))

    return _clean_block(cfg, sizes, counts, lens, messages, key_hashes)


def _label_candidates(chars, starts) -> list[int]:
    """Turns whose content could open with a role label ("User:"): it starts with two letters a label
    word starts with (ASCII | 0x20 lower-cases letters and no other byte into a letter). `chars` holds
    ASCII text with each turn's content at starts[j]; one byte at least follows the last content."""
    pairs = (chars[starts] | 0x20).astype(np.uint16) << 8 | (chars[starts + 1] | 0x20)
    return np.flatnonzero(_LABEL_START[pairs]).tolist()


# The exact-duplicate key of a record (data_dedup.dedup_key) is the record as json.dumps writes it:
# the markup around each content depends only on the roles, which a clean record's number of turns
# fixes. Keys for a block are built as one string, a record a line.
# The key's markup, taken from data_dedup.dedup_key itself so the two cannot drift apart: the text
# around a content (U+E000 stands in for one) with "%s" in place of the role.
_KEY_FIRST, _KEY_END = dedup_key([("%s", "\ue000")]).split("\ue000")
_KEY_NEXT = dedup_key([("%s", "\ue000")] * 2).split("\ue000")[1]


class _KeyMarkup(dict):
    """Turns -> the markup before each content of a clean record with that many turns; the first piece
    ends the record before (_KEY_END, a newline)."""

    def __missing__(self, size: int) -> tuple[str, ...]:
        roles = _CANONICAL_LETTERS[size]
        pieces = [_KEY_END + "\n" + _KEY_FIRST % _ROLE_OF_LETTER[roles[0]]]
        pieces += [_KEY_NEXT % _ROLE_OF_LETTER[letter] for letter in roles[1:]]
        out = tuple(pieces)
        if size < 256:
            self[size] = out
        return out


_KEY_MARKUP = _KeyMarkup()


def _key_hashes(sizes: list[int], contents: list[str]) -> bytes:
    """data_dedup.hash_bytes of the dedup keys of clean records with `sizes` turns and `contents`
    (whitespace-normalised and JSON-escaped, without quotes)."""
    markup = chain.from_iterable(map(_KEY_MARKUP.__getitem__, sizes))
    text = "".join(chain(chain.from_iterable(zip(markup, contents, strict=True)), (_KEY_END,)))
    raw = text.encode("utf-8", "surrogatepass")
    del text
    chars = np.frombuffer(raw, np.uint8)
    breaks = np.flatnonzero(chars == 10)
    # the first line is the _KEY_END of no record
    return hash_bytes(
        map(
            memoryview(raw).__getitem__,
            map(slice, (breaks + 1).tolist(), np.append(breaks[1:], len(raw)).tolist()),
        )
    )


# ASCII whitespace as str.split() sees it, and the other characters it splits on (all 2 or 3 bytes in
# UTF-8, starting with one of these bytes)
_ASCII_SPACES = bytes.maketrans(b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f", b" " * 9)
_UNICODE_SPACES = (
    "\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
if np is not None:
    _UNICODE_SPACE_LEAD = np.zeros(256, bool)  # the first byte of one of those in UTF-8
    _UNICODE_SPACE_LEAD[[c.encode()[0] for c in _UNICODE_SPACES]] = True


def _escapes(raw, nuls: int) -> bool:
    """Whether UTF-8 `raw` (bytes, or a uint8 array), holding `nuls` NULs, holds a character JSON
    escapes but NUL: a quote, a backslash or another control character."""
    chars = np.frombuffer(raw, np.uint8)
    if isinstance(raw, bytes):
        if raw.find(b'"') >= 0 or raw.find(b"\\") >= 0:
            return True
    elif bool(((chars == 34) | (chars == 92)).any()):
        return True
    return int(np.count_nonzero(chars < 32)) != nuls


def _normalised(text: str, raw: bytes, nuls: int) -> tuple[str, bool]:
    """The block text " \x00 c0 \x00 c1 ... \x00 " (`raw`: its UTF-8; `nuls` separators) with every
    whitespace run one space, less the first and last separators: "c0' \x00 c1' \x00 ...", and whether
    it holds a character JSON escapes but NUL. Every content holds something but whitespace and no
    NUL, so the separators stay as they are and each content loses the whitespace at its ends."""
    if not raw.isascii() and _has_unicode_space(raw):
        return _WS_RUN.sub(" ", text)[3:-3], True
    raw = raw.translate(_ASCII_SPACES)  # bytes.translate: fast where str.translate is not
    chars = np.frombuffer(raw, np.uint8)
    space = chars == 32
    keep = space[1:] & space[:-1]  # the second space of a pair
    del space
    if keep.any():  # drop it
        np.logical_not(keep, out=keep)
        kept = np.empty(1 + int(np.count_nonzero(keep)), np.uint8)
        kept[0] = chars[0]
        np.compress(keep, chars[1:], out=kept[1:])
        del keep, chars
        return str(kept.data[3:-3], "utf-8", "surrogatepass"), _escapes(kept, nuls)
    return str(memoryview(raw)[3:-3], "utf-8", "surrogatepass"), _escapes(raw, nuls)


def _has_unicode_space(raw: bytes) -> bool:
    """Whether UTF-8 `raw` holds a whitespace character above ASCII."""
    chars = np.frombuffer(raw + b"\0\0", np.uint8)  # (room for the bytes after a lead byte)
    leads = np.flatnonzero(_UNICODE_SPACE_LEAD[chars])
    if not len(leads):
        return False
    lead, second, third = chars[leads], chars[leads + 1], chars[leads + 2]
    return bool(
        (
            ((lead == 0xC2) & ((second == 0x85) | (second == 0xA0)))
            | ((lead == 0xE1) & (second == 0x9A) & (third == 0x80))
            | (
                (lead == 0xE2)
                & (second == 0x80)
                & ((third <= 0x8A) | (third == 0xA8) | (third == 0xA9) | (third == 0xAF))
            )
            | ((lead == 0xE2) & (second == 0x81) & (third == 0x9F))
            | ((lead == 0xE3) & (second == 0x80) & (third == 0x80))
        ).any()
    )


def _clean_block(cfg: FastConfig, sizes: list[int], counts, lens, messages, key_hashes) -> Block:
    """The summary of a block of clean records with the usual role order: `sizes` (and `counts`, as an
    array) their numbers of turns, `lens` the length of each turn's content, messages(first, stop)
    the (role, content) pairs of turns first..stop-1, key_hashes() their dedup key hashes."""
    n = len(sizes)
    ends = np.cumsum(counts)  # one past each record's last turn
    firsts = ends - counts
    hashes = key_hashes() if cfg.dedup else b""
    # Token estimates as Estimator.measure: per message its overhead + ceil(chars / 4), + 1 for the
    # terminator of an assistant turn (trained, with the answer).
    letters = "".join(map(_CANONICAL_LETTERS.__getitem__, sizes)).encode("ascii")  # the roles, as checked
    is_assistant = np.frombuffer(letters, np.uint8) == ord("a")
    tokens = (lens + 3) >> 2
    lengths = np.add.reduceat(tokens + cfg.estimator.per_message + is_assistant, firsts)
    trained = int(lengths.sum()) if cfg.loss_all else int(((tokens + 1) * is_assistant).sum())
    over: dict[int, tuple[int, list[tuple[int, int]]]] = {}
    over_at = (np.arange(n) if cfg.limit is None else np.flatnonzero(lengths > cfg.limit)).tolist()
    for k in over_at:
        length, segments = cfg.estimator.measure(messages(int(firsts[k]), int(ends[k])))
        segments = [(0, length)] if cfg.loss_all else segments
        over[k] = (length, segments)
        trained -= sum(stop - start for start, stop in segments)
    if over_at:
        lengths = np.delete(lengths, over_at)
    numbers = np.bincount(lengths)
    values = np.flatnonzero(numbers)
    hist = Counter(dict(zip(values.tolist(), numbers[values].tolist(), strict=True)))

    with_system = counts & 1  # a clean record has a system prompt exactly when its turns are odd
    system_first = {
        True: np.flatnonzero(with_system)[:SYSTEM_LINES].tolist(),
        False: np.flatnonzero(with_system == 0)[:SYSTEM_LINES].tolist(),
    }
    samples = [messages(int(firsts[k]), int(ends[k])) for k in range(min(cfg.samples, n))]
    return Block(n, range(n), hashes, hist, trained, over, int(with_system.sum()), system_first, samples)


# --- the plain path: records as json.dumps writes them, read from the bytes --------------------------
#
# A line `{"messages": [{"role": "user", "content": "..."}, ...]}` as json.dumps writes it, whose
# contents are ASCII without a backslash, is its contents verbatim between fixed "regions" of markup:
# `{"messages": [{"role": "user", "content": "` before the first, `"}, {"role": "assistant",
# "content": "` before each next one, `"}]}` after the last. With no backslash in the block every
# double quote delimits a string, so the quotes give every content's place; comparing each region
# with the one its length names (the lengths of the three roles differ) then proves the line is
# exactly that JSON, without a Python object per turn -- and, with its contents whitespace-normalised,
# the line is its own dedup key (data_dedup.dedup_key). Anything else -- another key, another key
# order or spacing, an escape, a control character, a byte above 127, a record the checks would look
# at closer -- leaves the block to the decoding path.

_PLAIN_WORDS = 6  # 8-byte words a region spans at most (the longest is 48 bytes)


def _plain_regions() -> tuple:
    """Lookup tables: region length -> region type, for first and next regions; per type its role
    letter and its bytes as little-endian 8-byte words, with masks."""
    first = np.full(64, -1)
    following = np.full(64, -1)
    regions: list[tuple[bytes, str]] = []
    for role, letter in ROLE_CODE.items():
        for markup, table in ((_KEY_FIRST, first), (_KEY_NEXT, following)):
            region = (markup % role).encode("ascii")
            assert table[len(region)] == -1  # a length names one region
            table[len(region)] = len(regions)
            regions.append((region, letter))
    words = np.zeros((len(regions), _PLAIN_WORDS), np.uint64)
    masks = np.zeros((len(regions), _PLAIN_WORDS), np.uint64)
    for kind, (region, _letter) in enumerate(regions):
        for w in range(_PLAIN_WORDS):
            part = region[8 * w : 8 * w + 8]
            words[kind, w] = int.from_bytes(part.ljust(8, b"\0"), "little")
            masks[kind, w] = (1 << (8 * len(part))) - 1
    letters = np.frombuffer("".join(letter for _, letter in regions).encode("ascii"), np.uint8)
    return first, following, words, masks, letters


_ROLE_OF_LETTER = {letter: role for role, letter in ROLE_CODE.items()}
if np is not None:
    _PLAIN_FIRST, _PLAIN_NEXT, _PLAIN_BYTES, _PLAIN_MASKS, _PLAIN_LETTERS = _plain_regions()
    _PLAIN_END = int.from_bytes(_KEY_END.encode("ascii"), "little")
    # characters of the markup around contents: a marker starting with one could be markup itself
    _PLAIN_MARKUP_CHARS = set(_KEY_FIRST + _KEY_NEXT + _KEY_END + "".join(ROLE_CODE))


_plain_markers_cache: dict[tuple[str, ...], tuple[tuple[bytes, ...], bool, tuple[bytes, ...]]] = {}


def _plain_markers(markers: tuple[str, ...]) -> tuple[tuple[bytes, ...], bool, tuple[bytes, ...]]:
    """What to look for in a block's bytes to rule template markup out: the first characters of the
    markers that cannot occur in the markup around contents (one fast byte search each); whether a
    marker starts with "[" (which the markup holds once a line: count them); the other markers (a
    slow search each)."""
    found = _plain_markers_cache.get(markers)
    if found is None:
        firsts = {m[0] for m in markers if m and m[0] not in _PLAIN_MARKUP_CHARS}
        whole = {m for m in markers if m and m[0] in _PLAIN_MARKUP_CHARS and m[0] != "["}
        found = _plain_markers_cache[markers] = (
            tuple(c.encode() for c in sorted(firsts)),
            any(m[:1] == "[" for m in markers),
            tuple(m.encode() for m in sorted(whole)),
        )
    return found


def _scan_plain(data: bytes, end: int, cfg: FastConfig) -> Block | None:
    """data[:end] as a Block when every line is a clean record as json.dumps writes it, else None."""
    size = len(data)
    if end < 16 or data.find(b"\\", 0, end) >= 0 or not data.isascii():
        return None
    firsts_of_markers, bracket, whole_markers = _plain_markers(cfg.markers)
    for needle in firsts_of_markers:  # template markup anywhere: the decoding path says where
        if data.find(needle, 0, end) >= 0:
            return None
    for needle in whole_markers:
        if data.find(needle, 0, end) >= 0:
            return None
    chars = np.frombuffer(data, np.uint8, end)
    mask, other = _SCRATCH.get("mask", end, bool), _SCRATCH.get("other", end, bool)
    np.less(chars, 32, out=mask)
    np.logical_or(mask, np.equal(chars, 34, out=other), out=mask)
    if bracket:
        np.logical_or(mask, np.equal(chars, 91, out=other), out=mask)
    special = np.flatnonzero(mask)  # control characters, quotes (and brackets)
    kinds_of = chars[special]
    is_quote = kinds_of == 34
    is_newline = kinds_of == 10
    newlines = special[is_newline]
    quotes = special[is_quote]
    # anything else is a tab or a carriage return (the decoding path), or a "[": once a line in the
    # markup, more is one in a content, maybe of a marker
    if len(newlines) + len(quotes) + (len(newlines) + 1 if bracket else 0) != len(special):
        return None
    line_starts = np.concatenate(([0], newlines + 1))
    at = np.searchsorted(quotes, line_starts)  # each line's first quote
    # 2 quotes for "messages", then 8 a turn: role key and value, content key and value
    per_line = np.diff(np.append(at, len(quotes))) - 2
    counts = per_line >> 3
    if bool((per_line & 7).any()) or int(counts.min()) < 2:
        return None
    parity = _PARITY[cfg.policy]
    if parity is not None and bool((counts & 1 != parity).any()):
        return None
    total = int(counts.sum())
    ends = np.cumsum(counts)
    firsts = ends - counts
    turn = np.arange(total) - np.repeat(firsts, counts)  # turn number in its record
    opening = np.repeat(at, counts) + 8 * turn + 8  # index in `quotes` of each content's opening quote
    opens = quotes[opening]
    closes = quotes[opening + 1]
    region_starts = np.empty(total, np.int64)
    region_starts[1:] = closes[:-1]
    region_starts[firsts] = line_starts
    region_lengths = np.minimum(opens - region_starts + 1, 63)
    kinds = np.where(turn == 0, _PLAIN_FIRST[region_lengths], _PLAIN_NEXT[region_lengths])
    if int(kinds.min()) < 0 or int(region_starts[-1]) + 8 * _PLAIN_WORDS > size:
        return None  # a region of no known length, or the last one too near the end to read in words
    # every region, byte for byte: the 48 bytes from its start (as one opaque item: a row copy) read
    # as 8-byte words, against the region's words under its mask
    shape = (total, _PLAIN_WORDS)
    rows = np.ndarray((size - 8 * _PLAIN_WORDS + 1,), f"V{8 * _PLAIN_WORDS}", data, 0, (1,))
    words = rows[region_starts].view("<u8").reshape(shape)  # (np.take is slow on such items)
    expected = np.empty(shape, np.uint64)
    np.bitwise_and(words, np.take(_PLAIN_MASKS, kinds, axis=0, out=expected), out=words)
    np.take(_PLAIN_BYTES, kinds, axis=0, out=expected)
    if not bool((words == expected).all()):
        return None
    last_closes = closes[ends - 1]  # then `"}]}` ends the line
    line_ends = np.append(newlines, end)
    if not (
        bool((last_closes + len(_KEY_END) == line_ends).all())
        and bool((np.ndarray((size - 3,), "<u4", data, 0, (1,))[last_closes] == _PLAIN_END).all())
    ):
        return None
    sizes = counts.tolist()
    letters = _PLAIN_LETTERS[kinds].tobytes().decode("ascii")
    if letters != "".join(map(_CANONICAL_LETTERS.__getitem__, sizes)):
        return None  # roles out of the usual order
    lens = closes - opens - 1
    if not bool(lens.all()):
        return None  # an empty content
    # a content with a space at either end or two spaces in a row needs normalising (the markup has
    # none); with single spaces only, a whitespace-only content, a line break before "User:" or a
    # label after spaces cannot occur
    if (
        bool((chars[opens + 1] == 32).any())
        or bool((chars[closes - 1] == 32).any())
        or _double_space(data, end)
    ):
        return None
    for j in _label_candidates(chars, opens + 1):
        if _LABEL_OPENS.match(data, int(opens[j]) + 1, int(closes[j])):
            return None

    def key_hashes() -> bytes:  # each line is its own key
        return hash_bytes(map(data.__getitem__, map(slice, line_starts.tolist(), line_ends.tolist())))

    def messages(first: int, stop: int) -> Messages:
        return [
            (_ROLE_OF_LETTER[letters[j]], data[int(opens[j]) + 1 : int(closes[j])].decode("ascii"))
            for j in range(first, stop)
        ]

    return _clean_block(cfg, sizes, counts, lens, messages, key_hashes)


# --- several processes ---------------------------------------------------------------------------


# --- Parquet and Arrow: ChatML record batches, column by column ------------------------------------

_CHAT_ROLES = ("system", "user", "assistant")


def scan_arrow_batch(batch, cfg: FastConfig) -> Block:
    """A pyarrow RecordBatch of ChatML records as a Block: a `messages` column of list<struct<role,
    content>> goes to scan_turns as flat columns (no Python object per record); `slow` holds the rows
    it is not sure of as records (row index in the batch, the record as a dict). A batch of another
    shape (tool calling, other turn keys, no `messages` column) is all slow rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    names = batch.schema.names
    column = batch.column("messages") if "messages" in names else None
    kind = column.type if column is not None else None
    struct = (
        kind.value_type
        if kind is not None and (pa.types.is_list(kind) or pa.types.is_large_list(kind))
        else None
    )
    fields = (
        {struct.field(i).name: struct.field(i).type for i in range(struct.num_fields)}
        if struct is not None and pa.types.is_struct(struct)
        else {}
    )
    strings = all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in fields.values())
    if "tools" in names or set(fields) != {"role", "content"} or not strings:
        return _all_slow(batch, n)
    sizes_array = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    assert column is not None  # a batch without `messages` has no struct fields: all slow above
    flat = column.flatten()  # the turns of the rows in order (respects a sliced batch)
    roles, contents = flat.field("role"), flat.field("content")
    turn_bad = pc.or_kleene(
        pc.invert(pc.fill_null(pc.is_in(roles, value_set=pa.array(_CHAT_ROLES)), False)), pc.is_null(contents)
    )
    bad = set(np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False)).tolist())
    if pc.any(turn_bad).as_py():
        ends = np.cumsum(sizes_array)
        bad.update(
            np.searchsorted(
                ends, np.flatnonzero(turn_bad.to_numpy(zero_copy_only=False)), side="right"
            ).tolist()
        )
    sizes = sizes_array.tolist()
    all_roles, all_contents = roles.to_pylist(), contents.to_pylist()
    escaped = _needs_escapes(contents)
    firsts = (np.cumsum(sizes_array) - sizes_array).tolist()
    while True:
        keep = [k for k in range(n) if k not in bad]
        if not keep:
            return _all_slow(batch, n)
        if len(keep) == n:
            part_sizes, part_roles, part_contents = sizes, all_roles, all_contents
        else:
            part_sizes = [sizes[k] for k in keep]
            part_roles = [r for k in keep for r in all_roles[firsts[k] : firsts[k] + sizes[k]]]
            part_contents = [c for k in keep for c in all_contents[firsts[k] : firsts[k] + sizes[k]]]
        result = scan_turns(part_sizes, part_roles, part_contents, cfg, escaped)
        if isinstance(result, Block):
            break
        bad.update(keep[i] for i in result)  # suspects go to the per-record path; scan the rest again
    result.nlines, result.lines = n, keep
    result.slow = _slow_rows(batch, sorted(bad))
    return result


def _needs_escapes(strings) -> bool:
    """Whether a pyarrow string array holds a quote, a backslash or a control character: what JSON
    would escape, and what scan_turns must then look for (its `backslash`). One pass over the data
    buffer, the way the JSON Lines path asks whether a block holds a backslash."""
    buffers = strings.buffers()
    if len(buffers) < 3 or buffers[2] is None:
        return False
    import pyarrow as pa

    offsets = np.frombuffer(buffers[1], np.int64 if pa.types.is_large_string(strings.type) else np.int32)
    first, last = int(offsets[strings.offset]), int(offsets[strings.offset + len(strings)])
    chars = np.frombuffer(buffers[2], np.uint8)[first:last]
    return bool(((chars < 32) | (chars == 34) | (chars == 92)).any())


def _slow_rows(batch, rows: list[int]) -> list[tuple[int, object]]:
    return [(k, batch.slice(k, 1).to_pylist()[0]) for k in rows]


def _all_slow(batch, n: int) -> Block:
    block = Block(n, [], b"", Counter(), 0, {}, 0, {True: [], False: []}, [])
    block.slow = list(enumerate(batch.to_pylist()))
    return block


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
            while (piece := fh.readline(CHUNK)) and piece[-1:] != b"\n":  # to the next line, in bounded reads
                pass
            pos = fh.tell()
            if pos >= size:
                break
            if pos > bounds[-1]:
                bounds.append(pos)
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _scan_range(args: tuple[str, int, int, FastConfig]) -> list[Block]:
    path, start, stop, cfg = args
    out: list[Block] = []
    with open(path, "rb") as fh:
        fh.seek(start)

        def chunks():
            remaining = stop - start
            while remaining > 0 and (chunk := fh.read(min(BLOCK_BYTES, remaining))):
                remaining -= len(chunk)
                yield chunk

        # a line over records.MAX_LINE_BYTES comes as a marker the per-record path reports at its line
        for data, end in whole_lines(chunks()):
            out.extend(scan_blocks(data, cfg, end))
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


def parallel_blocks(
    pool, path: Path, start: int, size: int, cfg: FastConfig, workers: int
) -> Iterator[Block]:
    """Blocks of [start, size) scanned by the pool's `workers` processes, in file order."""
    pieces = max(workers * 8, (size - start) // (16 << 20))  # small ranges keep the workers evenly busy
    jobs = [(str(path), a, b, cfg) for a, b in _ranges(path, start, size, pieces)]
    for blocks in pool.imap(_scan_range, jobs):
        yield from blocks
