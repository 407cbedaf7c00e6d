"""Fuzzing `lint`: random bytes, mutated texts and mutated spec data give diagnostics, never exceptions.

Every diagnostic must come from the catalog with a known severity, and no rule may crash (FT0299):
the rules run on schema-invalid specs, so wrong types anywhere must be tolerated.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import yaml
from ftspec.compiler.core.diagnostics import SEVERITIES, catalog
from ftspec.compiler.core.loader import LoadedSpec, _decode, load_text
from ftspec.compiler.lint.lint import LintOptions, lint_loaded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"
# Each seed is linted at its own path, so mutated data paths can point at real files beside it.
SEED_PATHS = sorted((ROOT / "specs").glob("*.yaml")) + [
    CASES / "valid" / "everything" / "spec.yaml",
    CASES / "valid" / "fsdp-multi-node-slurm" / "spec.yaml",
]
SEEDS = [p.read_text(encoding="utf-8") for p in SEED_PATHS]
SEED_DATA = [yaml.safe_load(text) for text in SEEDS]
SPEC_PATH = SEED_PATHS[-2]
OPTIONS = LintOptions(repo_root=ROOT)
# FTSPEC_FUZZ_EXAMPLES=5000 for a deeper local run; CI keeps the default fast.
FUZZ = settings(
    max_examples=int(os.environ.get("FTSPEC_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def check(spec: LoadedSpec) -> None:
    result = lint_loaded(spec, OPTIONS)
    known = catalog()
    for d in result.diagnostics:
        assert d.code in known, d
        assert d.code != "FT0299", d.message
        assert d.severity in SEVERITIES
        assert d.line is None or d.line >= 1
        assert d.column is None or d.column >= 1


def lint_bytes(raw: bytes) -> None:
    text, problem = _decode(raw, str(SPEC_PATH))
    if problem is not None:
        return
    check(load_text(text, str(SPEC_PATH)))


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(raw: bytes) -> None:
    lint_bytes(raw)


@FUZZ
@given(
    st.integers(0, len(SEEDS) - 1),
    st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.integers(0, 3),
            st.sampled_from(list(" :-[]{}#&*!|>'\"\t\n,?%@`x0.~")),
        ),
        max_size=8,
    ),
)
def test_mutated_text(seed: int, edits) -> None:
    text = SEEDS[seed]
    for position, action, char in edits:
        at = position % (len(text) + 1)
        if action == 0:
            text = text[:at] + text[at + 1 :]
        elif action == 1:
            text = text[:at] + char + text[at:]
        elif action == 2:
            text = text[:at] + char + text[at + 1 :]
        else:  # duplicate a line (duplicate keys, reordered sections)
            lines = text.splitlines(keepends=True)
            if lines:
                i = at % len(lines)
                lines.insert(i, lines[i])
            text = "".join(lines)
    check(load_text(text, str(SEED_PATHS[seed])))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**12)
    | st.floats(allow_nan=False, width=32)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "../../data/train.jsonl",
            "/etc/passwd",
            "../../../../x",
            "cpu",
            "T4",
            "qlora",
            "full",
            "deepspeed",
            "fsdp",
            "none",
            "bf16",
            "regression",
            "format",
            "builtin:tiny-llama",
            "org/model",
            "(",
            "optimizer_and_params",
            "slurm",
            "json_schema",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "path",
                    "fraction",
                    "metric",
                    "min",
                    "max",
                    "name",
                    "bf16",
                    "memory_gb",
                    "regex",
                    "json",
                    "prompts",
                    "x",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=10,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _set(root, path, value):
    node = root
    for token in path[:-1]:
        node = node[token]
    node[path[-1]] = value


def _delete(root, path):
    node = root
    for token in path[:-1]:
        node = node[token]
    del node[path[-1]]


@FUZZ
@given(
    st.integers(0, len(SEED_DATA) - 1),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2), JSON_VALUES), min_size=1, max_size=6),
    st.booleans(),
)
def test_mutated_data(seed: int, edits, as_yaml: bool) -> None:
    data = copy.deepcopy(SEED_DATA[seed])
    for pick, action, value in edits:
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = paths[pick % len(paths)]
        if action == 0:
            _set(data, path, value)  # a value of any type anywhere
        elif action == 1:
            _delete(data, path)
        else:  # a new key next to an existing one
            parent = path[:-1]
            node = data
            for token in parent:
                node = node[token]
            if isinstance(node, dict):
                node[f"{path[-1]}_x"] = value
    text = yaml.safe_dump(data, sort_keys=False) if as_yaml else json.dumps(data)
    check(load_text(text, str(SEED_PATHS[seed])))


def test_seeds_are_clean() -> None:
    """The fuzz seeds themselves lint without errors, so mutations start from a valid spec."""
    for path, text in zip(SEED_PATHS, SEEDS, strict=True):
        result = lint_loaded(load_text(text, str(path)), OPTIONS)
        assert not [d for d in result.diagnostics if d.severity == "error"], path
