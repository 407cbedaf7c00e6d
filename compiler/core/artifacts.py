"""The artifact envelope: one JSON form, one atomic write, one hash, one versioned reader.

Every JSON artifact a stage writes for a later one (plan.json, lock.json, run.json, metrics.json,
report.json) carries `metadata: {kind, schema_version, ...}`; a reader names the kind and the versions
it knows and rejects anything else (dbt's manifest rule). Writes go through a temporary file in the
same folder, fsync and rename, so a reader sees the old file or the new one, whole.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path

PLAN_KIND = "ftspec-plan"
PLAN_SCHEMA_VERSION = 1

_CHUNK = 1 << 20


class ArtifactError(ValueError):
    """An artifact that is not JSON, or not of the kind and schema version the reader knows."""


def dumps_json(data: object) -> str:
    """The one JSON form of every artifact: sorted keys, 2-space indent, UTF-8, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- a full disk -----------------------------------------------------------------------------------
# ENOSPC and EDQUOT are what the kernel says; the libraries that write checkpoints do not always pass
# it on: torch's zip writer raises RuntimeError("[enforce fail at inline_container.cc] unexpected pos
# ...") and safetensors a SafetensorError whose text holds "os error 28". A failed write whose folder
# has less than NEARLY_FULL bytes left is a full disk too (measured: the tmpfs of the security
# review's D4 had 0 to 12 KiB left after torch's failed write).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")
NEARLY_FULL = 1 << 20


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of `folder` (or its nearest
    existing parent); None when it cannot be asked."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def is_no_space(exc: BaseException, folder: Path | None = None) -> bool:
    """Whether `exc` (or an exception it was raised from) means the disk under `folder` is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return True
        if any(text in str(current).lower() for text in _NO_SPACE_TEXT):
            return True
        current = current.__cause__ or current.__context__
    if folder is not None and isinstance(exc, (OSError, RuntimeError)):
        free = free_bytes(folder)
        return free is not None and free < NEARLY_FULL
    return False


def write_atomic(path: Path, text: str | bytes, *, durable: bool = False) -> None:
    """Write through a temporary file in the same folder and rename: readers never see half a file.

    `durable` also fsyncs the folder, for files a crash must not lose (checkpoint markers, run.json).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json(path: Path, data: object, *, durable: bool = False) -> None:
    write_atomic(path, dumps_json(data), durable=durable)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed (training files can be far larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_sha256(spec: object) -> str:
    """SHA-256 of a loaded spec's file bytes (the text as loaded when the file is gone)."""
    try:
        return file_sha256(Path(spec.path))  # type: ignore[attr-defined]
    except OSError:
        return text_sha256(spec.text)  # type: ignore[attr-defined]


def envelope(data: object) -> tuple[object, object]:
    """(kind, schema_version) of an artifact: under `metadata`, or at the top level (run.json v1)."""
    if not isinstance(data, dict):
        return None, None
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        meta = data
    return meta.get("kind"), meta.get("schema_version")


def read_artifact(path: Path, kind: str, versions: tuple[int, ...] | int) -> dict:
    """Load a JSON artifact, rejecting other kinds and schema versions this ftspec does not know."""
    known = (versions,) if isinstance(versions, int) else tuple(versions)
    text = Path(path).read_text(encoding="utf-8", errors="replace")  # OSError is the caller's to report
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not readable as JSON ({exc})") from exc
    found_kind, version = envelope(data)
    if found_kind != kind or version not in known:
        raise ArtifactError(
            f"{path}: not a {kind} this ftspec reads (kind {found_kind!r}, schema_version {version!r}; "
            f"expected {kind!r} version {', '.join(map(str, known))})"
        )
    return data


PLAN_SHA256 = "plan_sha256"  # lock.json's record of plan.json as compile wrote it


def plan_digest(plan: dict) -> str:
    """The digest of plan.json exactly as compile writes it (the build renders it with dumps_json)."""
    return text_sha256(dumps_json(plan))


def write_plan(plan: dict, path: Path) -> None:
    write_json(Path(path), plan)


def read_plan(path: Path) -> dict:
    """Load a plan.json, rejecting schema versions this ftspec does not know."""
    return read_artifact(path, PLAN_KIND, PLAN_SCHEMA_VERSION)
