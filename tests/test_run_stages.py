"""`ftspec run` hands the right arguments to each stage (stages stubbed: no training here)."""

from pathlib import Path

import pytest
from ftspec.compiler import cli
from ftspec.compiler.verbs import run as run_verb

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_overwrite_reaches_launch_and_nothing_else(monkeypatch, tmp_path, flag):
    calls: list[list[str]] = []

    def fake_execute(name, cmd, *, capture, log_dir):
        calls.append(cmd[3:])  # drop "python -m ftspec.compiler.cli"
        return 0, "no problems\n"

    def fake_in_process(name, args, build_dir, log_dir):  # lint, check, compile: their front doors
        calls.append([name])
        return 0, "no problems", ""

    monkeypatch.setattr(run_verb, "_execute", fake_execute)
    monkeypatch.setattr(run_verb, "_in_process", fake_in_process)
    monkeypatch.setattr(run_verb, "_run_dir", lambda build_dir: None)  # evaluate then stops with exit 2
    code = cli.main(["run", str(ROOT / "specs" / "tiny-cpu.yaml"), "-o", str(tmp_path / "b"), *flag])
    assert code == 2
    verbs = {c[0]: c for c in calls}
    assert list(verbs) == ["lint", "check", "compile", "launch"]
    assert ("--overwrite" in verbs["launch"]) == bool(flag)
    assert all("--overwrite" not in c for v, c in verbs.items() if v != "launch")
