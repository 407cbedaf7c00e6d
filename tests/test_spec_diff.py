"""`ftspec diff`: semantic changes after defaults, and what each one does."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from compile_helpers import FIXTURES, ROOT
from ftspec.compiler.author.spec_diff import diff_specs, to_markdown, to_text

BASE = FIXTURES / "k8s-ddp-2node.yaml"


def _variant(tmp_path: Path, name: str, *replacements: tuple[str, str]) -> Path:
    text = BASE.read_text()
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    shutil.copytree(FIXTURES / "data", tmp_path / "data", dirs_exist_ok=True)
    return path


def test_writing_a_default_is_no_change(tmp_path):
    same = _variant(
        tmp_path, "same.yaml", ("  epochs: 1\n", "  epochs: 1\n  scheduler: cosine\n  seed: 42\n")
    )
    diff = diff_specs(str(BASE), str(same), estimate=False)
    assert diff.identical and not diff.diagnostics
    assert "no semantic changes" in to_text(diff)


def test_changes_with_consequences(tmp_path):
    old = _variant(tmp_path, "old.yaml")
    new = _variant(
        tmp_path,
        "new.yaml",
        ("learning_rate: 1.0e-4", "learning_rate: 1.0e-3"),
        ("micro_batch_size: 2", "micro_batch_size: 4"),
        ("nodes: 2", "nodes: 1"),
    )
    diff = diff_specs(str(old), str(new))
    pointers = [p for p, _, _ in diff.changes]
    assert pointers == ["/hardware/nodes", "/training/learning_rate", "/training/micro_batch_size"]
    text = "\n".join(diff.consequences)
    assert "world size 8 -> 4 processes" in text
    assert "effective batch 64 -> 64" not in text  # 2x micro on half the processes: unchanged
    assert "learning rate x10 (0.0001 -> 0.001): above the LoRA range (<= 0.0005)" in text
    # the examples are ~21 tokens: twice the micro batch adds no visible activation memory once the
    # estimate uses the measured lengths, as REVIEW.md and `ftspec check` do
    assert "memory per GPU" not in text
    md = to_markdown(diff)
    assert md.startswith("### Spec diff:") and "| `/training/learning_rate` | `0.0001` | `0.001` |" in md
    assert "**What changes**" in md


def test_effective_batch_and_cost(tmp_path):
    old = _variant(tmp_path, "old.yaml")
    new = _variant(
        tmp_path,
        "new.yaml",
        ("gradient_accumulation_steps: 4", "gradient_accumulation_steps: 8"),
        ("epochs: 1", "epochs: 200"),
    )
    diff = diff_specs(str(old), str(new))
    text = "\n".join(diff.consequences)
    assert "effective batch 64 -> 128" in text
    assert "time +" in text and "cost +$" in text


def test_git_revision_side(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    spec = _variant(repo, "spec.yaml")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["add", "spec.yaml"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "spec"], cwd=repo, check=True)
    spec.write_text(spec.read_text().replace("r: 16", "r: 32"))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftspec.compiler.cli",
            "diff",
            "git:HEAD:spec.yaml",
            "spec.yaml",
            "--no-estimate",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    assert "/adapter/r" in run.stdout and "16 -> 32" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "diff", "git:nope:spec.yaml", "spec.yaml"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "FT0618" in bad.stdout


def test_invalid_side_is_reported_not_raised(tmp_path):
    bad = _variant(tmp_path, "bad.yaml", ("micro_batch_size: 2", "micro_batch_size: zero"))
    run = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "diff", str(BASE), str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "micro_batch_size" in run.stdout


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_cli_formats(fmt):
    spec = "specs/llama3.1-8b-qlora-24gb.yaml"
    other = "specs/llama3.1-8b-dora-a100.yaml"
    if not (ROOT / spec).exists() or not (ROOT / other).exists():
        pytest.skip("example specs not present")
    run = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", "diff", spec, other, "--format", fmt],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "/adapter/method" in run.stdout and "qlora" in run.stdout


def test_estimate_matches_the_compiled_review(tmp_path):
    """Regression: diff estimated memory without the data check (34 GiB) while REVIEW.md said 18 GiB."""
    from compile_helpers import compile_to

    spec = Path("tests/fixtures/compile/k8s-ddp-2node.yaml")
    result = compile_to(spec, tmp_path / "build")
    assert result.ok
    diff = diff_specs(str(ROOT / spec), str(ROOT / spec))
    assert diff.identical
    assert diff.new.estimate["memory"] == result.plan["estimate"]["memory"]
    assert diff.new.steps["total_steps"] == result.plan["derived"]["total_steps"]


def test_gpu_swap_reports_the_fit_verdict_and_new_lint_errors(tmp_path):
    """Regression: a GPU swap that stops the job fitting said only "time +26.8 min"."""
    old = _variant(tmp_path, "old.yaml")
    new = _variant(tmp_path, "new.yaml", ("gpu: H100-80GB", "gpu: T4"))
    text = "\n".join(diff_specs(str(old), str(new)).consequences)
    assert "memory per GPU unchanged" in text and "does NOT fit" in text and "fitted before" in text
    assert "new lint error FT0206" in text  # bf16 on a T4


def test_steps_scaling_precision_and_small_costs(tmp_path):
    old = _variant(tmp_path, "old.yaml")
    new = _variant(
        tmp_path,
        "new.yaml",
        ("gradient_accumulation_steps: 4", "gradient_accumulation_steps: 2"),
        ("r: 16", "r: 64"),
        ("sequence_len: 1024", "sequence_len: 1024\n  precision: bf16-mixed"),
    )
    text = "\n".join(diff_specs(str(old), str(new)).consequences)
    # 48 examples: effective batch 64 -> 32, one step per epoch either way (ceil), so no steps line
    assert "effective batch 64 -> 32" in text
    assert "LoRA scaling alpha/r 2 -> 0.5" in text
    assert "precision bf16 -> bf16-mixed: fp32 weights, bf16 autocast" in text
    more = _variant(tmp_path, "more.yaml", ("epochs: 1", "epochs: 300"))
    text = "\n".join(diff_specs(str(old), str(more)).consequences)
    assert "optimizer steps 1 -> 300 (1 -> 1 per epoch)" in text
    # small amounts keep their cents instead of rounding to "+$0" or vanishing
    assert re.search(r"cost \+\$\d+\.\d\d \(\$\d+\.\d\d -> \$\d+\.\d\d\)", text), text


def test_empty_mapping_is_no_leaf():
    from ftspec.compiler.author.spec_diff import flatten

    assert flatten({"environment": {"packages": {}, "python": ">=3.10"}}) == {"/environment/python": ">=3.10"}
    assert flatten({}) == {"/": {}}
