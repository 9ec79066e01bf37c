"""bench.py: each model's FLOP rate as a fraction of a matmul measured in the dtype under test, and
--profile's operator table."""
import json
import os
import re
import subprocess
import sys

import pytest

from backpacks.devices import resolve_dtype

TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--n_senses=4', '--block_size=32', '--vocab_size=64',
        '--batch_size=2', '--warmup=1', '--steps=2']
ONE_THREAD = {**os.environ, 'OMP_NUM_THREADS': '1'}


@pytest.mark.slow
def test_bench_divides_by_the_matmul_rate_of_its_dtype(repo_root):
    dtype = resolve_dtype('auto', 'cpu')[0]  # bfloat16 only where the CPU multiplies it natively
    out = subprocess.run([sys.executable, 'bench.py', *TINY, f'--dtype={dtype}', '--device=cpu'], cwd=repo_root,
                         env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    yardstick, transformer, backpack, ratios = (json.loads(line) for line in out.stdout.splitlines())
    assert yardstick['dtype'] == dtype and yardstick[f'matmul_2048_{dtype}_GFLOPs'] > 0
    for r in (transformer, backpack):
        assert r[f'fraction_of_{dtype}_matmul'] == pytest.approx(
            r['achieved_GFLOPs'] / yardstick[f'matmul_2048_{dtype}_GFLOPs'], abs=6e-4)  # rounded to 3 decimals
    assert ratios['backpack_over_transformer']['achieved_flops'] == pytest.approx(
        backpack['achieved_GFLOPs'] / transformer['achieved_GFLOPs'], abs=6e-4)


@pytest.mark.slow
def test_profile_lists_the_top_operators(repo_root):
    out = subprocess.run([sys.executable, 'bench.py', *TINY, '--device=cpu', '--profile', '--top=5'], cwd=repo_root,
                         env=ONE_THREAD, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines() if 'self CPU time per step' in line] == \
        ['transformer', 'backpack']
    lines = [line for line in out.stdout.splitlines() if re.search(r'%\s+[\d.]+ ms/step', line)]
    assert len(lines) == 10 and any(line.startswith('aten::mm') for line in lines)
    for model_lines in (lines[:5], lines[5:]):
        shares = [float(re.search(r'([\d.]+)%', line).group(1)) for line in model_lines]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100
