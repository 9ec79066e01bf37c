"""Reading a prepared dataset (data/europarl/prepare.py): locate it, read meta.json, sample batches.

    sampler = BatchSampler('sample', seed=1337)
    x, y = sampler.get_batch('train', batch_size=8, block_size=128, device='cpu')
    x, y, lang = sampler.get_batch('val', 8, 128, 'cpu', with_language=True)

Batches are random windows over the token stream (nanoGPT style) drawn with a torch.Generator,
so the sampler's state can be saved in a checkpoint and a resumed run draws the same batches.
"""
import json
from pathlib import Path

import numpy as np
import torch

from tokenizer import DataError  # noqa: F401  (re-exported: `from dataset import DataError`)

DATA_ROOT = Path(__file__).resolve().parent / "data"
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
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}): prepare the dataset again") from e


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
        path = self.data_dir / f"{split}.bin"
        if not path.is_file():
            raise DataError(f"{path} is missing: {PREPARE_HINT}")
        # a fresh memmap per call, as in nanoGPT: memmaps kept open grow resident memory
        return np.memmap(path, dtype=self.dtype, mode="r")

    def language_labels(self, split):
        if split not in self._labels:
            special = self.meta["special_tokens"]
            self._labels[split] = language_labels(np.asarray(self.tokens(split)), special["en"], special["fr"])
        return self._labels[split]

    def get_batch(self, split, batch_size, block_size, device="cpu", with_language=False):
        data = self.tokens(split)
        if len(data) <= block_size:
            raise DataError(f"{split}.bin of {self.data_dir} has {len(data)} tokens, "
                            f"too few for block_size {block_size}")
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
