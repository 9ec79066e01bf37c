"""Which device a script runs on: --device checked in one line (an unknown name, a device this machine
lacks, more processes than GPUs), and the CUDA device index a process uses.

    device = resolve_device(args.device)   # 'auto' -> 'cuda', then 'mps', then 'cpu'; SystemExit otherwise
"""
import re

import torch

from backpacks.errors import fail

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
