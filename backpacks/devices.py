"""Where a script runs: the device (--device checked in one line, the CUDA device index a process uses),
what its processor multiplies natively (the dtype --dtype=auto picks, the peak FLOP/s that MFU divides
by), and the processes of a torchrun launch: their setup and what they exchange.

    device = resolve_device(args.device)              # 'auto' -> 'cuda', then 'mps', then 'cpu'
    dtype, reason = resolve_dtype('auto', 'cpu')      # ('bfloat16', 'the CPU has AMX-BF16 ...')
    peak, yardstick = peak_flops('cpu', 'bfloat16')   # a measured bf16 matmul rate, and its name
    ddp, rank, world_size, device = setup_processes(args.device)   # torchrun's process group, if any
"""
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from backpacks.cli import fail

DEVICE_NAMES = 'auto, cpu, cuda, cuda:N or mps'


def check_device_name(requested):
    """One line (SystemExit) for a device name that is none of DEVICE_NAMES, e.g. 'tpu' or 'cuda1'."""
    if not re.fullmatch(r'auto|cpu|mps|cuda(:\d+)?', requested):
        fail(f"unknown device {requested!r}: use {DEVICE_NAMES}")


def resolve_device(requested):
    """The device to run on: 'auto' is cuda, then mps, then cpu; a named device must exist here."""
    check_device_name(requested)
    if requested == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    if requested.startswith('cuda') and not torch.cuda.is_available():
        fail(f"device {requested!r} requested but CUDA is not available; use --device=cpu")
    if requested.startswith('cuda:') and cuda_index(requested) >= torch.cuda.device_count():
        fail(f"device {requested!r} requested but there are {torch.cuda.device_count()} CUDA devices")
    if requested == 'mps' and not torch.backends.mps.is_available():
        fail("device 'mps' requested but MPS is not available; use --device=cpu")
    return requested


def process_device(device, local_rank=None, local_world_size=1):
    """The indexed device this process computes on. 'cuda' is cuda:local_rank under torchrun (this machine must
    have that many GPUs) and the current CUDA device, cuda:N, for a single process: torch.cuda.set_device and
    DDP's device_ids take an index, and torch.cuda.set_device('cuda') raises ValueError."""
    if device != 'cuda':
        return device
    if local_rank is None:
        return f'cuda:{torch.cuda.current_device()}'
    if local_world_size > torch.cuda.device_count():
        fail(f"{local_world_size} processes per node but this machine has {torch.cuda.device_count()} CUDA "
             f"device(s): use --nproc_per_node={torch.cuda.device_count()} or fewer")
    return f'cuda:{local_rank}'


def cuda_index(device):
    """The CUDA device index of 'cuda' (the current device) or 'cuda:N'; None for other devices."""
    if not str(device).startswith('cuda'):
        return None
    return int(str(device)[5:]) if str(device).startswith('cuda:') else torch.cuda.current_device()


def torchrun_environment():
    """(ddp, rank, local_rank, world_size) from the variables torchrun sets (one process when RANK is
    unset); one line for values torchrun would never set."""
    if 'RANK' not in os.environ:
        return False, 0, 0, 1
    values = {}
    for name in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_PORT'):
        text = os.environ.get(name, '')
        if not text.isdigit():
            fail(f"environment variable {name}={text!r} is not a non-negative integer; RANK is set, so this "
                 "is a distributed run: start it with torchrun, which sets RANK, LOCAL_RANK, WORLD_SIZE and MASTER_*")
        values[name] = int(text)
    if not max(values['RANK'], values['LOCAL_RANK']) < values['WORLD_SIZE']:
        fail(f"RANK ({values['RANK']}) and LOCAL_RANK ({values['LOCAL_RANK']}) must be below WORLD_SIZE "
             f"({values['WORLD_SIZE']}); start distributed runs with torchrun")
    if not os.environ.get('MASTER_ADDR'):
        fail("RANK is set but MASTER_ADDR is not: start distributed runs with torchrun")
    return True, values['RANK'], values['LOCAL_RANK'], values['WORLD_SIZE']


def setup_processes(requested_device):
    """(ddp, rank, world_size, device) from torchrun's environment (one process otherwise); under torchrun
    the process group is initialised, on nccl for CUDA and gloo otherwise."""
    ddp, rank, local_rank, world_size = torchrun_environment()
    device = process_device(resolve_device(requested_device), local_rank if ddp else None,
                            int(os.environ.get('LOCAL_WORLD_SIZE', world_size)))
    if device.startswith('cuda'):
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    return ddp, rank, world_size, device


def gathered(obj, ddp, world_size):
    """obj of every process, in rank order (each process draws its own batches and dropout)."""
    if not ddp:
        return [obj]
    objs = [None] * world_size
    dist.all_gather_object(objs, obj)
    return objs


def broadcast_from_master(obj, ddp):
    """Rank 0's obj on every process (obj itself without DDP)."""
    if not ddp:
        return obj
    objs = [obj]
    dist.broadcast_object_list(objs, src=0)
    return objs[0]


# ----------------------------------------------------------------------------- the processor

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# Instruction-set flags that give a CPU native bfloat16 matrix products (oneDNN uses them under autocast):
# AMX tiles (Sapphire Rapids and later) and AVX512-BF16 (Cooper Lake, Zen 4 and later). Without them
# bfloat16 is emulated and slower than float32.
CPU_BF16_FLAGS = {'amx_bf16': 'AMX-BF16', 'avx512_bf16': 'AVX512-BF16'}

# Dense (no sparsity) datasheet peaks in TFLOP/s, from NVIDIA's datasheets and architecture whitepapers:
# (bfloat16/float16 tensor cores with float32 accumulation, TF32 tensor cores, float32 CUDA cores). A None is
# not offered (bfloat16 on V100/T4, TF32 before Ampere) or not known here. Matched in order against
# torch.cuda.get_device_name(), so more specific names come first. Missing peaks are measured instead.
CUDA_PEAKS = (('GB200', (2500, 1250, None)), ('B200', (2250, 1100, None)), ('H200', (989, 495, 67)),
              ('H100 PCIe', (756, 378, 51)), ('H100 NVL', (835, 418, 60)), ('H100', (989, 495, 67)),
              ('GH200', (989, 495, 67)), ('A100', (312, 156, 19.5)), ('L40S', (362, 183, 91.6)),
              ('L40', (181, 90.5, 90.5)), ('L4', (121, 60, 30.3)), ('A10G', (70, 35, 31.2)),
              ('A10', (125, 62.5, 31.2)), ('RTX 6000 Ada', (364, 91.1, 91.1)), ('A6000', (155, 77.4, 38.7)),
              ('RTX 4090', (165, 82.6, 82.6)), ('RTX 3090', (36, 35.6, 35.6)), ('V100', (None, None, 15.7)),
              ('T4', (None, None, 8.1)))
FP16_ONLY = {'V100': 125, 'T4': 65}  # float16 tensor cores, no bfloat16 ones
# (size, seconds) of the measured matmul: an unlisted GPU needs a large one to reach its peak (1024 does not);
# a CPU is at its peak from 1024, in a fifth of a second
CUDA_YARDSTICK = (8192, 0.5)
CPU_YARDSTICK = (1024, 0.2)


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


def use_tensor_cores_for_float32():
    """float32 matrix products and convolutions in TF32 on the GPUs that have it (Ampere on), as train.py and
    bench.py run them: about 8x the float32 rate, with a 10-bit mantissa in the products only."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def configure_torch(requested_dtype, device, seed, deterministic):
    """Set up torch for a training process on device: deterministic kernels if asked, TF32 on CUDA, the
    seed. Returns (dtype, why) of resolve_dtype, or one line if device cannot run the dtype requested."""
    try:
        dtype, why = resolve_dtype(requested_dtype, device_type_of(device))
    except DeviceError as e:
        fail(str(e))
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if device_type_of(device) == 'cuda':
        use_tensor_cores_for_float32()
    torch.manual_seed(seed)
    return dtype, why


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
    generator = torch.Generator().manual_seed(0)  # a CPU generator: leaves the run's random streams alone
    a, b = (torch.randn(n, n, generator=generator).to(device, DTYPES[dtype]) for _ in range(2))
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


def cuda_datasheet_peak(name, dtype, tf32=True):
    """Datasheet peak FLOP/s of the GPU called name for matrix products in dtype, or None if unknown.
    float32 products run on TF32 tensor cores where the GPU has them and tf32 is allowed (train.py allows
    it), else on the CUDA cores."""
    key, (half, tf32_peak, fp32) = datasheet_row(name)
    if dtype == 'float16' and key in FP16_ONLY:
        return FP16_ONLY[key] * 1e12
    peak = half if dtype in ('bfloat16', 'float16') else tf32_peak if tf32 and tf32_peak else fp32
    return None if peak is None else peak * 1e12


def datasheet_row(name):
    """(key, (half, TF32, float32) peaks in TFLOP/s) of the first CUDA_PEAKS entry in name, or (None, Nones)."""
    return next(((key, peaks) for key, peaks in CUDA_PEAKS if key in name), (None, (None, None, None)))


def peak_flops(device, dtype):
    """(FLOP/s, yardstick): the rate MFU divides by. A listed GPU's datasheet peak in dtype (float32: TF32 if
    torch allows it); otherwise the measured rate of a matmul in the run's dtype (CUDA_YARDSTICK, CPU_YARDSTICK)."""
    if str(device).startswith('cuda'):
        name = torch.cuda.get_device_name(device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        peak = cuda_datasheet_peak(name, dtype, tf32)
        if peak is not None:
            unit = 'TF32' if dtype == 'float32' and tf32 and datasheet_row(name)[1][1] else dtype
            return peak, f"{name} {unit} datasheet peak, {peak / 1e12:,.0f} TFLOP/s"
    n, seconds = CUDA_YARDSTICK if str(device).startswith('cuda') else CPU_YARDSTICK
    rate = matmul_flops(device, dtype, n, seconds)
    return rate, f"measured {dtype} {n}x{n} matmul on {device}, {rate / 1e9:,.0f} GFLOP/s"
