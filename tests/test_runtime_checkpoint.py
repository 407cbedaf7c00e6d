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


def _plan(**training) -> dict:
    return {
        "spec": {
            "name": "a",
            "training": {
                "learning_rate": 1e-3,
                "logging_steps": 10,
                "micro_batch_size": 4,
                "gradient_accumulation_steps": 2,
                **training,
            },
            "output": {"report_to": ["none"]},
            "evaluation": {"batch_size": 8},
        },
        "derived": {"effective_batch": 8, "world_size": 1, "micro_batch_size": 4, "main_process_port": 29500},
        "estimate": {"time": {"hours": 1}},
        "metadata": {"spec_sha256": "x"},
    }


def test_training_identity_separates_harmless_from_harmful_changes():
    base = ckpt.training_identity(_plan(), {"data/train.jsonl": "aa"})
    assert base["/spec/training/learning_rate"] == 1e-3 and base["/data/data/train.jsonl"] == "aa"
    harmless = _plan(logging_steps=1, micro_batch_size=2, gradient_accumulation_steps=4)
    harmless["spec"]["output"]["report_to"] = ["tensorboard"]
    harmless["spec"]["evaluation"]["batch_size"] = 2
    harmless["derived"].update(micro_batch_size=2, main_process_port=29600)
    harmless["estimate"] = {}
    harmless["metadata"]["spec_sha256"] = "y"
    assert ckpt.identity_changes(base, ckpt.training_identity(harmless, {"data/train.jsonl": "aa"})) == []
    lr = ckpt.training_identity(_plan(learning_rate=2e-3), {"data/train.jsonl": "aa"})
    assert ckpt.identity_changes(base, lr) == [("/spec/training/learning_rate", 1e-3, 2e-3)]
    edited = ckpt.training_identity(_plan(), {"data/train.jsonl": "bb"})
    assert ckpt.identity_changes(base, edited) == [("/data/data/train.jsonl", "aa", "bb")]
    bigger = _plan(gradient_accumulation_steps=4)
    bigger["derived"]["effective_batch"] = 16
    changes = ckpt.identity_changes(base, ckpt.training_identity(bigger, {"data/train.jsonl": "aa"}))
    assert changes == [("/derived/effective_batch", 8, 16)]
    assert ckpt.identity_sha256(base) != ckpt.identity_sha256(lr)


def test_recorded_identity_is_read_from_the_newest_checkpoint_that_has_one(tmp_path):
    assert ckpt.recorded_identity(tmp_path) is None
    _save(tmp_path, 2)  # a checkpoint from before identities were recorded
    assert ckpt.recorded_identity(tmp_path) is None
    tmp = ckpt.temp_dir(tmp_path, 4)
    tmp.mkdir()
    (tmp / ckpt.STATE).write_text(json.dumps({"step": 4, "training_identity": {"/spec/seed": 1}}))
    ckpt.seal(tmp, ckpt.final_dir(tmp_path, 4), 4)
    found, identity = ckpt.recorded_identity(tmp_path)
    assert found.step == 4 and identity == {"/spec/seed": 1}
