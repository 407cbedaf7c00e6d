"""benchmarks/datacheck_speed.py's headline file: multi-line records with escapes and non-ASCII that the
data check finds clean (so the benchmark times the check, not its error reporting), and the fast path
agrees with the per-record path on them (duplicates included)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location(
        "datacheck_speed", ROOT / "benchmarks" / "datacheck_speed.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(folder: Path, monkeypatch, fast: str) -> dict:
    from ftspec.compiler.check.data.datacheck import check_data
    from ftspec.compiler.core.loader import load_spec
    from ftspec.compiler.core.resolve import resolve

    monkeypatch.setenv("FTSPEC_DATA_FAST", fast)
    monkeypatch.setenv("FTSPEC_DATA_WORKERS", "1")
    spec = load_spec(str(folder / "spec.yaml"))
    report = check_data(spec, resolve(spec.data))
    errors = [d for d in report.diagnostics if d.severity == "error"]
    return {
        "records": report.summary["records"]["train"],
        "dup": report.summary["duplicates"]["exact"],
        "errors": errors,
    }


def test_multiline_file_has_escapes_and_non_ascii_and_checks_clean(tmp_path, monkeypatch):
    bench = _bench()
    data = tmp_path / "train.jsonl"
    bench.generate(data, 3000, multiline=True)
    text = data.read_text(encoding="utf-8")
    assert "\\n" in text and '\\"' in text and "\\t" in text and "\\\\" in text
    assert not text.isascii()
    assert len(text.splitlines()) == 3000
    json.loads(text.splitlines()[0])
    (tmp_path / "spec.yaml").write_text(bench.SPEC.format(train=data.name, dedup="exact"), encoding="utf-8")
    fast = _check(tmp_path, monkeypatch, "1")
    slow = _check(tmp_path, monkeypatch, "0")
    assert fast["records"] == slow["records"] == 3000
    assert fast["errors"] == [] and slow["errors"] == []
    assert fast["dup"] == slow["dup"] > 0
