"""Arguments and output plumbing shared by the verbs."""

from __future__ import annotations

import argparse
import sys

from ftspec.compiler.core.reporters import FORMATS


def add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")


def add_lint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-remote-code",
        action="store_true",
        help="accept model.trust_remote_code: true (runs the model repository's Python code)",
    )
    parser.add_argument(
        "--repo-root",
        default=None,
        help="folder that dataset paths must stay inside (default: the git repository of the spec)",
    )


def lint_options(args: argparse.Namespace):
    from pathlib import Path

    from ftspec.compiler.lint.lint import LintOptions

    return LintOptions(
        allow_remote_code=getattr(args, "allow_remote_code", False),
        repo_root=Path(args.repo_root).resolve() if getattr(args, "repo_root", None) else None,
    )


def fail(message: str, hint: str | None = None) -> int:
    """The tool could not run: one clear line on stderr and exit code 2."""
    print(f"ftspec: error: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    return 2


class SourceCache:
    """Source lines for the text reporter, from loaded specs or read on demand (data files)."""

    def __init__(self) -> None:
        self._texts: dict[str, list[str]] = {}

    def add(self, path: str, text: str) -> None:
        self._texts[path] = text.splitlines()

    def __call__(self, path: str | None, line: int | None) -> str | None:
        if not path or not line:
            return None
        if path not in self._texts:
            self._texts[path] = _shown_lines(path)
        lines = self._texts[path]
        return lines[line - 1] if 0 < line <= len(lines) else None


SHOWN_LINES = 200_000
SHOWN_BYTES = 64 << 20  # source lines are shown for findings near the top of a data file, never all of it


def _shown_lines(path: str) -> list[str]:
    """The first lines of a file a finding points into, for its source line; nothing when the file
    is not a regular file (a FIFO would block), or leaves its repository through a symlink (a data
    link to /etc/passwd must not be echoed into a CI log: security review V4)."""
    import os
    from pathlib import Path

    from ftspec.compiler.core.paths import UnsafeRead, find_repo_root, link_escapes, read_bounded

    lexical = Path(os.path.abspath(path))
    if link_escapes(lexical, find_repo_root(lexical.parent)) is not None:
        return []
    try:
        raw = read_bounded(lexical, SHOWN_BYTES)
    except UnsafeRead as exc:
        if "larger than" not in str(exc):
            return []
        with open(lexical, "rb") as fh:  # a regular file: its head is enough
            raw = fh.read(SHOWN_BYTES)
    except OSError:
        return []
    return raw.decode("utf-8", "replace").splitlines()[:SHOWN_LINES]
