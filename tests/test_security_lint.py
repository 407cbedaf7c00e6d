"""Security review findings that need the file system at test time (FIFOs, devices, symlinks made on
the fly, folder mode) rather than a committed case under tests/cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ftspec.compiler.lint.lint import LintOptions, expand_paths, lint_file

MINIMAL = """version: 1
name: case
model:
  id: builtin:tiny-llama
dataset:
  train: {train}
hardware:
  gpu: cpu
"""

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")


def _repo(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / ".git").mkdir()
    return tmp_path


def _codes(path: Path, root: Path) -> list[str]:
    return [d.code for d in lint_file(path, LintOptions(repo_root=root)).diagnostics]


@needs_fifo
def test_a_fifo_as_data_is_not_a_regular_file_and_never_opened(tmp_path):
    root = _repo(tmp_path)
    os.mkfifo(root / "train.jsonl")
    (root / "spec.yaml").write_text(MINIMAL.format(train="train.jsonl"))
    assert _codes(root / "spec.yaml", root) == ["FT0256"]  # returns at once: opening would block


@needs_fifo
def test_a_fifo_as_the_spec_is_refused_without_blocking(tmp_path):
    root = _repo(tmp_path)
    os.mkfifo(root / "spec.yaml")
    result = lint_file(root / "spec.yaml", LintOptions(repo_root=root))
    assert [d.code for d in result.diagnostics] == ["FT0001"]
    assert "FIFO" in result.diagnostics[0].message


def test_folder_mode_never_prints_a_symlinked_spec_outside_the_repo(tmp_path):
    """V1: the README's `ftspec lint specs/` in CI, with a committed link to a secret on the runner."""
    secret = tmp_path / "outside" / "config.json"
    secret.parent.mkdir()
    secret.write_text('{"auths": {"ghcr.io": {"auth": "dXNlcjpnaHBfU0VDUkVU"}}}\n')
    root = _repo(tmp_path / "repo")
    (root / "specs").mkdir()
    (root / "specs" / "docker.yaml").symlink_to(secret)
    (root / ".fake").mkdir()  # the review's stand-in: a hidden file of the checkout, linked as a spec
    (root / ".fake" / "config.json").write_text('{"auths": {"x": {"auth": "dXNlcjpnaHBfU0VDUkVU"}}}\n')
    (root / "specs" / "hidden.yaml").symlink_to("../.fake/config.json")
    (root / "specs" / "alias.yaml").symlink_to("ok.yaml")  # a link to another spec of the folder: linted
    (root / "specs" / "ok.yaml").write_text(MINIMAL.format(train="train.jsonl"))
    (root / "specs" / "train.jsonl").write_text('{"messages": []}\n')
    names = ("alias.yaml", "docker.yaml", "hidden.yaml", "ok.yaml")
    assert expand_paths([str(root / "specs")]) == [str(root / "specs" / n) for n in names]
    for fmt in ("text", "github", "sarif", "json"):
        done = subprocess.run(
            [sys.executable, "-m", "ftspec.compiler.cli", "lint", "specs", "--format", fmt],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = done.stdout + done.stderr
        assert "FT0013" in out and "auths" not in out and "dXNlcjpn" not in out, fmt
        assert done.returncode == 1, fmt
        if fmt == "json":
            refused = {
                Path(d["file"]).name for d in json.loads(done.stdout)["diagnostics"] if d["code"] == "FT0013"
            }
            assert refused == {"docker.yaml", "hidden.yaml"}  # alias.yaml -> ok.yaml is linted as a spec


def test_a_symlink_inside_the_repo_is_still_read(tmp_path):
    root = _repo(tmp_path)
    (root / "real.yaml").write_text(MINIMAL.format(train="train.jsonl"))
    (root / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    (root / "link.yaml").symlink_to(root / "real.yaml")
    assert "FT0013" not in _codes(root / "link.yaml", root)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_model_json_linked_to_dev_zero_is_not_read_without_bound(tmp_path):
    """D6: tokenizer_config.json -> /dev/zero gave a MemoryError in `ftspec check` (2.7 GB)."""
    from ftspec.compiler.dataset.chat_templates import model_template, read_special_tokens

    (tmp_path / "tokenizer_config.json").symlink_to("/dev/zero")
    (tmp_path / "special_tokens_map.json").symlink_to("/dev/zero")
    (tmp_path / "chat_template.jinja").symlink_to("/dev/zero")
    assert read_special_tokens(tmp_path) == {}
    assert model_template(tmp_path) is None


@needs_fifo
def test_bounded_reads_refuse_fifos_without_blocking(tmp_path):
    from ftspec.compiler.core.paths import UnsafeRead, read_bounded

    os.mkfifo(tmp_path / "f")
    with pytest.raises(UnsafeRead, match="FIFO"):
        read_bounded(tmp_path / "f", 100)
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(UnsafeRead, match="larger"):
        read_bounded(tmp_path / "big", 100)
    assert read_bounded(tmp_path / "big", 101) == b"x" * 101


def test_source_lines_of_a_data_link_out_of_the_repo_are_never_shown(tmp_path):
    """V4: `check` printed /etc/passwd's lines as the source of FT0502 findings."""
    from ftspec.compiler.verbs.common import SourceCache

    secret = tmp_path / "outside.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    root = _repo(tmp_path / "repo")
    (root / "passwd.jsonl").symlink_to(secret)
    (root / "own.jsonl").write_text("not json\n")
    sources = SourceCache()
    assert sources(str(root / "passwd.jsonl"), 1) is None
    assert sources(str(root / "own.jsonl"), 1) == "not json"


@pytest.mark.parametrize(
    "template",
    [
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "{{ ('a' * 1000000000)|length }}",
        "{% for a in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        "{{ 10 ** 100000 }}",
    ],
    ids=["nested-loops", "huge-string", "huge-output", "huge-power"],
)
def test_a_hostile_chat_template_is_stopped_by_its_budget(template):
    """D7: nested range() loops hung `ftspec check`; 'a' * 10**9 cost 1 GB per render."""
    import time

    from ftspec.compiler.dataset.chat_templates import TemplateError, render

    started = time.monotonic()
    with pytest.raises(TemplateError):
        render(template, [{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 15


@needs_fifo
def test_compile_force_never_opens_a_fifo_data_file(tmp_path):
    """D12: `compile --force` hung on a FIFO data path (lint called it "does not exist")."""
    from ftspec.compiler.compile.compile import CompileOptions, compile_spec

    root = _repo(tmp_path)
    os.mkfifo(root / "train.jsonl")
    (root / "spec.yaml").write_text(MINIMAL.format(train="train.jsonl"))
    options = CompileOptions(lint=LintOptions(repo_root=root), force=True)
    result = compile_spec(str(root / "spec.yaml"), options, build_dir=root / "build")  # returns: no hang
    assert not result.ok and {"FT0256", "FT0604"} <= {d.code for d in result.diagnostics}
