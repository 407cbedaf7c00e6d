"""Loader limits that keep `lint` fast and safe on hostile files (beyond tests/test_loader.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from ftspec.compiler.core import loader
from ftspec.compiler.core.loader import load_spec, load_text


def codes(spec) -> list[tuple[str, int, int]]:
    return [(d.code, d.line, d.column) for d in spec.diagnostics]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("version: 1\n" + "k: v\n" * 5_001, "FT0012"),  # too many lines
        ("x: [" + ",".join(["1"] * 6_000) + "]\n", "FT0012"),  # a runaway flow list
        ("x: " + "[" * 6_000 + "]" * 6_000 + "\n", "FT0012"),  # too many brackets
        ("x: " + "[" * 200 + "]" * 200 + "\n", "FT0008"),  # nesting deeper than ruamel handles quickly
    ],
)
def test_complexity_limits_answer_before_parsing(text: str, code: str) -> None:
    start = time.perf_counter()
    spec = load_text(text, "s.yaml")
    assert [d.code for d in spec.diagnostics] == [code]
    assert spec.data is None
    assert time.perf_counter() - start < 0.5


def test_the_limit_is_located_where_the_list_runs_away() -> None:
    text = "version: 1\nname: x\nitems: [" + ",".join(["1"] * 6_000) + "]\n"
    assert codes(load_text(text, "s.yaml")) == [("FT0012", 3, 1)]


def test_a_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with open(path, "wb") as fh:
        fh.truncate(50 * 1024 * 1024)  # 50 MB, sparse
    start = time.perf_counter()
    assert [d.code for d in load_spec(path).diagnostics] == ["FT0007"]
    assert time.perf_counter() - start < 0.5


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_that_never_ends_is_cut_off() -> None:
    assert [d.code for d in load_spec("/dev/zero").diagnostics] == ["FT0007"]


def test_limits_leave_room_for_real_specs() -> None:
    assert loader.MAX_LINES >= 1_000 and loader.MAX_BYTES >= 256 * 1024
    text = "version: 1\nname: x\ndescription: " + "word " * 20_000 + "\n"
    assert load_text(text, "s.yaml").diagnostics == []


@pytest.mark.parametrize(("path", "code"), [("", "FT0001"), (".", "FT0001")])
def test_unreadable_paths(path: str, code: str) -> None:
    assert [d.code for d in load_spec(path).diagnostics] == [code]
