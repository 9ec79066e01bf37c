"""The CUDA path, run on the CPU through tests/cuda_standin.py: train.py's start and first steps on one GPU,
resuming on another GPU, pinned batches, one host sync per evaluation, SDPA's fused kernels for every shape,
the MFU yardstick, and the stand-ins' own contracts."""
import pytest
import torch

import model
import train
from backpacks import devices, metrics, objectives
from backpacks.checkpoint import load_checkpoint
from backpacks.dataset import BatchSampler
from model import product_mixing, sdpa_mixing
from tiny import SENSIA_TRAIN_ARGS, TINY_BENCH_ARGS, error_of, tiny_model, train_args

ON_GPU = train_args('--device=cuda', '--dtype=auto')


# ----------------------------------------------------------------------------- the stand-ins' contracts

def test_the_standins_keep_torch_cuda_contracts(fake_gpu):
    with pytest.raises(ValueError, match='Expected a torch.device with a specified index'):
        torch.cuda.set_device('cuda')  # what every single-GPU train.py run died of
    with pytest.raises(RuntimeError, match='invalid device ordinal'):
        torch.cuda.set_device('cuda:1')
    with pytest.raises(RuntimeError, match='invalid device ordinal'):
        torch.zeros(1, device='cuda:1')
    with pytest.raises(ValueError, match='device type'):
        torch.amp.GradScaler('cuda:0')
    with pytest.raises(AssertionError, match='pin a contiguous tensor'):
        torch.arange(4).to('cuda', non_blocking=True)
    with pytest.raises(AssertionError, match='pin a contiguous tensor'):
        torch.arange(12).view(3, 4)[:, :-1].pin_memory().to('cuda', non_blocking=True)  # pinned but strided
    torch.arange(4).pin_memory().to('cuda', non_blocking=True)
    assert torch.cuda.get_device_capability() == (8, 0) and torch.cuda.is_bf16_supported(including_emulation=False)
    fake_gpu.configure(name='Tesla T4', capability=(7, 5))
    assert not torch.cuda.is_bf16_supported(including_emulation=False)
    with torch.autocast('cuda', dtype=torch.float16):  # the CPU's autocast runs alongside
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16


def test_sdpa_standin_finds_the_math_fallback(fake_gpu):
    q = torch.randn(1, 2, 4, 6)  # head size 6: no fused kernel takes it in half precision
    with torch.autocast('cuda', dtype=torch.bfloat16):
        torch.nn.functional.scaled_dot_product_attention(q.bfloat16(), q.bfloat16(), q.bfloat16())
    assert fake_gpu.sdpa_calls == [[]]
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION):
        with pytest.raises(RuntimeError, match='No available kernel'):
            torch.nn.functional.scaled_dot_product_attention(q.bfloat16(), q.bfloat16(), q.bfloat16())


# ----------------------------------------------------------------------------- train.py on one GPU

@pytest.mark.parametrize('device', ['cuda', 'auto'])
def test_single_gpu_training_starts_and_trains(fake_gpu, synthetic_dataset, tmp_path, capsys, device):
    train.main([*ON_GPU, f'--device={device}', f'--data_dir={synthetic_dataset}', '--max_iters=4',
                f'--out_dir={tmp_path}'])
    out = capsys.readouterr().out
    assert '1 process(es) on cuda:0, bfloat16' in out
    ckpt = load_checkpoint(tmp_path / 'ckpt.pt')
    assert ckpt['iter_num'] == 4 and ckpt['dtype'] == 'bfloat16' and ckpt['config']['dtype'] == 'auto'
    assert ckpt['training_log'][-1]['mfu_yardstick'] == 'NVIDIA A100-SXM4-80GB bfloat16 datasheet peak, 312 TFLOP/s'
    assert fake_gpu.sdpa_calls and fake_gpu.math_fallbacks() == 0


def test_a_run_started_on_an_a100_resumes_on_a_t4(fake_gpu, synthetic_dataset, tmp_path, capsys):
    """A Colab reconnect: dtype=auto resolves again (float16 with a GradScaler on a T4) instead of refusing
    the bfloat16 the first GPU had; deterministic=True, which promises a bitwise continuation, refuses."""
    common = [*ON_GPU, f'--data_dir={synthetic_dataset}', f'--out_dir={tmp_path}']
    train.main([*common, '--max_iters=4'])
    fake_gpu.configure(name='Tesla T4', capability=(7, 5))
    assert error_of(['--init_from=resume', f'--out_dir={tmp_path}', '--max_iters=6', '--deterministic']).startswith(
        f"error: {tmp_path / 'ckpt.pt'} trained in bfloat16 and this machine resolves dtype=auto to float16")
    capsys.readouterr()
    train.main(['--init_from=resume', f'--out_dir={tmp_path}', '--max_iters=6'])
    assert 'warning: the run trained in bfloat16 and continues in float16 here' in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / 'ckpt.pt')
    assert ckpt['iter_num'] == 6 and ckpt['dtype'] == 'float16' and ckpt['scaler']['scale'] > 0
    assert ckpt['training_log'][-1]['mfu_yardstick'] == 'Tesla T4 float16 datasheet peak, 65 TFLOP/s'


def test_float32_on_a_gpu_is_measured_against_tf32(fake_gpu, synthetic_dataset, tmp_path):
    train.main([*ON_GPU, '--dtype=float32', f'--data_dir={synthetic_dataset}', '--max_iters=2', f'--out_dir={tmp_path}'])
    assert load_checkpoint(tmp_path / 'ckpt.pt')['training_log'][-1]['mfu_yardstick'] == \
        'NVIDIA A100-SXM4-80GB TF32 datasheet peak, 156 TFLOP/s'


def test_an_unlisted_gpu_is_measured_with_a_large_matmul(fake_gpu, monkeypatch):
    assert devices.CUDA_YARDSTICK[0] >= 4096  # 1024 is far from a GPU's peak, which inflated MFU
    fake_gpu.configure(name='Some Future GPU', capability=(10, 0))
    monkeypatch.setattr(devices, 'CUDA_YARDSTICK', (64, 0.0))  # a stand-in GPU is a CPU: keep it small
    assert devices.peak_flops('cuda:0', 'bfloat16')[1].startswith('measured bfloat16 64x64 matmul on cuda:0')


# ----------------------------------------------------------------------------- data and evaluation

def test_batches_reach_the_gpu_as_pinned_contiguous_copies(fake_gpu, synthetic_dataset):
    on_gpu = BatchSampler(synthetic_dataset, seed=3).get_batch('val', 4, 16, 'cuda', with_language=True)
    on_cpu = BatchSampler(synthetic_dataset, seed=3).get_batch('val', 4, 16, 'cpu', with_language=True)
    assert all(torch.equal(a, b) for a, b in zip(on_gpu, on_cpu))


def test_evaluation_syncs_with_the_host_once(fake_gpu):
    """estimate_losses keeps its sums on the device: one sync for the whole evaluation, not per batch."""
    net = tiny_model()

    class Batches:  # device batches, made before counting
        batches = [(torch.randint(0, 20, (2, 8), device='cuda'), torch.randint(0, 20, (2, 8), device='cuda'),
                    torch.randint(0, 2, (2, 8), device='cuda')) for _ in range(6)]

        def get_batch(self, split, *args, with_language=False):
            x, y, lang = self.batches.pop()
            return (x, y, lang) if with_language else (x, y)
    cfg = {'eval_iters': 3, 'batch_size': 2, 'block_size': 8}
    fake_gpu.host_syncs = 0
    losses = objectives.estimate_losses(net, Batches(), cfg, torch.autocast('cuda', dtype=torch.bfloat16), 'cuda:0', False)
    assert fake_gpu.host_syncs == 1 and all(v > 0 for v in losses.values())


# ----------------------------------------------------------------------------- SDPA kernels

@pytest.mark.parametrize('n_embd, n_senses, capability, dtype', [
    (32, 4, (8, 0), torch.bfloat16),   # sense head 8
    (96, 16, (8, 0), torch.bfloat16),  # sense head 6: padded to 8
    (100, 4, (8, 0), torch.float16),   # senses 100 wide: padded to 104
    (48, 16, (7, 5), torch.float16),   # a T4: head 3
    (48, 16, (7, 5), torch.float32),
    (36, 12, (9, 0), torch.float32),   # head 3 in float32 on an H100: alignment 4
])
def test_the_sense_mixing_gets_a_fused_kernel_at_every_size(fake_gpu, n_embd, n_senses, capability, dtype):
    """The mixing and the backbone's attention never fall back to the math kernel, and the padding leaves o
    as the reference product computes it."""
    fake_gpu.configure(capability=capability)
    torch.manual_seed(0)
    B, T, k, width = 2, 5, n_senses, n_embd // n_senses
    q, keys = torch.randn(B, k, T, width, dtype=dtype), torch.randn(B, k, T, width, dtype=dtype)
    senses = torch.randn(B, k, T, n_embd, dtype=dtype)
    o = sdpa_mixing(q, keys, senses, None)
    torch.testing.assert_close(o.float(), product_mixing(q.float(), keys.float(), senses.float(), None),
                               atol=2e-2 if dtype != torch.float32 else 1e-5, rtol=2e-2)
    # a whole model at the sizes under test, with 3 heads (n_embd rounded down to a multiple of 3)
    net = tiny_model(n_head=3, n_embd=n_embd - n_embd % 3, n_senses=n_senses) \
        if (n_embd - n_embd % 3) % n_senses == 0 else None
    if net is not None:
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            net(torch.randint(0, 20, (2, 8), device='cuda'))
    assert fake_gpu.math_fallbacks() == 0, fake_gpu.sdpa_calls


def test_without_padding_the_mixing_would_fall_back(fake_gpu, monkeypatch):
    """The guard above fails where the padding is missing (the defect it fixes)."""
    monkeypatch.setattr(model, 'FUSED_SDPA_ALIGNMENT', 1)
    q = torch.randn(1, 16, 4, 6, dtype=torch.bfloat16)
    sdpa_mixing(q, q, torch.randn(1, 16, 4, 96, dtype=torch.bfloat16), None)
    assert fake_gpu.math_fallbacks() == 1


def test_the_loss_sums_are_a_batch_of_device_tensors():
    logits, targets = torch.randn(2, 3, 5), torch.tensor([[1, 2, -1], [0, 4, 3]])
    sums = metrics.language_loss_sums(logits, targets)
    assert sums.shape == (3, 2) and sums[0, 1] == 5


# ----------------------------------------------------------------------------- SENSIA on a GPU

def test_sensia_trains_on_a_gpu_and_evaluates_in_its_dtype(fake_gpu, sample_dataset, tmp_path, monkeypatch):
    from backpacks import sensia
    dtypes = []
    real = sensia.pair_metrics
    monkeypatch.setattr(sensia, 'pair_metrics',
                        lambda *a: dtypes.append(torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu')
                                                 else torch.float32) or real(*a))
    args = train_args('--device=cuda', '--dtype=auto', base=SENSIA_TRAIN_ARGS, drop=['--deterministic'])
    train.main([*args, f'--data_dir={sample_dataset}', '--max_iters=2', '--eval_interval=2', f'--out_dir={tmp_path}'])
    assert dtypes == [torch.bfloat16, torch.bfloat16] and fake_gpu.math_fallbacks() == 0
    log = load_checkpoint(tmp_path / 'ckpt.pt')['training_log']
    assert log[-1]['tokens_per_s'] > 0


def test_throughput_counts_the_positions_computed():
    """SENSIA's padded pairs are shorter than block_size: tokens/s and MFU come from what each batch held."""
    import types
    net = tiny_model()
    run = types.SimpleNamespace(window_positions={20: 400, 32: 320}, window_time=2.0, world_size=2, master=True,
                                raw_model=net, mfu_peak=1e12)
    tokens_per_s, mfu = train.throughput(run)
    assert tokens_per_s == 720 * 2 / 2.0
    assert mfu == pytest.approx((net.flops_per_token(20) * 400 + net.flops_per_token(32) * 320) / 2.0 / 1e12)


# ----------------------------------------------------------------------------- generation and evaluation

def test_generation_and_evaluation_run_on_a_gpu(fake_gpu, sample_dataset, make_checkpoint, tmp_path, capsys):
    import evaluate
    import sample
    run = make_checkpoint(tmp_path / 'run', sample_dataset)
    sample.main(['--out_dir', str(run), '--device', 'cuda', '--num_samples', '2', '--max_new_tokens', '8'])
    sample.main(['--out_dir', str(run), '--device', 'cuda:0', '--translate', 'the parliament', '--beam', '2'])
    evaluate.main(['--out_dir', str(run), '--device', 'cuda', '--tasks', 'loss,translation,sentence,senses', '--loss_batches', '2',
                   '--translation_samples', '4', '--sentence_pairs', '8', '--no-fetch'])
    assert 'wrote' in capsys.readouterr().out and fake_gpu.sdpa_calls and fake_gpu.math_fallbacks() == 0


def test_bench_measures_a_step_on_a_gpu(fake_gpu, monkeypatch):
    import sys
    import bench
    monkeypatch.setattr(sys, 'argv', ['bench.py', *TINY_BENCH_ARGS, '--device=cuda', '--steps=1'])
    args = bench.parse_args()
    assert args.dtype == 'bfloat16' and torch.backends.cuda.matmul.allow_tf32
    result = bench.bench_model('backpack', args)
    assert result['peak_memory_MB'] == 0 and result['tokens_per_s'] > 0 and fake_gpu.math_fallbacks() == 0
