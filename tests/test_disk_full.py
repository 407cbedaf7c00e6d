"""Security review D4: a full disk ends in one located finding (FT0747 / FT0627) that names what was
being written, run.json ends `failed` with that reason, and nothing half-written is left that a
resume would trust."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ftspec.compiler.core import artifacts
from ftspec.compiler.core.artifacts import is_no_space
from runtime_helpers import launch, run_json, write_spec

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


# --- recognising a full disk ----------------------------------------------------------------------


def test_a_full_disk_is_recognised_through_what_the_libraries_raise(tmp_path, monkeypatch):
    assert is_no_space(OSError(errno.ENOSPC, "x"))
    assert is_no_space(OSError(errno.EDQUOT, "x"))
    # safetensors' wording, and an ENOSPC the library re-raised as something else
    assert is_no_space(
        Exception('IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    )
    try:
        try:
            raise ENOSPC
        except OSError:
            raise RuntimeError("save failed")  # noqa: B904 - the implicit context is what is tested
    except RuntimeError as exc:
        assert is_no_space(exc)
    # torch's zip writer says only "unexpected pos": the folder's free space decides
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 331840 vs 331728")
    monkeypatch.setattr(artifacts, "free_bytes", lambda _folder: 0)
    assert is_no_space(torch_error, tmp_path)
    monkeypatch.setattr(artifacts, "free_bytes", lambda _folder: 10 << 30)
    assert not is_no_space(torch_error, tmp_path)
    assert not is_no_space(ValueError("unexpected pos"), tmp_path)


# --- compile ------------------------------------------------------------------------------------


def test_compile_on_a_full_disk_names_the_file_and_leaves_no_half_build(tmp_path, monkeypatch):
    from ftspec.compiler.compile import compile as build_mod
    from ftspec.compiler.compile.compile import CompileOptions, build_folder

    real_open = open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, _text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return Full(fh) if "w" in mode and Path(path).name == "plan.json" else fh

    monkeypatch.setattr(build_mod, "open", full_open, raising=False)
    target = tmp_path / "build"
    outcome = build_folder("tests/fixtures/compile/cpu-ddp.yaml", CompileOptions(), target)
    assert outcome.exit_code == 2
    finding = [d for d in outcome.diagnostics if d.code == "FT0627"]
    assert len(finding) == 1 and not any(d.code == "FT0607" for d in outcome.diagnostics)
    assert "no space left on device while writing plan.json" in finding[0].message
    assert finding[0].file == str(target) and "-o" in finding[0].hint
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging folder, no half build


# --- the runtime's writes -----------------------------------------------------------------------


def test_a_full_disk_while_writing_ends_the_run_with_ft0747_and_removes_the_half_write(tmp_path, monkeypatch):
    from ftspec.runtime import train

    half = tmp_path / "checkpoints" / ".tmp-checkpoint-6"
    half.mkdir(parents=True)
    (half / "optimizer.bin").write_bytes(b"\0" * 10)
    monkeypatch.setattr(artifacts, "free_bytes", lambda _folder: 0)
    monkeypatch.setattr(train, "free_bytes", lambda _folder: 0)
    with pytest.raises(train.StopRun) as stop:
        with train.writing("checkpoint-6", tmp_path / "checkpoints", cleanup=half):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 331840 vs 331728")
    assert stop.value.status == "failed" and stop.value.diagnostic.code == "FT0747"
    assert stop.value.diagnostic.message.startswith("no space left on device while writing checkpoint-6 (")
    assert "0 bytes free" in stop.value.diagnostic.message
    assert "output.dir" in stop.value.diagnostic.hint
    assert not half.exists()
    # any other error is not a full disk: it propagates as it is
    monkeypatch.setattr(artifacts, "free_bytes", lambda _folder: 10 << 30)
    with pytest.raises(KeyError):
        with train.writing("metrics.jsonl", tmp_path):
            raise KeyError("x")


def test_run_json_is_rewritten_in_place_when_there_is_no_room_for_a_copy(tmp_path, monkeypatch):
    from ftspec.runtime import checkpoint as ckpt
    from ftspec.runtime import train

    path = tmp_path / "run.json"
    path.write_text(json.dumps({"exit_status": "running"}))

    def full(_path, _data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "write_json_atomic", full)
    train.write_run_json(path, {"exit_status": "failed", "diagnostics": [{"code": "FT0747"}]})
    assert json.loads(path.read_text())["exit_status"] == "failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_write_json_atomic_leaves_no_temporary_file_on_a_full_disk(tmp_path, monkeypatch):
    from ftspec.runtime import checkpoint as ckpt

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", full)
    with pytest.raises(OSError):
        ckpt.write_json_atomic(tmp_path / "run.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


# --- launch: a run killed before it wrote its end -----------------------------------------------


def _running(run: Path) -> Path:
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"exit_status": "running", "kind": "ftspec-run"}))
    return run


def test_launch_records_the_failed_ranks_reason_in_run_json(tmp_path, capsys):
    from ftspec.compiler.launch import launch as launcher

    run = _running(tmp_path / "run")
    (run / ".ftspec").mkdir()
    (run / ".ftspec" / "error-rank0.txt").write_text(
        "spec.yaml: FT0747 error: no space left on device while writing checkpoint-4 (x: 0 bytes free)\n1 error\n"
    )
    failures = launcher.report_failures(run, since=0)
    launcher.mark_failed(run, 1, failures)
    data = run_json(run)
    assert data["exit_status"] == "failed" and data["exit_code"] == 1
    assert "FT0747" in data["diagnostics"][0]["message"]


def test_launch_marks_the_run_failed_on_a_full_disk_without_an_internal_error(tmp_path, monkeypatch, capsys):
    from ftspec.compiler.launch import launch as launcher

    run = _running(tmp_path / "run")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(launcher, "write_json", full)
    launcher.mark_failed(run, 1)  # the atomic copy does not fit: rewritten in place
    assert run_json(run)["exit_status"] == "failed"
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]

    run2 = _running(tmp_path / "run2")
    real_open = open

    def no_room(path, mode="r", *a, **k):
        if "+" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(launcher, "open", no_room, raising=False)
    launcher.mark_failed(run2, 1)  # not even that: a located finding, not a traceback
    err = capsys.readouterr().err
    assert "FT0747" in err and "while writing run.json" in err and str(run2 / "run.json") in err


# --- the whole thing, on a real 1.1 MB file system ------------------------------------------------


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


@pytest.mark.slow
def test_a_run_whose_disk_fills_up_ends_failed_with_the_reason(tmp_path):
    full = tmp_path / "full"
    if not _mount_tmpfs(full, "1100k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        spec = write_spec(
            tmp_path,
            training={"max_steps": 10, "save_steps": 2, "eval_steps": 100, "logging_steps": 2},
            hardware={"gpu": "cpu", "gpus_per_node": 1, "strategy": "ddp"},
            output={"dir": "full/run", "save": "adapter", "report_to": ["none"]},
        )
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        done = launch(spec, build=tmp_path / "build")
        out = done.stdout + done.stderr
        assert done.returncode == 1, out[-3000:]
        assert "FT0747 error: no space left on device while writing checkpoint-" in out
        assert "internal error" not in out and "no message" not in out
        run = full / "run"
        data = run_json(run)
        assert data["exit_status"] == "failed"
        assert any(d["code"] == "FT0747" for d in data["diagnostics"])
        # the checkpoint that did not fit is gone; the ones before it are complete
        from ftspec.runtime import checkpoint as ckpt

        left = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert left and not any(name.startswith(ckpt.TMP_PREFIX) for name in left), left
        assert all(ckpt.verify(c.path) is None for c in ckpt.list_checkpoints(run / "checkpoints"))
        assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
