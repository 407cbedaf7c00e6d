"""`ftspec check`: lint first, then data / memory / pins sections; text, JSON, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from ftspec.compiler.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "specs" / "llama3-70b-lora-1gpu.yaml"


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_example_lints_clean(capsys):
    code, out = run(capsys, "lint", str(EXAMPLE))
    assert code == 0, out


def test_example_does_not_fit_and_shows_the_fix(capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    code, out = run(capsys, "check", str(EXAMPLE))
    assert code == 1
    assert "DOES NOT FIT" in out and "FT0310 error" in out
    assert "weights (frozen base)" in out and "#" in out  # component table with plain bars
    assert "adapter.method: qlora" in out and "(fits)" in out
    gpu_line = next(
        i for i, line in enumerate(EXAMPLE.read_text().splitlines(), 1) if line.strip().startswith("gpu:")
    )
    assert f"llama3-70b-lora-1gpu.yaml:{gpu_line}:" in out
    assert "time and cost" in out and "assumes:" in out


def test_json_has_memory_time_cost_pins_and_data(capsys):
    code, out = run(capsys, "check", str(EXAMPLE), "--format", "json")
    body = json.loads(out)
    assert code == 1 and body["status"] == "fail"
    mem = body["memory"]
    assert mem["fits"] is False and mem["gpu_memory_gib"] == 80.0
    assert set(mem["per_gpu"]) == {"allocated_gib", "reserved_gib", "device_gib"}
    assert mem["components_gib"]["weights"] > 100
    assert any(s["fits"] for s in mem["suggestions"]) and all("saves_gib" in s for s in mem["suggestions"])
    assert body["time"]["hours"] > 0 and body["cost"]["total"] > 0
    assert "packages" in body["pins"]
    assert body["data"]["train_examples"] > 0
    assert any(d["code"] == "FT0310" for d in body["diagnostics"])


def test_only_selects_sections(capsys):
    code, out = run(capsys, "check", str(EXAMPLE), "--only", "pins", "--format", "json")
    body = json.loads(out)
    assert code == 0 and "pins" in body and "memory" not in body and "data" not in body


def test_bad_section_name_is_a_usage_error(capsys):
    try:
        main(["check", str(EXAMPLE), "--only", "memroy"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("expected a usage error")


def test_lint_errors_stop_check(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: x\nmodel:\n  id: m\ndataset:\n  train: t.jsonl\nhardware:\n  gpu: A100-80GB\n"
        "training:\n  learning_rte: 1\n"
    )
    code, out = run(capsys, "check", str(bad), "--format", "json")
    body = json.loads(out)
    assert code == 1 and "memory" not in body
    assert any(d["code"] == "FT0103" for d in body["diagnostics"])


def test_unreadable_spec_exits_2(tmp_path, capsys):
    code, _out = run(capsys, "check", str(tmp_path / "missing.yaml"))
    assert code == 2


def test_sarif_and_github_formats(capsys):
    code, out = run(capsys, "check", str(EXAMPLE), "--only", "memory", "--format", "sarif")
    assert code == 1 and json.loads(out)["runs"][0]["results"]
    code, out = run(capsys, "check", str(EXAMPLE), "--only", "memory", "--format", "github")
    assert code == 1 and "::error file=" in out and "FT0310" in out


def test_every_example_spec_checks_without_internal_errors(capsys):
    for spec in sorted((ROOT / "specs").glob("*.yaml")):
        code, out = run(capsys, "check", str(spec), "--only", "memory,pins", "--format", "json")
        assert code in (0, 1), spec
        json.loads(out)


def test_lock_alone_finds_its_spec_and_an_unreadable_lock_exits_2(capsys, tmp_path):
    import shutil

    spec_dir = tmp_path / "proj"
    shutil.copytree(ROOT / "tests" / "fixtures" / "compile", spec_dir)
    spec = spec_dir / "cpu-ddp.yaml"
    assert main(["compile", str(spec), "-o", str(tmp_path / "build")]) == 0
    capsys.readouterr()
    code, out = run(
        capsys, "check", "--lock", str(tmp_path / "build" / "lock.json"), "--only", "pins", "--format", "json"
    )
    assert code == 0 and not [d for d in json.loads(out)["diagnostics"] if d["code"].startswith("FT061")]
    spec.write_text(spec.read_text().replace("learning_rate: 3.0e-3", "learning_rate: 2.0e-3"))
    code, out = run(
        capsys, "check", "--lock", str(tmp_path / "build" / "lock.json"), "--only", "pins", "--format", "json"
    )
    assert "FT0611" in {d["code"] for d in json.loads(out)["diagnostics"]}
    code, out = run(capsys, "check", str(spec), "--lock", str(tmp_path / "missing.json"), "--only", "pins")
    assert code == 2 and "FT0610" in out
    assert main(["check", "--lock", str(tmp_path / "missing.json")]) == 2  # no plan.json beside it
    assert main(["check"]) == 2
