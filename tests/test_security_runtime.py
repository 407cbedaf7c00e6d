"""Security review V3: nothing in a run folder is deserialised with pickle.

A planted pickle at the data cache's name, or as a checkpoint's scheduler state, must not run; it is
ignored (the cache is rebuilt) or refused (the scheduler state), never executed.
"""

from __future__ import annotations

import os
import pickle

import pytest
from ftspec.runtime import cache as rcache
from ftspec.runtime import checkpoint as ckpt
from ftspec.runtime.data import Example, Prepared


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _prepared() -> Prepared:
    train = [Example([1, 2, 3], [-100, 2, 3], [0, 1, 2]), Example([4], [4], [0])]
    return Prepared(train, [Example([5, 6], [5, -100], [0, 1])], {"train_examples": 2, "packing": False})


def test_the_data_cache_round_trips_through_safetensors(tmp_path):
    path = tmp_path / ".ftspec" / f"data-abc{rcache.SUFFIX}"
    rcache.save_prepared(_prepared(), path)
    assert rcache.load_prepared(path) == _prepared()
    assert path.read_bytes()[:1] != b"\x80"  # not a pickle stream


@pytest.mark.parametrize("name", [f"data-abc{rcache.SUFFIX}", "data-abc.pt"])
def test_a_planted_pickle_cache_is_never_executed(tmp_path, name):
    marker = tmp_path / "PWNED"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    assert rcache.load_prepared(path) is None  # rebuilt, not trusted
    assert not marker.exists()


def test_the_scheduler_state_is_json(tmp_path):
    state = {"base_lrs": [0.001], "last_epoch": 3, "_step_count": 4, "lr_lambdas": [None]}
    ckpt.save_scheduler(state, tmp_path)
    assert (tmp_path / ckpt.SCHEDULER).read_text().startswith("{")
    assert ckpt.load_scheduler(tmp_path) == state


def test_a_legacy_pickled_scheduler_state_is_refused_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    import torch

    torch.save({"payload": _Payload(str(marker))}, tmp_path / ckpt.LEGACY_SCHEDULER)
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_scheduler(tmp_path)
    assert not marker.exists()


def test_a_fresh_launch_refuses_a_folder_it_did_not_write(tmp_path):
    """D1/V11: a fresh launch deleted checkpoints/ and tokenizer/ of any folder and replaced its files."""
    from ftspec.compiler.launch.run_folder import previous_run

    precious = tmp_path / "precious"
    (precious / "checkpoints").mkdir(parents=True)
    (precious / "tokenizer").mkdir()
    (precious / "checkpoints" / "NOTES.txt").write_text("notes")
    (precious / "tokenizer" / "vocab.txt").write_text("v")
    (precious / "metrics.jsonl").write_text('{"my": "metrics"}\n')
    found = previous_run(precious)
    assert found and "no ftspec run wrote" in found[-1] and "checkpoints" in found[-1]
    # an earlier run's folder: its own files may be replaced, a stranger's note may not
    (precious / "run.json").write_text('{"exit_status": "failed"}')
    for name in ("metrics.jsonl", "tokenizer"):
        assert name not in " ".join(previous_run(precious))
    assert "checkpoints/NOTES.txt" in " ".join(previous_run(precious))
    (precious / "checkpoints" / "NOTES.txt").unlink()
    assert previous_run(precious) == []
    (precious / "README.txt").write_text("keep")
    assert "README.txt" in " ".join(previous_run(precious))


def test_an_empty_or_new_folder_is_free(tmp_path):
    from ftspec.compiler.launch.run_folder import previous_run

    assert previous_run(tmp_path / "new") == []
    (tmp_path / "empty" / ".ftspec").mkdir(parents=True)
    assert previous_run(tmp_path / "empty") == []


def test_a_second_launch_on_one_run_folder_is_refused(tmp_path):
    """D3: two launches on one build folder both trained into the same run folder."""
    import subprocess
    import sys

    from ftspec.compiler.launch import launch as launcher

    run = tmp_path / "runs" / "x"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from ftspec.compiler.launch import launch as L; "
            "fd, _ = L.lock_run_folder(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        fd, pid = launcher.lock_run_folder(run)
        assert fd is None and pid == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    fd, pid = launcher.lock_run_folder(run)  # released when the holder died, however it died
    assert fd is not None and pid is None


@pytest.mark.parametrize("trust", [False, True])
def test_evaluate_passes_trust_remote_code_to_the_tokenizer_explicitly(tmp_path, monkeypatch, trust):
    """D16: left unset, transformers prompted "run the custom code? [y/N]" on a terminal."""
    transformers = pytest.importorskip("transformers")
    from types import SimpleNamespace

    from ftspec.runtime import evaluate as rev

    seen = {}

    def fake(path, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(chat_template="{{ x }}", pad_token_id=0)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    (tmp_path / "tokenizer").mkdir()
    folder = SimpleNamespace(path=tmp_path, spec={"model": {"id": "m", "trust_remote_code": trust}})
    rev.load_tokenizer(folder)
    assert seen == {"trust_remote_code": trust}


def test_the_previous_run_hint_names_the_real_build_folder(tmp_path):
    """User audit: FT0723's hint printed the placeholder BUILD_DIR instead of the build's path."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from compile_helpers import ROOT, compile_to

    build = tmp_path / "my build"
    name = f"runs/.test-hint-{os.getpid()}"  # a run folder of its own: nothing real is touched
    assert compile_to(Path("specs/tiny-cpu.yaml"), build, overrides={"output.dir": name}).ok
    run = ROOT / "specs" / name
    (run / "adapter").mkdir(parents=True)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ftspec.compiler.cli", "launch", str(build)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 2 and "FT0723" in done.stderr
        assert "BUILD_DIR" not in done.stderr and f"ftspec launch '{build}' --resume" in done.stderr
    finally:
        shutil.rmtree(run)
        Path(f"{run.parent}/.{run.name}.launch-lock").unlink(missing_ok=True)


def test_a_real_lambda_lr_state_round_trips_through_json(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    for _ in range(3):
        optimizer.step()
        schedule.step()
    ckpt.save_scheduler(schedule.state_dict(), tmp_path)
    fresh = torch.optim.lr_scheduler.LambdaLR(
        torch.optim.AdamW(model.parameters(), lr=0.1), lambda s: 1 / (s + 1)
    )
    fresh.load_state_dict(ckpt.load_scheduler(tmp_path))
    assert fresh.last_epoch == 3 and fresh.get_last_lr() == schedule.get_last_lr()
