import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite the golden files (tests/golden/ and the others) from what the code produces now",
    )


def pytest_configure(config):
    # The golden tests read one switch; the flag sets it (FTSPEC_UPDATE_GOLDEN=1 keeps working).
    if config.getoption("--update-golden"):
        os.environ["FTSPEC_UPDATE_GOLDEN"] = "1"


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def _has_cuda() -> bool:
    try:
        import torch
    except Exception:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    # torch is imported only when a gpu test was collected: collection stays light otherwise
    if not gpu_items or (not os.environ.get("FTSPEC_SKIP_GPU") and _has_cuda()):
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in gpu_items:
        item.add_marker(skip)
