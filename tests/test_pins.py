"""Package pins: syntax, unsatisfiable ranges, feature needs, known-bad versions, unpinned needs,
installed versions."""

from __future__ import annotations

import importlib.metadata as metadata

import pytest
from ftspec.compiler.core.loader import load_text
from ftspec.compiler.core.resolve import resolve
from ftspec.compiler.lint.pins import allowed, allows_outside, check_pins, rules, satisfiable

SPEC = """version: 1
name: t
model:
  id: meta-llama/Llama-3.1-8B-Instruct
dataset:
  train: train.jsonl
adapter:
  method: {method}
  dora: {dora}
  target_modules: {targets}
hardware:
  gpu: A100-80GB
  gpus_per_node: 2
  strategy: {strategy}
environment:
  packages:
{packages}
"""


def check(
    packages: dict[str, str],
    *,
    method="lora",
    dora="false",
    targets="all-linear",
    strategy="ddp",
    installed=False,
):
    lines = "\n".join(f'    {k}: "{v}"' for k, v in packages.items()) or "    {}"
    text = SPEC.format(method=method, dora=dora, targets=targets, strategy=strategy, packages=lines)
    if not packages:
        text = text.replace("  packages:\n    {}\n", "  packages: {}\n")
    spec = load_text(text, "spec.yaml")
    report = check_pins(spec, resolve(spec.data), installed=installed)
    return spec, report


def codes(report) -> list[str]:
    return [d.code for d in report.diagnostics]


def line_of(spec, key: str) -> int:
    return next(i for i, line in enumerate(spec.text.splitlines(), 1) if line.strip().startswith(key + ":"))


@pytest.mark.parametrize(
    "spec_text, ok",
    [
        (">=0.18,<0.22", True),
        ("==0.8.2", True),
        (">=3,<2", False),
        (">1.0,<1.0.1", True),
        ("==1.2.*,!=1.2.*", False),
        ("~=1.4.2,<1.4.2", False),
        (">=2.0,!=2.0,<2.0.1", True),
    ],
)
def test_satisfiable(spec_text, ok):
    assert satisfiable(spec_text) is ok


def test_allowed_and_allows_outside():
    assert allowed(">=0.9", "<0.10") and not allowed(">=0.9", "<0.9")
    assert allows_outside(">=0.7", ">=0.9.0") and not allows_outside(">=0.10", ">=0.9.0")


def test_every_rule_has_a_source():
    data = rules()
    for rule in data["features"] + data["known_bad"]:
        assert rule["source"], rule


def test_invalid_specifier_at_the_pins_line():
    spec, report = check({"peft": ">=0.18", "trl": "=>1.0"})
    bad = [d for d in report.diagnostics if d.code == "FT0401"]
    assert len(bad) == 1 and bad[0].line == line_of(spec, "trl") and bad[0].severity == "error"


def test_unsatisfiable_range():
    spec, report = check({"peft": ">=0.18", "datasets": ">=4,<3"})
    d = next(d for d in report.diagnostics if d.code == "FT0402")
    assert d.line == line_of(spec, "datasets")


def test_dora_with_old_peft_fails_at_the_pin_and_names_the_feature_line():
    spec, report = check({"peft": "==0.8.2"}, dora="true", targets="[q_proj, v_proj]")
    d = next(d for d in report.diagnostics if d.code == "FT0403")
    assert d.severity == "error" and d.line == line_of(spec, "peft")
    assert f"line {line_of(spec, 'dora')}" in d.message and "peft>=0.9.0" in d.message
    assert d.extra["source"].startswith("https://github.com/huggingface/peft/releases/tag/v0.9.0")


def test_dora_on_4bit_needs_peft_0_10():
    _spec, report = check({"peft": "==0.9.0"}, method="qlora", dora="true", targets="[q_proj]")
    assert any(d.code == "FT0403" and ">=0.10.0" in d.message for d in report.diagnostics)


def test_all_linear_needs_peft_0_8_and_a_loose_pin_is_a_warning():
    _spec, report = check({"peft": ">=0.7"})
    d = next(d for d in report.diagnostics if d.code == "FT0404")
    assert d.severity == "warning" and ">=0.8.0" in d.message
    _spec, report = check({"peft": ">=0.18"})
    assert "FT0404" not in codes(report) and "FT0403" not in codes(report)


def test_fsdp_qlora_needs_bitsandbytes_0_43():
    _spec, report = check({"peft": ">=0.18", "bitsandbytes": "==0.42.0"}, method="qlora", strategy="fsdp")
    assert any(d.code == "FT0403" and "bitsandbytes>=0.43.0" in d.message for d in report.diagnostics)


def test_transformers_5_with_old_peft_is_a_known_bad_combination():
    _spec, report = check({"transformers": ">=5.0", "peft": "==0.17.1"})
    assert "FT0405" in codes(report)
    _spec, report = check({"transformers": ">=4.48", "peft": ">=0.15"})  # allows the bad pair: warning
    assert "FT0406" in codes(report) and "FT0405" not in codes(report)


def test_peft_0_11_0_and_unsloth_caps():
    _spec, report = check({"peft": "==0.11.0"})
    assert "FT0405" in codes(report)
    _spec, report = check({"peft": ">=0.18", "unsloth": ">=2025.1", "trl": ">=0.25", "datasets": "==4.4.1"})
    bad = {d.message.split()[0] for d in report.diagnostics if d.code == "FT0405"}
    assert {"trl", "datasets"} <= bad
    # datasets 4.4.*/4.5.0 are avoided with or without unsloth; a range that admits them is a warning
    _spec, report = check({"datasets": "==4.5.0"})
    assert "FT0405" in codes(report)
    _spec, report = check({"datasets": ">=4.0"})
    assert "FT0406" in codes(report) and "FT0405" not in codes(report)
    _spec, report = check({"datasets": ">=4.5.1"})
    assert not {"FT0405", "FT0406"} & set(codes(report))


def test_needed_but_unpinned_packages_say_which_versions_satisfy():
    _spec, report = check({"transformers": ">=5"}, method="qlora", dora="true")
    peft = next(d for d in report.diagnostics if d.code == "FT0407" and "needs peft" in d.message)
    assert peft.severity == "warning" and "0.1" in peft.hint
    bnb = next(d for d in report.diagnostics if d.code == "FT0407" and "bitsandbytes" in d.message)
    assert bnb.severity == "warning"
    torch = next(d for d in report.diagnostics if d.code == "FT0407" and "needs torch" in d.message)
    assert torch.severity == "warning" and ">=" in torch.hint
    # a need that comes from a feature also points at the feature's line
    assert bnb.extra["related"][0]["pointer"] == "/adapter/method" and bnb.extra["related"][0]["line"]


def test_installed_versions_are_compared_without_importing(monkeypatch):
    real = metadata.version

    def fake(name):
        if name == "peft":
            return "0.8.0"
        if name == "deepspeed":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", fake)
    _spec, report = check({"peft": ">=0.18", "deepspeed": ">=0.17"}, dora="true", installed=True)
    found = codes(report)
    assert "FT0408" in found  # peft 0.8.0 vs >=0.18
    assert "FT0409" in found  # deepspeed not installed
    assert "FT0411" in found  # installed peft lacks DoRA
    assert report.packages["peft"]["installed"] == "0.8.0"


def test_bare_version_pin_says_which_operator_to_add():
    """`peft: "0.18.1"` is the most common pin mistake: the hint names the fix, and the message does
    not repeat packaging's half-quoted "Invalid specifier: '0.18.1" text."""
    spec, report = check({"peft": "0.18.1", "trl": "latest"})
    bare, word = (
        next(d for d in report.diagnostics if d.code == "FT0401" and d.line == line_of(spec, k))
        for k in ("peft", "trl")
    )
    assert '"==0.18.1"' in bare.hint and '">=0.18.1"' in bare.hint
    assert "'0.18.1'" in bare.message and "Invalid specifier" not in bare.message
    assert word.hint == 'write e.g. ">=0.18,<0.22" or "==0.18.1"'  # not a version: the catalog hint


@pytest.mark.parametrize(
    "pin", ["~=0.18", "==0.18.*", "===0.18.1", ">=0.18.0rc1", "==0.18.1+local", ">=0.18,!=0.19.*"]
)
def test_odd_but_valid_pep440_forms_pass(pin):
    _spec, report = check({"peft": pin, "transformers": ">=5.0,<6"})
    assert not [d for d in report.diagnostics if d.severity == "error"], [
        d.message for d in report.diagnostics
    ]


def test_one_package_pinned_under_two_spellings_is_checked_as_one():
    spec, report = check({"peft": ">=0.18,<0.22", "PEFT": "<0.9"})
    twice = next(d for d in report.diagnostics if d.code == "FT0412")
    assert twice.line == line_of(spec, "PEFT") and '">=0.18,<0.22,<0.9"' in twice.hint
    assert "FT0402" in codes(report)  # together the two pins admit no version
    _spec, report = check({"peft": ">=0.18", "PEFT": "<0.22"})
    assert codes(report).count("FT0412") == 1 and "FT0402" not in codes(report)
    assert report.packages["peft"]["pin"] == ">=0.18,<0.22"


def test_two_spellings_are_reported_even_when_one_pin_is_broken():
    spec, report = check({"peft": ">2,<1", "PEFT": ">=0.18"})
    assert "FT0412" in codes(report) and "FT0402" in codes(report)
    assert "peft" not in {d.message.split()[0] for d in report.diagnostics if d.code in ("FT0403", "FT0404")}
    _spec, report = check({"peft": ">=0.18", "PEFT": "bad!"})
    assert {"FT0401", "FT0412"} <= set(codes(report))
    assert report.packages["peft"] == {
        "pin": ">=0.18,bad!",
        "needs": report.packages["peft"]["needs"],
        "valid": False,
    }
