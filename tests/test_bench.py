"""bench.py: each model's FLOP rate as a fraction of a matmul measured in the dtype under test, and
--profile's operator table."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from backpacks.devices import resolve_dtype
from tiny import TINY_BENCH_ARGS
ONE_THREAD = {**os.environ, 'OMP_NUM_THREADS': '1'}


@pytest.mark.slow
def test_bench_divides_by_the_matmul_rate_of_its_dtype(repo_root):
    dtype = resolve_dtype('auto', 'cpu')[0]  # bfloat16 only where the CPU multiplies it natively
    out = subprocess.run([sys.executable, 'bench.py', *TINY_BENCH_ARGS, f'--dtype={dtype}', '--device=cpu'],
                         cwd=repo_root, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
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
    out = subprocess.run([sys.executable, 'bench.py', *TINY_BENCH_ARGS, '--device=cpu', '--profile', '--top=5'],
                         cwd=repo_root, env=ONE_THREAD, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines() if 'self CPU time per step' in line] == \
        ['transformer', 'backpack']
    lines = [line for line in out.stdout.splitlines() if re.search(r'%\s+[\d.]+ ms/step', line)]
    assert len(lines) == 10 and any(line.startswith('aten::mm') for line in lines)
    for model_lines in (lines[:5], lines[5:]):
        shares = [float(re.search(r'([\d.]+)%', line).group(1)) for line in model_lines]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100


def tiny_args(**overrides):
    """bench.py's parsed arguments: TINY_BENCH_ARGS (all integers) in float32."""
    import argparse
    given = {arg[2:].split('=')[0]: int(arg.split('=')[1]) for arg in TINY_BENCH_ARGS}
    return argparse.Namespace(**{**given, 'dropout': 0.0, 'dtype': 'float32', 'seed': 0, 'data_dir': None, **overrides})


@pytest.mark.parametrize('model_type', ['transformer', 'backpack'])
def test_step_split_counts_each_piece_forward_and_backward(model_type):
    """split_ms names every piece; the Transformer has no sense network or mixing, the Backpack's get
    their forward and backward time; the pieces add up to the step."""
    import bench
    from model import PIECES
    torch.manual_seed(0)
    _, step = bench.training_step(model_type, tiny_args())
    step()
    split = bench.profiled_split(step, 10.0)
    assert list(split) == [*PIECES, 'optimizer', 'other']
    assert sum(split.values()) == pytest.approx(10.0, abs=0.5)
    assert split['backbone'] > 0 and split['head and loss'] > 0 and split['optimizer'] > 0
    assert (split['sense network'] > 0 and split['mixing'] > 0) == (model_type == 'backpack')


def test_backward_time_goes_to_the_piece_of_its_forward():
    import bench
    from torch.profiler import ProfilerActivity, profile, record_function
    x = torch.randn(64, 64, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function('mixing'):
            y = (x @ x).sum()
        y.backward()
    split = bench.step_split(prof.events())
    forward = [e for e in prof.events() if e.name == 'mixing']
    backward = [e for e in prof.events() if e.name.startswith('autograd::engine::evaluate_function: ')
                and 'AccumulateGrad' not in e.name]  # SumBackward0 and MmBackward0
    assert len(forward) == 1 and len(backward) == 2
    assert split['mixing'] == pytest.approx(sum(e.cpu_time_total for e in forward + backward) / 1e3)


def test_batches_of_a_prepared_dataset_or_one_random_batch_shared_by_both_models(sample_dataset):
    import bench
    x1, _ = bench.batches(tiny_args(), 'cpu')()
    assert torch.equal(x1, bench.batches(tiny_args(), 'cpu')()[0])  # the same for both models
    next_batch = bench.batches(tiny_args(data_dir=str(sample_dataset), vocab_size=512), 'cpu')
    (x, y), (x2, _) = next_batch(), next_batch()
    assert x.shape == (2, 32) and torch.equal(x[:, 1:], y[:, :-1]) and not torch.equal(x, x2)
