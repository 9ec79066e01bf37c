"""experiments/gpu_check: its reports on fabricated outputs, its SDPA probe on the CPU, and the whole script
on a machine without CUDA (it says so in one line and exits 0 after the checks that need no GPU)."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from backpacks.checkpoint import save_checkpoint
from experiments import gpu_check
from model import sdpa_mixing
from tiny import tiny_config

LINE = re.compile(r"^(ok  |WARN|FAIL) [\w .+-]+: ")


def test_mfu_against_the_datasheet_or_unknown():
    assert gpu_check.mfu_text(98.9e12, 'NVIDIA H100 80GB HBM3', 'bfloat16') == \
        "MFU 0.100 of the bfloat16 datasheet peak 989 TFLOP/s"
    assert gpu_check.mfu_text(1e12, 'Some Future GPU', 'bfloat16') == \
        "MFU unknown: no bfloat16 datasheet peak for 'Some Future GPU' in backpacks/devices.py CUDA_PEAKS"
    assert gpu_check.mfu_text(1e12, 'Tesla T4', 'bfloat16').startswith("MFU unknown")  # no bf16 tensor cores


def test_sdpa_probe_names_the_kernel_and_its_accuracy():
    config = tiny_config(block_size=16)  # the block the report names (n_embd 32 and 4 senses are tiny_config's)
    status, text = gpu_check.sdpa_report(config, 1, 'cpu', 'float32')
    assert status == 'ok' and text.startswith('MATH (n_embd 32, 4 senses of 8, batch 1, block 16, float32 on cpu')
    assert ('runs under FLASH_ATTENTION no, CUDNN_ATTENTION no, EFFICIENT_ATTENTION no, MATH yes;' in text
            and 'the CPU trains with product_mixing instead' in text)
    error = float(re.search(r"max \|o - reference\| (\S+) of max \|reference\| --", text).group(1))
    assert error < 1e-5


def test_sdpa_probe_fails_a_kernel_that_computes_the_mixing_wrong(monkeypatch):
    config = tiny_config(block_size=16)
    monkeypatch.setattr(gpu_check, 'sdpa_mixing', lambda q, k, senses, mask: 1.01 * sdpa_mixing(q, k, senses, mask))
    status, text = gpu_check.sdpa_report(config, 1, 'cpu', 'float32')
    assert status == 'FAIL' and re.search(r"max \|o - reference\| 1\.0e-02 of max \|reference\|, above the float32 "
                                          r"tolerance 0\.0001$", text)


def test_the_mixing_inputs_are_taken_from_the_forward():
    """What the Backpack's forward hands to its mixing: sense queries and keys (B,k,T,d/k), senses (B,k,T,d)."""
    config = tiny_config(block_size=16)  # the T of the shapes below (n_embd 32 and 4 senses are tiny_config's)
    q, k, senses = gpu_check.mixing_inputs(config, 3, 'cpu', 'float32')
    assert q.shape == k.shape == (3, 4, 16, 8) and senses.shape == (3, 4, 16, 32)
    assert not torch.equal(q, k) and q.dtype == senses.dtype == torch.float32


def test_the_kernel_is_read_from_the_autograd_graph():
    """The CPU's fused kernel takes equal widths only: q, k, v of 8 -> FLASH_ATTENTION; v of 32 -> MATH."""
    q, k = (torch.randn(1, 2, 4, 8, requires_grad=True) for _ in range(2))
    for width, kernel in ((8, 'FLASH_ATTENTION'), (32, 'MATH')):
        v = torch.randn(1, 2, 4, width, requires_grad=True)
        assert gpu_check.kernel_of(F.scaled_dot_product_attention(q, k, v, is_causal=True).sum(dim=1)) == kernel


def test_the_sdpa_shapes_are_the_configs():
    """backpack-micro, the study's and the main job's Backpack as their configs set them, and a sense head size
    that is no multiple of 8."""
    shapes = {name: (config, batch) for name, config, batch in gpu_check.mixing_shapes()}
    dims = lambda c: (c.n_layer, c.n_embd, c.n_senses, c.block_size, c.vocab_size)
    assert list(shapes) == ['backpack-micro', 'study', 'train_europarl_scratch', 'head size 6']
    assert (dims(shapes['backpack-micro'][0]), shapes['backpack-micro'][1]) == ((6, 384, 16, 512, 16384), 8)
    assert (dims(shapes['study'][0]), shapes['study'][1]) == ((4, 256, 16, 128, 16384), 16)
    main_job, batch = shapes['train_europarl_scratch']
    assert (dims(main_job), batch) == ((6, 384, 16, 512, 16384), 32)
    head = shapes['head size 6'][0]
    assert head.n_embd // head.n_senses == 6 and head.n_embd % head.n_senses == 0


def test_the_sdpa_check_prints_one_line_per_shape(capsys):
    """On the CPU, small: every shape's line, with its sense head size; the CUDNN kernel is reported too."""
    gpu_check.main(['sdpa', '--device', 'cpu', '--batch_size', '1', '--block_size', '8'])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(':')[0] for line in lines] == [
        'ok   sdpa mixing backpack-micro', 'ok   sdpa mixing study', 'ok   sdpa mixing train_europarl_scratch',
        'ok   sdpa mixing head size 6'] and all(map(LINE.match, lines))
    widths = ('n_embd 384, 16 senses of 24', 'n_embd 256, 16 senses of 16', 'n_embd 384, 16 senses of 24',
              'n_embd 96, 16 senses of 6')
    for line, width in zip(lines, widths):
        assert f"MATH ({width}, batch 1, block 8, float32 on cpu" in line and 'CUDNN_ATTENTION no' in line


def test_a_failing_shape_fails_the_check_after_every_line(monkeypatch, capsys):
    reports = iter([('ok', 'fine'), ('FAIL', 'wrong'), ('WARN', 'slow'), ('ok', 'fine')])
    monkeypatch.setattr(gpu_check, 'sdpa_report', lambda *args: next(reports))
    with pytest.raises(SystemExit) as stopped:
        gpu_check.main(['sdpa', '--device', 'cpu'])
    assert stopped.value.code == 1
    assert [line[:4] for line in capsys.readouterr().out.splitlines()] == ['ok  ', 'FAIL', 'WARN', 'ok  ']


def checkpoint_pair(tmp_path, make_checkpoint, sample_dataset):
    """Two copies of one run's checkpoint as ckpt.pt, with an optimizer state and a float16 scaler."""
    run = make_checkpoint(tmp_path / 'a', sample_dataset)
    ckpt = torch.load(run / 'best.pt', weights_only=True)
    ckpt.update(optimizer={'state': {0: {'exp_avg': torch.ones(2), 'exp_avg_sq': torch.ones(2)}}, 'param_groups': []},
                scaler={'scale': 1024.0, '_growth_tracker': 8}, config={'dtype': 'auto', 'device': 'cuda'},
                dtype='float16', iter_num=8)
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
    ckpt.update(config={'dtype': 'auto', 'compile': True}, dtype='bfloat16', training_log=[
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
    runs = [{'model': 'backpack', 'kv_cache': cached, 'sentences': 256, 'seconds': seconds,
             'sentences_per_s': round(256 / seconds, 1)} for cached, seconds in ((True, 2.0), (False, 10.0))]
    check = {'cache_check': 'ok', 'dtype': 'bfloat16', 'tolerance': 0.05, 'predictions_compared': 4000,
             'max_logit_diff': 0.03, 'max_relative_logit_diff': 0.002, 'divergences': 2, 'near_tie_divergences': 2,
             'identical_translations': 254}
    translation.write_text('\n'.join(json.dumps(line) for line in (*runs, check)))
    assert gpu_check.translation_report(translation) == (
        'ok', "backpack, 256 sentences greedy en-fr: 128.0 sentences/s with the KV cache, 25.6 without (5.0x); "
              "next-token logits at most 2.0e-03 of their scale apart (bfloat16 tolerance 0.05), 2 greedy "
              "divergence(s), 2 of them at near-ties, 254 of 256 translations identical")
    assert gpu_check.memory_report(translation)[0] == 'FAIL'
    translation.write_text('\n'.join(json.dumps(line) for line in runs))
    assert gpu_check.translation_report(translation)[0] == 'FAIL'


@pytest.mark.slow
@pytest.mark.smoke
def test_without_cuda_the_script_says_so_and_exits_0(repo_root, tmp_path):
    """Run as from an unactivated virtual environment: no python with torch on PATH, PYTHON names the
    interpreter (the one running the tests)."""
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'OUT': str(tmp_path / 'gpu_check'), 'OMP_NUM_THREADS': '1',
           'PATH': '/usr/bin:/bin', 'PYTHON': sys.executable}
    result = subprocess.run(['bash', 'experiments/gpu_check.sh'], cwd=repo_root, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith('no CUDA GPU here (torch ')
    assert lines[-1].startswith('no CUDA GPU: the CUDA tests, micro-model training and MFU')
    checks = lines[1:-1]
    assert [line.split(':')[0] for line in checks] == [
        'ok   sdpa mixing backpack-micro', 'ok   sdpa mixing study', 'ok   sdpa mixing train_europarl_scratch',
        'ok   sdpa mixing head size 6', 'ok   resume'] and all(map(LINE.match, checks))
