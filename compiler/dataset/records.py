"""Stream records out of dataset files: JSON Lines, or one JSON array, in constant memory.

Each record comes with the 1-based line it starts on; a line that is not JSON comes back as an error
for that line and reading goes on (in a JSON array a syntax error ends the file: there is no next
line to resynchronise on). The file's SHA-256 is computed on the same pass when asked for (a
`dataset.sha256` pin): hashing costs about as much as the rest of a fast pass, so it is skipped otherwise.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:  # orjson parses 3-5x faster; optional, the stdlib parser gives the same results
    import orjson as _orjson

    _fast_loads: Callable[[bytes], Any] | None = _orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None

CHUNK = 1 << 20
MAX_VALUE_BYTES = 64 << 20  # one record bigger than this in a JSON array is an error, not a reason to eat RAM
# One record's line is at most MAX_LINE_BYTES: a longer line is an error at its line, skipped to the next
# newline without being held in memory (security review D5: a 2 GB file without a newline took 53 s
# and 6.9 GB of RAM to be called "invalid JSON"). The dataset's size is never bounded. Why 64 MiB:
# the longest sequence_len the schema allows is 1,048,576 tokens; at 4 bytes a token of text, or 18
# for text the JSON escapes (\uXXXX), that record is 4 to 18 MiB, so 64 MiB is over 3x the largest
# trainable record (and sequence_len truncates longer ones anyway). Measured on the check's machine:
# orjson parses a 64 MiB line in 0.36 s with 64 MiB more peak RSS; the readers' blocks add one more.
MAX_LINE_BYTES = 64 << 20
# An over-long line stands in the blocks of whole lines (line_blocks, whole_lines) as this, followed
# by its length in bytes: a NUL starts no JSON value, so no real record reads as it.
OVERLONG = b"\x00ftspec:line-too-long:"


def overlong_line(length: int) -> bytes:
    return OVERLONG + str(length).encode("ascii")


def overlong_error(length: int) -> str:
    limit = f"{MAX_LINE_BYTES >> 20} MiB" if MAX_LINE_BYTES >= 1 << 20 else f"{MAX_LINE_BYTES:,} bytes"
    return (
        f"the line is {length:,} bytes long, over the {limit} one record may have; "
        "it was skipped without being read into memory"
    )


def whole_lines(chunks, limit: int | None = None) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines out of a stream of byte chunks, as line_blocks yields them: (data, end)
    where data[:end] is the block without its last newline. A line longer than `limit`
    (MAX_LINE_BYTES) comes as a block of its own, overlong_line(length), and is never held whole."""
    limit = MAX_LINE_BYTES if limit is None else limit
    pending = b""
    skipped = -1  # >= 0: bytes so far of an over-long line being skipped
    for data in chunks:
        while data:
            if skipped >= 0:
                i = data.find(b"\n")
                if i < 0:
                    skipped += len(data)
                    break
                marker = overlong_line(skipped + i)
                yield marker, len(marker)
                skipped, data = -1, data[i + 1 :]
                continue
            if pending:
                data, pending = pending + data, b""
            first = data.find(b"\n")
            if first < 0:
                if len(data) > limit:
                    skipped = len(data)
                else:
                    pending = data
                break
            if first > limit:
                marker = overlong_line(first)
                yield marker, len(marker)
                data = data[first + 1 :]
                continue
            if len(data) - first - 1 > limit:  # a piece longer than the limit (never with the readers'
                yield data, first  # blocks): it could hold another over-long line; one line at a time
                data = data[first + 1 :]
                continue
            cut = data.rfind(b"\n")
            pending = data[cut + 1 :]
            yield data, cut
            break
    if skipped >= 0:
        marker = overlong_line(skipped)
        yield marker, len(marker)
    elif pending:
        yield pending, len(pending)


def _line_end(fd: int, start: int, block_bytes: int) -> tuple[int, bool]:
    """(offset, found): the first newline at or after `start` in the file, or its end; read in
    blocks, nothing kept."""
    pos = start
    while True:
        data = os.pread(fd, block_bytes, pos)
        if not data:
            return pos, False
        i = data.find(b"\n")
        if i >= 0:
            return pos + i, True
        pos += len(data)


class DataFileError(OSError):
    """The file cannot be read at all (missing, a directory, permissions)."""


# (line, value, error): value is the parsed JSON when error is None; error is "message (column N)"
Item = tuple[int, object, str | None]


def _json_error(raw: bytes | str) -> str | None:
    """The stdlib's message for a bad line (orjson's messages differ in shape); None if it parses."""
    try:
        json.loads(raw)
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1})"
    except json.JSONDecodeError as exc:
        return f"{exc.msg} (column {exc.colno})"
    except (ValueError, RecursionError) as exc:
        return str(exc)
    return None


class _NoHash:
    """Stands in for hashlib.sha256() when no digest is wanted."""

    def update(self, data: bytes) -> None:
        pass

    def hexdigest(self) -> None:
        return None


class RecordReader:
    """Iterate over the records of one file; `.sha256` is final once iteration ends (None when the
    reader was made with sha256=False)."""

    def __init__(self, path: Path, sha256: bool = True):
        self.path = path
        self.digest = sha256
        self._hash = self._new_hash()
        self.sha256: str | None = None
        self.layout = "jsonl"

    def _new_hash(self):
        return hashlib.sha256() if self.digest else _NoHash()

    def _open(self):
        try:
            return open(self.path, "rb")
        except IsADirectoryError:
            raise DataFileError("is a directory") from None
        except OSError as exc:
            raise DataFileError(exc.strerror or str(exc)) from None

    def sniff(self) -> tuple[str, int, int]:
        """(layout, offset of the first record byte, file size) without reading the whole file."""
        with self._open() as fh:
            head = fh.read(CHUNK)
            size = os.fstat(fh.fileno()).st_size
        start = 3 if head.startswith(codecs.BOM_UTF8) else 0
        layout = "json-array" if head[start:].lstrip()[:1] == b"[" else "jsonl"
        self.layout = layout
        return layout, start, size

    def line_blocks(self, block_bytes: int = CHUNK // 2) -> Iterator[tuple[bytes, int]]:
        """JSON Lines as blocks of whole lines, for data_fast: (data, end) where data[:end] is the
        block without its last newline (data may run on past it: slicing it off would copy the block);
        the first line of a block follows the last line of the block before. `.sha256` is final once
        iteration ends. A JSON array yields nothing: check `.layout` and iterate records instead."""
        self._hash = self._new_hash()
        update = self._hash.update  # a no-op without a digest
        with self._open() as fh:
            fd = fh.fileno()
            head = fh.read(CHUNK)
            start = 3 if head.startswith(codecs.BOM_UTF8) else 0
            if head[start:].lstrip()[:1] == b"[":
                self.layout = "json-array"
                return
            self.layout = "jsonl"
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a pipe or a device: no reading at an offset
                yield from self._stream_blocks(fh, head, start, block_bytes)
                self.sha256 = self._hash.hexdigest()
                return
            del head
            if start:
                update(codecs.BOM_UTF8)
            pos = start
            # Each block is read straight into a bytes object of its own at the offset where its first
            # line starts; the partial line at its end is read again with the next block.
            while True:
                data = os.pread(fd, block_bytes, pos)
                if not data:
                    break
                cut = data.rfind(b"\n")
                if cut < 0:  # a line longer than a block, or the last line of a file without a last newline
                    end, found = _line_end(fd, pos + len(data), block_bytes)
                    if end - pos > MAX_LINE_BYTES:  # stands in as one line, never read whole
                        del data
                        if self.digest:
                            stop, at = end + found, pos
                            while at < stop:
                                piece = os.pread(fd, min(block_bytes, stop - at), at)
                                if not piece:
                                    break
                                update(piece)
                                at += len(piece)
                        marker = overlong_line(end - pos)
                        yield marker, len(marker)
                        if not found:
                            break
                        pos = end + 1
                        continue
                    parts = [data]
                    read = len(data)
                    while cut < 0:
                        more = os.pread(fd, block_bytes, pos + read)
                        if not more:
                            break
                        parts.append(more)
                        cut = more.rfind(b"\n")
                        if cut >= 0:
                            cut += read
                        read += len(more)
                    data = b"".join(parts)
                    del parts
                    if cut < 0:
                        update(data)
                        yield data, len(data)
                        break
                update(memoryview(data)[: cut + 1])
                pos += cut + 1
                yield data, cut
                del data
        self.sha256 = self._hash.hexdigest()

    def _stream_blocks(self, fh, head: bytes, start: int, block_bytes: int) -> Iterator[tuple[bytes, int]]:
        """line_blocks for a file that cannot be read at an offset: one sequential pass."""
        update = self._hash.update
        update(head)

        def chunks() -> Iterator[bytes]:
            yield head[start:]
            while chunk := fh.read(block_bytes):
                update(chunk)
                yield chunk

        yield from whole_lines(chunks())

    def __iter__(self) -> Iterator[Item]:
        self._hash = self._new_hash()
        fh = self._open()
        with fh:
            head = fh.read(CHUNK)
            self._hash.update(head)
            probe = head[3:] if head.startswith(codecs.BOM_UTF8) else head
            if probe.lstrip()[:1] == b"[":
                self.layout = "json-array"
                yield from self._array(fh, head)
            else:
                yield from self._lines(fh, head)
        self.sha256 = self._hash.hexdigest()

    def _lines(self, fh, head: bytes) -> Iterator[Item]:
        loads = _fast_loads or json.loads
        update = self._hash.update
        if head.startswith(codecs.BOM_UTF8):
            head = head[3:]
        lineno = 0
        # The first chunk was read to sniff the layout; split it, then continue line by line. A line is
        # read MAX_LINE_BYTES at most: a longer one is an error at its line, skipped to its newline.
        parts = head.split(b"\n")
        pending = parts.pop()  # the start of the line after them (b"" when the chunk ends a line)
        limit = MAX_LINE_BYTES
        for raw in parts:
            lineno += 1
            if len(raw) > limit:  # only when the limit is below CHUNK (tests)
                yield lineno, None, overlong_error(len(raw))
                continue
            yield from _parse_line(raw, lineno, loads)
        readline = fh.readline
        while True:
            raw = readline(limit + 1 - len(pending))
            update(raw)
            if pending:
                raw, pending = pending + raw, b""
            if not raw:
                break
            lineno += 1
            if len(raw) > limit and raw[-1:] != b"\n":
                length = len(raw)
                del raw
                while piece := readline(CHUNK):
                    update(piece)
                    if piece[-1:] == b"\n":
                        length += len(piece) - 1
                        break
                    length += len(piece)
                yield lineno, None, overlong_error(length)
                continue
            try:
                yield lineno, loads(raw), None
            except (ValueError, RecursionError):
                if not raw.strip():  # blank lines are allowed (and common at the end of a file)
                    continue
                error = _json_error(raw)
                if error is None:  # orjson is stricter (NaN, huge integers); the stdlib accepts those
                    yield lineno, json.loads(raw), None
                else:
                    yield lineno, None, error

    def _array(self, fh, head: bytes) -> Iterator[Item]:
        decoder = json.JSONDecoder()
        text_decoder = codecs.getincrementaldecoder("utf-8-sig")()
        eof = False

        def more() -> str:
            nonlocal eof
            chunk = fh.read(CHUNK)
            if not chunk:
                eof = True
                return text_decoder.decode(b"", final=True)
            self._hash.update(chunk)
            return text_decoder.decode(chunk)

        try:
            buf = text_decoder.decode(head, final=False)
        except UnicodeDecodeError as exc:
            yield 1, None, f"not valid UTF-8 ({exc.reason})"
            return
        pos = 0
        line = 1  # line of buf[pos]

        def skip_ws() -> None:
            nonlocal pos, line, buf
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    if buf[pos] == "\n":
                        line += 1
                    pos += 1
                if pos < len(buf) or eof:
                    return
                buf, pos = buf[pos:] + more(), 0

        try:
            skip_ws()
            pos += 1  # the opening bracket (sniffed already)
            expect_value = True
            first = True
            while True:
                skip_ws()
                if pos >= len(buf):
                    yield line, None, "unexpected end of file inside the JSON array (missing ']')"
                    return
                if buf[pos] == "]" and (first or not expect_value):
                    return
                if not expect_value:
                    if buf[pos] != ",":
                        yield line, None, f"expected ',' or ']' between array items, found {buf[pos]!r}"
                        return
                    pos += 1
                    expect_value = True
                    continue
                start_line = line
                while True:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                        break
                    except json.JSONDecodeError as exc:
                        if eof or len(buf) - pos > MAX_VALUE_BYTES:
                            err_line = start_line + buf.count("\n", pos, exc.pos)
                            yield err_line, None, f"{exc.msg} (column {exc.colno})"
                            return
                        buf, pos = buf[pos:] + more(), 0
                    except RecursionError:
                        yield start_line, None, "nested too deeply"
                        return
                line += buf.count("\n", pos, end)
                pos = end
                if pos > CHUNK:
                    buf, pos = buf[pos:], 0
                yield start_line, value, None
                expect_value = False
                first = False
        except UnicodeDecodeError as exc:
            yield line, None, f"not valid UTF-8 ({exc.reason})"


def parse_line(raw: bytes, lineno: int) -> Iterator[Item]:
    """One JSON Lines line as the reader reports it (nothing for a blank line)."""
    return _parse_line(raw, lineno, _fast_loads or json.loads)


def _parse_line(raw: bytes, lineno: int, loads) -> Iterator[Item]:
    if raw[:1] == b"\x00" and raw.startswith(OVERLONG):
        yield lineno, None, overlong_error(int(raw[len(OVERLONG) :]))
        return
    if not raw.strip():
        return
    try:
        yield lineno, loads(raw), None
    except (ValueError, RecursionError):
        error = _json_error(raw)
        yield (lineno, json.loads(raw), None) if error is None else (lineno, None, error)
