"""Reporters: exact text, JSON, GitHub annotation and SARIF output for fixed diagnostics."""

from __future__ import annotations

import io
import json
import os
import pathlib

import pytest
from ftspec.compiler.core import reporters
from ftspec.compiler.core.diagnostics import Diagnostic, Location, make
from ftspec.compiler.core.reporters import emit, to_github, to_json, to_sarif, to_text
from jsonschema import Draft202012Validator

SOURCE = {
    "specs/a.yaml": ["version: 1", "training:", "  learning_rte: 2e-4", "\tgpu: T4"],
}


def lookup(path, line):
    lines = SOURCE.get(path or "", [])
    return lines[line - 1] if line and 0 < line <= len(lines) else None


DIAGS = [
    make(
        "FT0103",
        Location("specs/a.yaml", 3, 3, "/training/learning_rte"),
        key="learning_rte",
        section="`training`",
        hint="did you mean 'learning_rate'?",
    ),
    make("FT0206", Location("specs/a.yaml", 4, 2, "/hardware/gpu"), precision="bf16", gpu="T4", origin=""),
    make("FT0208", Location("specs/a.yaml", 1, 1, "/training/precision"), gpu="A100-80GB"),
]


def test_text_exact() -> None:
    assert to_text(DIAGS, lookup) == "\n".join(
        [
            "specs/a.yaml:3:3: FT0103 error: unknown key 'learning_rte' in `training`",
            "     3 |   learning_rte: 2e-4",
            "       |   ^",
            "  hint: did you mean 'learning_rate'?",
            "specs/a.yaml:4:2: FT0206 error: training.precision is bf16 but T4 has no bfloat16 support",
            "     4 |  gpu: T4",  # a tab is shown as one column, so the caret stays under column 2
            "       |  ^",
            "  hint: use `precision: fp16` (fp32 master weights, fp16 autocast), or a GPU with bf16 "
            "(A10G, L4, A100, H100)",
            "specs/a.yaml:1:1: FT0208 info: training.precision is fp16 on A100-80GB, which supports bf16",
            "     1 | version: 1",
            "       | ^",
            "  hint: bf16 has fp32's range: no loss scaling, no overflow; use `precision: bf16-mixed` unless "
            "you need fp16",
            "2 errors, 1 info",
        ]
    )


def test_text_without_findings_or_source() -> None:
    assert to_text([], lookup) == "no problems"
    lonely = Diagnostic("FT0001", "error", "cannot read file: gone", file="x.yaml")
    assert to_text([lonely], lookup) == "x.yaml: FT0001 error: cannot read file: gone\n1 error"


def test_long_source_lines_are_windowed() -> None:
    line = "x: [" + ", ".join(["item"] * 200) + ", BAD]"
    column = line.index("BAD") + 1
    d = Diagnostic("FT0109", "error", "bad", file="long.yaml", line=1, column=column)
    out = to_text([d], lambda p, n: line).splitlines()
    shown, caret = out[1], out[2]
    assert len(shown) < 150 and shown.startswith("     1 | ...")
    assert shown[caret.index("^")] == "B"  # the caret still points at the column


def test_text_colors_only_when_asked() -> None:
    assert "\x1b[" not in to_text(DIAGS, lookup)
    colored = to_text(DIAGS, lookup, color=True)
    assert "\x1b[31;1merror\x1b[0m" in colored and "\x1b[36;1minfo\x1b[0m" in colored


@pytest.mark.parametrize(
    ("env", "tty", "want"),
    [
        ({}, False, False),
        ({}, True, True),
        ({"NO_COLOR": "1"}, True, False),
        ({"FORCE_COLOR": "1"}, False, True),
        ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False),
        ({"TERM": "dumb"}, True, False),
    ],
)
def test_use_color(monkeypatch, env: dict, tty: bool, want: bool) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    assert reporters._use_color(Stream()) is want


def test_json_exact() -> None:
    body = json.loads(to_json(DIAGS[:1]))
    assert body == {
        "status": "fail",
        "diagnostics": [
            {
                "code": "FT0103",
                "severity": "error",
                "message": "unknown key 'learning_rte' in `training`",
                "file": "specs/a.yaml",
                "line": 3,
                "column": 3,
                "pointer": "/training/learning_rte",
                "hint": "did you mean 'learning_rate'?",
            }
        ],
    }
    assert json.loads(to_json(DIAGS[2:]))["status"] == "ok"  # infos do not fail


def test_github_escapes_and_levels() -> None:
    d = Diagnostic(
        "FT0109", "warning", "50% of a,b:c\nnext", file="dir, x/a:b.yaml", line=2, column=5, hint="fix it"
    )
    assert to_github([d]) == (
        "::warning file=dir%2C x/a%3Ab.yaml,line=2,col=5,title=FT0109::50%25 of a,b:c%0Anext%0Afix it"
    )
    assert to_github(DIAGS[2:]).startswith("::notice ")


# The parts of SARIF 2.1.0 (OASIS, sarif-schema-2.1.0.json) that GitHub code scanning reads, with
# its documented requirements: https://docs.github.com/en/code-security/code-scanning/
# integrating-with-code-scanning/sarif-support-for-code-scanning
_TEXT = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}}}
SARIF_FOR_GITHUB = {
    "type": "object",
    "required": ["version", "runs", "$schema"],
    "properties": {
        "version": {"const": "2.1.0"},
        "$schema": {"type": "string", "pattern": "sarif"},
        "runs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 20,
            "items": {
                "type": "object",
                "required": ["tool", "results"],
                "properties": {
                    "tool": {
                        "type": "object",
                        "required": ["driver"],
                        "properties": {
                            "driver": {
                                "type": "object",
                                "required": ["name", "rules"],
                                "properties": {
                                    "name": {"type": "string", "minLength": 1},
                                    "semanticVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+"},
                                    "rules": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["id", "shortDescription", "fullDescription", "help"],
                                            "properties": {
                                                "id": {"type": "string", "pattern": "^FT\\d{4}$"},
                                                "shortDescription": _TEXT,
                                                "fullDescription": _TEXT,
                                                "help": _TEXT,
                                                "helpUri": {"type": "string", "format": "uri"},
                                                "defaultConfiguration": {
                                                    "type": "object",
                                                    "properties": {
                                                        "level": {
                                                            "enum": ["none", "note", "warning", "error"]
                                                        }
                                                    },
                                                },
                                                "properties": {
                                                    "type": "object",
                                                    "properties": {
                                                        "tags": {"type": "array", "items": {"type": "string"}}
                                                    },
                                                },
                                            },
                                        },
                                    },
                                },
                            }
                        },
                    },
                    "results": {
                        "type": "array",
                        "maxItems": 25000,
                        "items": {
                            "type": "object",
                            "required": ["ruleId", "message", "locations"],
                            "properties": {
                                "ruleId": {"type": "string"},
                                "ruleIndex": {"type": "integer", "minimum": 0},
                                "level": {"enum": ["none", "note", "warning", "error"]},
                                "message": _TEXT,
                                "locations": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": 1000,
                                    "items": {
                                        "type": "object",
                                        "required": ["physicalLocation"],
                                        "properties": {
                                            "physicalLocation": {
                                                "type": "object",
                                                "required": ["artifactLocation", "region"],
                                                "properties": {
                                                    "artifactLocation": {
                                                        "type": "object",
                                                        "required": ["uri"],
                                                        "properties": {
                                                            "uri": {
                                                                "type": "string",
                                                                "pattern": "^[^ \\\\]+$",
                                                            }
                                                        },
                                                    },
                                                    "region": {
                                                        "type": "object",
                                                        "required": ["startLine"],
                                                        "properties": {
                                                            "startLine": {"type": "integer", "minimum": 1},
                                                            "startColumn": {"type": "integer", "minimum": 1},
                                                        },
                                                    },
                                                },
                                            }
                                        },
                                    },
                                },
                            },
                        },
                    },
                    "columnKind": {"enum": ["utf16CodeUnits", "unicodeCodePoints"]},
                },
            },
        },
    },
}


def test_sarif_has_what_github_code_scanning_reads() -> None:
    extra = Diagnostic("FT0001", "error", "cannot read file", file="/outside/repo dir/x.yaml")
    log = json.loads(to_sarif([*DIAGS, extra]))
    errors = sorted(Draft202012Validator(SARIF_FOR_GITHUB).iter_errors(log), key=str)
    assert not errors, [e.message for e in errors]
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    for result in run["results"]:  # ruleIndex points at the rule of the same id
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
    by_rule = {r["id"]: r for r in rules}
    assert by_rule["FT0103"]["defaultConfiguration"]["level"] == "error"
    assert by_rule["FT0208"]["defaultConfiguration"]["level"] == "note"
    assert [r["level"] for r in run["results"]] == ["error", "error", "note", "error"]
    first = run["results"][0]["locations"][0]["physicalLocation"]
    assert first["artifactLocation"] == {"uri": "specs/a.yaml", "uriBaseId": "%SRCROOT%"}
    assert first["region"] == {"startLine": 3, "startColumn": 3}
    # a file outside the working directory becomes an absolute, percent-encoded file URI
    assert run["results"][3]["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "file:///outside/repo%20dir/x.yaml"
    }
    # help text never shows unfilled {placeholders}
    assert all("{" not in r["help"]["text"] for r in rules)


def test_sarif_with_no_findings_is_still_a_valid_log() -> None:
    log = json.loads(to_sarif([]))
    assert not list(Draft202012Validator(SARIF_FOR_GITHUB).iter_errors(log))
    assert log["runs"][0]["results"] == [] and log["runs"][0]["tool"]["driver"]["rules"] == []


def test_emit_writes_one_document_per_format() -> None:
    for fmt in ("json", "sarif"):
        stream = io.StringIO()
        emit(DIAGS, fmt, lookup, stream=stream)
        json.loads(stream.getvalue())
    stream = io.StringIO()
    emit([], "github", lookup, stream=stream)
    assert stream.getvalue() == ""
    stream = io.StringIO()
    emit(DIAGS[:1], "text", lookup, stream=stream, text_extra="report\n")
    assert stream.getvalue().startswith("report\nspecs/a.yaml:3:3: FT0103")


def test_relative_paths_in_annotations(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    inside = str(tmp_path / "specs" / "x.yaml")
    d = Diagnostic("FT0103", "error", "m", file=inside, line=1, column=1)
    assert "file=specs/x.yaml," in to_github([d])
    assert (
        json.loads(to_sarif([d]))["runs"][0]["results"][0]["locations"][0]["physicalLocation"][
            "artifactLocation"
        ]["uri"]
        == "specs/x.yaml"
    )
    assert os.path.isabs(inside)


# --- the real SARIF 2.1.0 schema (OASIS), vendored in tests/fixtures/sarif with its source -------------

SARIF_SCHEMA_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "sarif", "sarif-schema-2.1.0.json")


def _sarif_validator():
    from urllib.parse import urlsplit

    from jsonschema import Draft7Validator, FormatChecker

    checker = FormatChecker()

    # jsonschema checks `uri` only with optional packages installed; check them here with the stdlib so
    # that a space or a missing scheme in an artifact URI fails the test.
    @checker.checks("uri")
    def _uri(value: object) -> bool:
        return not isinstance(value, str) or (bool(urlsplit(value).scheme) and " " not in value)

    @checker.checks("uri-reference")
    def _uri_reference(value: object) -> bool:
        return not isinstance(value, str) or (" " not in value and "\\\\" not in value)

    with open(SARIF_SCHEMA_FILE, encoding="utf-8") as fh:
        schema = json.load(fh)
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema, format_checker=checker)


def _cli_sarif(args: list[str], cwd: str) -> dict:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "ftspec.compiler.cli", *args, "--format", "sarif"],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    assert out.returncode in (0, 1), out.stderr[-2000:]
    return json.loads(out.stdout)


def test_sarif_validates_against_the_oasis_schema(tmp_path) -> None:
    """Lint and check output (many codes, a path with spaces, files outside the working directory)
    is valid SARIF 2.1.0 by the OASIS schema itself, not only by the subset GitHub reads."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = tmp_path / "my specs"
    folder.mkdir()
    (tmp_path / ".git").mkdir()
    (folder / "typo spec.yaml").write_text(
        "version: 1\nname: Bad_Name\nmodel:\n  id: meta-llama/Llama-3.1-8B\n  revison: x\n"
        "dataset:\n  train: missing.jsonl\n  eval_spilt: 0.1\ntraining:\n  learning_rte: 1\n"
        "hardware:\n  gpu: T4\n",
        encoding="utf-8",
    )
    validator = _sarif_validator()
    logs = [
        _cli_sarif(["lint", str(folder / "typo spec.yaml")], cwd=str(tmp_path)),  # relative URI with %20
        _cli_sarif(["lint", str(folder / "typo spec.yaml")], cwd=root),  # outside the cwd: file:// URI
        _cli_sarif(["lint", "specs/"], cwd=root),  # clean: no results
        _cli_sarif(["check", "specs/llama3-70b-lora-1gpu.yaml", "--only", "memory,pins"], cwd=root),
        json.loads(to_sarif([*DIAGS, Diagnostic("FT0001", "error", "cannot read", file="/x y/z.yaml")])),
    ]
    dora = tmp_path / "dora.yaml"
    dora.write_text(
        (pathlib.Path(root) / "specs" / "llama3.1-8b-dora-a100.yaml")
        .read_text()
        .replace('peft: ">=0.18,<0.22"', 'peft: "==0.8.2"')
    )
    (tmp_path / "data").symlink_to(pathlib.Path(root) / "specs" / "data")
    logs.append(_cli_sarif(["check", str(dora), "--only", "pins"], cwd=str(tmp_path)))
    for log in logs:
        errors = sorted(validator.iter_errors(log), key=lambda e: list(e.absolute_path))
        assert not errors, [(list(e.absolute_path), e.message) for e in errors[:5]]
    uris = {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        for r in logs[0]["runs"][0]["results"]
    }
    assert uris == {"my%20specs/typo%20spec.yaml"}
    outside = logs[1]["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert outside["uri"].startswith("file:///") and "uriBaseId" not in outside
    assert {r["ruleId"] for r in logs[0]["runs"][0]["results"]} >= {"FT0103", "FT0106", "FT0230"}
    assert all(r["level"] != "error" for r in logs[2]["runs"][0]["results"])  # the examples lint clean
    assert "FT0310" in {r["ruleId"] for r in logs[3]["runs"][0]["results"]}
    # a pin too old for a feature names the pin's line and, as a related location, the feature's line
    conflict = next(r for r in logs[5]["runs"][0]["results"] if r["ruleId"] == "FT0403")
    dora_line = dora.read_text().splitlines().index("  dora: true") + 1
    assert conflict["relatedLocations"][0]["physicalLocation"]["region"]["startLine"] == dora_line
    assert conflict["locations"][0]["physicalLocation"]["region"]["startLine"] != dora_line


def test_paths_relative_to_the_github_workspace(tmp_path, monkeypatch) -> None:
    """A job that runs ftspec from a sub-folder (`working-directory: ml/`) still annotates the file
    by its path in the repository, not by its path from the working directory."""
    (tmp_path / "ml" / "specs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "ml")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    d = Diagnostic("FT0103", "error", "m", file="specs/x.yaml", line=1, column=1)
    assert "file=ml/specs/x.yaml," in to_github([d])
    assert (
        json.loads(to_sarif([d]))["runs"][0]["results"][0]["locations"][0]["physicalLocation"][
            "artifactLocation"
        ]["uri"]
        == "ml/specs/x.yaml"
    )
    monkeypatch.delenv("GITHUB_WORKSPACE")
    assert "file=specs/x.yaml," in to_github([d])
