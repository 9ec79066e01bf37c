"""Reading a prepared dataset (data/europarl/prepare.py): locate it, read meta.json, sample batches.

    sampler = BatchSampler('sample', seed=1337)
    x, y = sampler.get_batch('train', batch_size=8, block_size=128, device='cpu')
    x, y, lang = sampler.get_batch('val', 8, 128, 'cpu', with_language=True)

Batches are random windows over the token stream (nanoGPT style) drawn with a torch.Generator,
so the sampler's state can be saved in a checkpoint and a resumed run draws the same batches.
"""
import functools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from backpacks.tokenizer import DataError  # noqa: F401  (re-exported: `from dataset import DataError`)

DATA_ROOT = Path(__file__).resolve().parent.parent / "data"  # the repository's data/
# keys every reader relies on, and the sub-keys of the nested ones
REQUIRED_META = {"vocab_size": (), "dtype": (), "tokenizer": ("kind", "path"), "special_tokens": ("en", "fr", "eot")}
PREPARE_HINT = "run data/europarl/prepare.py (e.g. --source local --corpus data/europarl/sample/parliament --name sample)"


def resolve_data_dir(name_or_path):
    """An existing directory as given, else <repo>/data/<name>."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    named = DATA_ROOT / str(name_or_path)
    if named.is_dir():
        return named
    raise DataError(f"dataset {name_or_path!r} not found (neither {path} nor {named} exists): {PREPARE_HINT}")


def prepared_datasets():
    """Names of the datasets under data/ (directories with a meta.json)."""
    return sorted(p.parent.name for p in DATA_ROOT.glob("*/meta.json"))


def load_meta(data_dir):
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        known = prepared_datasets()
        hint = f"prepared datasets under data/: {', '.join(known)}" if known else PREPARE_HINT
        raise DataError(f"{data_dir} has no meta.json, so it is not a prepared dataset; {hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}): prepare the dataset again") from e
    for key, subkeys in REQUIRED_META.items():
        if not isinstance(meta, dict) or key not in meta or any(k not in meta[key] for k in subkeys):
            raise DataError(f"{path} lacks {key!r}{' with ' + ', '.join(subkeys) if subkeys else ''}: "
                            "prepare the dataset again")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise DataError(f"{path} has dtype {meta['dtype']!r}, expected uint16 or uint32: prepare the dataset again")
    return meta


def check_same_dataset(ckpt_meta, meta, ckpt_path, data_path, check_data=True):
    """DataError unless data_path's meta has the tokenizer fingerprint (and, with check_data, the data
    fingerprint) that the checkpoint was trained with: a same-sized but other tokenizer gives other ids
    silently. A side without fingerprints (prepared before they were recorded) is only warned about."""
    for key in ("tokenizer_sha256", "data_sha256") if check_data else ("tokenizer_sha256",):
        trained, found = ckpt_meta.get(key), meta.get(key)
        if trained is None or found is None:
            warn_once(f"warning: {ckpt_path if trained is None else data_path} records no {key} "
                      "(prepared before fingerprints): cannot check that the run's own dataset is used")
        elif trained != found:
            what = "tokenizer" if key == "tokenizer_sha256" else "token data"
            raise DataError(f"{data_path} is not the dataset {ckpt_path} was trained on (its {what} differs, sha256 "
                            f"{found[:12]} vs {trained[:12]}); the run was trained on the dataset made by "
                            f"`{ckpt_meta.get('command', 'an unrecorded command')}`: use that dataset or prepare it again")


@functools.lru_cache(maxsize=None)
def warn_once(message):
    print(message, file=sys.stderr)


def split_tokens(data_dir, split, dtype):
    """data_dir/<split>.bin as a memmap of dtype tokens (DataError if missing, empty or truncated).
    A fresh memmap per call, as in nanoGPT: memmaps kept open grow resident memory."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise DataError(f"{path} is missing: {PREPARE_HINT}")
    size = path.stat().st_size
    if size == 0 or size % dtype.itemsize:
        raise DataError(f"{path} has {size} bytes, not a whole positive number of {dtype} tokens "
                        "(empty or truncated): prepare the dataset again")
    return np.memmap(path, dtype=dtype, mode="r")


def language_labels(tokens, en_id, fr_id):
    """int8 label per position: 0 English, 1 French, -1 before any tag; the segment of token i is
    the latest tag strictly before i. Vectorised: mark the position after each tag, forward-fill."""
    n = len(tokens)
    tag_pos = np.flatnonzero((tokens == en_id) | (tokens == fr_id))
    tag_pos = tag_pos[tag_pos + 1 < n]
    marks = np.full(n, -1, np.int64)
    marks[tag_pos + 1] = tag_pos + 1
    last = np.maximum.accumulate(marks)  # index of the latest position right after a tag, or -1
    labels = np.where(last >= 0, (tokens[np.maximum(last, 1) - 1] == fr_id), -1).astype(np.int8)
    return labels


class BatchSampler:
    """Random block_size windows of data_dir/<split>.bin; resumable through state_dict()."""

    def __init__(self, data_dir, seed=1337):
        self.data_dir = resolve_data_dir(data_dir)
        self.meta = load_meta(self.data_dir)
        self.dtype = np.dtype(self.meta["dtype"])
        self.generator = torch.Generator().manual_seed(seed)
        self._labels = {}  # split -> int8 language label per stream position, computed once

    def tokens(self, split):
        return split_tokens(self.data_dir, split, self.dtype)

    def check_split(self, split, block_size):
        """The split's tokens, or DataError if they cannot fill one block_size window plus its target."""
        data = self.tokens(split)
        if len(data) <= block_size:
            raise DataError(f"{split}.bin of {self.data_dir} has {len(data)} tokens, "
                            f"too few for block_size {block_size}")
        return data

    def language_labels(self, split):
        if split not in self._labels:
            special = self.meta["special_tokens"]
            self._labels[split] = language_labels(np.asarray(self.tokens(split)), special["en"], special["fr"])
        return self._labels[split]

    def get_batch(self, split, batch_size, block_size, device="cpu", with_language=False):
        data = self.check_split(split, block_size)
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=self.generator).numpy()
        window = starts[:, None] + np.arange(block_size + 1)
        xy = torch.from_numpy(data[window].astype(np.int64))
        batch = [xy[:, :-1], xy[:, 1:]]
        if with_language:  # the label of each target y, i.e. of positions 1..block_size of the window
            batch.append(torch.from_numpy(self.language_labels(split)[window[:, 1:]]))
        device = torch.device(device)
        if device.type == "cuda":  # pinned host memory lets the copy overlap with compute
            return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)
        return tuple(t.to(device) for t in batch)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
