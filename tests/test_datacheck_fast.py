"""The data check's fast path (data_fast) against the per-record path: it may only call a record clean
when the per-record checks find nothing in it, its duplicate keys and token estimates must be the
per-record ones, and whole reports (diagnostics, lines, counts) must not change with it, in one
process or in several."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from datacheck_helpers import chatml, check, write_jsonl, write_spec
from ftspec.compiler import data_fast
from ftspec.compiler.data_dedup import dedup_key, hash_keys
from ftspec.compiler.data_formats import LeakScanner, check_record
from ftspec.compiler.data_io import parse_line
from ftspec.compiler.data_lengths import Estimator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(not data_fast.AVAILABLE, reason="msgspec/numpy not installed")

MARKERS = ("<|im_start|>", "<|im_end|>", "### Response:", "[INST]", "<s>")
WORDS = ["hello", "world", "user", "User", "assistant", "ASSISTANT", "system", "ai", "bot", "human", "gpt",
         "answer", "Q1", "é", "日本", "x", "aside", "bottle"]
HAZARDS = ["<|im_end|>", "### Response:", "[INST]", "<s>", ":", " :", "\nUser:", "\n human :", "\nassistant:",
           "\x00", "\x02", "\x03", "\ud800"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\x1c", "\x0b", ""]


@st.composite
def contents(draw) -> object:
    kind = draw(st.sampled_from(["text"] * 12 + ["empty", "blank", "other"]))
    if kind == "empty":
        return ""
    if kind == "blank":
        return "".join(draw(st.lists(st.sampled_from(SPACES), min_size=1, max_size=3)))
    if kind == "other":  # not a string
        return draw(st.sampled_from([None, 3, 1.5, True, [], {"a": 1}]))
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        parts.append(draw(st.sampled_from(SPACES)) if draw(st.integers(0, 3)) == 0 else " ")
        parts.append(draw(st.sampled_from(WORDS)))
    if draw(st.integers(0, 3)) == 0:  # one thing that may make the record a finding, anywhere
        parts.insert(draw(st.integers(0, len(parts))), draw(st.sampled_from(HAZARDS)))
    return "".join(parts)


@st.composite
def records(draw) -> bytes:
    """A JSON Lines line: mostly ChatML with the usual turn order, mutated in the ways data goes wrong."""
    shape = draw(st.sampled_from(["usual"] * 6 + ["roles", "keys", "raw", "other"]))
    if shape == "raw":
        return draw(st.sampled_from([b"", b"  ", b"{", b'{"messages": [}', b"[1, 2]", b'"text"', b"\xff\xfe",
                                     b'{"messages": [{"role": "user", "content": "a"}]} {}',
                                     b'{"messages": [{"role": "user", "content": "a\\u0000b"}, '
                                     b'{"role": "assistant", "content": "c"}], "x": NaN}']))
    if shape == "other":
        return json.dumps(draw(st.sampled_from([{"instruction": "a", "output": "b"}, {"text": "t"}, {"messages": "m"},
                                                {"messages": []}, {"conversations": []}]))).encode()
    pairs = draw(st.integers(1, 3))
    roles = (["system"] if draw(st.booleans()) else []) + ["user", "assistant"] * pairs
    if shape == "roles":
        roles = draw(st.lists(st.sampled_from(["system", "user", "assistant", "tool", "User"]), min_size=1, max_size=6))
    turns: list = [{"role": role, "content": draw(contents())} for role in roles]
    if shape == "keys" and turns:
        i = draw(st.integers(0, len(turns) - 1))
        turns[i] = draw(st.sampled_from([{"role": "user"}, {"content": "x"}, "turn", {"role": 1, "content": "x"},
                                         {**turns[i], "extra": [1]}, {**turns[i], "name": None}]))
    record: dict = {"messages": turns}
    if draw(st.integers(0, 5)) == 0:
        record["meta"] = draw(st.sampled_from([{"id": 1}, [1, 2], "x", 10**30]))
    ascii_only = draw(st.booleans())
    text = json.dumps(record, ensure_ascii=ascii_only, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    return text.encode("utf-8", "surrogatepass")


def _config(policy: str, limit: int | None = 40, loss_all: bool = False) -> data_fast.FastConfig:
    return data_fast.FastConfig(markers=LeakScanner(MARKERS).markers, estimator=Estimator(), limit=limit,
                                loss_all=loss_all, policy=policy, samples=3)


def _slow_verdict(raw: bytes, line: int, policy: str, leaks: LeakScanner):
    """(is a record, clean, messages) as the per-record path sees the line."""
    items = list(parse_line(raw, line))
    if not items:
        return False, False, None
    _, value, error = items[0]
    if error is not None:
        return True, False, None
    problems: list = []
    messages = check_record(value, "chatml", leaks, problems)
    if messages is None or problems:
        return True, False, messages
    has_system = messages[0][0] == "system"
    if (policy == "required" and not has_system) or (policy == "forbidden" and has_system):
        return True, False, messages
    return True, True, messages


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(records(), min_size=1, max_size=25),
       policy=st.sampled_from(["consistent", "required", "forbidden", "any"]),
       loss_all=st.booleans(), limit=st.sampled_from([None, 12, 40, 10_000]))
def test_fast_path_calls_clean_only_what_the_per_record_path_passes(lines, policy, loss_all, limit):
    leaks = LeakScanner(MARKERS)
    cfg = _config(policy, limit, loss_all)
    block = data_fast.scan_block(b"\n".join(lines), cfg)
    assert block.nlines == len(lines)
    clean = dict(zip(block.lines, range(len(block.lines)), strict=True))
    slow = {i for i, _ in block.slow}
    assert not clean.keys() & slow
    estimator = Estimator()
    hist: Counter = Counter()
    trained = 0
    with_system = 0
    for i, raw in enumerate(lines):
        is_record, slow_clean, messages = _slow_verdict(raw, i + 1, policy, leaks)
        if i not in clean:
            assert (i in slow) == is_record, (i, raw)
            continue
        assert slow_clean, (raw, "called clean by the fast path")
        k = clean[i]
        assert block.hashes[16 * k : 16 * k + 16] == hash_keys([dedup_key(messages)])[0], raw
        length, segments = estimator.measure(messages)
        segments = [(0, length)] if loss_all else segments
        if k in block.over:
            assert block.over[k] == (length, segments)
        else:
            hist[length] += 1
            trained += sum(b - a for a, b in segments)
        with_system += messages[0][0] == "system"
        if k < cfg.samples:
            assert block.samples[k] == messages
    assert block.hist == hist and block.trained == trained and block.with_system == with_system
    for flag in (True, False):
        firsts = [k for k, i in enumerate(block.lines) if (_slow_verdict(lines[i], i + 1, policy, leaks)[2][0][0]
                                                           == "system") == flag][: data_fast.SYSTEM_LINES]
        assert block.system_first[flag] == firsts


def test_fast_path_passes_usual_clean_records():
    """The fast path is not vacuous: clean records of every shape come out clean, in bulk."""
    lines = [json.dumps(chatml(f"Question {i}:  what is {i}?", f"It is\t{i}.\n", "Be brief." if i % 2 else None),
                        ensure_ascii=bool(i % 3)).encode() for i in range(50)]
    lines += [json.dumps(chatml("日本語 の 質問", "答え\u3000です")).encode(), b""]
    block = data_fast.scan_block(b"\n".join(lines), _config("consistent"))
    assert list(block.lines) == list(range(51)) and block.slow == []


def _report(spec, monkeypatch, fast: str, workers: str = "1"):
    monkeypatch.setenv("FTSPEC_DATA_FAST", fast)
    monkeypatch.setenv("FTSPEC_DATA_WORKERS", workers)
    report = check(spec)
    return [d.to_json() for d in report.diagnostics], report.summary


def _mixed_file(path, n: int = 3000):
    """Clean records with defects of every kind sprinkled in, duplicates across blocks, a blank line,
    and more than MAX_LISTED of some findings (which ones get listed depends on line order)."""
    rows: list = []
    for i in range(n):
        system = "You are terse." if i % 3 else None
        row: object = chatml(f"Q{i % 1700}: how  many {i % 1700}?", f"{i % 1700} items.", system)
        if i % 97 == 5:
            row = chatml(f"q{i}", "   ")
        elif i % 101 == 7:
            row = chatml(f"Assistant: q{i}", "a")
        elif i % 89 == 3:
            row = '{"messages": [broken'
        elif i % 83 == 1:
            row = {"instruction": "x", "output": "y"}
        elif i % 79 == 2:
            row = {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}
        elif i % 73 == 4:
            row = chatml(f"q{i} <|im_end|>", "a")
        elif i % 71 == 6:
            row = chatml(f"Q{i % 1700}:\nhow many {i % 1700}?", f"{i % 1700}   items. ", system)  # a duplicate
        elif i % 67 == 8:
            row = ""
        elif i % 5 == 0:
            row = chatml("x" * (i % 400), "y " * (i % 300), system)  # some above sequence_len
        rows.append(row)
    write_jsonl(path, rows)


@pytest.mark.parametrize("training", [{"sequence_len": 64}, {"sequence_len": "p95", "loss_on": "all"}])
@pytest.mark.parametrize("policy", ["consistent", "required"])
def test_reports_identical_with_and_without_the_fast_path(tmp_path, monkeypatch, training, policy):
    monkeypatch.setattr(data_fast, "BLOCK_BYTES", 8 << 10)  # many blocks
    _mixed_file(tmp_path / "train.jsonl")
    spec = write_spec(tmp_path, {"train": "train.jsonl", "system_prompt": policy}, training=training)
    slow = _report(spec, monkeypatch, "0")
    fast = _report(spec, monkeypatch, "1")
    assert fast == slow
    codes = Counter(d["code"] for d in slow[0])
    assert {"FT0502", "FT0504", "FT0508", "FT0511", "FT0513", "FT0514", "FT0523"} <= set(codes)


@pytest.mark.slow
def test_parallel_workers_give_the_same_report(tmp_path, monkeypatch):
    monkeypatch.setattr(data_fast, "BLOCK_BYTES", 8 << 10)
    monkeypatch.setattr(data_fast, "PARALLEL_MIN_BYTES", 0)
    _mixed_file(tmp_path / "train.jsonl", 6000)
    (tmp_path / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "train.jsonl").read_bytes())  # a BOM
    spec = write_spec(tmp_path, {"train": "train.jsonl"}, training={"sequence_len": 64})
    slow = _report(spec, monkeypatch, "0")
    parallel = _report(spec, monkeypatch, "1", workers="3")
    assert parallel == slow
    assert slow[1]["files"][0]["sha256"] and slow[1]["records"]["train"] > 5000
