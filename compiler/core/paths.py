"""Where a path really points, and whether ftspec may read it: one place for the repository-root and
special-file rules every stage shares.

A spec, a data file, a template or an output folder named by a spec, the command line or a run file
must stay inside the repository root once symlinks are resolved: `ftspec lint` runs on untrusted pull
requests, whose symlinks can point anywhere on the runner. Reads are bounded and only of regular
files, so a FIFO blocks nothing and `/dev/zero` fills no memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def find_repo_root(start: Path) -> Path:
    """The nearest folder at or above `start` holding `.git`, else `start` itself (resolved)."""
    start = Path(os.path.abspath(start))
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return Path(os.path.realpath(folder))
    return Path(os.path.realpath(start))


def inside(path: Path, root: Path) -> bool:
    try:
        Path(path).relative_to(root)
        return True
    except ValueError:
        return False


def resolves_inside(path: Path, root: Path) -> bool:
    """Does `path`, with every symlink on it resolved (the missing tail taken as written), stay inside
    `root` (itself resolved)?"""
    return inside(Path(os.path.realpath(path)), Path(os.path.realpath(root)))


def link_escapes(path: Path, root: Path) -> Path | None:
    """The resolved target when `path` leaves `root` only through a symlink, else None."""
    real = Path(os.path.realpath(path))
    return None if inside(real, Path(os.path.realpath(root))) else real


def special_kind(path: Path) -> str | None:
    """ "a FIFO", "a device", "a socket" for an existing path that is not a regular file or a folder
    (following symlinks); None otherwise. Opening such a file blocks or never ends."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


# A model folder's JSON and template files: a real tokenizer_config.json is at most a few MB; the cap
# stops a link to /dev/zero or a planted giant file from exhausting memory (a MemoryError in check).
MODEL_FILE_MAX_BYTES = 64 << 20


class UnsafeRead(OSError):
    """A file that is not a regular file, or larger than the caller's limit."""


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. Refuses FIFOs and devices without
    blocking (O_NONBLOCK, then an fstat of what was opened), and stops at `limit` even where the size
    lied (a file still growing)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else (special_kind(Path(path)) or "not a regular file")
            raise UnsafeRead(f"{path} is {kind}, not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnsafeRead(f"{path} is larger than {limit} bytes")
    return data


def read_bounded_text(path: Path, limit: int) -> str:
    return read_bounded(path, limit).decode("utf-8")
