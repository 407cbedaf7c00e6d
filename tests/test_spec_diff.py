"""`ftspec diff`: semantic changes after defaults, and what each one does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from compile_helpers import FIXTURES, ROOT
from ftspec.compiler.spec_diff import diff_specs, to_markdown, to_text

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
    same = _variant(tmp_path, "same.yaml", ("  epochs: 1\n", "  epochs: 1\n  scheduler: cosine\n  seed: 42\n"))
    diff = diff_specs(str(BASE), str(same), estimate=False)
    assert diff.identical and not diff.diagnostics
    assert "no semantic changes" in to_text(diff)


def test_changes_with_consequences(tmp_path):
    old = _variant(tmp_path, "old.yaml")
    new = _variant(tmp_path, "new.yaml", ("learning_rate: 1.0e-4", "learning_rate: 1.0e-3"),
                   ("micro_batch_size: 2", "micro_batch_size: 4"), ("nodes: 2", "nodes: 1"))
    diff = diff_specs(str(old), str(new))
    pointers = [p for p, _, _ in diff.changes]
    assert pointers == ["/hardware/nodes", "/training/learning_rate", "/training/micro_batch_size"]
    text = "\n".join(diff.consequences)
    assert "world size 8 -> 4 processes" in text
    assert "effective batch 64 -> 64" not in text  # 2x micro on half the processes: unchanged
    assert "learning rate x10 (0.0001 -> 0.001): above the LoRA range (<= 0.0005)" in text
    assert "memory per GPU +" in text  # a bigger micro batch costs activation memory
    md = to_markdown(diff)
    assert md.startswith("### Spec diff:") and "| `/training/learning_rate` | `0.0001` | `0.001` |" in md
    assert "**What changes**" in md


def test_effective_batch_and_cost(tmp_path):
    old = _variant(tmp_path, "old.yaml")
    new = _variant(tmp_path, "new.yaml", ("gradient_accumulation_steps: 4", "gradient_accumulation_steps: 8"),
                   ("epochs: 1", "epochs: 200"))
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
    run = subprocess.run([sys.executable, "-m", "ftspec.compiler.cli", "diff", "git:HEAD:spec.yaml", "spec.yaml",
                          "--no-estimate"], cwd=repo, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr + run.stdout
    assert "/adapter/r" in run.stdout and "16 -> 32" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "ftspec.compiler.cli", "diff", "git:nope:spec.yaml", "spec.yaml"],
                         cwd=repo, capture_output=True, text=True)
    assert bad.returncode == 2 and "FT0618" in bad.stdout


def test_invalid_side_is_reported_not_raised(tmp_path):
    bad = _variant(tmp_path, "bad.yaml", ("micro_batch_size: 2", "micro_batch_size: zero"))
    run = subprocess.run([sys.executable, "-m", "ftspec.compiler.cli", "diff", str(BASE), str(bad)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "micro_batch_size" in run.stdout


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_cli_formats(fmt):
    spec = "specs/llama3.1-8b-qlora-24gb.yaml"
    other = "specs/llama3.1-8b-dora-a100.yaml"
    if not (ROOT / spec).exists() or not (ROOT / other).exists():
        pytest.skip("example specs not present")
    run = subprocess.run([sys.executable, "-m", "ftspec.compiler.cli", "diff", spec, other, "--format", fmt],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "/adapter/method" in run.stdout and "qlora" in run.stdout
