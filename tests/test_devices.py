"""backpacks/devices.py: every script's --device is one clear line when unknown or absent here, torchrun
with more processes than GPUs is one line before any process group is started, the dtype 'auto' picks,
and the yardsticks MFU is measured against."""
import re
import sys

import pytest
import torch

import bench
import evaluate
import sample
import train
from backpacks import devices
from backpacks.devices import cuda_index, process_device, resolve_device, setup_processes
from experiments import bench_translation, run_interventions

UNKNOWN = "error: unknown device 'tpu': use auto, cpu, cuda, cuda:N or mps"


def parse_of(script, monkeypatch):
    """parse_args(argv) of a script, whether it takes argv or reads sys.argv."""
    def parse(argv):
        monkeypatch.setattr(sys, 'argv', [script.__name__, *argv])
        return script.parse_args()
    return parse


@pytest.mark.parametrize('script, argv', [
    (sample, ['--out_dir', 'run']), (evaluate, ['--out_dir', 'run']), (bench, []),
    (bench_translation, ['--out_dir', 'run']), (run_interventions, ['--out_dir', 'run'])])
def test_unknown_device_is_one_line_in_every_script(script, argv, monkeypatch, sample_dataset, make_checkpoint, tmp_path):
    run = make_checkpoint(tmp_path / 'run', sample_dataset)  # scripts check the run before the device
    argv = [str(run) if a == 'run' else a for a in argv]
    parse = script.parse_args if script in (sample, evaluate, run_interventions) else parse_of(script, monkeypatch)
    with pytest.raises(SystemExit) as e:
        parse([*argv, '--device', 'tpu'])
    assert str(e.value) == UNKNOWN
    assert parse([*argv, '--device', 'auto']).device == resolve_device('auto')


def test_train_refuses_an_unknown_device_before_any_work():
    with pytest.raises(SystemExit) as e:
        train.main(['--device=tpu', '--data_dir=/nonexistent'])
    assert str(e.value) == UNKNOWN


def test_absent_devices_are_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit, match="^error: device 'cuda:1' requested but CUDA is not available; use --device=cpu$"):
        resolve_device('cuda:1')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    with pytest.raises(SystemExit, match="^error: device 'cuda:1' requested but there are 1 CUDA devices$"):
        resolve_device('cuda:1')
    assert resolve_device('cuda:0') == 'cuda:0' and resolve_device('cpu') == 'cpu'


def test_torchrun_with_more_processes_than_gpus_is_one_line(monkeypatch):
    """Two processes on a one-GPU machine: process 1 would ask for cuda:1, which does not exist."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    for name, value in {'RANK': '1', 'LOCAL_RANK': '1', 'WORLD_SIZE': '2', 'LOCAL_WORLD_SIZE': '2',
                        'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': '29500'}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as e:
        setup_processes('cuda')
    assert str(e.value) == ("error: 2 processes per node but this machine has 1 CUDA device(s): "
                            "use --nproc_per_node=1 or fewer")
    assert process_device('cuda', 0, 1) == 'cuda:0' and process_device('cpu', 1, 2) == 'cpu'


def test_cuda_index():
    assert cuda_index('cuda:3') == 3 and cuda_index('cpu') is None and cuda_index('mps') is None


# ----------------------------------------------------------------------------- the processor

@pytest.mark.parametrize('flags, expected', [
    ({'avx512_f', 'amx_tile', 'amx_bf16', 'avx512_bf16'}, 'bfloat16'),  # Sapphire Rapids
    ({'avx512_f', 'avx512_bf16'}, 'bfloat16'),                          # Cooper Lake, Zen 4
    ({'avx512_f', 'avx512_bw', 'avx2'}, 'float32'),                     # Skylake-SP: bf16 only emulated
    ({'avx2', 'fma3'}, 'float32'),
    (set(), 'float32'),                                                 # unknown CPU
])
def test_auto_dtype_on_cpu_follows_native_bf16(flags, expected):
    dtype, reason = devices.resolve_dtype('auto', 'cpu', flags=flags)
    assert dtype == expected
    assert ('AMX' in reason or 'AVX512-BF16' in reason)


def test_auto_dtype_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(devices, 'cpu_flags', lambda: {'avx2'})
    assert devices.resolve_dtype('auto', 'cpu')[0] == 'float32'
    monkeypatch.setattr(devices, 'cpu_flags', lambda: {'avx2', 'amx_bf16'})
    assert devices.resolve_dtype('auto', 'cpu') == ('bfloat16', 'the CPU has AMX-BF16')


def test_explicit_dtype_is_kept_and_mps_defaults_to_float32():
    assert devices.resolve_dtype('float32', 'cpu', flags={'amx_bf16'}) == ('float32', 'requested')
    assert devices.resolve_dtype('auto', 'mps')[0] == 'float32'


def test_requested_emulated_dtype_runs_with_a_warning():
    dtype, reason = devices.resolve_dtype('bfloat16', 'cpu', flags={'avx2'})
    assert dtype == 'bfloat16' and 'warning: this CPU emulates bfloat16' in reason
    assert devices.resolve_dtype('bfloat16', 'cpu', flags={'amx_bf16'}) == ('bfloat16', 'requested')


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
    dtype, reason = devices.resolve_dtype('auto', 'cuda')
    assert dtype == expected and f'{capability[0]}.{capability[1]}' in reason


def test_bfloat16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (6, 0))
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: including_emulation)
    with pytest.raises(devices.DeviceError, match='no bfloat16 support; use --dtype=float16 or --dtype=auto'):
        devices.resolve_dtype('bfloat16', 'cuda')
    with pytest.raises(devices.DeviceError, match='unknown dtype'):
        devices.resolve_dtype('int8', 'cpu')


def test_machine_is_described_with_its_bf16_support_and_threads(monkeypatch):
    monkeypatch.setattr(devices, 'cpu_flags', lambda: {'avx2'})
    line = devices.describe_machine('cpu')
    assert 'bfloat16 emulated' in line and f'{torch.get_num_threads()} threads' in line
    monkeypatch.setattr(devices, 'cpu_flags', lambda: {'avx2', 'amx_bf16'})
    assert 'native bfloat16 (AMX-BF16)' in devices.describe_machine('cpu')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Tesla T4')
    assert devices.describe_machine('cuda:0') == 'Tesla T4, compute capability 7.5'


def test_cpu_flags_are_found_here():
    flags = devices.cpu_flags()
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
    assert devices.cuda_datasheet_peak(name, dtype) == pytest.approx(expected)


def test_float32_without_tf32_is_measured_against_the_cuda_cores():
    assert devices.cuda_datasheet_peak('NVIDIA A100-SXM4-40GB', 'float32', tf32=False) == pytest.approx(19.5e12)


def test_cpu_yardstick_is_a_measured_matmul_in_the_run_dtype(monkeypatch):
    measured = []
    real = devices.matmul_flops
    monkeypatch.setattr(devices, 'matmul_flops',
                        lambda device, dtype, n, seconds: measured.append(dtype) or real(device, dtype, n, seconds))
    monkeypatch.setattr(devices, 'CPU_YARDSTICK', (128, 0.01))
    peak, yardstick = devices.peak_flops('cpu', 'bfloat16')
    assert measured == ['bfloat16'] and peak > 1e8
    assert yardstick.startswith('measured bfloat16 128x128 matmul on cpu, ')


def test_matmul_flops_counts_the_products(monkeypatch):
    clock = iter(range(1000))
    monkeypatch.setattr(devices.time, 'perf_counter', lambda: next(clock))  # one second per reading
    # readings: start (0), the loop's check after the 3 minimum products (1), the end (2)
    assert devices.matmul_flops('cpu', 'float32', n=8, seconds=0) == pytest.approx(2 * 8 ** 3 * 3 / 2)


def test_measuring_leaves_the_random_streams_alone():
    """train.py measures its yardstick after restoring a resumed run's RNG: drawing from the global
    generator there would shift dropout and break bitwise resume."""
    before = torch.get_rng_state()
    devices.matmul_flops('cpu', 'float32', n=16, seconds=0)
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
