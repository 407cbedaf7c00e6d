"""`ftspec init`: non-interactive for three hardware profiles gives specs that lint, fit and compile;
the data is inspected; bad answers are diagnostics; prompts are asked on a terminal."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from ftspec.compiler.author.init_spec import InitAnswers, build, inspect_data
from ftspec.compiler.cli import main
from ftspec.compiler.core.loader import load_spec
from ftspec.compiler.core.resolve import resolve
from ftspec.compiler.lint.lint import LintOptions, lint_file

PROFILES = [
    # (model, gpu, gpus, method, strategy) for examples of ~5,500 tokens (p95): 8B on a 24 GB card needs
    # QLoRA, on an 80 GB card LoRA fits, 70B in 16 bits needs sharding across 8 GPUs
    ("meta-llama/Llama-3.1-8B-Instruct", "RTX-4090", 1, "qlora", None),
    ("meta-llama/Llama-3.1-8B-Instruct", "A100-80GB", 1, "lora", None),
    ("meta-llama/Llama-3.1-70B-Instruct", "H100-80GB", 8, "lora", "fsdp"),
]


def _write_data(path: Path, n: int = 600, words: tuple[int, int] = (200, 1500)) -> Path:
    rng = random.Random(1)
    vocab = ["alpha", "beta", "gamma", "delta", "name", "age"]
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            question = " ".join(rng.choice(vocab) for _ in range(rng.randint(*words)))
            answer = "answer " * rng.randint(50, 300)
            fh.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": answer},
                        ]
                    }
                )
                + "\n"
            )
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    _write_data(tmp_path / "data" / "train.jsonl", words=(1500, 4000))
    return tmp_path


@pytest.mark.parametrize("model,gpu,gpus,method,strategy", PROFILES, ids=[p[1] for p in PROFILES])
def test_profiles_lint_fit_and_compile(repo, model, gpu, gpus, method, strategy, monkeypatch):
    monkeypatch.chdir(repo)
    spec = repo / f"{gpu.lower()}.yaml"
    rc = main(
        [
            "init",
            "--non-interactive",
            "--model",
            model,
            "--data",
            "data/train.jsonl",
            "--gpu",
            gpu,
            "--gpus",
            str(gpus),
            "--metric",
            "f1",
            "-o",
            str(spec),
        ]
    )
    assert rc == 0
    lint = lint_file(spec, LintOptions(repo_root=repo))
    assert not [d for d in lint.diagnostics if d.severity == "error"], lint.diagnostics
    data = load_spec(spec).data
    assert data["adapter"]["method"] == method
    assert data["hardware"].get("strategy") == strategy
    assert data["adapter"]["r"] == 16 and data["adapter"]["alpha"] == 16 and data["adapter"]["dora"] is True
    assert data["adapter"]["target_modules"] == "all-linear" and data["training"]["learning_rate"] == 2e-4
    assert data["training"]["epochs"] == 3  # 600 examples: the guides' 3 passes
    assert data["dataset"] == {"format": "chatml", "train": "data/train.jsonl", "eval_split": 0.1}
    assert data["evaluation"] == {"task": {"metric": "f1"}}
    assert data["acceptance"] == [{"metric": "task", "min_gain_over_base": 0.05}]
    assert data["training"]["sequence_len"] % 256 == 0 and data["training"]["sequence_len"] >= 512
    text = spec.read_text()
    assert "# the guides' starting rank" in text  # each choice says why

    from ftspec.compiler.check.feasibility import assess

    loaded = load_spec(spec)
    assert assess(loaded, resolve(loaded.data)).fits is True

    build_dir = repo / f"build-{gpu}"
    assert main(["compile", str(spec), "-o", str(build_dir), "--repo-root", str(repo)]) == 0
    assert (build_dir / "plan.json").is_file()


def test_short_data_keeps_lora_on_a_24gb_card(tmp_path):
    _write_data(tmp_path / "short.jsonl", words=(20, 200))
    result = build(
        InitAnswers(
            model="meta-llama/Llama-3.1-8B-Instruct",
            data=str(tmp_path / "short.jsonl"),
            gpu="RTX-4090",
            output=tmp_path / "spec.yaml",
        )
    )
    assert result.values["/adapter/method"][0] == "lora"
    assert result.values["/training/gradient_checkpointing"][0] is True
    assert result.estimate["fits"] is True


def test_inspect_data_counts_and_lengths(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        "\n".join(json.dumps({"instruction": "x" * 40, "input": "", "output": "y" * 400}) for _ in range(10))
        + "\n"
    )
    summary, diags = inspect_data(path, "a.jsonl")
    assert diags == []
    assert (summary.format, summary.examples) == ("alpaca", 10)
    assert summary.p95_tokens == summary.max_tokens and summary.p95_tokens > 100


def test_bad_answers_are_diagnostics(tmp_path, capsys):
    data = _write_data(tmp_path / "t.jsonl", n=10, words=(5, 10))
    out = tmp_path / "s.yaml"
    assert (
        main(
            [
                "init",
                "--non-interactive",
                "--model",
                "x/y",
                "--data",
                str(data),
                "--gpu",
                "TPU-9000",
                "-o",
                str(out),
            ]
        )
        == 1
    )
    assert "FT0921" in capsys.readouterr().out and not out.exists()
    assert (
        main(
            [
                "init",
                "--non-interactive",
                "--model",
                "x/y",
                "--data",
                str(tmp_path / "none.jsonl"),
                "--gpu",
                "A100-80GB",
                "-o",
                str(out),
            ]
        )
        == 2
    )
    assert main(["init", "--non-interactive", "--model", "x/y", "-o", str(out)]) == 2  # --data missing
    # an unknown model: no estimate, the guides' defaults, said so
    assert (
        main(
            [
                "init",
                "--non-interactive",
                "--model",
                "x/y",
                "--data",
                str(data),
                "--gpu",
                "A100-80GB",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    report = capsys.readouterr().out
    assert "FT0923" in report and "FT0924" in report  # few examples: a warning before check stops there
    assert (
        main(
            [
                "init",
                "--non-interactive",
                "--model",
                "x/y",
                "--data",
                str(data),
                "--gpu",
                "A100-80GB",
                "-o",
                str(out),
            ]
        )
        == 2
    )  # exists


def test_interactive_prompts(tmp_path, monkeypatch):
    data = _write_data(tmp_path / "t.jsonl", n=20, words=(5, 10))
    answers = iter(["meta-llama/Llama-3.2-1B-Instruct", str(data), "L4", "", "rouge_l"])
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    out = tmp_path / "spec.yaml"
    assert main(["init", "-o", str(out)]) == 0
    spec = load_spec(out).data
    assert spec["hardware"] == {"gpu": "L4", "gpus_per_node": 1}
    assert spec["evaluation"]["task"]["metric"] == "rouge_l"


def test_no_fit_is_an_error_and_says_so(tmp_path, capsys):
    """Regression: 70B on one RTX 4090 exited 0 and claimed QLoRA "was needed to fit"."""
    data = _write_data(tmp_path / "t.jsonl", n=600, words=(5, 10))
    out = tmp_path / "s.yaml"
    assert (
        main(
            [
                "init",
                "--non-interactive",
                "--model",
                "meta-llama/Llama-3.1-70B-Instruct",
                "--data",
                str(data),
                "--gpu",
                "RTX-4090",
                "-o",
                str(out),
            ]
        )
        == 1
    )
    report = capsys.readouterr().out
    assert (
        "FT0922 error" in report
        and "nothing fits; the smallest setup tried is qlora, micro batch 1" in report
    )
    assert "needed to fit" not in out.read_text()  # the written spec does not claim a fit either
    assert "it still does not fit" in out.read_text()


def test_unknown_model_does_not_claim_a_fit(tmp_path):
    data = _write_data(tmp_path / "t.jsonl", n=600, words=(5, 10))
    result = build(
        InitAnswers(model="acme/private-13b", data=str(data), gpu="A100-80GB", output=tmp_path / "s.yaml")
    )
    why = result.values["/adapter/method"][1]
    assert "unchecked against the GPU" in why and "needed to fit" not in why
    assert result.values["/training/gradient_checkpointing"][0] is True


@pytest.mark.parametrize("flag", ["--model", "--data", "--gpu", "--metric"])
def test_empty_answers_are_refused(tmp_path, flag, capsys):
    data = _write_data(tmp_path / "t.jsonl", n=10, words=(5, 10))
    args = {"--model": "x/y", "--data": str(data), "--gpu": "A100-80GB", "--metric": "f1"}
    args[flag] = "  "
    out = tmp_path / "s.yaml"
    assert main(["init", "--non-interactive", *[x for kv in args.items() for x in kv], "-o", str(out)]) == 2
    assert f"{flag} is empty" in capsys.readouterr().err and not out.exists()


def test_init_memory_comment_agrees_with_check(tmp_path, capsys):
    """Regression: init estimated every row at sequence_len while check pads only to the longest example,
    so init's "~21.1 of 21.6 GiB" disagreed with check's 17.2 GiB and turned checkpointing on needlessly."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"ticket {i}: my order has not arrived"},
                {"role": "assistant", "content": f"Sorry about order {i}; it ships today."},
            ]
        }
        for i in range(600)
    ]
    (tmp_path / "short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "spec.yaml"
    result = build(
        InitAnswers(
            model="meta-llama/Llama-3.1-8B-Instruct",
            data=str(tmp_path / "short.jsonl"),
            gpu="RTX-4090",
            output=spec,
        )
    )
    assert result.values["/training/gradient_checkpointing"][0] is False  # ~20-token rows fit without it
    spec.write_text(result.text)
    capsys.readouterr()
    main(["check", str(spec), "--only", "data,memory", "--format", "json", "--repo-root", str(tmp_path)])
    checked = json.loads(capsys.readouterr().out)["memory"]["per_gpu"]["device_gib"]
    assert abs(result.estimate["per_gpu"]["device_gib"] - checked) <= 0.05 * checked
