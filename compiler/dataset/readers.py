"""Every kind of data source a spec may name, read one way for the data check and for training.

- `.jsonl` / `.json` (JSON Lines or one JSON array): records.RecordReader, located by line.
- `.parquet`, and folders written by `datasets`' `save_to_disk` (Arrow IPC stream shards listed in
  its state.json): read through pyarrow in record batches, located by row (1-based).
- `.csv`: the stdlib csv reader (a header row, then one record a row; every value a string),
  located by the line the row starts on and, for findings about one field, its column.

Anything else (a `.txt`, `.xlsx`, a compressed file, a DatasetDict folder) is one DataFileError
that says what is read, instead of a flood of "invalid JSON" for every line of a binary file.
pyarrow is imported only when a Parquet or Arrow source is read: lint never pays for it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from ftspec.compiler.dataset.records import (
    CHUNK,
    MAX_LINE_BYTES,
    DataFileError,
    Item,
    RecordReader,
    overlong_error,
)

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
SUPPORTED = ".jsonl, .json, .parquet, .csv, or a folder written by datasets' save_to_disk"
BATCH_ROWS = 1024  # rows per Arrow record batch: a suspect row makes its batch be scanned again, so small
PARQUET_MAGIC = b"PAR1"
_BINARY_HINTS = {  # leading bytes of files that are often named by mistake
    PARQUET_MAGIC: "a Parquet file",
    b"\x1f\x8b": "a gzip file",
    b"PK\x03\x04": "a zip file (xlsx and zipped data are not read)",
    b"ARROW1": "an Arrow file",
    b"\xff\xff\xff\xff": "an Arrow IPC stream",
}


def source_kind(path: Path) -> str:
    """ "json" | "parquet" | "csv" | "arrow" (a save_to_disk folder); DataFileError for anything else."""
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = _dataset_dict_splits(path)
            raise DataFileError(
                f"is a DatasetDict folder (splits: {', '.join(splits) or '?'}): name one split's folder, "
                f"e.g. {path.name}/{splits[0] if splits else 'train'}"
            )
        if (path / "state.json").is_file():
            return "arrow"
        raise DataFileError(
            f"is a folder, not a dataset saved with datasets' save_to_disk (ftspec reads {SUPPORTED})"
        )
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in JSON_SUFFIXES or not suffix:
        _refuse_binary(path)
        return "json"
    raise DataFileError(f"has the suffix {suffix!r}, which ftspec does not read (it reads {SUPPORTED})")


def _dataset_dict_splits(path: Path) -> list[str]:
    try:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits")
    except (OSError, ValueError, AttributeError):
        return []
    return [str(s) for s in splits] if isinstance(splits, list) else []


def _refuse_binary(path: Path) -> None:
    """A JSON-named file whose first bytes say it is binary: one error, not one per line."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return  # RecordReader reports what cannot be opened
    for magic, what in _BINARY_HINTS.items():
        if head.startswith(magic):
            raise DataFileError(
                f"is {what}, not JSON (name a Parquet file .parquet; ftspec reads {SUPPORTED})"
            )
    if b"\x00" in head:
        raise DataFileError(f"holds NUL bytes: a binary file, not JSON (ftspec reads {SUPPORTED})")


def open_records(path: Path, sha256: bool = True) -> RecordReader | TableReader:
    """The reader for `path`: iterate it for (line or row, record, error) items; `.sha256` is final
    once iteration ends (None without sha256); `.layout` names what was read."""
    kind = source_kind(path)
    if kind == "json":
        return RecordReader(path, sha256=sha256)
    return TableReader(path, kind, sha256=sha256)


def arrow_files(folder: Path) -> list[Path]:
    """The Arrow shards of a save_to_disk folder, in the order its state.json lists them."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFileError(f"has no readable state.json listing its Arrow files ({exc})") from None
    files = [folder / name for name in names]
    for file in files:
        if Path(file.name) != Path(str(file.relative_to(folder))) or not file.is_file():
            raise DataFileError(f"state.json lists {file.name!r}, which is not a file of the folder")
    return files


def source_sha256(path: Path) -> str:
    """SHA-256 of a data source: the file's bytes, or a save_to_disk folder's Arrow shards in order
    (OSError when unreadable, as for a file)."""
    digest = hashlib.sha256()
    files = arrow_files(path) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as fh:
            for chunk in iter(partial(fh.read, CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def count_rows(path: Path) -> int:
    """Records of a Parquet file or save_to_disk folder (from the metadata) or a CSV file (its rows)."""
    kind = source_kind(path)
    if kind == "parquet":
        return int(_parquet_file(path).metadata.num_rows)
    if kind == "arrow":
        return sum(_arrow_stream(f).read_all().num_rows for f in arrow_files(path))
    if kind == "csv":
        return sum(1 for _ in TableReader(path, "csv", sha256=False))
    raise ValueError(f"{path} is JSON: count it with sources.count_records")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:  # pragma: no cover - pyarrow is a core dependency
        raise DataFileError("is Parquet/Arrow data, which needs pyarrow: pip install pyarrow") from None
    return pyarrow


def _parquet_file(path: Path):
    pa = _pyarrow()
    try:
        return pa.parquet.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataFileError(f"is not a readable Parquet file ({exc})") from None


def _arrow_stream(path: Path):
    pa = _pyarrow()
    try:
        return pa.ipc.open_stream(pa.memory_map(str(path)))
    except (OSError, pa.ArrowException) as exc:
        raise DataFileError(f"{path.name} is not a readable Arrow stream ({exc})") from None


class TableReader:
    """Records of a Parquet file, a save_to_disk folder or a CSV file, as (row, record, None) items;
    `columns` maps a CSV header to its 1-based column (empty for Parquet and Arrow)."""

    def __init__(self, path: Path, kind: str, sha256: bool = True):
        self.path = path
        self.layout = kind
        self.digest = sha256
        self.sha256: str | None = None
        self.columns: dict[str, int] = {}

    def _finish(self) -> None:
        if self.digest:
            try:
                self.sha256 = source_sha256(self.path)
            except OSError as exc:
                raise DataFileError(exc.strerror or str(exc)) from None

    def batches(self) -> Iterator:
        """pyarrow RecordBatches in row order (Parquet and Arrow); `.sha256` is final afterwards."""
        pa = _pyarrow()
        try:
            if self.layout == "parquet":
                yield from _parquet_file(self.path).iter_batches(batch_size=BATCH_ROWS)
            else:
                for file in arrow_files(self.path):
                    yield from _arrow_stream(file)
        except pa.ArrowException as exc:
            raise DataFileError(f"cannot be read ({exc})") from None
        self._finish()

    def __iter__(self) -> Iterator[Item]:
        if self.layout == "csv":
            yield from self._csv_rows()
            return
        row = 0
        for batch in self.batches():
            for record in batch.to_pylist():
                row += 1
                yield row, record, None

    def _csv_rows(self) -> Iterator[Item]:
        try:
            fh = open(self.path, encoding="utf-8-sig", newline="")
        except IsADirectoryError:
            raise DataFileError("is a directory") from None
        except OSError as exc:
            raise DataFileError(exc.strerror or str(exc)) from None
        with fh:
            lines = _BoundedLines(fh)  # one physical line at most MAX_LINE_BYTES characters
            reader = csv.reader(lines)
            try:
                header = next(reader, None)
                if header is None:
                    return
                self.columns.update({name: i + 1 for i, name in enumerate(header)})  # shared with the check
                start = reader.line_num + 1
                for values in reader:
                    line, start = start, reader.line_num + 1
                    if not values or (len(values) == 1 and not values[0].strip()):
                        continue  # a blank line
                    if len(values) != len(header):
                        yield line, None, f"the row has {len(values)} fields, the header has {len(header)}"
                        continue
                    yield line, dict(zip(header, values, strict=True)), None
            except UnicodeDecodeError as exc:
                yield reader.line_num + 1, None, f"not valid UTF-8 ({exc.reason})"
                return
            except _LineTooLong as exc:  # a quoted field may span lines: no resynchronising after it
                yield reader.line_num + 1, None, overlong_error(exc.length)
                return
            except csv.Error as exc:
                yield reader.line_num, None, f"not valid CSV ({exc})"
                return
        self._finish()


class _LineTooLong(Exception):
    def __init__(self, length: int):
        super().__init__(length)
        self.length = length


class _BoundedLines:
    """The lines of a text file for csv.reader, each read MAX_LINE_BYTES characters at most: a longer
    one raises _LineTooLong (with its length, counted in bounded reads) instead of being read whole."""

    def __init__(self, fh):
        self.fh = fh

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.fh.readline(MAX_LINE_BYTES + 1)
        if not line:
            raise StopIteration
        if len(line) > MAX_LINE_BYTES and line[-1:] not in ("\n", "\r"):
            length = len(line)
            del line
            while piece := self.fh.readline(CHUNK):
                length += len(piece)
                if piece[-1:] in ("\n", "\r"):
                    length -= len(piece) - len(piece.rstrip("\r\n"))  # the line, without its end
                    break
            raise _LineTooLong(length)
        return line
