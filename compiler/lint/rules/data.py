"""Cross-field rules on file paths and `dataset`: where data lives, eval data, mixes and pins."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from ftspec.compiler.core.diagnostics import Diagnostic
from ftspec.compiler.core.paths import link_escapes, special_kind
from ftspec.compiler.dataset.sources import split_counts
from ftspec.compiler.lint.rules.context import RuleContext

# Files the linter opens to count examples: larger ones are not counted (the data check does that).
COUNT_MAX_BYTES = 256 * 1024 * 1024
_CHUNK = 1 << 20


def data_paths(ctx: RuleContext) -> list[tuple[str, str, str]]:
    """(pointer, path as written, role) for every data file the spec names."""
    out: list[tuple[str, str, str]] = []
    train = ctx.raw("/dataset/train")
    if isinstance(train, str) and not ctx.reported("/dataset/train"):
        out.append(("/dataset/train", train, "train"))
    elif isinstance(train, list):
        for i, item in enumerate(train):
            if isinstance(item, str):
                out.append((f"/dataset/train/{i}", item, "train"))
            elif isinstance(item, dict) and isinstance(item.get("path"), str):
                out.append((f"/dataset/train/{i}/path", item["path"], "train"))
    for pointer, role in (
        ("/dataset/eval", "eval"),
        ("/evaluation/regression/prompts", "regression"),
        ("/evaluation/task/json_schema", "json_schema"),
    ):
        value = ctx.raw(pointer)
        if isinstance(value, str):
            out.append((pointer, value, role))
    return [(p, v, r) for p, v, r in out if v and not ctx.reported(p)]


def _is_absolute(path: str) -> bool:
    return (
        path.startswith(("/", "~", "\\"))
        or PurePosixPath(path).is_absolute()
        or PureWindowsPath(path).is_absolute()
        or bool(PureWindowsPath(path).drive)
    )


def resolve_data_path(ctx: RuleContext, path: str) -> Path:
    """Where a relative data path points, lexically normalised against the spec's folder. Symlinks are
    checked separately (`readable_in_repo`, FT0255), so a message names the path as written."""
    return Path(os.path.normpath(ctx.base_dir / path))


def readable_in_repo(ctx: RuleContext, target: Path) -> bool:
    """May lint open `target`? Only a regular file that stays inside the repository with its symlinks
    resolved: a pull request may link `data/x.jsonl` to /etc/passwd or a FIFO."""
    try:
        return (
            _inside(target, ctx.repo_root)
            and link_escapes(target, ctx.repo_root) is None
            and target.is_file()
            and special_kind(target) is None
        )
    except (OSError, ValueError):
        return False


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def template_path(ctx: RuleContext) -> list[tuple[str, str, str]]:
    """model.chat_template when it names a .jinja file: read like a data file, so the same path rules."""
    value = ctx.raw("/model/chat_template")
    if isinstance(value, str) and value.endswith(".jinja") and not ctx.reported("/model/chat_template"):
        return [("/model/chat_template", value, "chat_template")]
    return []


def path_rules(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0228 absolute path; FT0229 path escaping the repository; FT0230 missing file; FT0251 folder."""
    for pointer, path, role in data_paths(ctx) + template_path(ctx):
        if "\x00" in path:
            yield ctx.diag("FT0230", pointer, path=path.replace("\x00", "\\0"), role=role, hint="")
            continue
        if _is_absolute(path):
            yield ctx.diag("FT0228", pointer, path=path, role=role)
            continue
        target = resolve_data_path(ctx, path)
        if not _inside(target, ctx.repo_root):
            yield ctx.diag("FT0229", pointer, path=path, role=role, root=_shown(ctx.repo_root))
            continue
        if not ctx.check_files:
            continue
        escaped = link_escapes(target, ctx.repo_root)
        if escaped is not None:
            # the lexical check passed, a symlink on the way leaves: `check` would print the target's lines
            yield ctx.diag("FT0255", pointer, path=path, role=role, root=_shown(ctx.repo_root))
            continue
        kind = special_kind(target)
        if kind is not None:
            yield ctx.diag("FT0256", pointer, path=path, role=role, kind=kind)
            continue
        try:
            if target.is_dir() and not (role in ("train", "eval") and (target / "state.json").is_file()):
                # a folder datasets' save_to_disk wrote (its state.json lists the Arrow shards) is a source
                yield ctx.diag("FT0251", pointer, path=path, role=role)
            elif not target.is_file():
                yield ctx.diag("FT0230", pointer, path=path, role=role, hint=_missing_hint(target))
        except (OSError, ValueError):
            yield ctx.diag("FT0230", pointer, path=path, role=role, hint="")


def _shown(root: Path) -> str:
    try:
        rel = os.path.relpath(root)
    except ValueError:
        return str(root)
    return rel if not rel.startswith("..") else str(root)


def _missing_hint(target: Path) -> str:
    """A near-miss file name in the same folder, else the first existing parent folder."""
    import difflib

    folder = target.parent
    if folder.is_dir():
        try:
            names = [p.name for p in folder.iterdir() if p.is_file()][:1000]
        except OSError:
            names = []
        # Only typo-close names (trian.jsonl -> train.jsonl): a loose match would offer the training
        # file for a missing eval file.
        guess = difflib.get_close_matches(target.name, names, n=1, cutoff=0.85)
        if guess:
            return f"did you mean '{guess[0]}'?"
        return "paths are relative to the spec file's folder"
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return (
        f"the folder does not exist (nearest existing: {_shown(folder)}); paths are relative to the spec file"
    )


def eval_sources(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0219: eval and eval_split together."""
    if ctx.given("/dataset/eval") and ctx.given("/dataset/eval_split"):
        yield ctx.diag("FT0219", "/dataset/eval_split", key=True)


def train_mix(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0226 fractions that leave nothing (or too much) for the rest; FT0250 repeated file;
    FT0227 eval file that is also a training file."""
    train = ctx.raw("/dataset/train")
    if isinstance(train, list):
        seen: dict[str, int]  # normalized path -> index of its first entry
        fractions, open_entries, seen = [], 0, {}
        for i, item in enumerate(train):
            frac = item.get("fraction") if isinstance(item, dict) else None
            if isinstance(frac, (int, float)) and not isinstance(frac, bool) and 0 < frac < 1:
                fractions.append(frac)
            elif isinstance(item, (str, dict)):
                open_entries += 1
            path = item if isinstance(item, str) else item.get("path") if isinstance(item, dict) else None
            if isinstance(path, str) and path:
                norm = posixpath.normpath(path.replace("\\", "/"))
                if norm in seen:
                    pointer = f"/dataset/train/{i}" + ("/path" if isinstance(item, dict) else "")
                    yield ctx.diag("FT0250", pointer, path=path, first=seen[norm] + 1)
                else:
                    seen[norm] = i
        total = sum(fractions)
        if fractions:
            detail = None
            if open_entries and total >= 1 - 1e-9:
                detail = (
                    f"the fractions sum to {total:g}, leaving nothing for the {open_entries} "
                    f"file{'s' if open_entries > 1 else ''} without one"
                )
            elif not open_entries and abs(total - 1) > 1e-6:
                detail = f"every file has a fraction and they sum to {total:g}, not 1"
            if detail:
                yield ctx.diag("FT0226", "/dataset/train", key=True, detail=detail)
    eval_path = ctx.raw("/dataset/eval")
    if isinstance(eval_path, str) and eval_path:
        train_paths = {
            posixpath.normpath(p.replace("\\", "/")) for ptr, p, role in data_paths(ctx) if role == "train"
        }
        if posixpath.normpath(eval_path.replace("\\", "/")) in train_paths:
            yield ctx.diag("FT0227", "/dataset/eval", path=eval_path)


def sha256_pins(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0248: a sha256 pin for a file the spec does not read."""
    pins = ctx.raw("/dataset/sha256")
    if not isinstance(pins, dict):
        return
    paths = [p for _, p, role in data_paths(ctx) if role != "json_schema"]
    allowed = ["train"] + (["eval"] if ctx.given("/dataset/eval") else []) + paths
    normalised = {posixpath.normpath(p.replace("\\", "/")) for p in allowed}
    from ftspec.compiler.core.schema import suggest

    for key in pins:
        if key in allowed or posixpath.normpath(key.replace("\\", "/")) in normalised:
            continue
        guess = suggest(key, allowed)
        detail = "eval_split takes eval data from train" if key == "eval" else "no such data file in the spec"
        yield ctx.diag(
            "FT0248",
            f"/dataset/sha256/{key.replace('~', '~0').replace('/', '~1')}",
            key=True,
            pin=key,
            detail=detail,
            hint=f"did you mean '{guess}'?"
            if guess
            else "pin `train`, `eval`, or a data path the spec names",
        )


def count_lines(path: Path, cap: int) -> int | None:
    """Examples in a JSON Lines file (non-empty lines), counting no further than `cap`; None when
    the file cannot be counted cheaply (missing, a JSON array, too large)."""
    try:
        if path.suffix.lower() == ".json" or path.stat().st_size > COUNT_MAX_BYTES:
            return None
        count = 0
        tail = b""
        with open(path, "rb") as fh:
            while count < cap:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                count += sum(1 for ln in lines if ln.strip())
            if tail.strip() and count < cap:
                count += 1
        return count
    except (OSError, ValueError):
        return None


def train_example_count(ctx: RuleContext, cap: int) -> int | None:
    """Training examples (after an eval_split), counted no further than `cap`; None if unknown."""

    def compute() -> int | None:
        if not ctx.check_files:
            return None
        total, files = 0, 0
        for _pointer, path, role in data_paths(ctx):
            if role != "train":
                continue
            if _is_absolute(path):
                return None
            target = resolve_data_path(ctx, path)
            json_lines = target.suffix.lower() in (".jsonl", ".json", ".ndjson")  # else rows, not lines
            n = count_lines(target, cap) if json_lines and readable_in_repo(ctx, target) else None
            if n is None:
                return None
            total, files = total + n, files + 1
        if not files:
            return None
        split = ctx.get("/dataset/eval_split", "num") if ctx.given("/dataset/eval_split") else None
        if split and 0 < split < 1:
            total, _held_out = split_counts(total, split)  # the split training will make
        return total

    return ctx.memo(f"train_count:{cap}", compute)


def output_dir(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FT0228/FT0229/FT0255 for output.dir: launch writes (and, with --overwrite, moves) the run folder,
    so it must stay inside the repository like the data, with symlinks resolved. An absolute path or
    `../..` would let a spec (or `--set output.dir=/etc`) write anywhere the launching user can."""
    pointer = "/output/dir"
    path = ctx.raw(pointer)
    if not isinstance(path, str) or ctx.reported(pointer):
        return
    role = "output"
    if "\x00" in path or not path.strip():
        yield ctx.diag(
            "FT0229", pointer, path=path.replace("\x00", "\\0"), role=role, root=_shown(ctx.repo_root)
        )
        return
    if _is_absolute(path):
        yield ctx.diag("FT0228", pointer, path=path, role=role, hint=_OUTPUT_HINT)
        return
    target = resolve_data_path(ctx, path)
    if not _inside(target, ctx.repo_root) or target == ctx.repo_root:
        yield ctx.diag("FT0229", pointer, path=path, role=role, root=_shown(ctx.repo_root), hint=_OUTPUT_HINT)
        return
    if link_escapes(target, ctx.repo_root) is not None:
        yield ctx.diag("FT0255", pointer, path=path, role=role, root=_shown(ctx.repo_root), hint=_OUTPUT_HINT)


_OUTPUT_HINT = "write runs to a folder inside the repository, relative to the spec (for example runs/NAME)"

RULES = [path_rules, eval_sources, train_mix, sha256_pins, output_dir]
