"""A CPU stand-in for a CUDA machine, so that the suite executes the lines that only run on a GPU.

    def test_something(fake_gpu):                 # conftest's fixture: one A100 by default
        fake_gpu.configure(name='Tesla T4', capability=(7, 5))
        train.main([..., '--device=cuda'])        # runs the CUDA path; every tensor lives on the CPU

Tensors placed on 'cuda' or 'cuda:N' live on the CPU, and torch.cuda's entry points are replaced by stand-ins
that keep the contracts of the real ones, through torch's own Python code where torch has it:
  - set_device, get_device_properties (and so get_device_name, get_device_capability, is_bf16_supported),
    synchronize, get_rng_state / set_rng_state, the memory counters: the device argument is parsed by
    torch.cuda._utils._get_device_index, as on a GPU (set_device('cuda') raises its ValueError), and an
    index this machine lacks is refused as the driver refuses it;
  - placing a tensor on 'cuda:N' needs N < device_count; a non_blocking copy to the GPU must come from
    pinned, contiguous host memory (otherwise CUDA stages it through pageable memory, synchronously);
  - torch.autocast('cuda', dtype) is torch's own class (it refuses what a GPU refuses), and its region also
    runs the CPU's autocast in that dtype, so half-precision numerics are exercised;
  - GradScaler(device) must name a device type ('cuda'), which is what torch's scaler compares against;
  - scaled_dot_product_attention records, per call, the fused CUDA kernels that would accept it, by the
    constraints of PyTorch's sdp_utils.cpp (below), honouring torch.nn.attention.sdpa_kernel's choice, and
    raises as torch does when no allowed kernel accepts it: a call no fused kernel accepts is the silent
    math fallback, which tests assert never happens;
  - host syncs (item, tolist, bool/int/float of a tensor) are counted.

What it cannot see (docs/performance.md says so too): the kernels' numerics and speed, memory use, streams
and asynchronous ordering (everything runs in program order), NCCL and DDP on GPUs, torch.compile's Triton
kernels and CUDA graphs, cuDNN attention (its constraints depend on the cuDNN version), and which tensor is
really on the device (a sync on a host tensor counts as one).
"""
import types

import torch
import torch.nn.functional as F
from torch.cuda._utils import _get_device_index
from torch.overrides import TorchFunctionMode

import model

REAL_AUTOCAST = torch.autocast
REAL_SDPA = F.scaled_dot_product_attention
HOST_SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
              torch.Tensor.__float__}


def flash_accepts(q, k, v, attn_mask, capability):
    """PyTorch's flash kernel: sm80 or later, fp16/bf16, no arbitrary mask, q, k and v of one head size,
    a multiple of 8 and at most 256 (sdp_utils.cpp: check_flash_attention_hardware_support,
    check_for_attn_mask, check_head_dim_size_flash)."""
    size = q.shape[-1]
    return (capability >= (8, 0) and q.dtype in (torch.float16, torch.bfloat16) and attn_mask is None
            and k.shape[-1] == v.shape[-1] == size and size % 8 == 0 and size <= 256)


def mem_efficient_accepts(q, k, v, capability):
    """PyTorch's memory-efficient kernel: sm50 or later, fp32/fp16 (bf16 from sm80), q and k of one head size,
    q's and v's head sizes multiples of minimum_gemm_alignment: 8 in half precision on tensor cores, 4 in
    float32 from sm80, else 1 (sdp_utils.cpp: check_head_dim_size_mem_efficient, minimum_gemm_alignment)."""
    half = q.dtype in (torch.float16, torch.bfloat16)
    if capability < (5, 0) or (q.dtype == torch.bfloat16 and capability < (8, 0)):
        return False
    alignment = 8 if half and capability >= (7, 0) else 4 if capability >= (8, 0) else 1
    return k.shape[-1] == q.shape[-1] and q.shape[-1] % alignment == 0 and v.shape[-1] % alignment == 0


class FakeGPU:
    """The GPUs the stand-ins pretend to be, and what they saw."""

    def __init__(self):
        self.configure()

    def configure(self, name='NVIDIA A100-SXM4-80GB', capability=(8, 0), count=1):
        self.name, self.capability, self.count = name, capability, count
        self.current = 0
        self.generators = {}
        self.sdpa_calls = []   # per call: the fused kernels that accept it ([]: the math fallback)
        self.host_syncs = 0
        return self

    # ------------------------------------------------------------------ torch.cuda
    def index(self, device, optional=False):
        index = _get_device_index(device, optional=optional)  # torch's own parsing
        if not 0 <= index < self.count:
            raise RuntimeError(f"CUDA error: invalid device ordinal ({device!r}; {self.count} device(s))")
        return index

    def set_device(self, device):
        self.current = self.index(device)

    def check_device(self, device=None):  # synchronize, the memory counters: a device this machine has
        self.index(device, optional=True)

    def get_device_properties(self, device=None):
        self.index(device, optional=True)
        return types.SimpleNamespace(name=self.name, major=self.capability[0], minor=self.capability[1],
                                     total_memory=80 << 30, multi_processor_count=108)

    def generator(self, device='cuda'):
        index = self.index(device, optional=True)
        return self.generators.setdefault(index, torch.Generator().manual_seed(index))

    def set_rng_state(self, state, device='cuda'):
        self.generator(device).set_state(state)

    def patches(self):
        """(owner, name, stand-in) for every entry point replaced."""
        cuda = torch.cuda
        return [(cuda, 'is_available', lambda: True), (cuda, 'device_count', lambda: self.count),
                (cuda, 'current_device', lambda: self.current), (cuda, 'set_device', self.set_device),
                (cuda, 'get_device_properties', self.get_device_properties),
                (cuda, 'synchronize', self.check_device),
                (cuda, 'get_rng_state', lambda device='cuda': self.generator(device).get_state()),
                (cuda, 'set_rng_state', self.set_rng_state),
                (cuda, 'manual_seed', lambda seed: self.generator().manual_seed(seed)),
                (cuda, 'reset_peak_memory_stats', self.check_device),
                (cuda, 'max_memory_allocated', lambda device=None: self.check_device(device) or 0),
                (torch, 'autocast', self.autocast), (torch.amp, 'autocast', self.autocast),
                (torch.amp, 'GradScaler', self.grad_scaler()),
                (F, 'scaled_dot_product_attention', self.sdpa),
                # the CPU tensors take the model's CUDA path: padded attention, the sense mixing in SDPA
                (model, 'FUSED_SDPA_DEVICES', ('cuda', 'cpu')),
                # process-wide settings train.py makes on a GPU, restored afterwards
                (torch.backends.cuda.matmul, 'allow_tf32', torch.backends.cuda.matmul.allow_tf32),
                (torch.backends.cudnn, 'allow_tf32', torch.backends.cudnn.allow_tf32)]

    # ------------------------------------------------------------------ autocast, GradScaler, SDPA
    def autocast(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        """torch.autocast: the real class checks the arguments; on 'cuda' the CPU's autocast runs alongside."""
        real = REAL_AUTOCAST(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)
        if device_type != 'cuda':
            return real
        cpu = REAL_AUTOCAST('cpu', dtype=real.fast_dtype, enabled=real._enabled)
        return _Both(real, cpu)

    def grad_scaler(self):
        real = torch.amp.GradScaler

        class GradScaler(real):
            def __init__(self, device='cuda', *args, **kwargs):
                if not isinstance(device, str) or torch.device(device).index is not None:
                    raise ValueError(f"GradScaler takes a device type such as 'cuda', got {device!r}")
                super().__init__(device, *args, **kwargs)
        return GradScaler

    def sdpa(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        fused = [name for name, allowed, accepts in (
            ('FLASH_ATTENTION', torch.backends.cuda.flash_sdp_enabled(),
             flash_accepts(q, k, v, attn_mask, self.capability)),
            ('EFFICIENT_ATTENTION', torch.backends.cuda.mem_efficient_sdp_enabled(),
             mem_efficient_accepts(q, k, v, self.capability))) if allowed and accepts]
        if not fused and not torch.backends.cuda.math_sdp_enabled():
            raise RuntimeError("No available kernel. Aborting execution.")
        self.sdpa_calls.append(fused)
        return REAL_SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                         enable_gqa=enable_gqa)

    def math_fallbacks(self):
        return sum(not fused for fused in self.sdpa_calls)


class _Both:
    """Enters and leaves two autocast contexts (re-entrant as torch.autocast objects are)."""

    def __init__(self, *contexts):
        self.contexts = contexts

    def __enter__(self):
        for context in self.contexts:
            context.__enter__()
        return self

    def __exit__(self, *exc):
        for context in reversed(self.contexts):
            context.__exit__(*exc)
        return False


class OnTheCpu(TorchFunctionMode):
    """Tensors placed on CUDA stay on the CPU, with CUDA's rules for placing them."""

    def __init__(self, gpu):
        super().__init__()
        self.gpu = gpu

    def host(self, device):
        """'cpu' for a CUDA device this machine has (refusing one it lacks), the device otherwise."""
        if device is not None and torch.device(device).type == 'cuda':
            self.gpu.index(torch.device(device), optional=True)
            return 'cpu'
        return device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in HOST_SYNCS:
            self.gpu.host_syncs += 1
        if func is torch.Tensor.pin_memory:
            pinned = torch.empty_strided(args[0].shape, args[0].stride(), dtype=args[0].dtype)  # as torch's
            pinned.copy_(args[0])
            pinned.pinned = True
            return pinned
        if func is torch.Tensor.is_pinned:
            return getattr(args[0], 'pinned', False)
        if func in (torch.Tensor.to, torch.Tensor.cuda):
            return self.to(func, args, kwargs)
        if 'device' in kwargs:
            kwargs['device'] = self.host(kwargs['device'])
        return func(*args, **kwargs)

    def to(self, func, args, kwargs):
        tensor, rest = args[0], args[1:]
        if func is torch.Tensor.cuda:
            device, dtype, non_blocking = (rest[0] if rest else kwargs.get('device', 'cuda')), None, \
                kwargs.get('non_blocking', False)
        else:
            device, dtype, non_blocking, _ = torch._C._nn._parse_to(*rest, **{k: v for k, v in kwargs.items()
                                                                              if k != 'copy'})
        if device is None or device.type != 'cuda':
            return func(*args, **kwargs)
        self.host(device)
        if non_blocking and not (getattr(tensor, 'pinned', False) and tensor.is_contiguous()):
            raise AssertionError("a non_blocking copy to the GPU from pageable or non-contiguous host memory is "
                                 "staged synchronously: pin a contiguous tensor first")
        return tensor.to(dtype=dtype or tensor.dtype, copy=kwargs.get('copy', False))


class fake_cuda:
    """Context manager: the stand-ins in place (see the module's docstring); yields the FakeGPU."""

    def __init__(self, gpu=None):
        self.gpu = gpu or FakeGPU()

    def __enter__(self):
        patches = self.gpu.patches()
        self.saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        for owner, name, standin in patches:
            setattr(owner, name, standin)
        self.mode = OnTheCpu(self.gpu)
        self.mode.__enter__()
        return self.gpu

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)
        return False
