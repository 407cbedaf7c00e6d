"""`# ftspec: ignore CODE` acknowledges a warning on its line; errors cannot be silenced."""

import shutil
from pathlib import Path

from ftspec.compiler.lint.lint import LintOptions, lint_file

ROOT = Path(__file__).resolve().parent.parent


def _tiny(tmp_path: Path, replace: tuple[str, str]) -> Path:
    shutil.copytree(ROOT / "specs" / "data", tmp_path / "data")
    lines = (ROOT / "specs" / "tiny-cpu.yaml").read_text().splitlines()
    hits = [i for i, text in enumerate(lines) if text.startswith(replace[0])]
    assert len(hits) == 1
    lines[hits[0]] = replace[1]  # the whole line, its comment included
    spec = tmp_path / "tiny.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def _codes(spec: Path) -> list[tuple[str, int]]:
    result = lint_file(spec, LintOptions(repo_root=spec.parent))
    return [(d.code, d.line) for d in result.diagnostics]


def test_ignore_comment_silences_only_the_named_warning_on_its_line(tmp_path):
    line = "  learning_rate:"
    spec = _tiny(tmp_path, (line, "  learning_rate: 3.0e-3"))
    assert "FT0237" in [c for c, _ in _codes(spec)]
    spec = _tiny(tmp_path / "b", (line, "  learning_rate: 3.0e-3   # ftspec: ignore FT0238"))
    assert "FT0237" in [c for c, _ in _codes(spec)]  # another code named: still reported
    spec = _tiny(tmp_path / "c", (line, "  learning_rate: 3.0e-3   # ftspec: ignore [FT0101, FT0237]"))
    assert "FT0237" not in [c for c, _ in _codes(spec)]


def test_errors_cannot_be_ignored(tmp_path):
    spec = _tiny(tmp_path, ("  micro_batch_size:", "  micro_batch_size: 0   # ftspec: ignore FT0105"))
    assert "FT0105" in [c for c, _ in _codes(spec)]
