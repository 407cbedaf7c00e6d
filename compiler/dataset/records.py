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
from collections.abc import Iterator
from pathlib import Path

try:  # orjson parses 3-5x faster; optional, the stdlib parser gives the same results
    import orjson as _orjson

    _fast_loads = _orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None

CHUNK = 1 << 20
MAX_VALUE_BYTES = 64 << 20  # one record bigger than this in a JSON array is an error, not a reason to eat RAM


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
        pending = head[start:]
        del head
        while True:
            chunk = fh.read(block_bytes)
            update(chunk)
            if not chunk:
                if pending:
                    yield pending, len(pending)
                return
            data = pending + chunk if pending else chunk
            del chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                pending = data
                continue
            pending = data[cut + 1 :]
            yield data, cut
            del data

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
        pending = b""
        # The first chunk was read to sniff the layout; split it, then continue line by line.
        parts = head.split(b"\n")
        if not head.endswith(b"\n"):
            pending = parts.pop()
        else:
            parts.pop()
        rest = iter(fh)
        if pending:
            first_rest = next(rest, b"")
            update(first_rest)
            parts.append(pending + first_rest)
            pending = b""
        for raw in parts:
            lineno += 1
            yield from _parse_line(raw, lineno, loads)
        for raw in rest:
            update(raw)
            lineno += 1
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
    if not raw.strip():
        return
    try:
        yield lineno, loads(raw), None
    except (ValueError, RecursionError):
        error = _json_error(raw)
        yield (lineno, json.loads(raw), None) if error is None else (lineno, None, error)
