"""Shared fixtures: repository paths, the offline English-French data, a tiny prepared dataset."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def enfr_data_root():
    root = Path(os.environ.get("ENFR_DATA", REPO_ROOT.parent / "shared" / "data" / "en-fr"))
    if not root.is_dir():
        pytest.fail(f"English-French data not found at {root}: set ENFR_DATA")
    return root


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """The project's sample corpus prepared with a small BPE vocabulary (built once per session)."""
    out_root = tmp_path_factory.mktemp("data")
    subprocess.run(
        [sys.executable, "data/europarl/prepare.py", "--source", "local",
         "--corpus", "data/europarl/sample/parliament", "--name", "sample",
         "--out_root", str(out_root), "--vocab_size", "512"],
        cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    return out_root / "sample"
