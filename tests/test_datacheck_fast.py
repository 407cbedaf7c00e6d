"""The data check's fast path (data_fast) against the per-record path: it may only call a record clean
when the per-record checks find nothing in it, its duplicate keys and token estimates must be the
per-record ones, and whole reports (diagnostics, lines, counts) must not change with it, in one
process or in several."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
from datacheck_helpers import chatml, check, write_jsonl, write_spec
from ftspec.compiler.check.data import fast as data_fast
from ftspec.compiler.check.data.dedup import dedup_key, hash_keys
from ftspec.compiler.check.data.lengths import Estimator
from ftspec.compiler.dataset.formats import LeakScanner, check_record
from ftspec.compiler.dataset.records import parse_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(not data_fast.AVAILABLE, reason="msgspec/numpy not installed")

MARKERS = ("<|im_start|>", "<|im_end|>", "### Response:", "[INST]", "<s>")
WORDS = [
    "hello",
    "world",
    "user",
    "User",
    "assistant",
    "ASSISTANT",
    "system",
    "ai",
    "bot",
    "human",
    "gpt",
    "answer",
    "Q1",
    "é",
    "日本",
    "x",
    "aside",
    "bottle",
]
HAZARDS = [
    "<|im_end|>",
    "### Response:",
    "[INST]",
    "<s>",
    ":",
    " :",
    "\nUser:",
    "\n human :",
    "\nassistant:",
    "\x00",
    "\x02",
    "\x03",
    "\ud800",
]
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
        return draw(
            st.sampled_from(
                [
                    b"",
                    b"  ",
                    b"{",
                    b'{"messages": [}',
                    b"[1, 2]",
                    b'"text"',
                    b"\xff\xfe",
                    b'{"messages": [{"role": "user", "content": "a"}]} {}',
                    b'{"messages": [{"role": "user", "content": "a\\u0000b"}, '
                    b'{"role": "assistant", "content": "c"}], "x": NaN}',
                ]
            )
        )
    if shape == "other":
        return json.dumps(
            draw(
                st.sampled_from(
                    [
                        {"instruction": "a", "output": "b"},
                        {"text": "t"},
                        {"messages": "m"},
                        {"messages": []},
                        {"conversations": []},
                    ]
                )
            )
        ).encode()
    pairs = draw(st.integers(1, 3))
    roles = (["system"] if draw(st.booleans()) else []) + ["user", "assistant"] * pairs
    if shape == "roles":
        roles = draw(
            st.lists(st.sampled_from(["system", "user", "assistant", "tool", "User"]), min_size=1, max_size=6)
        )
    turns: list = [{"role": role, "content": draw(contents())} for role in roles]
    if shape == "keys" and turns:
        i = draw(st.integers(0, len(turns) - 1))
        turns[i] = draw(
            st.sampled_from(
                [
                    {"role": "user"},
                    {"content": "x"},
                    "turn",
                    {"role": 1, "content": "x"},
                    {**turns[i], "extra": [1]},
                    {**turns[i], "name": None},
                ]
            )
        )
    record: dict = {"messages": turns}
    if draw(st.integers(0, 5)) == 0:
        record["meta"] = draw(st.sampled_from([{"id": 1}, [1, 2], "x", 10**30]))
    ascii_only = draw(st.booleans())
    text = json.dumps(
        record, ensure_ascii=ascii_only, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    )
    return text.encode("utf-8", "surrogatepass")


def _config(policy: str, limit: int | None = 40, loss_all: bool = False) -> data_fast.FastConfig:
    return data_fast.FastConfig(
        markers=LeakScanner(MARKERS).markers,
        estimator=Estimator(),
        limit=limit,
        loss_all=loss_all,
        policy=policy,
        samples=3,
    )


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


def _check_block(lines: list[bytes], block: data_fast.Block, cfg: data_fast.FastConfig) -> None:
    """The block agrees with the per-record path on every line: clean only what it passes, the same
    dedup keys, token estimates, system prompts and samples."""
    policy, loss_all = cfg.policy, cfg.loss_all
    leaks = LeakScanner(MARKERS)
    assert block.nlines == len(lines)
    clean = dict(zip(block.lines, range(len(block.lines)), strict=True))
    slow = {i for i, _ in block.slow}
    assert not clean.keys() & slow
    assert all(raw == lines[i] for i, raw in block.slow)
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
        firsts = [
            k
            for k, i in enumerate(block.lines)
            if (_slow_verdict(lines[i], i + 1, policy, leaks)[2][0][0] == "system") == flag
        ][: data_fast.SYSTEM_LINES]
        assert block.system_first[flag] == firsts


def _same_blocks(a: data_fast.Block, b: data_fast.Block) -> None:
    assert list(a.lines) == list(b.lines)
    for name in (
        "nlines",
        "hashes",
        "hist",
        "trained",
        "over",
        "with_system",
        "system_first",
        "samples",
        "slow",
    ):
        assert getattr(a, name) == getattr(b, name), name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(records(), min_size=1, max_size=25),
    policy=st.sampled_from(["consistent", "required", "forbidden", "any"]),
    loss_all=st.booleans(),
    limit=st.sampled_from([None, 12, 40, 10_000]),
)
def test_fast_path_calls_clean_only_what_the_per_record_path_passes(lines, policy, loss_all, limit):
    cfg = _config(policy, limit, loss_all)
    block = data_fast.scan_block(b"\n".join(lines), cfg)
    _check_block(lines, block, cfg)
    _same_blocks(block, data_fast.scan_block(b"\n".join(lines), cfg, plain=False))


# Lines as json.dumps writes them, ASCII without escapes, which the plain path reads from the bytes,
# and the small ways they stop being that.
PLAIN_WORDS = [
    "hello",
    "world",
    "User",
    "user",
    "assistant",
    "AI",
    "bot",
    "sy",
    "Q1",
    "x",
    "a:b",
    "{",
    "}]}",
    ",",
    "[",
    "[INST]",
    "<|im_end|>",
    "<s>",
    "#",
    "### Response:",
    "role",
    "content",
    "messages",
    ":",
]


@st.composite
def plain_contents(draw) -> str:
    kind = draw(st.sampled_from(["words"] * 10 + ["empty", "spaces", "tab", "accent"]))
    if kind == "empty":
        return ""
    if kind == "spaces":
        return " " * draw(st.integers(1, 3))
    words = draw(st.lists(st.sampled_from(PLAIN_WORDS[:10] * 4 + PLAIN_WORDS[10:]), min_size=1, max_size=6))
    gaps = draw(
        st.lists(st.sampled_from([" "] * 8 + ["  "]), min_size=len(words) + 1, max_size=len(words) + 1)
    )
    text = "".join(g + w for g, w in zip(gaps, words, strict=False))[len(gaps[0]) :]
    if draw(st.integers(0, 9)) == 0:
        text = " " + text if draw(st.booleans()) else text + " "
    if kind == "tab":
        text += "\t"
    elif kind == "accent":
        text += "é"
    return text


@st.composite
def plain_records(draw) -> bytes:
    pairs = draw(st.integers(1, 3))
    roles = (["system"] if draw(st.booleans()) else []) + ["user", "assistant"] * pairs
    if draw(st.integers(0, 7)) == 0:
        roles = draw(st.lists(st.sampled_from(["system", "user", "assistant"]), min_size=1, max_size=5))
    turns = [{"role": role, "content": draw(plain_contents())} for role in roles]
    shape = draw(
        st.sampled_from(
            ["plain"] * 12 + ["compact", "content first", "extra key", "extra turn key", "spaced"]
        )
    )
    if shape == "content first":
        turns[0] = {"content": turns[0]["content"], "role": turns[0]["role"]}
    elif shape == "extra turn key":
        turns[-1]["name"] = "x"
    record: dict = {"messages": turns}
    if shape == "extra key":
        record["id"] = 1
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":") if shape == "compact" else None)
    if shape == "spaced":
        text = text.replace('"role": ', '"role":  ', 1)
    return text.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(plain_records(), min_size=1, max_size=30),
    policy=st.sampled_from(["consistent", "required", "forbidden", "any"]),
    loss_all=st.booleans(),
    limit=st.sampled_from([None, 12, 40, 10_000]),
)
def test_plain_path_reads_lines_as_the_decoding_path_does(lines, policy, loss_all, limit):
    cfg = _config(policy, limit, loss_all)
    data = b"\n".join(lines)
    block = data_fast.scan_block(data, cfg)
    _check_block(lines, block, cfg)
    _same_blocks(block, data_fast.scan_block(data, cfg, plain=False))
    tail = data + b'\n{"messages": [{"role": "user", "con'  # what follows the block in a read
    _same_blocks(block, data_fast.scan_block(tail, cfg, len(data)))


def test_plain_path_takes_json_dumps_lines_and_nothing_else():
    """The plain path is not vacuous: clean records as json.dumps writes them (ASCII, no escapes) come
    out of it in bulk, each line its own dedup key; any other layout is left to the decoding path."""
    cfg = _config("consistent")
    records = [
        chatml(f"Question {i}: what is {i}?", f"It is {i}.", "Be brief." if i % 2 else None)
        for i in range(40)
    ]
    lines = [json.dumps(r).encode() for r in records]
    data = b"\n".join(lines)
    block = data_fast._scan_plain(data, len(data), cfg)
    assert block is not None and block.nlines == 40 and block.slow == []
    assert block.hashes == b"".join(hash_keys([line.decode() for line in lines]))
    _same_blocks(block, data_fast.scan_block(data, cfg, plain=False))
    variants = {
        "compact": json.dumps(records[3], separators=(",", ":")),
        "content first": json.dumps(
            {"messages": [{"content": "q", "role": "user"}, {"role": "assistant", "content": "a"}]}
        ),
        "extra key": json.dumps({**records[3], "id": 3}),
        "escape": json.dumps(chatml("two\nlines", "a")),
        "non-ASCII": json.dumps(chatml("café", "a"), ensure_ascii=False),
        "trailing space": json.dumps(chatml("q ", "a")),
        "double space": json.dumps(chatml("q  q", "a")),
        "empty": json.dumps(chatml("", "a")),
        "label": json.dumps(chatml("User: q", "a")),
        "markup": json.dumps(chatml("q [INST] q", "a")),
        "order": json.dumps(
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}
        ),
        "blank line": "",
        "CRLF": json.dumps(records[3]) + "\r",
    }
    for name, line in variants.items():
        mixed = b"\n".join(lines[:20] + [line.encode()] + lines[20:])
        assert data_fast._scan_plain(mixed, len(mixed), cfg) is None, name
        _check_block(lines[:20] + [line.encode()] + lines[20:], data_fast.scan_block(mixed, cfg), cfg)


def test_decoding_a_block_at_once_keeps_records_on_their_lines():
    """A line holding two records, or a record over two lines, must not shift the records after it."""
    cfg = _config("consistent")
    one = json.dumps(chatml("q", "a"))
    for lines in (
        [one, one + " " + one, "", one],
        [one, one + " " + one, one],
        [one, '{"messages": [{"role": "user",', '"content": "q"}]}', one],
    ):
        encoded = [line.encode() for line in lines]
        block = data_fast.scan_block(b"\n".join(encoded), cfg)
        _check_block(encoded, block, cfg)
        assert {i for i, _ in block.slow} == {i for i, line in enumerate(lines) if line and line != one}


def test_dedup_key_is_the_record_as_json_dumps_writes_it():
    messages = [("system", " Be  brief.\n"), ("user", 'say "hi"\t\\ \x01 é'), ("assistant", "hi\u3000there ")]
    normalised = {"messages": [{"role": r, "content": " ".join(c.split())} for r, c in messages]}
    assert dedup_key(messages) == json.dumps(normalised, ensure_ascii=False)


def test_fast_path_passes_usual_clean_records():
    """The fast path is not vacuous: clean records of every shape come out clean, in bulk."""
    lines = [
        json.dumps(
            chatml(f"Question {i}:  what is {i}?", f"It is\t{i}.\n", "Be brief." if i % 2 else None),
            ensure_ascii=bool(i % 3),
        ).encode()
        for i in range(50)
    ]
    lines += [json.dumps(chatml("日本語 の 質問", "答え\u3000です")).encode(), b""]
    block = data_fast.scan_block(b"\n".join(lines), _config("consistent"))
    assert list(block.lines) == list(range(51)) and block.slow == []


def _report(spec, monkeypatch, fast: str, workers: str = "1"):
    monkeypatch.setenv("FTSPEC_DATA_FAST", fast)
    monkeypatch.setenv("FTSPEC_DATA_WORKERS", workers)
    report = check(spec)
    return [d.to_json() for d in report.diagnostics], report.summary


def _defect(i: int, q: int, system: str | None, between: tuple = ()) -> object:
    """The defect row i gets in the mixed files (None: it stays clean); `q` numbers its question, so
    one kind of defect is a whitespace-variant duplicate of a clean row; `between` adds kinds of defect."""
    kinds = [
        (97, 5, lambda: chatml(f"q{i}", "   ")),
        (101, 7, lambda: chatml(f"Assistant: q{i}", "a")),
        (89, 3, lambda: '{"messages": [broken'),
        (83, 1, lambda: {"instruction": "x", "output": "y"}),
        *between,
        (73, 4, lambda: chatml(f"q{i} <|im_end|>", "a")),
        (71, 6, lambda: chatml(f"Q{q}:\nhow many {q}?", f"{q}   items. ", system)),  # a duplicate
    ]
    return next((make() for modulus, rest, make in kinds if i % modulus == rest), None)


def _mixed_file(path, n: int = 3000):
    """Clean records with defects of every kind sprinkled in, duplicates across blocks, a blank line,
    and more than MAX_LISTED of some findings (which ones get listed depends on line order)."""
    rows: list = []
    wrong_order = (
        79,
        2,
        lambda: {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
    )
    for i in range(n):
        system = "You are terse." if i % 3 else None
        row: object = _defect(i, i % 1700, system, (wrong_order,))
        if row is None:
            if i % 67 == 8:
                row = ""
            elif i % 5 == 0:
                row = chatml("x" * (i % 400), "y " * (i % 300), system)  # some above sequence_len
            else:
                row = chatml(f"Q{i % 1700}: how  many {i % 1700}?", f"{i % 1700} items.", system)
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
    digest = hashlib.sha256((tmp_path / "train.jsonl").read_bytes()).hexdigest()
    spec = write_spec(
        tmp_path, {"train": "train.jsonl", "sha256": {"train": digest}}, training={"sequence_len": 64}
    )
    slow = _report(spec, monkeypatch, "0")
    parallel = _report(spec, monkeypatch, "1", workers="3")
    assert parallel == slow
    assert slow[1]["files"][0]["sha256"] == digest and slow[1]["records"]["train"] > 5000


@pytest.mark.parametrize("ascii_only", [True, False])
def test_reports_identical_on_a_file_as_json_dumps_writes_it(tmp_path, monkeypatch, ascii_only):
    """Blocks of clean records as json.dumps writes them go through the plain path; blocks with
    defects, escapes or whitespace to normalise go through the decoding path, in pieces; every finding
    and duplicate is where the per-record path puts it."""
    monkeypatch.setattr(data_fast, "BLOCK_BYTES", 16 << 10)
    monkeypatch.setattr(data_fast, "DECODE_BYTES", 3 << 10)
    taken: list[bool] = []
    plain = data_fast._scan_plain

    def counted(*args):
        block = plain(*args)
        taken.append(block is not None)
        return block

    monkeypatch.setattr(data_fast, "_scan_plain", counted)
    rows: list[str] = []
    for i in range(4000):
        system = "Be brief." if i % 2500 % 3 else None
        row: object = chatml(f"Q{i % 2500}: how many {i % 2500}?", f"{i % 2500} items.", system)
        if 1500 <= i < 2500:  # defects only here: the blocks before and after are clean
            defect = _defect(i, i % 2500, system)
            if defect is not None:
                row = defect
            elif i % 67 == 8:
                row = chatml(f"q{i} naïve", "a")
        rows.append(row if isinstance(row, str) else json.dumps(row, ensure_ascii=ascii_only))
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    spec = write_spec(tmp_path, {"train": "train.jsonl"}, training={"sequence_len": 64})
    slow = _report(spec, monkeypatch, "0")
    taken.clear()
    fast = _report(spec, monkeypatch, "1")
    assert fast == slow
    assert any(taken) and not all(taken)  # both paths took blocks
    codes = Counter(d["code"] for d in slow[0])
    assert {"FT0502", "FT0504", "FT0511", "FT0513", "FT0514", "FT0523"} <= set(codes)
    assert slow[1]["duplicates"]["exact"] > 1000  # rows 2500.. repeat rows 0..1499
