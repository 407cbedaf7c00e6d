"""The tree shows the pipeline: stage folders, packaging that lists them, and import contracts that hold."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _packages_on_disk() -> set[str]:
    found = set()
    for top, name in (
        ("compiler", "ftspec.compiler"),
        ("runtime", "ftspec.runtime"),
        ("schemas", "ftspec.schemas"),
    ):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_folder_is_listed_for_setuptools():
    # package-dir mapping cannot auto-discover: a folder missing here installs without its modules
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() == listed


def test_compiler_root_holds_at_most_six_modules():
    modules = sorted(p.name for p in (ROOT / "compiler").glob("*.py"))
    assert len(modules) <= 6, modules


def test_every_stage_folder_says_what_it_does():
    for init in (ROOT / "compiler").rglob("__init__.py"):
        text = init.read_text(encoding="utf-8").strip()
        assert text.startswith('"""'), f"{init.relative_to(ROOT)} has no one-line job description"


@pytest.mark.skipif(
    shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
    reason="import-linter is not installed (pip install -e '.[dev]')",
)
def test_import_contracts_hold():
    """Layers in pipeline order (core at the bottom), the compiler never imports the runtime or the
    training stack, and the runtime uses only the compiler's lower rooms (pyproject [tool.importlinter])."""
    exe = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
