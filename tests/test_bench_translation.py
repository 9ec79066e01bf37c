"""experiments/bench_translation.py runs end to end and confirms cached == uncached decoding."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_translation_reports_speedup(sample_dataset, tmp_path, repo_root, make_checkpoint):
    run = make_checkpoint(tmp_path / "run", sample_dataset, model_type="backpack")
    result = subprocess.run([sys.executable, "-m", "experiments.bench_translation", "--out_dir", str(run),
                             "--samples", "4"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    cached, uncached, speedup = lines
    assert cached["kv_cache"] and not uncached["kv_cache"]
    assert cached["sentences"] == uncached["sentences"] == 4
    assert cached["tokens_generated"] == uncached["tokens_generated"]
    # the script fails when cached and uncached outputs differ (checked above by returncode 0); the
    # speed-up's value is a timing on a shared machine, too noisy on 4 sentences to assert (README
    # reports it measured on 500)
    assert set(speedup) == {"speedup_of_kv_cache"} and isinstance(speedup["speedup_of_kv_cache"], float)
