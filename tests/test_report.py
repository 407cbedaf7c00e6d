"""report.json / report.md / report.html (compiler/report.py) from hand-made metrics: schema, escaping of
untrusted answers, self-containment, the loss chart, and a golden Markdown file."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
from ftspec.compiler.evaluate.acceptance import judge
from ftspec.compiler.evaluate.report import (
    build_report,
    loss_chart,
    md_cell,
    md_code,
    md_inline,
    read_curves,
    render_html,
    render_markdown,
    validate_report,
    write_reports,
)

GOLDEN = Path(__file__).parent / "golden" / "report.md"
EVIL = '<script>alert("x")</script><img src=https://evil.example/p.png> ``` | @everyone'


def metrics_doc() -> dict:
    return {
        "metadata": {"schema_version": 1, "kind": "ftspec-eval-metrics"},
        "models": {"base": "builtin:tiny-llama", "finetuned": "adapter"},
        "measured": {
            "task": "exact_match",
            "regression": "exact_match",
            "format": "json",
            "eval_loss": "nats/token",
            "perplexity": "exp(eval_loss)",
        },
        "counts": {"task": 3, "regression": 2},
        "values": {
            "base": {"task": 0.0, "regression": 1.0, "format": 0.0, "eval_loss": 3.2, "perplexity": 24.5},
            "finetuned": {
                "task": 2 / 3,
                "regression": 0.5,
                "format": 1.0,
                "eval_loss": 0.4,
                "perplexity": 1.49,
            },
        },
        "contamination": {"ngram": 13, "eval_examples": 3, "contaminated": 0, "examples": []},
        "examples": {
            "task": [
                {
                    "index": 0,
                    "prompt": "[user] Convert: name: Ann, age: 3",
                    "reference": '{"name": "Ann", "age": 3}',
                    "base": "Ann 3",
                    "finetuned": '{"name": "Ann", "age": 3}',
                    "base_score": 0.0,
                    "finetuned_score": 1.0,
                },
                {
                    "index": 1,
                    "prompt": "[user] Convert: name: Bo, age: 5",
                    "reference": '{"name": "Bo", "age": 5}',
                    "base": EVIL,
                    "finetuned": '{"name": "Bo", "age": 5}',
                    "base_score": 0.0,
                    "finetuned_score": 1.0,
                },
                {
                    "index": 2,
                    "prompt": "[user] Convert: name: Cy, age: 7",
                    "reference": '{"name": "Cy", "age": 7}',
                    "base": "?",
                    "finetuned": '{"name": "Cy"}',
                    "base_score": 0.0,
                    "finetuned_score": 0.0,
                },
            ],
            "regression": [
                {
                    "index": 0,
                    "prompt": "[user] What is 2+3?",
                    "reference": "5",
                    "base": "5",
                    "finetuned": "5",
                    "base_score": 1.0,
                    "finetuned_score": 1.0,
                },
                {
                    "index": 1,
                    "prompt": "[user] What is 1+1?",
                    "reference": "2",
                    "base": "2",
                    "finetuned": "11",
                    "base_score": 1.0,
                    "finetuned_score": 0.0,
                },
            ],
        },
        "notes": ["lm-eval-harness tasks hellaswag skipped: the lm_eval package is not installed"],
    }


SPEC = {
    "name": "tiny-cpu",
    "model": {"id": "builtin:tiny-llama"},
    "acceptance": [
        {"metric": "task", "min_gain_over_base": 0.3},
        {"metric": "regression", "max_drop_from_base": 0.1},
        {"metric": "format", "min": 0.9},
    ],
}
CURVES = {"train_loss": [[1, 3.0], [2, 2.0], [3, 1.2], [4, 0.9]], "eval_loss": [[2, 2.2], [4, 1.1]]}


def make_report(spec=SPEC, metrics=None):
    metrics = metrics or metrics_doc()
    gate = judge(
        spec["acceptance"],
        metrics["values"],
        measured=metrics["measured"],
        contamination=metrics["contamination"],
    )
    return build_report(
        gate=gate,
        metrics=metrics,
        spec=spec,
        spec_sha256="ab" * 32,
        spec_file="specs/tiny-cpu.yaml",
        run_dir="runs/tiny-cpu",
        finetuned="adapter",
        curves=CURVES,
        run_info={"final_step": 4, "world_size": 2},
    )


def test_report_json_is_schema_valid_and_names_the_failed_rule():
    report = make_report()
    assert validate_report(report) == []
    assert report["status"] == "fail"
    assert report["summary"] == "FAIL: rule 1 (regression)"
    assert [r["status"] for r in report["rules"]] == ["pass", "fail", "pass"]
    regression = report["rules"][1]
    assert (regression["base"], regression["finetuned"], regression["difference"]) == (1.0, 0.5, -0.5)
    # Disagreements come first, so the forgetting example is among those shown.
    shown = [(e["set"], e["index"]) for e in report["examples"]]
    assert ("regression", 1) in shown and ("task", 0) in shown


def test_schema_rejects_a_broken_report():
    report = make_report()
    report["status"] = "maybe"
    del report["rules"][0]["threshold"]
    errors = validate_report(report)
    assert any(e.startswith("status") for e in errors) and any("threshold" in e for e in errors)


def test_html_escapes_answers_and_loads_nothing_external():
    html = render_html(make_report())
    assert "<script" not in html  # the template itself has no script, and the answer's is escaped
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<img" not in html
    external = re.findall(r'(?:src|href)\s*=\s*"(?!#|data:)[^"]*"', html)
    assert external == []
    assert "default-src 'none'" in html  # CSP: even a missed escape could not fetch anything
    # The loss chart: two polylines (train, eval), eval points with tooltips, axis labels.
    assert html.count("<polyline") == 2 and html.count("<circle") == 2
    assert "step 4: eval loss 1.1" in html
    assert "FAIL" in html and "max_drop_from_base" in html


def test_markdown_keeps_untrusted_text_inert():
    assert md_cell("a | b\nc <b>x</b> @team") == r"a \| b c \<b\>x\</b\> \@team"
    block = md_code("x ```` y")
    assert block.startswith("`````text\n") and block.endswith("\n`````")
    md = render_markdown(make_report())
    # The evil answer appears only inside a code block with a longer fence.
    evil_at = md.index('<script>alert("x")</script>')
    fence_open = md.rfind("\n````text\n", 0, evil_at)
    assert fence_open != -1 and md.find("\n````", evil_at) != -1


def test_non_finite_values_are_not_shown_as_unmeasured():
    # null in report.json means "not measured"; a diverged model's NaN loss or infinite perplexity was
    # measured, and both the JSON and the rendered reports must say which.
    spec = {**SPEC, "acceptance": [{"metric": "perplexity", "max": 20}, {"metric": "eval_loss", "max": 5}]}
    metrics = metrics_doc()
    metrics["values"]["finetuned"].update({"perplexity": math.inf, "eval_loss": math.nan})
    report = make_report(spec, metrics)
    assert validate_report(report) == []
    json.dumps(report, allow_nan=False)
    assert report["metrics"]["finetuned"]["perplexity"] == "inf"
    assert report["metrics"]["finetuned"]["eval_loss"] == "nan"
    assert [r["finetuned"] for r in report["rules"]] == ["inf", "nan"]
    md, html = render_markdown(report), render_html(report)
    assert "| 0 | perplexity (exp(eval_loss)) | max | 20 | 24.5 | inf | +inf | ❌ **fail** |" in md
    assert "| 1 | eval_loss (nats/token) | max | 5 | 3.2 | NaN | NaN | ❌ **fail** |" in md
    assert "| perplexity (exp(eval_loss)) | 24.5 | inf | +inf |" in md
    assert ">inf</td>" in html and ">NaN</td>" in html


def test_markdown_code_spans_show_names_verbatim():
    spec = {**SPEC, "name": "my_spec", "model": {"id": "org/model_v2`x"}}
    md = render_markdown(make_report(spec))
    assert "Spec `my_spec`: base ``org/model_v2`x`` vs fine-tuned `adapter`" in md
    assert md_inline("a\nb") == "`a b`"


def test_markdown_golden():
    md = render_markdown(make_report())
    if os.environ.get("FTSPEC_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(md)
    assert md == GOLDEN.read_text()


def test_passing_report_and_written_files(tmp_path):
    spec = {**SPEC, "acceptance": [{"metric": "task", "min_gain_over_base": 0.3}]}
    report = make_report(spec)
    assert report["status"] == "pass" and report["summary"] == "PASS: 1 acceptance check(s) held"
    paths = write_reports(report, tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == ["report.html", "report.json", "report.md"]
    assert json.loads(paths["report.json"].read_text()) == report
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary files left behind


def test_read_curves_skips_bad_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": NaN, "eval_loss": 1.5}\n'
        '{"step": "3", "loss": 1}\n{"step": 4, "loss": 1.0, "eval_loss": 1.2}\n{"step": 5, "lo'
    )
    assert read_curves(path) == {"train_loss": [[1, 2.0], [4, 1.0]], "eval_loss": [[2, 1.5], [4, 1.2]]}
    assert read_curves(tmp_path / "missing.jsonl") == {"train_loss": [], "eval_loss": []}


def test_loss_chart_geometry():
    chart = loss_chart(CURVES)
    xs = [float(p.split(",")[0]) for p in chart["train"].split()]
    ys = [float(p.split(",")[1]) for p in chart["train"].split()]
    assert xs == sorted(xs) and xs[0] == chart["left"] and xs[-1] == chart["right"]
    assert ys == sorted(ys)  # loss falls, so y (downwards in SVG) grows
    assert all(chart["top"] <= y <= chart["bottom"] for y in ys)
    assert loss_chart({"train_loss": [], "eval_loss": []}) is None
    single = loss_chart({"train_loss": [[5, 1.0]], "eval_loss": []})
    assert single is not None and single["train_points"] == 1


@pytest.mark.parametrize("status", ["pass", "fail"])
def test_markdown_headline(status):
    spec = SPEC if status == "fail" else {**SPEC, "acceptance": [SPEC["acceptance"][0]]}
    md = render_markdown(make_report(spec))
    assert md.startswith("## ✅" if status == "pass" else "## ❌")


def _browser() -> str | None:
    import shutil

    return next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium on this machine")
def test_html_report_renders_in_a_headless_browser(tmp_path):
    """Chromium loads the report with no network and no scripts: the DOM it builds holds the rule table
    and the chart, and the screenshot is a real page (the lead looked at one: see the PR note)."""
    import subprocess

    paths = write_reports(make_report(), tmp_path)
    url = paths["report.html"].resolve().as_uri()
    base = [
        _browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1100,1600",
    ]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "Acceptance rules" in dom and "<polyline" in dom and "max_drop_from_base" in dom
    assert "<script>" not in dom  # the escaped answer did not become an element
    shot = tmp_path / "report.png"
    subprocess.run(base + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_chart_never_clips_the_largest_loss():
    chart = loss_chart({"train_loss": [[1, 2.6], [50, 0.6], [300, 0.29]], "eval_loss": [[100, 0.41]]})
    ys = [float(p.split(",")[1]) for p in chart["train"].split()]
    assert min(ys) >= chart["top"] and max(ys) <= chart["bottom"]
    assert float(chart["y_ticks"][-1]["label"]) >= 2.6
