"""Security review V5/V6/V10: every string is escaped for the sink that writes it (terminal, GitHub
workflow commands, Markdown); JSON keeps the raw strings."""

from __future__ import annotations

import io
import json

from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.core.reporters import emit, to_text

KEY = "bog\n::error file=README.md,line=1::INJECTED\x1b[2K\x1b[1Gno problems"


def _diag() -> Diagnostic:
    return Diagnostic("FT0103", "error", f"unknown key '{KEY}' in the top level", "s.yaml", 2, 1, hint="\x1b]0;T\x07")


def _lines(text: str) -> list[str]:
    return text.split("\n")


def test_text_output_escapes_controls_and_never_starts_a_workflow_command():
    source = {("s.yaml", 2): f'"{KEY}": 1'}
    out = to_text([_diag()], lambda f, n: source.get((f, n)))
    assert "\x1b" not in out and "\x07" not in out
    assert not any(line.lstrip().startswith("::") for line in _lines(out))
    assert "bog\\n::error" in out and "\\x1b[2K" in out


def test_a_report_block_cannot_inject_commands_or_escapes():
    stream = io.StringIO()
    sample = "user: hi\n::add-mask::Convert\n\x1b]0;TITLE\x07\x1b[2J<|im_end|>"
    emit([], "text", lambda *_: None, text_extra=sample, stream=stream)
    out = stream.getvalue()
    assert "\x1b" not in out and not any(line.lstrip().startswith("::") for line in _lines(out))
    assert "::add-mask::Convert" in out  # still shown, just defused


def test_github_and_json_formats_keep_their_own_escaping():
    stream = io.StringIO()
    emit([_diag()], "github", lambda *_: None, stream=stream)
    assert len(stream.getvalue().strip().split("\n")) == 1 and "%0A::error" in stream.getvalue()
    stream = io.StringIO()
    emit([_diag()], "json", lambda *_: None, stream=stream)
    assert KEY in json.loads(stream.getvalue())["diagnostics"][0]["message"]  # raw in JSON
