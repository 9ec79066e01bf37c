"""hardware.py: the dtype 'auto' picks, and the yardsticks MFU is measured against."""
import re

import pytest
import torch

from backpacks import hardware


@pytest.mark.parametrize('flags, expected', [
    ({'avx512_f', 'amx_tile', 'amx_bf16', 'avx512_bf16'}, 'bfloat16'),  # Sapphire Rapids
    ({'avx512_f', 'avx512_bf16'}, 'bfloat16'),                          # Cooper Lake, Zen 4
    ({'avx512_f', 'avx512_bw', 'avx2'}, 'float32'),                     # Skylake-SP: bf16 only emulated
    ({'avx2', 'fma3'}, 'float32'),
    (set(), 'float32'),                                                 # unknown CPU
])
def test_auto_dtype_on_cpu_follows_native_bf16(flags, expected):
    dtype, reason = hardware.resolve_dtype('auto', 'cpu', flags=flags)
    assert dtype == expected
    assert ('AMX' in reason or 'AVX512-BF16' in reason)


def test_auto_dtype_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(hardware, 'cpu_flags', lambda: {'avx2'})
    assert hardware.resolve_dtype('auto', 'cpu')[0] == 'float32'
    monkeypatch.setattr(hardware, 'cpu_flags', lambda: {'avx2', 'amx_bf16'})
    assert hardware.resolve_dtype('auto', 'cpu') == ('bfloat16', 'the CPU has AMX-BF16')


def test_explicit_dtype_is_kept_and_mps_defaults_to_float32():
    assert hardware.resolve_dtype('float32', 'cpu', flags={'amx_bf16'}) == ('float32', 'requested')
    assert hardware.resolve_dtype('auto', 'mps')[0] == 'float32'


def test_requested_emulated_dtype_runs_with_a_warning():
    dtype, reason = hardware.resolve_dtype('bfloat16', 'cpu', flags={'avx2'})
    assert dtype == 'bfloat16' and 'warning: this CPU emulates bfloat16' in reason
    assert hardware.resolve_dtype('bfloat16', 'cpu', flags={'amx_bf16'}) == ('bfloat16', 'requested')


@pytest.mark.parametrize('capability, expected', [
    ((7, 5), 'float16'),   # T4: bf16 only emulated, float16 tensor cores (with a GradScaler)
    ((7, 0), 'float16'),   # V100
    ((8, 0), 'bfloat16'),  # A100
    ((8, 9), 'bfloat16'),  # L4, RTX 4090
    ((9, 0), 'bfloat16'),  # H100
])
def test_auto_dtype_on_cuda_follows_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)  # as a T4 answers
    dtype, reason = hardware.resolve_dtype('auto', 'cuda')
    assert dtype == expected and f'{capability[0]}.{capability[1]}' in reason


def test_bfloat16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (6, 0))
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: including_emulation)
    with pytest.raises(hardware.DeviceError, match='no bfloat16 support; use --dtype=float16 or --dtype=auto'):
        hardware.resolve_dtype('bfloat16', 'cuda')
    with pytest.raises(hardware.DeviceError, match='unknown dtype'):
        hardware.resolve_dtype('int8', 'cpu')


def test_machine_is_described_with_its_bf16_support_and_threads(monkeypatch):
    monkeypatch.setattr(hardware, 'cpu_flags', lambda: {'avx2'})
    line = hardware.describe_machine('cpu')
    assert 'bfloat16 emulated' in line and f'{torch.get_num_threads()} threads' in line
    monkeypatch.setattr(hardware, 'cpu_flags', lambda: {'avx2', 'amx_bf16'})
    assert 'native bfloat16 (AMX-BF16)' in hardware.describe_machine('cpu')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Tesla T4')
    assert hardware.describe_machine('cuda:0') == 'Tesla T4, compute capability 7.5'


def test_cpu_flags_are_found_here():
    flags = hardware.cpu_flags()
    assert isinstance(flags, set)
    if torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512'):
        assert 'avx2' in flags


@pytest.mark.parametrize('name, dtype, expected', [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989e12),
    ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
    ('NVIDIA A100-SXM4-40GB', 'float16', 312e12),
    ('NVIDIA L40S', 'bfloat16', 362e12),
    ('NVIDIA L4', 'bfloat16', 121e12),
    ('NVIDIA GeForce RTX 4090', 'bfloat16', 165e12),
    ('Tesla T4', 'float16', 65e12),
    ('Tesla T4', 'bfloat16', None),         # no bf16 tensor cores: measured instead
    ('NVIDIA A100-SXM4-40GB', 'float32', 156e12),  # TF32 tensor cores, which train.py allows
    ('NVIDIA H100 80GB HBM3', 'float32', 495e12),
    ('Tesla T4', 'float32', 8.1e12),               # no TF32: the CUDA cores
    ('Tesla V100-SXM2-16GB', 'float16', 125e12),
    ('Some Future GPU', 'bfloat16', None),
])
def test_cuda_datasheet_peaks(name, dtype, expected):
    assert hardware.cuda_datasheet_peak(name, dtype) == pytest.approx(expected)


def test_float32_without_tf32_is_measured_against_the_cuda_cores():
    assert hardware.cuda_datasheet_peak('NVIDIA A100-SXM4-40GB', 'float32', tf32=False) == pytest.approx(19.5e12)


def test_cpu_yardstick_is_a_measured_matmul_in_the_run_dtype(monkeypatch):
    measured = []
    real = hardware.matmul_flops
    monkeypatch.setattr(hardware, 'matmul_flops',
                        lambda device, dtype, n, seconds: measured.append(dtype) or real(device, dtype, n, seconds))
    monkeypatch.setattr(hardware, 'CPU_YARDSTICK', (128, 0.01))
    peak, yardstick = hardware.peak_flops('cpu', 'bfloat16')
    assert measured == ['bfloat16'] and peak > 1e8
    assert yardstick.startswith('measured bfloat16 128x128 matmul on cpu, ')


def test_matmul_flops_counts_the_products(monkeypatch):
    clock = iter(range(1000))
    monkeypatch.setattr(hardware.time, 'perf_counter', lambda: next(clock))  # one second per reading
    # readings: start (0), the loop's check after the 3 minimum products (1), the end (2)
    assert hardware.matmul_flops('cpu', 'float32', n=8, seconds=0) == pytest.approx(2 * 8 ** 3 * 3 / 2)


def test_measuring_leaves_the_random_streams_alone():
    """train.py measures its yardstick after restoring a resumed run's RNG: drawing from the global
    generator there would shift dropout and break bitwise resume."""
    before = torch.get_rng_state()
    hardware.matmul_flops('cpu', 'float32', n=16, seconds=0)
    assert torch.equal(before, torch.get_rng_state())


def test_no_recipe_or_config_forces_a_half_precision_dtype(repo_root):
    """Recipes, configs and the notebook leave the dtype to 'auto': a forced bfloat16 is emulated (about 100x slower)
    on CPUs without AMX or AVX512-BF16, and float16 needs a GPU. A line that runs only on CUDA says so
    in its comment ('only on CUDA')."""
    forced = [f"{path.relative_to(repo_root)}:{number}: {line.strip()}"
              for pattern in ('experiments/*.sh', 'experiments/*.ipynb', 'config/*.py')
              for path in sorted(repo_root.glob(pattern))
              for number, line in enumerate(path.read_text().splitlines(), start=1)
              if re.search(r"dtype\s*=\s*['\"]?(bfloat16|float16)", line.split('#')[0], re.IGNORECASE)
              and 'only on CUDA' not in line]
    assert not forced, "force a dtype that may be emulated: " + "; ".join(forced)
