"""Atomic checkpoints: sealing, verification, fallback to the one before, pruning, leftovers."""

from __future__ import annotations

import json
import os

from ftspec.runtime import checkpoint as ckpt


def _save(root, step: int, payload: bytes = b"weights") -> None:
    tmp = ckpt.temp_dir(root, step)
    tmp.mkdir(parents=True)
    (tmp / "model.bin").write_bytes(payload * 10)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "rng.pkl").write_bytes(b"rng")
    (tmp / ckpt.STATE).write_text(json.dumps({"step": step}))
    ckpt.seal(tmp, ckpt.final_dir(root, step), step)


def test_seal_renames_into_place_with_a_marker(tmp_path):
    _save(tmp_path, 10)
    final = tmp_path / "checkpoint-10"
    assert final.is_dir() and not ckpt.temp_dir(tmp_path, 10).exists()
    marker = json.loads((final / ckpt.MARKER).read_text())
    assert marker["step"] == 10 and set(marker["files"]) == {"model.bin", "sub/rng.pkl", ckpt.STATE}
    assert ckpt.verify(final) is None
    assert ckpt.latest_valid(tmp_path).step == 10


def test_damaged_checkpoints_are_skipped_for_the_one_before(tmp_path):
    for step in (5, 10, 15, 20):
        _save(tmp_path, step)
    # 20: same size, other bytes (caught by the hash); 15: truncated; 10: marker missing (crash mid-seal)
    victim = tmp_path / "checkpoint-20" / "model.bin"
    victim.write_bytes(b"X" * victim.stat().st_size)
    with open(tmp_path / "checkpoint-15" / "sub" / "rng.pkl", "r+b") as fh:
        fh.truncate(1)
    (tmp_path / "checkpoint-10" / ckpt.MARKER).unlink()
    skipped = []
    found = ckpt.latest_valid(tmp_path, lambda c, why: skipped.append((c.step, why)))
    assert found.step == 5
    assert [s for s, _ in skipped] == [20, 15, 10]
    assert "SHA-256" in skipped[0][1] and "bytes" in skipped[1][1] and "marker" in skipped[2][1]


def test_nothing_valid_gives_none(tmp_path):
    assert ckpt.latest_valid(tmp_path / "missing") is None
    (tmp_path / "checkpoint-3").mkdir()
    assert ckpt.latest_valid(tmp_path) is None


def test_partial_writes_are_cleaned_and_never_listed(tmp_path):
    _save(tmp_path, 4)
    partial = ckpt.temp_dir(tmp_path, 8)
    partial.mkdir()
    (partial / "model.bin").write_bytes(b"half")
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [4]
    assert ckpt.clean_partial(tmp_path) == [partial]
    assert not partial.exists()


def test_prune_keeps_the_newest_complete_ones(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    (tmp_path / "checkpoint-9").mkdir()  # incomplete: not counted, not deleted by prune
    removed = ckpt.prune(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["checkpoint-1", "checkpoint-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4", "checkpoint-9"]


def test_resaving_a_step_replaces_it_whole(tmp_path):
    _save(tmp_path, 7, b"old")
    _save(tmp_path, 7, b"new")
    assert (tmp_path / "checkpoint-7" / "model.bin").read_bytes() == b"new" * 10
    assert ckpt.verify(tmp_path / "checkpoint-7") is None


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    target = tmp_path / "run.json"
    ckpt.write_json_atomic(target, {"a": 1})
    ckpt.write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["run.json"]
