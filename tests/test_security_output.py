"""Security review V5/V6/V10: every string is escaped for the sink that writes it (terminal, GitHub
workflow commands, Markdown); JSON keeps the raw strings."""

from __future__ import annotations

import io
import json

from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.core.reporters import emit, to_text

KEY = "bog\n::error file=README.md,line=1::INJECTED\x1b[2K\x1b[1Gno problems"


def _diag() -> Diagnostic:
    return Diagnostic(
        "FT0103", "error", f"unknown key '{KEY}' in the top level", "s.yaml", 2, 1, hint="\x1b]0;T\x07"
    )


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


REGEX = (
    "(?s).*|\n## INJECTED <img src=x onerror=alert(1)> [click](https://evil.example) | fake | cell |\n<!--"
)


def test_report_md_escapes_the_measured_label():
    """V6: evaluation.format.regex reached report.md raw as the "measured" label."""
    from ftspec.compiler.evaluate.report import render_markdown
    from test_report import make_report, metrics_doc

    metrics = metrics_doc()
    metrics["measured"]["format"] = "json + regex " + REGEX
    md = render_markdown(make_report(metrics=metrics))
    import re

    assert "\n## INJECTED" not in md  # the newline did not start a heading
    lines = [ln for ln in md.splitlines() if "INJECTED" in ln]
    assert len(lines) == 2  # the rules table and the metrics table, each one row
    for line in lines:
        assert re.search(r"(?<!\\)[<>\[\]!]", line) is None, line  # every <, >, [, ], ! is escaped


def test_review_md_escapes_links_and_images():
    """V10: description and a local config.json's model_type kept markdown images and links."""
    from ftspec.compiler.compile.review import md

    shown = md("x ![px](https://evil.example/p.png) [approve](https://evil.example) <!-- llamaX[l](http://e)")
    for raw in ("<!--", "![", "](", "[approve]"):
        assert raw not in shown, raw


def test_extreme_metric_values_do_not_crash_the_report(tmp_path):
    """D17: a step of 10**400 or losses of +-1e308 raised OverflowError (internal error, exit 2)."""
    from ftspec.compiler.evaluate.report import loss_chart, read_curves

    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "loss": 1e308}\n{"step": 2, "loss": -1e308}\n'
        f'{{"step": {10**400}, "loss": 1.5}}\n{{"step": 3, "loss": 1e400}}\n{{"step": 4, "loss": 1.0}}\n'
    )
    curves = read_curves(path)
    assert [s for s, _ in curves["train_loss"]] == [4]  # the out-of-range points are skipped
    assert loss_chart(curves) is not None


def test_the_import_hint_command_is_one_quoted_shell_word(tmp_path):
    """V7: `org/ds$(touch PWNED)` or a `');...` payload ran when the user pasted the FT0904 hint."""
    import shlex
    import subprocess
    import sys

    from ftspec.compiler.author.importers.common import hub_export_command

    stub = tmp_path / "datasets.py"  # stands in for the datasets package: records what it was asked
    stub.write_text(
        "import json, sys\n"
        "class _D:\n    def to_json(self, p): print(json.dumps(self.args))\n"
        "def load_dataset(*a, **k):\n    d = _D(); d.args = [list(a), k]; return d\n"
    )
    for evil in ("org/ds$(touch PWNED_sh)", "org/ds2'); __import__('os').system('touch PWNED_py'); print('"):
        command = hub_export_command(evil, None, "train", "data/x.jsonl")
        assert "PWNED" not in command or command.endswith("export it by hand")
    command = hub_export_command("org/ds", "sub", "train", "data/o'd.jsonl")
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"] and len(argv) == 3
    done = subprocess.run(
        [sys.executable, "-c", argv[2]], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == [["org/ds", "sub"], {"split": "train"}]
    # even a hub id with a shell metacharacter it allows (none today) would stay one quoted word
    assert shlex.split(hub_export_command("org/a.b-c_d", None, "va$(x)", "p"))[2].count("$(x)") == 1
    assert not list(tmp_path.glob("PWNED*"))


def test_diff_rev_cannot_be_a_git_option(tmp_path):
    """V9: `git:--output=o:/../../f` made `git show` write its output to a file outside the repo."""
    from ftspec.compiler.author.spec_diff import load_side

    spec, diags = load_side("git:--output=o:/../../PWNED_diff", cwd=tmp_path)
    assert spec is None and [d.code for d in diags] == ["FT0618"]
    assert not list(tmp_path.parent.glob("PWNED_diff")) and not list(tmp_path.glob("**/PWNED_diff"))


def test_forty_identical_findings_are_shown_three_times_then_counted():
    """User audit: check printed 40 identical FT0542 errors in full."""
    same = [Diagnostic("FT0542", "error", f"example {n} truncated", "d.jsonl", n, 1) for n in range(1, 41)]
    other = Diagnostic("FT0230", "error", "missing", "s.yaml", 3, 1)
    out = to_text([*same, other], lambda *_: None)
    assert (
        out.count("FT0542 error: example") == 3
        and "... and 37 more FT0542 errors like this in d.jsonl" in out
    )
    assert "at lines 4, 5, 6" in out and "FT0230" in out and out.endswith("41 errors")
    assert to_text(same[:10], lambda *_: None).count("FT0542 error: example") == 10  # few: all shown
