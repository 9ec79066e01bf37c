"""Training checkpoints: atomic writes, safe loads (weights_only), models rebuilt from them, and what a
resumed run checks and restores.

A checkpoint is the dict of plain types and tensors that training_checkpoint builds for train.py:
  model, model_type, model_args, config, dtype, meta, data_dir, iter_num, best_val_loss (the lowest
  value of selection_key, the training_log entry that chose best.pt), selection_key, optimizer, scaler,
  rng and sampler (one state per process, in rank order), training_log, elapsed_s
"""
import dataclasses
import pickle
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from backpacks.atomic import atomic_write
from backpacks.cli import fail
from backpacks.dataset import check_same_dataset
from backpacks.devices import cuda_index
from model import ModelConfig, build_model

CHECKPOINT_FILES = {'best': 'best.pt', 'latest': 'ckpt.pt'}
# what a resume reads: a file lacking one is no run train.py can continue
RESUME_KEYS = ('model', 'model_type', 'model_args', 'config', 'meta', 'data_dir', 'iter_num', 'best_val_loss',
               'optimizer', 'scaler', 'rng', 'sampler', 'training_log')
ARCH_KEYS = ('n_layer', 'n_head', 'n_embd', 'n_senses', 'block_size', 'dropout', 'bias')  # settings a resume keeps


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


# ----------------------------------------------------------------------------- a training run's checkpoint

def training_checkpoint(model, optimizer, scaler, *, cfg, dtype, meta, data_path, iter_num, best_val_loss,
                        selection_key, rngs, samplers, training_log, elapsed_s):
    """The dict train.py saves as ckpt.pt and best.pt, from a run's parts (see the module docstring)."""
    return {'model': model.state_dict(), 'model_type': model.model_type,
            'model_args': dataclasses.asdict(model.config), 'config': cfg, 'dtype': dtype, 'meta': meta,
            'data_dir': str(data_path), 'iter_num': iter_num, 'best_val_loss': best_val_loss,
            'selection_key': selection_key, 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
            'rng': rngs, 'sampler': samplers, 'training_log': training_log, 'elapsed_s': elapsed_s}


def load_resumable(path):
    """The checkpoint at path if train.py can continue it, else CheckpointError."""
    ckpt = load_checkpoint(path)
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a checkpoint train.py can resume")
    return ckpt


def check_resume(ckpt, explicit, meta, data_path, ckpt_path):
    """Refuse to continue a run on another dataset or with another architecture (DataError or SystemExit)."""
    if 'model_type' in explicit and explicit['model_type'] != ckpt['model_type']:
        fail(f"{ckpt_path} is a {ckpt['model_type']} run but model_type is {explicit['model_type']!r}; "
             "use another --out_dir to train a new model")
    old_meta = ckpt['meta']
    if (old_meta['vocab_size'], old_meta['tokenizer']['kind']) != (meta['vocab_size'], meta['tokenizer']['kind']):
        fail(f"{ckpt_path} was trained on a vocabulary of {old_meta['vocab_size']} ({old_meta['tokenizer']['kind']}) "
             f"tokens but {data_path} has {meta['vocab_size']} ({meta['tokenizer']['kind']}); "
             "resume on the run's own dataset or use another --out_dir")
    check_same_dataset(old_meta, meta, ckpt_path, data_path)
    for key in ARCH_KEYS:
        if key in explicit and explicit[key] != ckpt['model_args'][key]:
            fail(f"{ckpt_path} has {key}={ckpt['model_args'][key]!r} but {explicit[key]!r} was given; "
                 "a resumed run keeps its architecture")


def needs_reseed(resume, world_size, cfg):
    """Whether a resume runs on another number of processes (GPUs) than saved the run, so that its random
    streams must be reseeded; with deterministic=True, which promises a bitwise continuation, that is an
    error instead."""
    saved = len(resume['rng'])
    if saved != world_size and cfg['deterministic']:
        fail(f"{Path(cfg['out_dir']) / 'ckpt.pt'} was saved by {saved} process(es) and {world_size} would resume it: "
             f"deterministic=True cannot continue it bitwise; resume with {saved} process(es) "
             "(torchrun --nproc_per_node), or with --deterministic=False for reseeded data and dropout streams")
    return saved != world_size


def check_resumed_dtype(resume, dtype, cfg, rank):
    """A run resumed in another dtype than it trained in (dtype=auto on another GPU) continues, but not
    bitwise: said in one line, and refused with deterministic=True, which promises a bitwise continuation."""
    saved = resume.get('dtype', resume['config']['dtype'])
    if saved == dtype:
        return
    if cfg['deterministic']:
        fail(f"{Path(cfg['out_dir']) / 'ckpt.pt'} trained in {saved} and this machine resolves dtype="
             f"{cfg['dtype']} to {dtype}: deterministic=True cannot continue it bitwise; resume with "
             f"--dtype={saved} where the device runs it, or with --deterministic=False")
    if rank == 0:
        print(f"warning: the run trained in {saved} and continues in {dtype} here: not a bitwise continuation")


def restore(run, resume, reseed_to=None):
    """Continue train.py's Run where the checkpoint left off: optimizer, scaler, counters, log, and the
    random streams unless reseed_to gives the seed of fresh ones."""
    run.optimizer.load_state_dict(resume['optimizer'])
    if resume['scaler']:
        run.scaler.load_state_dict(resume['scaler'])
    run.iter_num, run.best_val_loss = resume['iter_num'], resume['best_val_loss']
    run.training_log, run.elapsed_before = resume['training_log'], resume.get('elapsed_s', 0.0)
    run.saved = {'ckpt.pt': run.iter_num}
    if (run.out_path / 'best.pt').exists():  # its iteration is in the log, under the key that selected it
        key = run.objective.selection_key
        run.saved['best.pt'] = next((e['iter'] for e in run.training_log if e[key] == run.best_val_loss), '?')
    if reseed_to is None:
        set_rng_state(resume['rng'][run.rank], run.device)
        run.objective.load_state_dict(resume['sampler'][run.rank])
    else:  # the run continues, but not bitwise
        if run.master:
            print(f"warning: {len(resume['rng'])} processes saved this run, {run.world_size} resume it: "
                  "data order and dropout streams are reseeded")
        torch.manual_seed(reseed_to)
    resume.clear()  # frees the loaded tensors now that they are copied into the model
