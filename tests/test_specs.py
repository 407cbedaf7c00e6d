"""Every example spec in specs/ lints clean and tells editors where its schema is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ftspec.compiler.core.resolve import resolve
from ftspec.compiler.lint.lint import LintOptions, lint_file

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
# The five realistic specs of issue 2: these must produce no finding at all, not even a warning.
REALISTIC = {
    "llama3.1-8b-qlora-24gb.yaml": ("qlora", "RTX-4090", 1),
    "llama3.1-8b-dora-a100.yaml": ("lora", "A100-80GB", 1),
    "llama3.1-70b-qlora-80gb.yaml": ("qlora", "H100-80GB", 1),
    "llama3.1-70b-lora-zero3-8xh100.yaml": ("lora", "H100-80GB", 8),
    "qwen2.5-7b-full-fsdp-2node.yaml": ("full", "A100-80GB", 16),
}


def test_the_five_realistic_specs_exist() -> None:
    assert set(REALISTIC) <= {p.name for p in SPECS}


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_spec_lints_clean(path: Path) -> None:
    result = lint_file(path, LintOptions(repo_root=ROOT))
    found = [f"{d.code} {d.line}:{d.column} {d.message}" for d in result.diagnostics]
    if path.name in REALISTIC:
        assert found == []
    else:
        assert not [d for d in result.diagnostics if d.severity == "error"], found


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_spec_names_its_schema_for_editors(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/spec.v1.schema.json"
    assert (path.parent / "../schemas/spec.v1.schema.json").resolve().is_file()


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_realistic_spec_says_what_its_name_says(name: str) -> None:
    method, gpu, devices = REALISTIC[name]
    result = lint_file(ROOT / "specs" / name, LintOptions(repo_root=ROOT))
    spec = resolve(result.spec.data)
    assert spec["adapter"]["method"] == method
    assert spec["hardware"]["gpu"] == gpu
    assert spec["hardware"]["gpus_per_node"] * spec["hardware"]["nodes"] == devices
    if name.startswith("llama3.1-70b-lora-zero3"):
        assert (spec["hardware"]["strategy"], spec["hardware"]["zero_stage"]) == ("deepspeed", 3)
    if name.startswith("qwen2.5-7b-full-fsdp"):
        assert (spec["hardware"]["strategy"], spec["hardware"]["nodes"]) == ("fsdp", 2)
    if name == "llama3.1-8b-dora-a100.yaml":
        assert spec["adapter"]["dora"] is True


def test_example_data_is_json_lines() -> None:
    for path in sorted((ROOT / "specs" / "data").glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert isinstance(json.loads(line), dict), f"{path.name}:{number}"
