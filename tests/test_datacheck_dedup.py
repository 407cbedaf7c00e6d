"""Exact duplicates found in bulk after the pass (ExactDedup deferred mode) are the ones the immediate
mode finds record by record: same places, same first places, same order."""

from __future__ import annotations

import json
import random
import struct

import pytest
from datacheck_helpers import chatml, check, write_jsonl, write_spec
from ftspec.compiler.check.data.dedup import ExactDedup, dedup_key

np = pytest.importorskip("numpy")


def _immediate(events) -> list:
    dedup = ExactDedup()
    out = []
    for key, where in events:
        first = dedup.add(key, where)
        if first is not None:
            out.append((where, first))
    assert dedup.count == len(out)
    return out


def test_deferred_finds_what_immediate_finds():
    rng = random.Random(7)
    keys = [f"k{rng.randrange(300)}" for _ in range(2000)]
    events = [(key, (i // 700, 1 + i % 700)) for i, key in enumerate(keys)]  # three sources
    expected = _immediate(events)
    assert len(expected) > 1000
    deferred = ExactDedup(deferred=True)
    for key, where in events:
        assert deferred.add(key, where) is None
    assert deferred.resolve() == expected and deferred.count == len(expected)


def test_bulk_blocks_and_single_records_interleave_in_read_order():
    from ftspec.compiler.check.data.dedup import hash_bytes

    rng = random.Random(3)
    events = [(f"k{rng.randrange(50)}", (0, line)) for line in range(1, 401)]
    events += [(f"k{rng.randrange(50)}", (1, line)) for line in range(1, 201)]
    expected = _immediate(events)
    deferred = ExactDedup(deferred=True)
    i = 0
    while i < len(events):  # alternate a block of clean records with a single slow one
        block = [e for e in events[i : i + 13] if e[1][0] == events[i][1][0]]
        digests = hash_bytes(key.encode() for key, _ in block)  # what ExactDedup.add hashes
        deferred.add_block(digests, block[0][1][0], np.array([w[1] for _, w in block]))
        i += len(block)
        if i < len(events):
            deferred.add(*events[i])
            i += 1
    assert deferred.resolve() == expected


def test_keys_sharing_their_first_64_bits_are_told_apart():
    """The bulk sort looks at the first half of each hash; rows that share it are compared in full."""

    def digest(high: int, low: int) -> bytes:
        return struct.pack("<QQ", high, low)

    deferred = ExactDedup(deferred=True)
    # lines 1..6: A B A B C A, where A and B share their first 64 bits
    rows = [(5, 1), (5, 2), (5, 1), (5, 2), (9, 1), (5, 1)]
    deferred.add_block(b"".join(digest(h, lo) for h, lo in rows), 0, np.arange(1, 7))
    assert deferred.resolve() == [((0, 3), (0, 1)), ((0, 4), (0, 2)), ((0, 6), (0, 1))]
    assert deferred.count == 3


def test_duplicates_across_files_of_both_layouts_at_their_lines(tmp_path, monkeypatch):
    """A JSON array (record by record) then JSON Lines (fast path, several blocks, a slow line among
    them): every duplicate at its line, naming the first place its conversation was seen."""
    from ftspec.compiler.check.data import fast as data_fast

    monkeypatch.setattr(data_fast, "BLOCK_BYTES", 1 << 10)
    first = [chatml(f"q{i}", f"a{i}") for i in range(30)]
    # one record a line: record i is on line i + 2
    (tmp_path / "a.json").write_text("[\n" + ",\n".join(map(json.dumps, first)) + "\n]\n", encoding="utf-8")
    rows: list = []
    for i in range(300):
        if i % 37 == 5:
            rows.append(chatml(f"q{i % 30}", f"a{i % 30}"))  # repeats a.json
        elif i % 41 == 9:
            rows.append(
                chatml(f"  q{i - 9} in\tb\n", f"a{i - 9} ")
            )  # repeats an earlier line, whitespace changed
        elif i == 100:
            rows.append('{"messages": [broken')
        else:
            rows.append(chatml(f"q{i} in b", f"a{i}"))
    write_jsonl(tmp_path / "b.jsonl", rows)
    report = check(write_spec(tmp_path, {"train": ["a.json", "b.jsonl"], "checks": {"dedup": "exact"}}))
    seen: dict[str, str] = {}
    expected = []
    for i in range(30):
        seen.setdefault(dedup_key([("user", f"q{i}"), ("assistant", f"a{i}")]), f"a.json:{i + 2}")
    for line, row in enumerate(rows, 1):
        if isinstance(row, str):
            continue
        key = dedup_key([(m["role"], m["content"]) for m in row["messages"]])
        place = seen.setdefault(key, f"line {line}")
        if place != f"line {line}":
            expected.append((line, place))
    got = [(d.line, d.message.rsplit(" of ", 1)[1]) for d in report.diagnostics if d.code == "FT0523"]
    got = [(line, where.rsplit("/", 1)[-1]) for line, where in got]
    assert got == expected and len(expected) == 16
    assert any(where.startswith("line ") for _, where in got) and any("a.json" in where for _, where in got)
    assert report.summary["duplicates"]["exact"] == len(expected)
