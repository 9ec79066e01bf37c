"""experiments/gpu_check: its reports on fabricated outputs, its SDPA probe on the CPU, and the whole script
on a machine without CUDA (it says so in one line and exits 0 after the checks that need no GPU)."""
import json
import os
import re
import subprocess

import pytest
import torch

from backpacks.checkpoint import save_checkpoint
from experiments import gpu_check

LINE = re.compile(r"^(ok  |WARN|FAIL) [\w .+-]+: ")


def test_mfu_against_the_datasheet_or_unknown():
    assert gpu_check.mfu_text(98.9e12, 'NVIDIA H100 80GB HBM3', 'bfloat16') == \
        "MFU 0.100 of the bfloat16 datasheet peak 989 TFLOP/s"
    assert gpu_check.mfu_text(1e12, 'Some Future GPU', 'bfloat16') == \
        "MFU unknown: no bfloat16 datasheet peak for 'Some Future GPU' in backpacks/hardware.py CUDA_PEAKS"
    assert gpu_check.mfu_text(1e12, 'Tesla T4', 'bfloat16').startswith("MFU unknown")  # no bf16 tensor cores


def test_sdpa_probe_names_the_kernel_and_its_accuracy():
    status, text = gpu_check.sdpa_report('cpu', 'float32', batch_size=1, block_size=16)
    assert status == 'ok' and text.startswith('MATH (backpack-micro, batch 1, block 16, float32 on cpu')
    assert 'kernels that run it: MATH;' in text and 'the CPU trains with product_mixing instead' in text
    error = float(re.search(r"max \|o - reference\| (\S+) --", text).group(1))
    assert error < 1e-5


def checkpoint_pair(tmp_path, make_checkpoint, sample_dataset):
    """Two copies of one run's checkpoint as ckpt.pt, with an optimizer state and a float16 scaler."""
    run = make_checkpoint(tmp_path / 'a', sample_dataset)
    ckpt = torch.load(run / 'best.pt', weights_only=True)
    ckpt.update(optimizer={'state': {0: {'exp_avg': torch.ones(2), 'exp_avg_sq': torch.ones(2)}}, 'param_groups': []},
                scaler={'scale': 1024.0, '_growth_tracker': 8}, config={'dtype': 'float16', 'device': 'cuda'},
                iter_num=8)
    for name in ('a', 'b'):
        (tmp_path / name).mkdir(exist_ok=True)
        save_checkpoint(ckpt, tmp_path / name / 'ckpt.pt')
    return ckpt


def test_bitwise_report_finds_any_difference(tmp_path, make_checkpoint, sample_dataset):
    ckpt = checkpoint_pair(tmp_path, make_checkpoint, sample_dataset)
    assert gpu_check.bitwise_report(tmp_path / 'a', tmp_path / 'b') == (
        'ok', "stopped, resumed and bitwise equal to the straight run (float16 on cuda, iteration 8, "
              "GradScaler scale 1024 after 8 steps)")
    ckpt['optimizer']['state'][0]['exp_avg_sq'] = torch.tensor([1.0, 1.0 + 2 ** -20])
    save_checkpoint(ckpt, tmp_path / 'b' / 'ckpt.pt')
    status, text = gpu_check.bitwise_report(tmp_path / 'a', tmp_path / 'b')
    assert status == 'FAIL' and text.endswith(': optimizer.0.exp_avg_sq')


def test_training_report_gives_throughput_and_mfu(tmp_path, make_checkpoint, sample_dataset):
    ckpt = checkpoint_pair(tmp_path, make_checkpoint, sample_dataset)
    ckpt.update(config={'dtype': 'bfloat16', 'compile': True}, training_log=[
        {'iter': 100, 'val_loss': 5.0, 'tokens_per_s': 1000.0}, {'iter': 200, 'val_loss': 4.0, 'tokens_per_s': 2e6}])
    save_checkpoint(ckpt, tmp_path / 'a' / 'ckpt.pt')
    status, text = gpu_check.training_report(tmp_path / 'a', 'NVIDIA A100-SXM4-80GB')
    assert status == 'ok' and 'bfloat16, compiled: 2,000,000 tokens/s over the last 100 of 200 iterations' in text
    assert re.search(r"MFU 0\.\d{3} of the bfloat16 datasheet peak 312 TFLOP/s; val loss 4\.000$", text)


def test_benchmark_reports_read_the_scripts_json_lines(tmp_path):
    bench = tmp_path / 'bench.log'
    bench.write_text('warming up\n' + '\n'.join(json.dumps(r) for r in (
        {'device': 'cuda'}, {'model': 'transformer', 'peak_memory_MB': 2100, 'tokens_per_s': 90000},
        {'model': 'backpack', 'peak_memory_MB': 3300, 'tokens_per_s': 60000})) + '\n')
    assert gpu_check.memory_report(bench) == ('ok', "peak memory of a training step: Backpack 3,300 MiB (60,000 "
                                                    "tokens/s), Transformer 2,100 MiB (90,000 tokens/s)")
    translation = tmp_path / 'translation.log'
    translation.write_text('\n'.join(json.dumps({'model': 'backpack', 'kv_cache': cached, 'sentences': 256,
                                                 'seconds': seconds, 'sentences_per_s': round(256 / seconds, 1)})
                                     for cached, seconds in ((True, 2.0), (False, 10.0))))
    assert gpu_check.translation_report(translation) == (
        'ok', "backpack, 256 sentences greedy en-fr: 128.0 sentences/s with the KV cache, 25.6 without (5.0x), "
              "identical translations")
    assert gpu_check.memory_report(translation)[0] == 'FAIL'


@pytest.mark.slow
def test_without_cuda_the_script_says_so_and_exits_0(repo_root, tmp_path):
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'OUT': str(tmp_path / 'gpu_check'), 'OMP_NUM_THREADS': '1'}
    result = subprocess.run(['bash', 'experiments/gpu_check.sh'], cwd=repo_root, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith('no CUDA GPU here (torch ')
    assert lines[-1].startswith('no CUDA GPU: the CUDA tests, micro-model training and MFU')
    checks = lines[1:-1]
    assert [line.split(':')[0] for line in checks] == ['ok   sdpa mixing', 'ok   resume'] and all(map(LINE.match, checks))
