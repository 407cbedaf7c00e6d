"""Read what `ftspec launch` left in a run folder (docs/contracts.md, "Run folder"), for evaluate.

Pure Python: plan.json, run.json and lock.json are JSON; the eval files are hashed here so the gate can
refuse data that changed since compile locked it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ftspec.compiler.core.diagnostics import Diagnostic, make
from ftspec.compiler.dataset.readers import source_sha256
from ftspec.compiler.dataset.sources import train_entries

# The run-folder contract between `ftspec launch` and the runtime (docs/contracts.md, "Run folder"):
# the one home of these names, so neither side restates them.
EXIT_OOM_RETRY = 75  # EX_TEMPFAIL: out of memory, a smaller micro batch was recorded; relaunch with --resume
BATCH_FILE = "batch_override.json"
ERRORS_DIR = ".ftspec"


def run_dir_of(plan: dict, build_dir: Path) -> Path:
    """The run folder a compiled plan names: build folder / paths.spec_dir / derived.output_dir."""
    return (Path(build_dir) / plan["paths"]["spec_dir"] / plan["derived"]["output_dir"]).resolve()


# What a run leaves that a fresh launch into the same folder would destroy (docs/contracts.md).
PRECIOUS_OUTPUTS = ("adapter", "merged")
CHECKPOINTS = "checkpoints"


def previous_run(run_dir: Path) -> list[str]:
    """The outputs of an earlier run in `run_dir` that a fresh (not resumed) launch would replace:
    complete or partial checkpoints and saved models. Empty when the folder holds nothing to lose
    (a run that failed at set-up leaves only logs, which a new run may replace)."""
    found = []
    checkpoints = run_dir / CHECKPOINTS
    if checkpoints.is_dir():
        names = sorted(
            (p.name for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")),
            key=lambda name: (len(name), name),
        )  # checkpoint-8 before checkpoint-100
        if names:
            found.append(
                f"{len(names)} checkpoint(s) under {CHECKPOINTS}/, the last {names[-1]}"
                if len(names) > 1
                else f"{CHECKPOINTS}/{names[0]}"
            )
    found += [f"{name}/" for name in PRECIOUS_OUTPUTS if (run_dir / name).is_dir()]
    foreign = _not_written_by_a_run(run_dir)
    if foreign:
        # A fresh run deletes checkpoints/ and tokenizer/ and replaces metrics.jsonl: never in a folder
        # holding files no run wrote (security review D1); --overwrite moves the whole folder aside.
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        found.append(f"{shown}, which no ftspec run wrote")
    return found


# What a run writes at the top of its folder (runtime/train.py, evaluate); anything else is someone's.
RUN_WRITES = frozenset(
    {"run.json", "plan.json", "lock.json", "metrics.jsonl", "tensorboard", "tokenizer", "eval", CHECKPOINTS}
    | {BATCH_FILE, ERRORS_DIR, ".adapter-for-merge", *PRECIOUS_OUTPUTS}
    | {"export", ".tmp-export", ".merged-for-export", "wandb"}  # output.export, report_to: wandb
)


def _not_written_by_a_run(run_dir: Path) -> list[str]:
    """Entries of `run_dir` that a run did not write. A folder without run.json was never a run
    folder: everything in it counts (an empty `.ftspec/` is the runtime's own start-up)."""
    if not run_dir.is_dir():
        return []
    entries = sorted(p.name for p in run_dir.iterdir())
    if not (run_dir / "run.json").is_file():
        return [n for n in entries if not (n == ERRORS_DIR and not any((run_dir / n).iterdir()))]
    out = [n for n in entries if n not in RUN_WRITES and not n.startswith(".tmp-")]
    checkpoints = run_dir / CHECKPOINTS
    if checkpoints.is_dir():
        out += [
            f"{CHECKPOINTS}/{p.name}"
            for p in sorted(checkpoints.iterdir())
            if not (p.is_dir() and p.name.startswith(("checkpoint-", ".tmp-checkpoint-")))
        ]
    return out


OK_STATUSES = ("ok", "success", "succeeded", "completed", "finished", 0)


class RunFolderError(Exception):
    """The folder cannot be evaluated; the message says why (becomes FT0805/FT0806)."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass
class RunFolder:
    path: Path
    plan: dict
    run: dict
    lock: dict | None
    spec_dir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> dict:
        return self.plan["spec"]

    def data_path(self, written: str) -> Path:
        """A dataset or schema path as written in the spec, resolved against the spec's folder."""
        return (self.spec_dir / written).resolve()

    @property
    def spec_file(self) -> Path | None:
        name = (self.plan.get("metadata") or {}).get("spec_file")
        if not name:
            return None
        p = Path(name)
        candidate = p if p.is_absolute() else self.spec_dir / p.name
        return candidate if candidate.is_file() else None


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError("FT0805", f"{path} is missing ({what})") from None
    except (OSError, ValueError) as exc:
        raise RunFolderError("FT0805", f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RunFolderError("FT0805", f"{path} is not a JSON object")
    return data


MOVED_ASIDE = re.compile(r"^(.+)\.previous-\d{8}-\d{6}(?:-\d+)?$")  # verbs/launch._move_aside's names


def locate_spec_dir(run_dir: Path, plan: dict) -> Path:
    """The spec's folder seen from the run folder.

    plan.json's `paths.spec_dir` is relative to the folder the plan was compiled into; the run folder
    holds a copy, so that path is right only when both sit at the same depth. `derived.output_dir` is
    the run folder relative to the spec's folder, so stripping it from the run folder's path finds the
    spec's folder wherever the copy lives.
    """
    run_dir = run_dir.resolve()
    kept = MOVED_ASIDE.match(run_dir.name)
    if kept:  # `launch --overwrite` renamed it <dir>.previous-<time>: the spec sits where it did
        run_dir = run_dir.with_name(kept.group(1))
    written = (plan.get("paths") or {}).get("spec_dir")
    output_dir = (plan.get("derived") or {}).get("output_dir") or (
        plan.get("spec", {}).get("output") or {}
    ).get("dir")
    if written is not None and output_dir:
        candidate = (run_dir / written).resolve()
        if (candidate / output_dir).resolve() == run_dir:
            return candidate
    if output_dir and not Path(output_dir).is_absolute():
        parts = Path(os.path.normpath(output_dir)).parts
        if parts and run_dir.parts[-len(parts) :] == parts:
            return Path(*run_dir.parts[: -len(parts)]) if len(run_dir.parts) > len(parts) else Path("/")
    if written is not None:
        return (run_dir / written).resolve()
    raise RunFolderError("FT0805", f"{run_dir / 'plan.json'} does not say where the spec's folder is")


def open_run(run_dir: str | os.PathLike) -> RunFolder:
    """Load a finished run folder; raises RunFolderError when it cannot be evaluated."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunFolderError("FT0805", f"{path} is not a folder")
    plan = _read_json(path / "plan.json", "the plan the run trained")
    meta = plan.get("metadata") or {}
    if meta.get("kind") != "ftspec-plan" or meta.get("schema_version") != 1:
        raise RunFolderError(
            "FT0805",
            f"{path / 'plan.json'} is not a plan this ftspec reads "
            f"(kind {meta.get('kind')!r}, schema_version {meta.get('schema_version')!r})",
        )
    if not isinstance(plan.get("spec"), dict):
        raise RunFolderError("FT0805", f"{path / 'plan.json'} holds no resolved spec")
    run = _read_json(path / "run.json", "written when training ends")
    status = run.get("exit_status", run.get("status"))
    if status == "running":
        raise RunFolderError(
            "FT0806",
            "run.json says it is still running: wait for `ftspec launch` to end, "
            "or, if it was killed, resume it",
        )
    if status not in OK_STATUSES:
        raise RunFolderError("FT0806", f"run.json says exit status {status!r}")
    if not (path / "adapter").is_dir() and not (path / "merged").is_dir():
        raise RunFolderError("FT0805", f"{path} holds neither adapter/ nor merged/")
    lock = None
    if (path / "lock.json").is_file():
        lock = _read_json(path / "lock.json", "the compile lock")
    return RunFolder(path=path, plan=plan, run=run, lock=lock, spec_dir=locate_spec_dir(path, plan))


def train_files(spec: dict) -> list[tuple[str, str, str]]:
    """(role, pointer, path as written) of the training files: the eval/train overlap is measured on
    them, so a train file edited after the run (say, leaked eval rows removed) would clear a model that
    trained on contaminated data."""
    return [("train", entry.pointer, entry.path) for entry in train_entries(spec.get("dataset"))]


def eval_files(spec: dict) -> list[tuple[str, str, str]]:
    """(role, pointer, path as written) of every file the gate's numbers depend on besides train."""
    out = []
    dataset = spec.get("dataset") or {}
    if dataset.get("eval"):
        out.append(("eval", "/dataset/eval", dataset["eval"]))
    evaluation = spec.get("evaluation") or {}
    regression = evaluation.get("regression") or {}
    if regression.get("prompts"):
        out.append(("regression", "/evaluation/regression/prompts", regression["prompts"]))
    schema = (evaluation.get("task") or {}).get("json_schema")
    if schema:
        out.append(("json_schema", "/evaluation/task/json_schema", schema))
    return out


def _locked_digest(lock: dict, written: str, resolved: Path, spec_dir: Path) -> str | None:
    """The digest lock.json records for a file. compiler/lockfile.py writes `data` as a list of
    {role, path, sha256} with the path as written in the spec; a {path: sha256} mapping is read too.
    Paths compare after normalisation ("./data/x" is "data/x")."""
    data = lock.get("data")
    keys = {os.path.normpath(written)}
    try:
        keys.add(os.path.normpath(resolved.relative_to(spec_dir.resolve()).as_posix()))
    except ValueError:
        pass

    def matches(path: object) -> bool:
        return isinstance(path, str) and bool(path) and os.path.normpath(path) in keys

    if isinstance(data, list):
        for entry in data:
            if isinstance(entry, dict) and matches(entry.get("path")):
                return entry.get("sha256")
    elif isinstance(data, dict):
        for key, entry in data.items():
            if isinstance(entry, str) and matches(key):
                return entry
            if isinstance(entry, dict) and (matches(key) or matches(entry.get("path"))):
                return entry.get("sha256")
    return None


def check_eval_data(folder: RunFolder, locate=None) -> list[Diagnostic]:
    """Eval, regression, schema and train files against lock.json: FT0804 on a changed file, FT0809
    without a lock, FT0813 for an eval file the lock does not cover (train files the lock does not name
    are not reported: the overlap check reads them, the task score does not)."""
    from ftspec.compiler.core.diagnostics import Location

    locate = locate or (lambda pointer: Location(pointer=pointer))
    files = eval_files(folder.spec)
    if not files:
        return []
    if folder.lock is None:
        return [make("FT0809", locate("/dataset"))]
    out = []
    for role, pointer, written in files + train_files(folder.spec):
        resolved = folder.data_path(written)
        expected = _locked_digest(folder.lock, written, resolved, folder.spec_dir)
        if expected is None:
            if role == "train":
                continue
            out.append(make("FT0813", locate(pointer), role=role, path=written))
            continue
        try:
            actual = source_sha256(resolved)  # a data file, or a save_to_disk folder
        except OSError as exc:
            actual = f"unreadable ({exc.strerror or exc})"
        if actual != expected:
            out.append(
                make(
                    "FT0804",
                    locate(pointer),
                    role=role,
                    path=written,
                    actual=actual[:12] + "...",
                    expected=expected[:12] + "...",
                )
            )
    return out
