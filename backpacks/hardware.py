"""
What the processor offers: which autocast dtype to train in, and the peak FLOP/s that
model FLOPs utilisation (MFU) is measured against.

    dtype, reason = resolve_dtype('auto', 'cpu')    # ('bfloat16', 'the CPU has AMX-BF16 ...')
    peak, yardstick = peak_flops('cpu', 'bfloat16') # a measured bf16 matmul rate, and its name
"""
import platform
import re
import sys
import time
from pathlib import Path

import torch

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# Instruction-set flags that give a CPU native bfloat16 matrix products (oneDNN uses them under autocast):
# AMX tiles (Sapphire Rapids and later) and AVX512-BF16 (Cooper Lake, Zen 4 and later). Without them
# bfloat16 is emulated and slower than float32.
CPU_BF16_FLAGS = {'amx_bf16': 'AMX-BF16', 'avx512_bf16': 'AVX512-BF16'}

# Dense (no sparsity) bfloat16/float16 tensor-core peaks with float32 accumulation, from NVIDIA's
# datasheets and architecture whitepapers. Matched in order against torch.cuda.get_device_name(), so
# more specific names come first. A GPU that is not listed is measured instead.
CUDA_PEAKS = (('GB200', 2500e12), ('B200', 2250e12), ('H200', 989e12), ('H100 PCIe', 756e12),
              ('H100 NVL', 835e12), ('H100', 989e12), ('GH200', 989e12), ('A100', 312e12),
              ('L40S', 362e12), ('L40', 181e12), ('L4', 121e12), ('A10G', 70e12), ('A10', 125e12),
              ('RTX 6000 Ada', 364e12), ('A6000', 155e12), ('RTX 4090', 165e12), ('RTX 3090', 36e12),
              ('V100', 125e12), ('T4', 65e12))
FP16_ONLY = ('V100', 'T4')  # no bfloat16 tensor cores


def cpu_flags():
    """Instruction-set flags of this CPU, as a set of lower-case names (empty if unknown)."""
    try:  # PyTorch's own cpuinfo query (present in 2.x; private, hence the fallback)
        return {name for name, value in torch._C._cpu._get_cpu_capability().items() if value is True}
    except (AttributeError, RuntimeError):
        pass
    cpuinfo = Path('/proc/cpuinfo')
    if sys.platform.startswith('linux') and cpuinfo.is_file():
        match = re.search(r'^flags\s*:(.*)$', cpuinfo.read_text(), re.MULTILINE)
        return set(match.group(1).split()) if match else set()
    return set()


def native_bf16_features(flags=None):
    """The names of this CPU's instruction sets that multiply bfloat16 natively (empty: emulated)."""
    flags = cpu_flags() if flags is None else flags
    return [name for flag, name in CPU_BF16_FLAGS.items() if flag in flags]


def cpu_bf16_support(flags=None):
    """(True/False, why): whether this CPU multiplies bfloat16 matrices natively."""
    found = native_bf16_features(flags)
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    return False, "the CPU has neither AMX-BF16 nor AVX512-BF16 (bfloat16 would be emulated, slower than float32)"


def resolve_dtype(requested, device_type, flags=None):
    """(dtype name, reason): 'auto' picks what the hardware multiplies natively. CPUs with AMX or
    AVX512-BF16: bfloat16; other CPUs: float32. CUDA from compute capability 8.0 (Ampere): bfloat16;
    below it (T4, V100): float16, trained with a GradScaler. MPS: float32 (half precision there is not
    measured by this project). An explicit dtype the device cannot run is refused (DeviceError)."""
    if requested != 'auto':
        check_dtype_runs(requested, device_type)
        return requested, 'requested' + emulation_warning(requested, device_type, flags)
    if device_type == 'cuda':
        major, minor = torch.cuda.get_device_capability()
        if major >= 8:
            return 'bfloat16', f'the GPU has compute capability {major}.{minor} (bfloat16 tensor cores)'
        return 'float16', (f'the GPU has compute capability {major}.{minor}: no bfloat16 tensor cores, '
                           'float16 with a GradScaler')
    if device_type == 'cpu':
        native, why = cpu_bf16_support(flags)
        return ('bfloat16' if native else 'float32'), why
    return 'float32', f'half precision on {device_type} is not measured by this project'


class DeviceError(ValueError):
    """A device or dtype this machine cannot run; its message is the one line the user sees."""


def check_dtype_runs(dtype, device_type):
    """Refuse a dtype the device cannot run at all (emulated ones run, with a warning)."""
    if dtype not in DTYPES:
        raise DeviceError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    if device_type == 'cuda' and dtype == 'bfloat16' and not torch.cuda.is_bf16_supported(including_emulation=False):
        major, minor = torch.cuda.get_device_capability()
        raise DeviceError(f"this GPU (compute capability {major}.{minor}) has no bfloat16 support; "
                          "use --dtype=float16 or --dtype=auto")
    if device_type == 'mps' and dtype == 'bfloat16' and not mps_bf16_available():
        raise DeviceError("bfloat16 on MPS needs macOS 14 or later; use --dtype=float32 or --dtype=auto")


def mps_bf16_available():
    try:
        torch.ones(1, device='mps', dtype=torch.bfloat16)
        return True
    except (RuntimeError, TypeError):
        return False


def emulation_warning(dtype, device_type, flags=None):
    """A note for a requested half precision that this CPU only emulates (about 100x slower)."""
    if device_type != 'cpu' or dtype == 'float32':
        return ''
    flags = cpu_flags() if flags is None else flags
    native = cpu_bf16_support(flags)[0] if dtype == 'bfloat16' else 'amx_fp16' in flags
    return '' if native else f'; warning: this CPU emulates {dtype}, far slower than float32 (--dtype=auto avoids it)'


def cpu_name():
    """The CPU's model name, or the platform's processor string when /proc/cpuinfo does not say."""
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.is_file():
        match = re.search(r'^model name\s*:\s*(.+)$', cpuinfo.read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine() or 'unknown CPU'


def describe_machine(device):
    """What the run computes on, in a few words: the GPU and its compute capability, or the CPU, whether
    it multiplies bfloat16 natively, and the threads torch uses."""
    if str(device).startswith('cuda'):
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
    if str(device) == 'mps':
        return f"Apple MPS ({cpu_name()})"
    native = native_bf16_features()
    bf16 = f"native bfloat16 ({', '.join(native)})" if native else "bfloat16 emulated (no AMX-BF16/AVX512-BF16)"
    return f"{cpu_name()}, {bf16}, {torch.get_num_threads()} threads"


def device_type_of(device):
    """'cuda' for 'cuda:1', as torch.autocast and GradScaler want it."""
    return str(device).split(':')[0]


def synchronize(device):
    """Wait for queued kernels, so that timings cover them."""
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()
    elif str(device) == 'mps':
        torch.mps.synchronize()


def matmul_flops(device, dtype='float32', n=2048, seconds=0.3):
    """Achieved FLOP/s of n x n matmuls in dtype on device, timed for about `seconds` after warm-up."""
    generator = torch.Generator(device=device).manual_seed(0)  # leaves the run's random streams alone
    a, b = (torch.randn(n, n, device=device, dtype=DTYPES[dtype], generator=generator) for _ in range(2))
    for _ in range(2):
        a @ b
    synchronize(device)
    repeats, t0 = 0, time.perf_counter()
    while repeats < 3 or time.perf_counter() - t0 < seconds:
        a @ b
        repeats += 1
        if repeats % 10 == 0:  # keeps a GPU's queue short, so the clock is read near the work
            synchronize(device)
    synchronize(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def cuda_datasheet_peak(name, dtype):
    """Datasheet peak FLOP/s of the GPU called name in dtype (bfloat16/float16), or None if unknown."""
    if dtype not in ('bfloat16', 'float16'):
        return None
    for key, peak in CUDA_PEAKS:
        if key in name:
            return None if dtype == 'bfloat16' and key in FP16_ONLY else peak
    return None


def peak_flops(device, dtype, n=2048, seconds=0.3):
    """(FLOP/s, yardstick): the rate MFU divides by. A known GPU's datasheet peak in bfloat16/float16;
    otherwise (CPUs, float32, unlisted GPUs) the measured rate of an n x n matmul in the run's dtype."""
    if str(device).startswith('cuda'):
        name = torch.cuda.get_device_name(device)
        peak = cuda_datasheet_peak(name, dtype)
        if peak is not None:
            return peak, f"{name} {dtype} datasheet peak, {peak / 1e12:,.0f} TFLOP/s"
    rate = matmul_flops(device, dtype, n, seconds)
    return rate, f"measured {dtype} {n}x{n} matmul on {device}, {rate / 1e9:,.0f} GFLOP/s"
