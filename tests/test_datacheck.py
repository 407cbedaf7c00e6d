"""`check_data`: every defect at its record's line, the counts right; a clean dataset passes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from datacheck_helpers import chatml, check, found, write_jsonl, write_model_dir, write_spec
from ftspec.compiler.dataset import chat_templates as ct

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def record_findings(report) -> set[tuple[str, str, int]]:
    return {
        (Path(d.file).name, d.code, d.line)
        for d in report.diagnostics
        if d.file and not d.file.endswith(".yaml")
    }


def test_defects_dataset_every_defect_at_its_line():
    report = check(FIXTURES / "defects" / "spec.yaml")
    assert record_findings(report) == {
        ("train.jsonl", "FT0504", 21),  # Alpaca row in a ChatML file
        ("train.jsonl", "FT0502", 22),  # broken JSON
        ("train.jsonl", "FT0511", 23),  # empty answer
        ("train.jsonl", "FT0508", 24),  # two user turns in a row
        ("train.jsonl", "FT0509", 25),  # no assistant turn
        ("train.jsonl", "FT0523", 26),  # line 3 again, whitespace changed
        ("train.jsonl", "FT0523", 27),  # line 5 again
        ("eval.jsonl", "FT0526", 1),  # eval rows copied from train lines 2, 7, 12
        ("eval.jsonl", "FT0526", 3),
        ("eval.jsonl", "FT0526", 5),
    }
    by_code = {d.code: d for d in report.diagnostics}
    assert "alpaca" in by_code["FT0504"].message
    assert by_code["FT0504"].hint and by_code["FT0502"].hint
    dups = [d.message for d in report.diagnostics if d.code == "FT0523"]
    assert dups == ["duplicate of line 3", "duplicate of line 5"]
    contaminated = [d.message for d in report.diagnostics if d.code == "FT0526"]
    assert [m.rsplit(":", 1)[1].rstrip(")") for m in contaminated] == ["2", "7", "12"]
    s = report.summary
    assert s["records"] == {"train": 35, "eval": 6}
    assert s["usable"] == {"train": 30, "eval": 6}
    assert s["errors"] == {
        "empty-content": 1,
        "eval-contaminated": 3,
        "invalid-json": 1,
        "no-assistant-turn": 1,
        "turns-out-of-order": 1,
        "wrong-format": 1,
    }
    assert s["warnings"] == {"exact-duplicate": 2}
    assert s["duplicates"]["exact"] == 2
    assert [(p["line"], p["duplicate_of"]) for p in s["duplicates"]["pairs"]] == [(26, 3), (27, 5)]
    assert s["contamination"]["count"] == 3 and s["contamination"]["eval_records"] == 6
    assert [p["train_line"] for p in s["contamination"]["pairs"]] == [2, 7, 12]
    assert s["status"] == "fail" and not report.ok
    # summary findings point at the spec field that governs them
    spec_side = {d.code: d for d in report.diagnostics if d.file.endswith("spec.yaml")}
    assert (
        spec_side["FT0527"].severity == "error"
        and spec_side["FT0527"].pointer == "/dataset/checks/max_contaminated"
    )
    assert spec_side["FT0524"].pointer == "/dataset/checks/dedup"
    assert spec_side["FT0540"].severity == "info"
    json.dumps(s)  # JSON-able


def test_clean_dataset_passes():
    report = check(FIXTURES / "clean" / "spec.yaml")
    assert report.ok
    assert [d.code for d in report.diagnostics] == ["FT0540"]  # only the note that lengths are estimated
    s = report.summary
    assert s["status"] == "pass" and s["errors"] == {} and s["warnings"] == {}
    assert s["records"] == {"train": 30, "eval": 6} and s["train_examples"] == 30 and s["eval_examples"] == 6
    assert s["system_prompt"] == {"policy": "consistent", "with": 36, "without": 0}
    assert (
        s["lengths"]["method"] == "estimate"
        and s["lengths"]["p50"] <= s["lengths"]["p95"] <= s["lengths"]["max"]
    )
    assert len(s["samples"]) == 5
    text = report.text()
    assert "ESTIMATE" in text and "{+Item 0 on page 3 is sold in red; order code RE-0000.<|im_end|>+}" in text
    assert "Contamination: 0 of 6" in text


def test_json_array_file_same_results(tmp_path):
    src = FIXTURES / "clean"
    (tmp_path / "train.json").write_text((src / "train_array.json").read_text())
    broken = (
        (src / "train_array.json")
        .read_text()
        .replace('"role": "assistant", "content": "Item 4', '"role": "assistant" "content": "Item 4')
    )
    (tmp_path / "broken.json").write_text(broken)
    report = check(write_spec(tmp_path, {"train": "train.json"}))
    assert report.ok and report.summary["files"][0]["layout"] == "json-array"
    assert report.summary["records"]["train"] == 30
    report = check(write_spec(tmp_path, {"train": "broken.json"}))
    assert found(report, "FT0502") == [6]  # record 5 starts on line 6 (line 1 is the '[')
    assert report.summary["records"]["train"] == 5  # a syntax error ends a JSON array


def test_record_structure_findings(tmp_path):
    write_jsonl(
        tmp_path / "t.jsonl",
        [
            chatml("q", "a"),  # 1 fine
            {
                "messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]
            },  # 2 unknown role
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "a"},
                ]
            },  # 3 system not first
            {
                "messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]
            },  # 4 list content
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "more"},
                ]
            },  # 5 ends with user
            {
                "messages": [
                    {"role": "user", "content": "<|im_start|>user hi"},
                    {"role": "assistant", "content": "a"},
                ]
            },  # 6
            {
                "messages": [
                    {"role": "user", "content": "Assistant: hello"},
                    {"role": "assistant", "content": "a"},
                ]
            },  # 7
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a\nUser: next?"},
                ]
            },  # 8
            [1, 2],  # 9 not an object
            {
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
            },  # 10 sharegpt
            {"messages": "hello"},  # 11 not a list
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},  # 12 no content
            {
                "messages": [
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "b"},
                ]
            },  # 13 starts with assistant
            "",  # 14 blank line: skipped
            {"text": "plain"},  # 15 plain text
        ],
    )
    report = check(write_spec(tmp_path, {"train": "t.jsonl", "system_prompt": "any"}))
    got = sorted((d.line, d.code) for d in report.diagnostics if d.file.endswith("t.jsonl"))
    assert got == [
        (2, "FT0506"),
        (3, "FT0507"),
        (4, "FT0512"),
        (5, "FT0510"),
        (6, "FT0513"),
        (7, "FT0514"),
        (8, "FT0514"),
        (9, "FT0503"),
        (10, "FT0504"),
        (11, "FT0505"),
        (12, "FT0505"),
        (13, "FT0508"),
        (15, "FT0504"),
    ]
    messages = {d.line: d.message for d in report.diagnostics if d.file.endswith("t.jsonl")}
    assert "sharegpt" in messages[10] and "plain text" in messages[15] and "'bot'" in messages[2]
    assert "'<|im_start|>'" in messages[6] and "'Assistant:'" in messages[7]
    assert report.summary["records"]["train"] == 14


def test_sharegpt_and_alpaca_formats(tmp_path):
    write_jsonl(
        tmp_path / "s.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "s"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                ]
            },
            {"conversations": [{"from": "human", "value": "q"}, {"from": "assistant", "value": "a"}]},
            {"conversations": [{"role": "user", "content": "q"}]},
            chatml("q", "a"),
        ],
    )
    report = check(write_spec(tmp_path, {"train": "s.jsonl", "format": "sharegpt", "system_prompt": "any"}))
    assert sorted((d.line, d.code) for d in report.diagnostics if d.line and d.file.endswith("s.jsonl")) == [
        (2, "FT0506"),
        (3, "FT0505"),
        (4, "FT0504"),
    ]
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": "Name a colour.", "input": "", "output": "Red."},
            {"instruction": "Translate", "input": "rot", "output": " "},
            {"instruction": "x"},
            {"instruction": "y", "input": 3, "output": "z"},
            {"instruction": "### Response: leaked", "output": "ok"},
            chatml("q", "a"),
        ],
    )
    report = check(
        write_spec(
            tmp_path,
            {"train": "a.jsonl", "format": "alpaca", "system_prompt": "any"},
            model={"id": "builtin:tiny-llama", "chat_template": "alpaca"},
        )
    )
    assert sorted((d.line, d.code) for d in report.diagnostics if d.line and d.file.endswith("a.jsonl")) == [
        (2, "FT0511"),
        (3, "FT0505"),
        (4, "FT0512"),
        (5, "FT0513"),
        (6, "FT0504"),
    ]
    assert "chatml" in [d.message for d in report.diagnostics if d.line == 6][0]
    sample = report.summary["samples"][0]
    assert sample["trained_text"] == ["Red.</s>"] and "### Instruction:\nName a colour." in sample["rendered"]


def test_system_prompt_policies(tmp_path):
    records = [chatml(f"q{i}", f"a{i}", system="sys" if i < 2 else None) for i in range(6)]
    write_jsonl(tmp_path / "t.jsonl", records)
    report = check(write_spec(tmp_path, {"train": "t.jsonl"}))
    finding = [d for d in report.diagnostics if d.code == "FT0520"]
    assert len(finding) == 1 and finding[0].pointer == "/dataset/system_prompt"
    assert "2 of 6" in finding[0].message and "t.jsonl:1" in finding[0].message
    report = check(write_spec(tmp_path, {"train": "t.jsonl", "system_prompt": "required"}))
    assert found(report, "FT0521") == [3, 4, 5, 6]
    report = check(write_spec(tmp_path, {"train": "t.jsonl", "system_prompt": "forbidden"}))
    assert found(report, "FT0522") == [1, 2]
    assert report.summary["usable"]["train"] == 4
    report = check(write_spec(tmp_path, {"train": "t.jsonl", "system_prompt": "any"}))
    assert report.ok


def test_near_duplicates(tmp_path):
    base = (
        "the quick brown fox jumps over the lazy dog while the farmer counts sheep in the green "
        "valley under a pale blue sky and the river runs down to the sea past the old mill"
    )
    records = [
        chatml("Tell me a story about animals", base),
        chatml("Tell me a story about animals", base.replace("pale", "bright")),
        chatml("Something else entirely", "a completely different answer about databases and indexes"),
    ]
    write_jsonl(tmp_path / "t.jsonl", records)
    report = check(
        write_spec(tmp_path, {"train": "t.jsonl", "checks": {"dedup": "near", "near_dup_threshold": 0.8}})
    )
    (near,) = [d for d in report.diagnostics if d.code == "FT0525"]
    assert near.line == 2 and near.message.endswith("of line 1")
    assert report.summary["duplicates"]["near"] == 1 and report.summary["duplicates"]["exact"] == 0
    report = check(write_spec(tmp_path, {"train": "t.jsonl", "checks": {"dedup": "exact"}}))
    assert found(report, "FT0525") == [] and report.summary["duplicates"]["near"] == 0


def test_sha256_pins(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [chatml("q", "a")])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert check(write_spec(tmp_path, {"train": "t.jsonl", "sha256": {"train": digest}})).ok
    assert check(write_spec(tmp_path, {"train": "t.jsonl", "sha256": {"t.jsonl": digest.upper()}})).ok
    report = check(write_spec(tmp_path, {"train": "t.jsonl", "sha256": {"train": "0" * 64}}))
    (bad,) = [d for d in report.diagnostics if d.code == "FT0529"]
    assert bad.pointer == "/dataset/sha256/train" and digest in bad.message
    report = check(
        write_spec(tmp_path, {"train": "t.jsonl", "sha256": {"eval": digest, "other.jsonl": digest}})
    )
    assert sorted(d.pointer for d in report.diagnostics if d.code == "FT0530") == [
        "/dataset/sha256/eval",
        "/dataset/sha256/other.jsonl",
    ]


def test_sha256_only_for_pinned_files(tmp_path):
    """Hashing costs about as much as a fast pass: a file's SHA-256 is computed (and shown in the
    summary) when a pin needs it, in either layout and either path."""
    write_jsonl(tmp_path / "t.jsonl", [chatml(f"q{i}", f"a{i}") for i in range(50)])
    (tmp_path / "t.json").write_text(json.dumps([chatml("q", "a")]), encoding="utf-8")
    for name in ("t.jsonl", "t.json"):
        digest = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert check(write_spec(tmp_path, {"train": name})).summary["files"][0]["sha256"] is None
        pinned = check(write_spec(tmp_path, {"train": name, "sha256": {"train": digest}}))
        assert pinned.ok and pinned.summary["files"][0]["sha256"] == digest
    split = check(write_spec(tmp_path, {"train": ["t.jsonl", "t.json"], "sha256": {"t.jsonl": "0" * 64}}))
    assert [f["sha256"] is not None for f in split.summary["files"]] == [True, False]
    assert [d.code for d in split.diagnostics if d.code == "FT0529"] == ["FT0529"]


@pytest.mark.parametrize("block", [7, 64, 1 << 19])
def test_line_blocks_cover_every_line_once(tmp_path, block):
    """The blocks the fast path reads: whole lines, in order, each once, whatever the block size, with
    or without a BOM or a last newline, lines longer than a block and blank ones among them."""
    from ftspec.compiler.dataset.records import RecordReader

    lines = [b"", b"x" * 300, b"short", b"", b"", b"y" * 20, b"\xc3\xa9" * 40, b"z"]
    for bom in (b"", b"\xef\xbb\xbf"):
        for last in (b"", b"\n"):
            content = bom + b"\n".join(lines) + last
            path = tmp_path / "f.jsonl"
            path.write_bytes(content)
            for digest in (False, True):
                reader = RecordReader(path, sha256=digest)
                seen = []
                for data, end in reader.line_blocks(block):
                    seen.extend(data[:end].split(b"\n"))
                assert b"\n".join(seen) == content[len(bom) :].removesuffix(b"\n")
                assert reader.sha256 == (hashlib.sha256(content).hexdigest() if digest else None)


def test_min_examples_eval_split_and_mix(tmp_path):
    write_jsonl(tmp_path / "task.jsonl", [chatml(f"task {i}", f"answer {i}") for i in range(40)])
    write_jsonl(tmp_path / "general.jsonl", [chatml(f"general {i}", f"reply {i}") for i in range(3)])
    report = check(write_spec(tmp_path, {"train": "task.jsonl", "min_examples": 50}))
    (few,) = [d for d in report.diagnostics if d.code == "FT0528"]
    assert few.pointer == "/dataset/min_examples" and "40 usable" in few.message
    report = check(write_spec(tmp_path, {"train": "task.jsonl", "eval_split": 0.1}))
    assert report.summary["eval_examples"] == 4 and report.summary["train_examples"] == 36
    assert [d.pointer for d in report.diagnostics if d.code == "FT0531"] == ["/dataset/eval_split"]
    report = check(
        write_spec(tmp_path, {"train": [{"path": "task.jsonl"}, {"path": "general.jsonl", "fraction": 0.2}]})
    )
    assert report.summary["train_examples"] == 50  # 40 task examples are 80% of the mix
    (short,) = [d for d in report.diagnostics if d.code == "FT0532"]
    assert short.pointer == "/dataset/train/1/fraction" and "needs 10" in short.message
    report = check(write_spec(tmp_path, {"train": ["task.jsonl", "general.jsonl"]}))
    assert report.summary["train_examples"] == 43 and len(report.summary["files"]) == 2


def test_duplicates_across_train_files_name_the_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [chatml("q", "a")])
    write_jsonl(tmp_path / "b.jsonl", [chatml("x", "y"), chatml("q", "a")])
    report = check(write_spec(tmp_path, {"train": ["a.jsonl", "b.jsonl"]}))
    (dup,) = [d for d in report.diagnostics if d.code == "FT0523"]
    assert dup.line == 2 and dup.file.endswith("b.jsonl") and dup.message.endswith("a.jsonl:1")


def test_truncation_estimate_and_p95(tmp_path):
    long_prompt = "word " * 400
    records = [chatml(f"short question {i}", f"short answer {i}") for i in range(19)]
    records.append(chatml(long_prompt, "the answer"))
    write_jsonl(tmp_path / "t.jsonl", records)
    report = check(write_spec(tmp_path, {"train": "t.jsonl"}, training={"sequence_len": 64}))
    lengths = report.summary["lengths"]
    assert lengths["truncated"] == 1 and lengths["answers_lost"] == 1 and lengths["assistant_tokens_lost"] > 0
    (lost,) = [d for d in report.diagnostics if d.code == "FT0542"]
    # estimated lengths: far beyond sequence_len whatever the tokenizer, so still an error
    assert lost.line == 20 and lost.severity == "error"
    near = check(write_spec(tmp_path, {"train": "t.jsonl"}, training={"sequence_len": 480}))
    (close,) = [d for d in near.diagnostics if d.code == "FT0542"]
    assert close.severity == "warning"  # within the estimate's error: a real tokenizer may fit it
    assert [d.pointer for d in report.diagnostics if d.code == "FT0541"] == ["/training/sequence_len"]
    report = check(write_spec(tmp_path, {"train": "t.jsonl"}, training={"sequence_len": "p95"}))
    s = report.summary
    assert s["sequence_len_p95"] == s["lengths"]["p95"] == s["lengths"]["sequence_len"]
    assert s["lengths"]["truncated"] == 1 and s["lengths"]["sequence_len_setting"] == "p95"
    report = check(
        write_spec(tmp_path, {"train": "t.jsonl", "truncation": "drop"}, training={"sequence_len": 64})
    )
    assert report.summary["lengths"]["dropped"] == 1 and found(report, "FT0542") == []
    assert [d.code for d in report.diagnostics if d.code == "FT0543"] == ["FT0543"]


def test_tokenizer_lengths_and_masks(tmp_path):
    write_model_dir(tmp_path / "model", ct.template_source("chatml"))
    records = [chatml(f"which colour goes with item {i}?", f"item {i} is sold in red.") for i in range(4)]
    records.append(chatml("which colour " * 60, "red."))
    write_jsonl(tmp_path / "t.jsonl", records)
    report = check(
        write_spec(
            tmp_path,
            {"train": "t.jsonl"},
            model={"id": "model", "chat_template": "model"},
            training={"sequence_len": 48},
        )
    )
    s = report.summary
    assert s["lengths"]["method"] == "tokenizer" and s["lengths"]["tokenizer"].endswith("tokenizer.json")
    assert s["template"]["rendered"] == "every record" and s["template"]["terminators"][0] == "<|im_end|>"
    assert "FT0540" not in {d.code for d in report.diagnostics}
    (lost,) = [d for d in report.diagnostics if d.code == "FT0542"]
    assert lost.line == 5 and lost.severity == "error"
    sample = s["samples"][0]
    assert sample["method"] == "tokenizer" and sample["trained_text"] == ["item 0 is sold in red.<|im_end|>"]
    assert 0 < sample["trained_tokens"] < sample["tokens"]
    assert "tokenizer" in report.text()


def test_model_template_without_terminator_or_generation(tmp_path):
    no_terminator = ct.template_source("chatml").replace(
        "            {{- '<|im_end|>' }}\n        {%- endgeneration %}",
        "        {%- endgeneration %}{{- '<|im_end|>' }}",
    )
    assert no_terminator != ct.template_source("chatml")
    write_model_dir(tmp_path / "m1", no_terminator)
    write_jsonl(tmp_path / "t.jsonl", [chatml("q one", "answer one"), chatml("q two", "answer two")])
    report = check(write_spec(tmp_path, {"train": "t.jsonl"}, model={"id": "m1", "chat_template": "model"}))
    assert found(report, "FT0554") == [1, 2] and not report.ok
    assert "<|im_end|>" in [d for d in report.diagnostics if d.code == "FT0554"][0].message
    plain = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    write_model_dir(tmp_path / "m2", plain)
    report = check(write_spec(tmp_path, {"train": "t.jsonl"}, model={"id": "m2", "chat_template": "model"}))
    # no {% generation %} blocks: the answers and their end-of-turn token are located in the rendering
    assert report.ok, [d.message for d in report.diagnostics if d.severity == "error"]
    assert [s["trained_text"] for s in report.summary["samples"]] == [
        ["answer one<|im_end|>"],
        ["answer two<|im_end|>"],
    ]
    assert report.summary["template"]["generation_blocks"] is False
    # a template whose turns end in plain text cannot be masked: each record is reported at its line
    no_marker = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    write_model_dir(tmp_path / "m5", no_marker, eos="")
    report = check(write_spec(tmp_path, {"train": "t.jsonl"}, model={"id": "m5", "chat_template": "model"}))
    assert found(report, "FT0556") == [1, 2] and not report.ok
    assert "no EOS to append" in [d for d in report.diagnostics if d.code == "FT0556"][0].message
    # ... unless the tokenizer has an EOS: it is appended after the last answer and trained
    write_model_dir(tmp_path / "m6", no_marker, eos="</s>")
    report = check(write_spec(tmp_path, {"train": "t.jsonl"}, model={"id": "m6", "chat_template": "model"}))
    # (the space before the answer belongs to its first byte-level token, so that token trains)
    assert report.ok and report.summary["samples"][0]["trained_text"] == [" answer one\n</s>"]
    two_turns = {
        "messages": [
            {"role": "user", "content": "q one"},
            {"role": "assistant", "content": "answer one"},
            {"role": "user", "content": "q two"},
            {"role": "assistant", "content": "answer two"},
        ]
    }
    write_jsonl(tmp_path / "two.jsonl", [two_turns])
    report = check(write_spec(tmp_path, {"train": "two.jsonl"}, model={"id": "m6", "chat_template": "model"}))
    (late,) = [d for d in report.diagnostics if d.code == "FT0556"]
    assert late.line == 1 and "turn 1 " in late.message and "not by a special token" in late.message
    report = check(
        write_spec(
            tmp_path,
            {"train": "t.jsonl"},
            model={"id": "m2", "chat_template": "model"},
            training={"loss_on": "all"},
        )
    )
    assert report.ok
    write_model_dir(tmp_path / "m3", "{% for m in messages %}{{ m.content }")
    report = check(write_spec(tmp_path, {"train": "t.jsonl"}, model={"id": "m3", "chat_template": "model"}))
    assert [d.code for d in report.diagnostics if d.code == "FT0550"] == ["FT0550"]
    write_model_dir(tmp_path / "m4", None)
    report = check(write_spec(tmp_path, {"train": "t.jsonl"}, model={"id": "m4", "chat_template": "model"}))
    assert [d.severity for d in report.diagnostics if d.code == "FT0551"] == ["error"]
    report = check(
        write_spec(tmp_path, {"train": "t.jsonl"}, model={"id": "org/hub-model", "chat_template": "model"})
    )
    assert [d.severity for d in report.diagnostics if d.code == "FT0551"] == ["warning"]


def test_unreadable_empty_and_capped_files(tmp_path):
    report = check(write_spec(tmp_path, {"train": "missing.jsonl"}))
    (missing,) = [d for d in report.diagnostics if d.code == "FT0501"]
    assert missing.pointer == "/dataset/train" and missing.file.endswith("spec.yaml")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    report = check(write_spec(tmp_path, {"train": "empty.jsonl"}))
    assert "FT0515" in {d.code for d in report.diagnostics}
    write_jsonl(tmp_path / "bad.jsonl", ["{nope"] * 60)
    report = check(write_spec(tmp_path, {"train": "bad.jsonl"}))
    assert len(found(report, "FT0502")) == 50 and report.summary["errors"]["invalid-json"] == 60
    (more,) = [d for d in report.diagnostics if d.code == "FT0555"]
    assert "10 more FT0502" in more.message
    (tmp_path / "latin1.jsonl").write_bytes(
        json.dumps(chatml("caf\u00e9", "ok"), ensure_ascii=False).encode("latin-1") + b"\n"
    )
    report = check(write_spec(tmp_path, {"train": "latin1.jsonl"}))
    assert found(report, "FT0502") == [1] and "UTF-8" in report.diagnostics[0].message


def test_memory_is_flat_in_the_number_of_records(tmp_path):
    """Streaming: without dedup the peak does not grow with the records; exact dedup adds a hash and a
    line per record (well under 200 bytes), never the text."""
    import tracemalloc

    for n in (2_000, 20_000):
        with open(tmp_path / f"r{n}.jsonl", "w") as fh:
            for i in range(n):
                fh.write(
                    json.dumps(chatml(f"question {i} " + "padding " * 40, f"answer {i} " + "text " * 40))
                    + "\n"
                )
    check(write_spec(tmp_path, {"train": "r2000.jsonl"}))  # warm caches (catalogs, compiled template)
    peaks = {}
    for n in (2_000, 20_000):
        for dedup in ("off", "exact"):
            spec = write_spec(tmp_path, {"train": f"r{n}.jsonl", "checks": {"dedup": dedup}})
            tracemalloc.start()
            report = check(spec)
            peaks[n, dedup] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert report.summary["records"]["train"] == n
    assert peaks[20_000, "off"] - peaks[2_000, "off"] < 200_000, peaks
    per_record = (peaks[20_000, "exact"] - peaks[2_000, "exact"]) / 18_000
    assert per_record < 200, peaks
    assert peaks[20_000, "exact"] < (tmp_path / "r20000.jsonl").stat().st_size / 2


def test_compiler_datacheck_imports_no_heavy_stack():
    code = (
        "import sys; import ftspec.compiler.check.data.datacheck, ftspec.compiler.dataset.chat_templates; "
        "bad = [m for m in ('torch', 'transformers', 'datasets', 'peft', 'accelerate') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_check_only_data(tmp_path):
    pytest.importorskip("ftspec.compiler.verbs.check", reason="the check verb is not in this checkout yet")
    from ftspec.compiler.cli import main

    rc = main(["check", str(FIXTURES / "defects" / "spec.yaml"), "--only", "data", "--format", "json"])
    assert rc == 1
    rc = main(["check", str(FIXTURES / "clean" / "spec.yaml"), "--only", "data", "--format", "json"])
    assert rc == 0
