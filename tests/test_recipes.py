"""The CPU recipes at toy sizes (SMOKE=1): experiments/tiny_comparison.sh and experiments/sensia_tiny.sh run every
step, with the offline data folder or without it (CI runs these again with ENFR_DATA naming a missing folder)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def enfr_data():
    """The offline data folder the recipes find, as they look for it; None without one."""
    root = Path(os.environ.get("ENFR_DATA", REPO_ROOT.parent / "shared" / "data" / "en-fr"))
    return root if root.is_dir() else None


def smoke(recipe, out, **settings):
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2",
           "PYTHON": sys.executable, **settings}  # the interpreter running the tests, activated or not
    done = subprocess.run(["bash", f"experiments/{recipe}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.smoke
def test_smoke_tiny_comparison_trains_evaluates_verifies_and_compares(tmp_path):
    stdout = smoke("tiny_comparison.sh", tmp_path / "runs", INSTALL="0")  # a test installs nothing
    report = tmp_path / "runs" / "tiny_sample_comparison" / "comparison.md"
    assert stdout.splitlines()[-1] == f"comparison report: {report}"
    assert "| test loss (all) |" in report.read_text() and (report.parent / "loss_curves.png").is_file()
    assert stdout.count("verify_evaluation: ") == 2 and "FAIL" not in stdout
    assert sorted(p.name for p in (tmp_path / "runs" / "data").iterdir()) == ["sample"]  # not the repository's data/
    data = enfr_data()
    assert ("PASS wordsim" in stdout) == (data is not None and (data / "wordsim").is_dir())


@pytest.mark.slow
@pytest.mark.smoke
def test_smoke_sensia_adapts_three_ways_and_tables_them(tmp_path):
    stdout = smoke("sensia_tiny.sh", tmp_path / "sensia", RUN_MCL="1")
    table = (tmp_path / "sensia" / "comparison.md").read_text()
    assert table in stdout
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ") and " | " in line}
    assert {"english", "sensia", "lm_only", "mcl"} <= set(rows)
    data = enfr_data()
    if data is not None and (data / "lexicon" / "muse-en-fr.0-5000.tsv").is_file():
        assert "skipped" not in table and "16 test pairs" in table
    else:  # no dictionary: every run says so in its row
        assert all("skipped: lexicon/muse-en-fr.0-5000.tsv" in rows[run] for run in ("english", "sensia", "lm_only", "mcl"))
