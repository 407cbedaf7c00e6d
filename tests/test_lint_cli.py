"""`ftspec lint` and `ftspec codes` end to end: arguments, exit codes, output formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ftspec.compiler.cli import main
from ftspec.compiler.core.diagnostics import catalog

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"
TYPO = CASES / "invalid" / "schema-typo-key" / "spec.yaml"
VALID = CASES / "valid" / "minimal" / "spec.yaml"
WARN = CASES / "invalid" / "epochs-high" / "spec.yaml"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_typo_names_line_column_and_the_right_key(capsys) -> None:
    rc, out, _ = run(["lint", str(TYPO), "--repo-root", str(CASES)], capsys)
    assert rc == 1
    first = out.splitlines()[0]
    assert first == f"{TYPO}:10:3: FT0103 error: unknown key 'learning_rte' in `training`"
    assert "  hint: did you mean 'learning_rate'?" in out.splitlines()
    # the offending line and a caret under column 3
    assert "    10 |   learning_rte: 2.0e-4" in out
    assert "       |   ^" in out
    assert out.rstrip().endswith("1 error")


def test_exit_codes(capsys, tmp_path: Path) -> None:
    assert run(["lint", str(VALID), "--repo-root", str(CASES)], capsys)[0] == 0
    assert run(["lint", str(TYPO), "--repo-root", str(CASES)], capsys)[0] == 1
    # warnings alone pass, unless --strict
    assert run(["lint", str(WARN), "--repo-root", str(CASES)], capsys)[0] == 0
    assert run(["lint", str(WARN), "--repo-root", str(CASES), "--strict"], capsys)[0] == 1
    # the tool could not run: a missing file, a folder without specs, bad arguments
    rc, out, _ = run(["lint", str(tmp_path / "absent.yaml")], capsys)
    assert rc == 2 and "FT0001" in out
    assert run(["lint", str(tmp_path)], capsys)[0] == 2
    rc, _, err = run(["lint", str(VALID), "--repo-root", str(tmp_path / "nope")], capsys)
    assert rc == 2 and "--repo-root" in err
    with pytest.raises(SystemExit) as exc:
        main(["lint", str(VALID), "--format", "xml"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["lint"])
    assert exc.value.code == 2


def test_json_output_shape(capsys) -> None:
    rc, out, _ = run(["lint", str(TYPO), "--repo-root", str(CASES), "--format", "json"], capsys)
    body = json.loads(out)
    assert rc == 1 and body["status"] == "fail"
    (d,) = body["diagnostics"]
    assert set(d) >= {"code", "severity", "message", "file", "line", "column", "pointer", "hint"}
    assert (d["code"], d["line"], d["column"], d["pointer"]) == ("FT0103", 10, 3, "/training/learning_rte")
    rc, out, _ = run(["lint", str(VALID), "--repo-root", str(CASES), "--format", "json"], capsys)
    assert json.loads(out) == {"status": "ok", "diagnostics": []}


def test_github_annotations(capsys) -> None:
    rc, out, _ = run(["lint", str(TYPO), "--repo-root", str(CASES), "--format", "github"], capsys)
    rel = os.path.relpath(TYPO).replace(os.sep, "/")
    assert out.splitlines() == [
        f"::error file={rel},line=10,col=3,title=FT0103::unknown key 'learning_rte' in `training`%0A"
        "did you mean 'learning_rate'?"
    ]
    rc, out, _ = run(["lint", str(VALID), "--repo-root", str(CASES), "--format", "github"], capsys)
    assert rc == 0 and out == ""


def test_several_files_and_folders(capsys) -> None:
    rc, out, _ = run(
        ["lint", str(CASES / "valid"), str(TYPO), "--repo-root", str(CASES), "--format", "json"], capsys
    )
    body = json.loads(out)
    assert rc == 1
    # the remote-code case is valid only with --allow-remote-code
    remote = CASES / "valid" / "remote-code-allowed" / "spec.yaml"
    assert {(d["file"], d["code"]) for d in body["diagnostics"]} == {
        (str(TYPO), "FT0103"),
        (str(remote), "FT0231"),
    }


def test_specs_folder_lints_clean(capsys) -> None:
    rc, out, _ = run(["lint", str(ROOT / "specs"), "--format", "json"], capsys)
    assert rc == 0, out


def test_allow_remote_code_flag(capsys) -> None:
    spec = CASES / "invalid" / "trust-remote-code" / "spec.yaml"
    assert run(["lint", str(spec), "--repo-root", str(CASES)], capsys)[0] == 1
    assert run(["lint", str(spec), "--repo-root", str(CASES), "--allow-remote-code"], capsys)[0] == 0


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_codes_lists_every_catalog_code(capsys, fmt: str) -> None:
    rc, out, _ = run(["codes", "--format", fmt], capsys)
    assert rc == 0
    if fmt == "json":
        listed = [entry["code"] for entry in json.loads(out)]
    elif fmt == "markdown":
        listed = [ln.split("|")[1].strip() for ln in out.splitlines()[2:]]
    else:
        listed = [ln.split()[0] for ln in out.splitlines()]
    assert listed == sorted(catalog())


def test_codes_prefix(capsys) -> None:
    rc, out, _ = run(["codes", "--prefix", "FT02", "--format", "json"], capsys)
    assert {e["code"][:4] for e in json.loads(out)} == {"FT02"}


def _run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=60,
    )


def test_text_is_plain_when_piped_and_colored_only_when_forced() -> None:
    args = ["lint", str(TYPO), "--repo-root", str(CASES)]
    assert "\x1b[" not in _run_cli(args).stdout  # stdout is a pipe here
    assert "\x1b[31;1merror" in _run_cli(args, FORCE_COLOR="1").stdout
    assert "\x1b[" not in _run_cli(args, FORCE_COLOR="1", NO_COLOR="1").stdout


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_color_on_a_terminal_unless_no_color() -> None:
    def on_tty(**env: str) -> str:
        master, slave = os.openpty()
        full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")}
        full_env.update(env)
        try:
            subprocess.run(
                [sys.executable, "-m", "ftspec.compiler.cli", "lint", str(TYPO), "--repo-root", str(CASES)],
                stdout=slave,
                stderr=subprocess.DEVNULL,
                env=full_env,
                timeout=60,
            )
            os.close(slave)
            chunks = []
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode("utf-8", "replace")
        finally:
            os.close(master)

    assert "\x1b[31;1merror" in on_tty()
    assert "\x1b[" not in on_tty(NO_COLOR="1")


def test_pre_commit_hooks_manifest() -> None:
    """The manifest has what pre-commit requires, and its file pattern picks specs, not other YAML."""
    import re

    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert {h["id"] for h in hooks} == {"ftspec-lint", "ftspec-lint-strict"}
    for hook in hooks:
        assert {"id", "name", "entry", "language"} <= set(hook)
        assert hook["entry"].split()[:2] == ["ftspec", "lint"]
        pattern = re.compile(hook["files"])
        assert pattern.search("specs/llama.yaml") and pattern.search("ml/specs/sub/x.yml")
        assert pattern.search("configs/run.ftspec.yaml")
        assert not pattern.search(".github/workflows/ci.yaml") and not pattern.search("specs/data/t.jsonl")
    # what pre-commit runs: the entry followed by the staged file names
    specs = [str(p) for p in sorted((ROOT / "specs").glob("*.yaml"))]
    assert main([*hooks[0]["entry"].split()[1:], *specs]) == 0


# --- regressions found in review ---------------------------------------------------------------------


def _lint_text(tmp_path: Path, body: str):
    from ftspec.compiler.lint.lint import LintOptions, lint_file

    (tmp_path / ".git").mkdir(exist_ok=True)
    (tmp_path / "train.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    path = tmp_path / "spec.yaml"
    path.write_text(body, encoding="utf-8")
    return lint_file(path, LintOptions()).diagnostics


MINIMAL = "version: 1\nname: t\nmodel:\n  id: builtin:tiny-llama\ndataset:\n  train: train.jsonl\n"


def test_did_you_mean_skips_keys_already_written_and_completes_prefixes(tmp_path: Path) -> None:
    diags = _lint_text(tmp_path, MINIMAL + "hardware:\n  gpu: cpu\n  gpus: 8\n  zero: 3\nextra_section: 1\n")
    hints = {d.message.split("'")[1]: d.hint for d in diags if d.code == "FT0103"}
    assert hints["gpus"] == "did you mean 'gpus_per_node'?"  # not 'gpu', which is already there
    assert hints["zero"] == "did you mean 'zero_stage'?"
    assert "did you mean" not in hints["extra_section"]  # not 'version', which is already there


def test_unquoted_version_numbers_get_a_quoting_hint(tmp_path: Path) -> None:
    diags = _lint_text(
        tmp_path,
        MINIMAL + "hardware:\n  gpu: cpu\nenvironment:\n  python: 3.10\n"
        "  packages:\n    torch: 2.8   # pinned\n",
    )
    hints = {d.pointer: d.hint for d in diags if d.code == "FT0101"}
    assert '">=3.10"' in hints["/environment/python"]  # as written, not the float 3.1
    assert '"==2.8.*"' in hints["/environment/packages/torch"]
    name = _lint_text(tmp_path, MINIMAL.replace("name: t", "name: 2024") + "hardware:\n  gpu: cpu\n")
    assert (
        next(d.hint for d in name if d.code == "FT0101")
        == 'quote it: "2024" (YAML reads an unquoted 2024 as a number)'
    )


def test_folder_lint_skips_the_build_and_run_folders_ftspec_writes(tmp_path: Path, capsys) -> None:
    """`ftspec lint .` after `ftspec compile` must not lint build/accelerate.yaml as a spec."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "train.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    (tmp_path / "spec.yaml").write_text(MINIMAL + "hardware:\n  gpu: cpu\n", encoding="utf-8")
    build = tmp_path / "build" / "t"
    build.mkdir(parents=True)
    (build / "plan.json").write_text("{}", encoding="utf-8")
    (build / "accelerate.yaml").write_text("use_cpu: true\n", encoding="utf-8")
    from ftspec.compiler.lint.lint import expand_paths

    assert expand_paths([str(tmp_path)]) == [str(tmp_path / "spec.yaml")]
    rc, out, _ = run(["lint", str(tmp_path)], capsys)
    assert rc == 0 and "accelerate.yaml" not in out
    assert expand_paths([str(build / "accelerate.yaml")]) == [str(build / "accelerate.yaml")]  # named: linted
