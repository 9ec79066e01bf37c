"""Training checkpoints: atomic writes, safe loads (weights_only), and models rebuilt from them.

A checkpoint is a dict of plain types and tensors written by train.py:
  model, model_type, model_args, config, meta, data_dir, iter_num, best_val_loss (the lowest value
  of selection_key, the training_log entry that chose best.pt), selection_key, optimizer, scaler,
  rng, sampler, training_log, elapsed_s
"""
import pickle
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from backpacks.atomic import atomic_write
from backpacks.devices import cuda_index
from model import ModelConfig, build_model

CHECKPOINT_FILES = {'best': 'best.pt', 'latest': 'ckpt.pt'}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be read."""


def save_checkpoint(obj, path):
    """Write obj to path so that a crash at any moment leaves the previous file intact."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, map_location='cpu'):
    """The checkpoint dict at path, loaded with weights_only=True (tensors and plain data only, so a
    file from elsewhere cannot run code). Any unreadable file is one CheckpointError line that names
    the other checkpoint of the run as the fallback; PyTorch's own message is not passed on, since it
    advises retrying with weights_only=False."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch warns of a pickle protocol before failing: the reason below is the line
            warnings.simplefilter('ignore')
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = plain_pickle(path) or (
            "it holds objects other than tensors and plain data, refused because loading them could run code"
            if 'GLOBAL' in str(e) else "not a PyTorch file")
    except Exception:  # EOFError, zip-reader RuntimeError, OSError, ...
        reason = "empty file" if path.stat().st_size == 0 else plain_pickle(path) or "truncated or not a PyTorch file"
    else:
        if isinstance(ckpt, dict) and 'model' in ckpt:
            return ckpt
        reason = "no model weights: not written by train.py"
    raise CheckpointError(f"{path} is not a readable checkpoint ({reason}); {fallback(path)}")


def plain_pickle(path):
    """The reason to refuse a file that is a bare pickle rather than torch.save's zip archive, or None."""
    with open(path, 'rb') as f:
        opens_as_pickle = f.read(1) == b'\x80'  # the PROTO opcode that starts pickles of protocol 2 and later
    if opens_as_pickle and not zipfile.is_zipfile(path):
        return "a plain pickle, not a file written by torch.save; not unpickled, since that could run code"
    return None


def fallback(path):
    """Which other checkpoint of the same run to use instead of path."""
    other = {'ckpt.pt': 'best.pt', 'best.pt': 'ckpt.pt'}.get(path.name)
    if other is None:
        return "use a checkpoint written by train.py"
    if (path.parent / other).is_file():
        return f"{path.parent / other} is the fallback"
    return f"there is no {other} beside it to fall back on"


def model_from_checkpoint(ckpt):
    try:
        model = build_model(ckpt['model_type'], ModelConfig(**ckpt['model_args']))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint does not describe a model: {e}") from None
    try:
        model.load_state_dict(ckpt['model'])
    except (KeyError, RuntimeError) as e:  # PyTorch lists every mismatch on lines of their own
        details = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip()) or str(e)
        raise CheckpointError(f"the checkpoint's model_args ({ckpt['model_type']}, {ckpt['model_args']}) "
                              f"disagree with its weights: {details[:300]}") from None
    return model


def load_trained_model(out_dir, which='best', device='cpu'):
    """(model in eval mode on device, checkpoint dict) from out_dir/best.pt or out_dir/ckpt.pt. The file is
    read onto the CPU and only the model moves to device; the dict returned keeps the run's metadata but
    neither the weights (now the model's) nor the optimizer state (twice the model's size), so nothing of
    the checkpoint stays held on a GPU or in memory for nothing."""
    if which not in CHECKPOINT_FILES:
        raise CheckpointError(f"unknown checkpoint {which!r}; choose from {', '.join(CHECKPOINT_FILES)}")
    ckpt = load_checkpoint(Path(out_dir) / CHECKPOINT_FILES[which], map_location='cpu')
    model = model_from_checkpoint(ckpt).to(device).eval()
    for key in ('model', 'optimizer'):
        ckpt.pop(key, None)
    return model, ckpt


def rng_state(device):
    """python, numpy and torch generator states, and the CUDA generator of this process's own device
    (None off CUDA), as tensors and plain types (weights_only loadable). Each process saves only what
    it draws from: never the other GPUs' generators, which a resume on fewer GPUs could not restore."""
    version, internal, gauss_next = random.getstate()
    key, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    index = cuda_index(device)
    return {'python': {'version': version, 'state': list(internal), 'gauss_next': gauss_next},
            'numpy': {'key': key, 'state': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                      'has_gauss': int(has_gauss), 'cached_gaussian': float(cached_gaussian)},
            'torch': torch.get_rng_state(),
            'cuda': None if index is None else torch.cuda.get_rng_state(index)}


def set_rng_state(state, device):
    """Restore rng_state()'s generators; the CUDA one onto this process's device, where it fits."""
    py, npy = state['python'], state['numpy']
    random.setstate((py['version'], tuple(py['state']), py['gauss_next']))
    np.random.set_state((npy['key'], npy['state'].numpy().astype(np.uint32), npy['pos'],
                         npy['has_gauss'], npy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    index = cuda_index(device)
    saved = saved_cuda_state(state.get('cuda'), index)
    if saved is not None:
        torch.cuda.set_rng_state(saved, index)


def saved_cuda_state(saved, index):
    """The saved CUDA generator state for this process's device index (None off CUDA or when none fits).
    saved is the state of the saving process's own device, or a list with one state per visible GPU
    (what checkpoints held before each process saved only its own): then the entry of this index, so that
    a run saved on more GPUs than this machine has resumes instead of crashing."""
    if index is None or saved is None:
        return None
    if isinstance(saved, (list, tuple)):
        return saved[index] if index < len(saved) else None
    return saved
