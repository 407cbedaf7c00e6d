"""Security review D5: one record's line is bounded (records.MAX_LINE_BYTES); a longer line is an
error at its line, skipped without being read whole, and reading goes on. The dataset's size is not
bounded. Every reader: the record iterator (runtime, evaluate), the data check's blocks (one process
and parallel workers), pipes, and CSV."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datacheck_helpers import chatml, check, write_spec
from ftspec.compiler.check.data import fast as data_fast
from ftspec.compiler.dataset import readers, records
from ftspec.compiler.dataset.records import RecordReader, parse_line, whole_lines

LIMIT = 4096  # the tests' bound: lines far over it stay small files


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_BYTES", LIMIT)
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", LIMIT)


def _line(i: int) -> bytes:
    return json.dumps(chatml(f"question {i}", f"answer {i}")).encode()


def _file(path: Path, before: int, long: int, after: int, *, newline_after_long: bool = True) -> Path:
    """`before` good lines, one line of `long` bytes (JSON that would parse), `after` good lines."""
    rows = [_line(i) for i in range(before)]
    pad = long - len(json.dumps(chatml("", "y")).encode())
    big = json.dumps(chatml("x" * pad, "y")).encode()
    assert len(big) == long
    rows.append(big)
    body = b"\n".join(rows) + (b"\n" if newline_after_long or after else b"")
    body += b"".join(_line(before + 1 + i) + b"\n" for i in range(after))
    path.write_bytes(body)
    return path


def _items(reader) -> list[tuple[int, str | None]]:
    return [(line, error) for line, _value, error in reader]


# (good lines before, then the long line starts in the first 1 MiB chunk or after it)
PLACES = [pytest.param(3, id="in-the-first-chunk"), pytest.param(30000, id="after-the-first-chunk")]


@pytest.mark.parametrize("before", PLACES)
def test_the_record_reader_reports_an_overlong_line_at_its_line_and_goes_on(tmp_path, small_limit, before):
    path = _file(tmp_path / "t.jsonl", before, 50 * LIMIT, 5)
    reader = RecordReader(path)
    items = _items(reader)
    errors = [(line, e) for line, e in items if e is not None]
    assert len(errors) == 1, errors
    line, error = errors[0]
    assert line == before + 1
    assert f"the line is {50 * LIMIT:,} bytes long" in error and "skipped without being read" in error
    assert [line for line, e in items if e is None] == [*range(1, before + 1), *range(before + 2, before + 7)]
    assert reader.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # every byte still hashed


def test_a_line_just_at_the_limit_is_read(tmp_path, small_limit):
    path = _file(tmp_path / "t.jsonl", 2, LIMIT, 1)
    assert [e for _line, e in _items(RecordReader(path))] == [None, None, None, None]
    path = _file(tmp_path / "u.jsonl", 2, LIMIT + 1, 1)
    assert [e is None for _line, e in _items(RecordReader(path))] == [True, True, False, True]


def test_an_overlong_last_line_without_a_newline(tmp_path, small_limit):
    path = _file(tmp_path / "t.jsonl", 40000, 20 * LIMIT, 0, newline_after_long=False)
    items = _items(RecordReader(path))
    assert items[-1][0] == 40001 and items[-1][1] is not None and len(items) == 40001


@pytest.mark.parametrize("before", PLACES)
def test_line_blocks_carry_the_overlong_line_as_one_marked_line(tmp_path, small_limit, before):
    path = _file(tmp_path / "t.jsonl", before, 50 * LIMIT, 5)
    reader = RecordReader(path)
    lines = []
    for data, end in reader.line_blocks(8 << 10):
        lines.extend(data[:end].split(b"\n"))
    assert len(lines) == before + 6
    assert max(map(len, lines)) < LIMIT
    found = list(parse_line(lines[before], before + 1))
    assert found[0][0] == before + 1 and f"{50 * LIMIT:,} bytes long" in found[0][2]
    assert reader.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("piece", [1, 7, 1000, 5000, 1 << 20])
def test_whole_lines_of_a_stream_in_any_pieces(small_limit, piece):
    long = b"z" * (3 * LIMIT)
    text = b"a\n" + long + b"\nb\nc\n" + long  # the last line: over-long, no newline
    chunks = [text[i : i + piece] for i in range(0, len(text), piece)]
    lines = []
    for data, end in whole_lines(iter(chunks)):
        assert len(data) <= max(piece, LIMIT) + LIMIT + 64  # nothing close to a long line is held
        lines.extend(data[:end].split(b"\n"))
    assert lines == [b"a", records.overlong_line(3 * LIMIT), b"b", b"c", records.overlong_line(3 * LIMIT)]


def test_a_pipe_is_read_in_bounded_lines(tmp_path, small_limit):
    fifo = tmp_path / "t.jsonl"
    os.mkfifo(fifo)
    body = _line(1) + b"\n" + b"q" * (10 * LIMIT) + b"\n" + _line(2) + b"\n"
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(fifo)!r}, 'wb').write({body!r})"])
    try:
        lines = []
        for data, end in RecordReader(fifo, sha256=False).line_blocks(1024):
            lines.extend(data[:end].split(b"\n"))
    finally:
        writer.wait(timeout=30)
    assert lines == [_line(1), records.overlong_line(10 * LIMIT), _line(2)]


def test_a_csv_line_over_the_limit_is_an_error_at_its_line(tmp_path, small_limit):
    path = tmp_path / "t.csv"
    path.write_text("prompt,completion\nhi,there\n" + "x" * (5 * LIMIT) + ",y\nlast,row\n", encoding="utf-8")
    items = list(readers.TableReader(path, "csv", sha256=False))
    assert items[0] == (2, {"prompt": "hi", "completion": "there"}, None)
    assert items[1][0] == 3 and items[1][2] is not None and f"{5 * LIMIT + 2:,} bytes long" in items[1][2]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("fast", ["1", "0"])
def test_the_data_check_reports_the_overlong_line_once_at_its_line(
    tmp_path, monkeypatch, small_limit, workers, fast
):
    monkeypatch.setenv("FTSPEC_DATA_FAST", fast)
    monkeypatch.setenv("FTSPEC_DATA_WORKERS", workers)
    monkeypatch.setattr(data_fast, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(data_fast, "BLOCK_BYTES", 8 << 10)
    _file(tmp_path / "train.jsonl", 400, 40 * LIMIT, 300)
    spec = write_spec(tmp_path, {"train": "train.jsonl"})
    report = check(spec)
    found = [d for d in report.diagnostics if d.code == "FT0502"]
    assert [(Path(d.file).name, d.line) for d in found] == [("train.jsonl", 401)], found
    assert f"{40 * LIMIT:,} bytes long" in found[0].message
    assert report.summary["records"]["train"] == 701


@pytest.mark.slow
def test_a_2_gb_line_costs_neither_the_memory_nor_the_time_of_reading_it(tmp_path):
    """The review's reproduction: `truncate -s 2G` (a sparse file of NUL bytes, no newline) after a
    good line, read by the record iterator and by the check's blocks under the real limit. Peak memory
    is this process's VmHWM: ru_maxrss would carry over the forking pytest process's own peak."""
    path = tmp_path / "sparse.jsonl"
    with open(path, "wb") as fh:
        fh.write(_line(0) + b"\n")
        fh.truncate(2 << 30)
    script = f"""
import resource, sys, time
from pathlib import Path
from ftspec.compiler.dataset.records import RecordReader
t = time.monotonic()
items = [(line, error) for line, _v, error in RecordReader(Path({str(path)!r}), sha256=False)]
blocks = sum(1 for _ in RecordReader(Path({str(path)!r}), sha256=False).line_blocks(1 << 19))
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print(items[0][1] is None, items[1][0], items[1][1], blocks, hwm // 1024, round(time.monotonic() - t, 1))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first_ok, line, *rest = done.stdout.split()
    assert first_ok == "True" and line == "2"
    assert f"{(2 << 30) - len(_line(0)) - 1:,} bytes long" in done.stdout  # 2 GiB less the first line
    peak_mib = int(rest[-2])
    assert peak_mib < 400, done.stdout  # the review measured 6,860 MiB


@pytest.mark.slow
def test_the_data_check_of_a_2_gb_line_stays_small(tmp_path):
    """`ftspec check --only data` on the review's file (a good line, then 2 GB without a newline): one
    FT0502 at line 2; the review measured 52.8 s and 6,860 MiB."""

    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "sparse.jsonl"
    with open(path, "wb") as fh:
        fh.write(json.dumps(chatml("q" * 1000, "a")).encode() + b"\n")  # NUL-free first 512 bytes
        fh.truncate(2 << 30)
    spec = write_spec(tmp_path, {"train": "data/sparse.jsonl"})
    # The check in a fresh interpreter that reports its own peak (VmHWM) and its workers' (their
    # ru_maxrss): the pytest process's children so far (training runs) must not count.
    driver = (
        "import resource, sys\n"
        "from ftspec.compiler.cli import main\n"
        f"code = main(['check', {str(spec)!r}, '--only', 'data'])\n"
        "hwm = next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:'))\n"
        "workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print('peak-kib', max(hwm, workers))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    out = done.stdout + done.stderr
    assert "sparse.jsonl:2:1: FT0502 error: invalid JSON: the line is 2,147,48" in out, out[-2000:]
    peak_kib = int(out.split("peak-kib ")[1].split()[0])
    assert peak_kib // 1024 < 600, out[-2000:]
