"""Data sources beyond JSON Lines (issue 17): Parquet, CSV, save_to_disk folders, read by the data check
and the runtime alike, findings located by row (and column for CSV); anything else is one clear error."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datacheck_helpers import chatml, check, found, write_jsonl, write_spec
from ftspec.compiler.dataset.readers import count_rows, open_records, source_kind, source_sha256
from ftspec.compiler.dataset.records import DataFileError
from ftspec.compiler.dataset.sources import count_records

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "specs" / "data" / "tiny-cpu-train.jsonl"


def demo_records() -> list[dict]:
    return [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_parquet(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def comparable(report) -> dict:
    """What must agree between two files holding the same records."""
    summary = report.summary
    return {
        "records": summary["records"],
        "usable": summary["usable"],
        "train_examples": summary["train_examples"],
        "duplicates": (summary["duplicates"]["exact"], summary["duplicates"]["near"]),
        "lengths": {k: summary["lengths"][k] for k in ("min", "p50", "p95", "max", "trained_tokens")},
        "system": summary["system_prompt"],
        "status": summary["status"],
    }


def test_parquet_copy_of_the_demo_checks_like_the_jsonl(tmp_path):
    records = demo_records()
    write_jsonl(tmp_path / "j" / "data" / "train.jsonl", records)
    write_parquet(tmp_path / "p" / "data" / "train.parquet", records)
    jsonl = check(write_spec(tmp_path / "j", {"train": "data/train.jsonl"}))
    parquet = check(write_spec(tmp_path / "p", {"train": "data/train.parquet"}))
    assert comparable(parquet) == comparable(jsonl)
    assert parquet.summary["files"][0]["layout"] == "parquet"
    assert parquet.summary["records"]["train"] == len(records)
    assert parquet.ok and not parquet.diagnostics or all(d.severity != "error" for d in parquet.diagnostics)


def test_parquet_duplicates_match_jsonl_across_files(tmp_path):
    """Dedup keys from the Parquet column scan equal the JSON Lines ones: a record in both is a duplicate."""
    records = demo_records()[:50]
    write_jsonl(tmp_path / "data" / "a.jsonl", records)
    write_parquet(tmp_path / "data" / "b.parquet", records[:10])
    report = check(write_spec(tmp_path, {"train": ["data/a.jsonl", "data/b.parquet"]}))
    assert report.summary["duplicates"]["exact"] == 10


def test_bad_parquet_rows_are_reported_by_row(tmp_path):
    records = demo_records()[:100]
    records[9] = chatml("a question", "")  # row 10: empty answer
    records[41] = {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}  # row 42
    spec = write_spec(tmp_path, {"train": "data/train.parquet"})
    write_parquet(tmp_path / "data" / "train.parquet", records)
    report = check(spec)
    assert found(report, "FT0511") == [10]
    assert found(report, "FT0506") == [42]
    assert report.summary["records"]["train"] == 100 and report.summary["usable"]["train"] == 98
    # the per-record path (no fast path) finds the same rows
    assert [(d.code, d.line) for d in report.diagnostics if d.severity == "error"] == [
        ("FT0511", 10),
        ("FT0506", 42),
    ]


def test_parquet_without_fast_path_agrees(tmp_path, monkeypatch):
    records = demo_records()[:200]
    records[5] = chatml("x", "   ")
    write_parquet(tmp_path / "data" / "train.parquet", records)
    spec = write_spec(tmp_path, {"train": "data/train.parquet"})
    fast = check(spec)
    monkeypatch.setenv("FTSPEC_DATA_FAST", "0")
    slow = check(spec)
    assert comparable(fast) == comparable(slow)
    assert found(fast, "FT0511") == found(slow, "FT0511") == [6]


def test_csv_alpaca_located_by_line_and_column(tmp_path):
    path = tmp_path / "data" / "train.csv"
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["instruction", "input", "output"])
        for i in range(20):
            writer.writerow([f"Say the number {i}", "", str(i)])
        writer.writerow(["a multi\nline instruction", "", ""])  # lines 22-23: empty output (column 3)
        writer.writerow(["too", "many", "fields", "here"])  # line 24
    report = check(write_spec(tmp_path, {"train": "data/train.csv", "format": "alpaca"}))
    empty = [d for d in report.diagnostics if d.code == "FT0511"]
    assert [(d.line, d.column) for d in empty] == [(22, 3)]
    assert found(report, "FT0517") == [24]
    assert report.summary["records"]["train"] == 22 and report.summary["usable"]["train"] == 20
    assert count_records(path) == 22


def test_save_to_disk_folder_is_a_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = demo_records()[:30]
    folder = tmp_path / "data" / "saved"
    datasets.Dataset.from_list(records).save_to_disk(str(folder))
    assert source_kind(folder) == "arrow"
    assert count_records(folder) == 30
    report = check(write_spec(tmp_path, {"train": "data/saved"}))
    assert report.summary["records"]["train"] == 30 and report.summary["files"][0]["layout"] == "arrow"
    assert [row for row, _record, _error in open_records(folder)][-1] == 30
    assert len(source_sha256(folder)) == 64
    # a DatasetDict folder: one error naming the splits
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataFileError, match="DatasetDict folder .*dd/train"):
        source_kind(tmp_path / "dd")


@pytest.mark.parametrize(
    ("name", "content", "detail"),
    [
        ("train.txt", b"hello\n", "suffix '.txt'"),
        ("train.jsonl", b"PAR1\x00\x01binary", "a Parquet file"),
        ("train.json", b"\x1f\x8b\x08\x00", "a gzip file"),
    ],
)
def test_other_files_are_one_located_error(tmp_path, name, content, detail):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / name).write_bytes(content * 50)
    report = check(write_spec(tmp_path, {"train": f"data/{name}"}))
    errors = [d for d in report.diagnostics if d.severity == "error"]
    assert [d.code for d in errors] == ["FT0501"]
    assert detail in errors[0].message and errors[0].line is not None  # at the spec's train line
    assert not found(report, "FT0502")


def test_runtime_reads_parquet_like_jsonl(tmp_path):
    from ftspec.runtime.data import read_conversations

    records = demo_records()[:40]
    jsonl = read_conversations(write_jsonl(tmp_path / "a.jsonl", records), "chatml")
    parquet = read_conversations(write_parquet(tmp_path / "a.parquet", records), "chatml")
    assert [list(c) for c in parquet] == [list(c) for c in jsonl]
    assert parquet[3].where.endswith("a.parquet:4")
    assert count_rows(tmp_path / "a.parquet") == 40


def test_lint_accepts_a_save_to_disk_folder(tmp_path):
    from ftspec.compiler.lint.lint import LintOptions, lint_file

    folder = tmp_path / "data" / "saved"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text('{"_data_files": []}', encoding="utf-8")
    (tmp_path / "data" / "plain").mkdir()
    spec = write_spec(tmp_path, {"train": "data/saved"})
    codes = [d.code for d in lint_file(spec, LintOptions(repo_root=tmp_path)).diagnostics]
    assert "FT0251" not in codes
    spec = write_spec(tmp_path, {"train": "data/plain"})
    codes = [d.code for d in lint_file(spec, LintOptions(repo_root=tmp_path)).diagnostics]
    assert "FT0251" in codes
    shutil.rmtree(tmp_path / "data")


def test_parquet_copy_of_the_demo_prepares_like_the_jsonl(tmp_path):
    """Training data from the Parquet copy is the JSON Lines file's, token for token (same mix and split)."""
    from ftspec.runtime import data as rdata
    from ftspec.runtime.builtin import build_tokenizer

    tok = build_tokenizer()
    from ftspec.compiler.dataset.chat_templates import template_source

    tok.chat_template = template_source("chatml")
    records = demo_records()[:300]
    write_jsonl(tmp_path / "train.jsonl", records)
    write_parquet(tmp_path / "train.parquet", records)
    spec = {
        "dataset": {"format": "chatml", "train": "train.jsonl", "eval_split": 0.1},
        "training": {"sequence_len": 64, "seed": 3},
    }
    jsonl = rdata.prepare(spec, tmp_path, tok)
    spec["dataset"]["train"] = "train.parquet"
    parquet = rdata.prepare(spec, tmp_path, tok)
    assert parquet.stats == jsonl.stats
    assert [e.input_ids for e in parquet.train] == [e.input_ids for e in jsonl.train]
    assert [e.labels for e in parquet.eval] == [e.labels for e in jsonl.eval]
