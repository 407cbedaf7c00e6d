"""Unit tests of the cross-field rule machinery (compiler/rules*.py) beyond the data-driven cases."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from ftspec.compiler.core.diagnostics import catalog
from ftspec.compiler.core.loader import load_text
from ftspec.compiler.lint.lint import LintOptions, lint_loaded
from ftspec.compiler.lint.rules import hardware as rules_hardware
from ftspec.compiler.lint.rules import registry as rules
from ftspec.compiler.lint.rules.context import MISSING, RuleContext, schema_default
from ftspec.compiler.lint.rules.data import count_lines
from ftspec.compiler.lint.rules.model import model_kind

ROOT = Path(__file__).resolve().parent.parent
COMPILER = ROOT / "compiler"

BASE = """version: 1
name: unit
model:
  id: builtin:tiny-llama
dataset:
  train: data/train.jsonl
hardware:
  gpu: cpu
"""


def lint_text(text: str, folder: Path, **options) -> list[tuple[str, int, int]]:
    spec = load_text(text, str(folder / "spec.yaml"))
    result = lint_loaded(spec, LintOptions(**options))
    return [(d.code, d.line, d.column) for d in result.diagnostics]


def codes(text: str, folder: Path, **options) -> list[str]:
    return [c for c, _, _ in lint_text(text, folder, **options)]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with a spec folder holding a small train file."""
    (tmp_path / ".git").mkdir()
    folder = tmp_path / "specs"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text('{"messages": []}\n' * 3, encoding="utf-8")
    return folder


# ---- the catalog ------------------------------------------------------------------------------
def test_rule_catalog_entries_are_complete() -> None:
    entries = {code: rule for code, rule in catalog().items() if code.startswith("FT02")}
    assert len(entries) >= 30
    names = [r.name for r in entries.values()]
    assert len(names) == len(set(names)), "rule names must be unique"
    for code, rule in entries.items():
        assert re.fullmatch(r"FT02\d\d", code)
        assert rule.severity in ("error", "warning", "info"), code
        assert rule.summary.endswith("."), code
        assert rule.message and rule.hint, f"{code} needs a message and a hint"


def test_rule_codes_in_source_and_catalog_match() -> None:
    """Every FT02xx code the rules emit is in the catalog, and every catalog code is emitted."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (COMPILER / "lint" / "rules").glob("*.py"))
    used = set(re.findall(r'"(FT02\d\d)"', source))
    defined = {code for code in catalog() if code.startswith("FT02")}
    assert used == defined


def test_rule_count_is_at_least_thirty() -> None:
    from ftspec.compiler.lint.rules.registry import _all_rules

    assert len(_all_rules()) >= 25  # functions; several emit more than one code
    assert len([c for c in catalog() if c.startswith("FT02") and c != "FT0299"]) >= 30


# ---- reading the spec safely ------------------------------------------------------------------
def test_schema_defaults_are_read_from_the_schema() -> None:
    assert schema_default("/training/epochs") == 2
    assert schema_default("/adapter/quantization/compute_dtype") == "bf16"
    assert schema_default("/hardware/offload") == "none"
    assert schema_default("/training/nope") is MISSING
    assert schema_default("/acceptance/0/metric") is MISSING


def test_context_get_rejects_wrong_types_and_uses_defaults(tmp_path: Path) -> None:
    text = (
        BASE + "training:\n  epochs: true\n  learning_rate: '1e-4'\n  micro_batch_size: 4\nadapter: [1, 2]\n"
    )
    spec = load_text(text, str(tmp_path / "s.yaml"))
    ctx = RuleContext(spec, LintOptions(), [])
    assert ctx.get("/training/epochs", "num") is None  # a bool is not a number
    assert ctx.get("/training/learning_rate", "num") is None  # a string is not a number
    assert ctx.get("/training/micro_batch_size", "int") == 4
    assert ctx.get("/training/warmup_ratio", "num") == 0.03  # absent: the schema default
    assert ctx.get("/adapter/method", ("lora", "qlora", "full")) is None  # parent is a list
    assert ctx.raw("/adapter/0") == 1 and ctx.raw("/adapter/9") is MISSING
    assert ctx.given("/training/epochs") and not ctx.given("/training/max_steps")


def test_values_the_schema_reported_are_not_judged_again(tmp_path: Path) -> None:
    # epochs 5000 breaks the schema maximum; the epochs warning must not pile on
    found = codes(BASE + "training:\n  epochs: 5000\n", tmp_path, check_files=False)
    assert found == ["FT0105"]


# ---- repository root and files ----------------------------------------------------------------
def test_repo_root_is_the_git_folder_above_the_spec(repo: Path) -> None:
    spec = load_text(BASE, str(repo / "spec.yaml"))
    assert RuleContext(spec, LintOptions(), []).repo_root == repo.parent
    # data one level up is still inside the repository ...
    (repo.parent / "shared.jsonl").write_text("{}\n", encoding="utf-8")
    assert codes(BASE.replace("data/train.jsonl", "../shared.jsonl"), repo) == []
    # ... two levels up is not
    assert codes(BASE.replace("data/train.jsonl", "../../x.jsonl"), repo) == ["FT0229"]


def test_repo_root_without_git_is_the_spec_folder(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text("{}\n", encoding="utf-8")
    sub = tmp_path / "specs"
    sub.mkdir()
    assert codes(BASE.replace("data/train.jsonl", "../x.jsonl"), sub) == ["FT0229"]
    assert codes(BASE.replace("data/train.jsonl", "../x.jsonl"), sub, repo_root=tmp_path) == []


def test_check_files_off_skips_existence_but_not_escapes(tmp_path: Path) -> None:
    text = BASE.replace("data/train.jsonl", "missing.jsonl")
    assert codes(text, tmp_path) == ["FT0230"]
    assert codes(text, tmp_path, check_files=False) == []
    assert codes(BASE.replace("data/train.jsonl", "/abs/train.jsonl"), tmp_path, check_files=False) == [
        "FT0228"
    ]


@pytest.mark.parametrize("path", ["C:\\data\\train.jsonl", "~/train.jsonl", "\\\\server\\share\\t.jsonl"])
def test_absolute_paths_of_every_kind(tmp_path: Path, path: str) -> None:
    assert codes(BASE.replace("data/train.jsonl", json.dumps(path)), tmp_path, check_files=False) == [
        "FT0228"
    ]


def test_count_lines_stops_at_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("{}\n\n{}\n{}", encoding="utf-8")  # blank lines do not count; no final newline
    assert count_lines(path, cap=100) == 3
    path.write_text("{}\n" * 600_000, encoding="utf-8")  # 1.8 MB: more than one read
    assert 10_000 <= count_lines(path, cap=10_000) < 600_000
    assert count_lines(path, cap=10**9) == 600_000
    assert count_lines(tmp_path / "absent.jsonl", cap=10) is None
    (tmp_path / "array.json").write_text("[{}, {}]", encoding="utf-8")
    assert count_lines(tmp_path / "array.json", cap=10) is None


def test_rank_warning_needs_a_small_counted_dataset(repo: Path) -> None:
    text = BASE + "adapter:\n  r: 128\n  alpha: 128\n"
    assert codes(text, repo) == ["FT0240"]
    (repo / "data" / "train.jsonl").write_text('{"messages": []}\n' * 10_001, encoding="utf-8")
    assert codes(text, repo) == []


def test_rank_warning_counts_after_the_eval_split(repo: Path) -> None:
    (repo / "data" / "train.jsonl").write_text('{"messages": []}\n' * 10_500, encoding="utf-8")
    text = BASE.replace("  train: data/train.jsonl\n", "  train: data/train.jsonl\n  eval_split: 0.1\n")
    assert codes(text + "adapter:\n  r: 128\n  alpha: 128\n", repo) == ["FT0240"]


# ---- options and the model ----------------------------------------------------------------------
def test_allow_remote_code(tmp_path: Path) -> None:
    text = BASE.replace("builtin:tiny-llama", "builtin:tiny-llama\n  trust_remote_code: true")
    assert codes(text, tmp_path, check_files=False) == ["FT0231"]
    assert codes(text, tmp_path, check_files=False, allow_remote_code=True) == []


def test_model_kinds(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    assert model_kind("builtin:tiny-llama", tmp_path) == "builtin"
    assert model_kind("meta-llama/Llama-3.1-8B", tmp_path) == "hub"
    assert model_kind("gpt2", tmp_path) == "hub"
    assert model_kind("weights", tmp_path) == "local"
    assert model_kind("./anything", tmp_path) == "local"
    assert model_kind("/models/llama", tmp_path) == "local"
    assert model_kind("org/name/sub", tmp_path) == "local"


def test_local_model_folder_needs_config_json(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    text = BASE.replace("builtin:tiny-llama", "./weights")
    assert codes(text, tmp_path, check_files=False) == []
    spec = load_text(text, str(tmp_path / "spec.yaml"))
    found = lint_loaded(spec, LintOptions(check_files=True)).diagnostics
    assert [(d.code, "config.json" in d.message) for d in found if d.code == "FT0234"] == [("FT0234", True)]
    (tmp_path / "weights" / "config.json").write_text("{}", encoding="utf-8")
    assert "FT0234" not in codes(text, tmp_path)


def test_moving_revision_names_case_insensitive(tmp_path: Path) -> None:
    text = BASE.replace("builtin:tiny-llama", "org/model\n  revision: Main")
    assert codes(text, tmp_path, check_files=False) == ["FT0233"]
    text = BASE.replace("builtin:tiny-llama", "org/model\n  revision: v1.2")
    assert codes(text, tmp_path, check_files=False) == []  # a tag is a deliberate pin


# ---- the GPU catalog ----------------------------------------------------------------------------
def test_gpu_catalog_aliases_are_case_insensitive(tmp_path: Path) -> None:
    for name in ("t4", "Tesla-T4", "v100-32gb"):
        text = BASE.replace("gpu: cpu", f"gpu: {name}")
        assert codes(text, tmp_path, check_files=False) == ["FT0206"], name


def test_without_the_gpu_catalog_a_fallback_table_still_knows_t4(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(rules_hardware, "gpu_catalog", lambda: None)
    assert codes(BASE.replace("gpu: cpu", "gpu: T4"), tmp_path, check_files=False) == ["FT0206"]
    # and an unknown name is not reported, since nothing says which names exist
    assert codes(BASE.replace("gpu: cpu", "gpu: Z9000"), tmp_path, check_files=False) == []


# ---- robustness ---------------------------------------------------------------------------------
def test_a_crashing_rule_becomes_ft0299(tmp_path: Path, monkeypatch) -> None:
    def broken(ctx):
        raise KeyError("boom")

    monkeypatch.setattr(rules, "_all_rules", lambda: [broken])
    monkeypatch.delenv("FTSPEC_DEBUG", raising=False)
    found = lint_loaded(load_text(BASE, str(tmp_path / "s.yaml")), LintOptions()).diagnostics
    assert [(d.code, "broken" in d.message) for d in found] == [("FT0299", True)]
    monkeypatch.setenv("FTSPEC_DEBUG", "1")
    with pytest.raises(KeyError):
        lint_loaded(load_text(BASE, str(tmp_path / "s.yaml")), LintOptions())


@pytest.mark.parametrize("section", ["adapter", "training", "hardware", "dataset", "evaluation", "model"])
@pytest.mark.parametrize("value", ["null", "7", "[1, {a: b}]", "'text'", "{method: {x: 1}, r: [], gpu: {}}"])
def test_rules_tolerate_sections_of_any_shape(tmp_path: Path, section: str, value: str) -> None:
    text = (
        "\n".join(
            ln
            for ln in BASE.splitlines()
            if not ln.startswith(section) and not (ln.startswith("  ") and _section_of(BASE, ln) == section)
        )
        + f"\n{section}: {value}\n"
    )
    found = codes(text, tmp_path)
    assert "FT0299" not in found
    assert any(c.startswith("FT01") for c in found)


def _section_of(text: str, line: str) -> str:
    current = ""
    for ln in text.splitlines():
        if not ln.startswith(" "):
            current = ln.split(":")[0]
        if ln == line:
            return current
    return ""


@pytest.mark.parametrize(
    ("gpu", "hint"),
    [
        ("A100", "did you mean 'A100-40GB' or 'A100-80GB'?"),
        ("a100-80", "did you mean 'A100-80GB'?"),
        ("A100-80GB-PCIe", "did you mean 'A100-80GB'?"),
        ("RTX4080", None),  # another product, not a typo of RTX-4090
    ],
)
def test_unknown_gpu_suggestions(tmp_path: Path, gpu: str, hint: str | None) -> None:
    spec = load_text(BASE.replace("gpu: cpu", f"gpu: {gpu}"), str(tmp_path / "s.yaml"))
    (d,) = lint_loaded(spec, LintOptions(check_files=False)).diagnostics
    assert d.code == "FT0209"
    if hint:
        assert d.hint == hint
    else:
        assert "did you mean" not in (d.hint or "")
