"""bench.py: each model's FLOP rate as a fraction of a matmul measured in the dtype under test."""
import json
import os
import subprocess
import sys

import pytest

TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--n_senses=4', '--block_size=32', '--vocab_size=64',
        '--batch_size=2', '--warmup=1', '--steps=2']


@pytest.mark.slow
def test_bench_divides_by_the_matmul_rate_of_its_dtype(repo_root):
    out = subprocess.run([sys.executable, 'bench.py', *TINY, '--dtype=bfloat16', '--device=cpu'], cwd=repo_root,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    yardstick, transformer, backpack, ratios = (json.loads(line) for line in out.stdout.splitlines())
    assert yardstick['dtype'] == 'bfloat16' and yardstick['matmul_2048_bfloat16_GFLOPs'] > 0
    for r in (transformer, backpack):
        assert r['fraction_of_bfloat16_matmul'] == pytest.approx(
            r['achieved_GFLOPs'] / yardstick['matmul_2048_bfloat16_GFLOPs'], abs=6e-4)  # rounded to 3 decimals
    assert ratios['backpack_over_transformer']['achieved_flops'] == pytest.approx(
        backpack['achieved_GFLOPs'] / transformer['achieved_GFLOPs'], abs=6e-4)
