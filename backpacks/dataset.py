"""Reading a prepared dataset (data/europarl/prepare.py): locate it, read meta.json, sample batches.

    sampler = BatchSampler('sample', seed=1337)
    x, y = sampler.get_batch('train', batch_size=8, block_size=128, device='cpu')
    x, y, lang = sampler.get_batch('val', 8, 128, 'cpu', with_language=True)

Batches are random windows over the token stream (nanoGPT style) drawn with a torch.Generator,
so the sampler's state can be saved in a checkpoint and a resumed run draws the same batches.

Every token file read (train.bin, val.bin, test.bin, pairs_*.bin) is first checked against the
record meta.json keeps of it (token_files: bytes, sha256, largest id), once per process: its size
always; its sha256 and its largest id (which must lie below vocab_size) when BACKPACK_VERIFY_DATA
is `full`, or `auto` (the default) and the file is at most 1 GiB; `size` checks sizes only.
"""
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from backpacks.atomic import token_record
from backpacks.cli import VERIFY_MODES, VERIFY_VARIABLE, fail
from backpacks.tokenizer import DataError  # noqa: F401  (re-exported: `from dataset import DataError`)

DATA_ROOT = Path(__file__).resolve().parent.parent / "data"  # the repository's data/
# keys every reader relies on, and the sub-keys of the nested ones
REQUIRED_META = {"vocab_size": (), "dtype": (), "tokenizer": ("kind", "path"), "special_tokens": ("en", "fr", "eot")}
PREPARE_HINT = "run python -m data.europarl.prepare (e.g. --source local --corpus data/europarl/sample/parliament --name sample)"
FULL_CHECK_BYTES = 1 << 30  # auto: larger token files are only sized (hashing runs at roughly 0.5-1 GB/s)
_verified = set()  # (path, size, mtime) of the token files already checked in this process


def resolve_data_dir(name_or_path):
    """An existing directory as given, else <repo>/data/<name>."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    named = DATA_ROOT / str(name_or_path)
    if named.is_dir():
        return named
    if path.exists():
        raise DataError(f"dataset {name_or_path!r} is a file, not a dataset directory: {PREPARE_HINT}")
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


def verify_mode():
    """BACKPACK_VERIFY_DATA: auto (the default), full or size (DataError for anything else)."""
    mode = os.environ.get(VERIFY_VARIABLE, "").strip().lower() or "auto"
    if mode not in VERIFY_MODES:
        raise DataError(f"environment variable {VERIFY_VARIABLE}={os.environ[VERIFY_VARIABLE]!r}: "
                        f"use {', '.join(VERIFY_MODES)}")
    return mode


def token_file(path, meta):
    """The token file at path as a memmap of meta's dtype, after verify_token_file. A fresh memmap per
    call, as in nanoGPT: memmaps kept open grow resident memory."""
    dtype = np.dtype(meta["dtype"])
    size = path.stat().st_size
    if size == 0 or size % dtype.itemsize:
        raise DataError(f"{path} has {size} bytes, not a whole positive number of {dtype} tokens "
                        "(empty or truncated): prepare the dataset again")
    verify_token_file(path, meta)
    return np.memmap(path, dtype=dtype, mode="r")


def verify_token_file(path, meta):
    """DataError unless the token file at path is the one meta.json records (size always, sha256 as
    verify_mode says) and holds no id at or above meta's vocab_size. Once per process and file version."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    again = f"prepare the dataset again (`{meta.get('command', 'python -m data.europarl.prepare')}`)"
    record = meta.get("token_files", {}).get(path.name)
    if record is None:
        warn_once(f"warning: {path.parent / 'meta.json'} records no sizes or sha256 of its token files (prepared "
                  f"before they were recorded): cannot check that they are the files prepared; {again} to record them")
    elif stat.st_size != record["bytes"]:
        raise DataError(f"{path} has {stat.st_size} bytes but meta.json records {record['bytes']}: the file was "
                        f"changed or replaced after preparation; {again}")
    mode = verify_mode()
    max_id = record["max_id"] if record else None
    if mode == "full" or (mode == "auto" and stat.st_size <= FULL_CHECK_BYTES):
        found = token_record(np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r"))
        if record and found["sha256"] != record["sha256"]:
            raise DataError(f"{path} is not the file prepared (sha256 {found['sha256'][:12]}, meta.json records "
                            f"{record['sha256'][:12]}): the file was changed or replaced after preparation; {again}")
        max_id = found["max_id"]
    if max_id is not None and max_id >= meta["vocab_size"]:
        raise DataError(f"{path} holds token id {max_id}, outside the vocabulary of {meta['vocab_size']} that "
                        f"meta.json gives: the file and meta.json do not belong together; {again}")
    _verified.add(key)


def split_tokens(data_dir, split, meta):
    """data_dir/<split>.bin as a verified memmap (DataError if missing, empty, truncated or not the
    file meta.json records)."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise DataError(f"{path} is missing: {PREPARE_HINT}")
    return token_file(path, meta)


def unigram_entropy(data_dir, meta):
    """Entropy (nats/token) of the unigram distribution of train.bin: what a context-free model scores."""
    tokens = split_tokens(data_dir, "train", meta)
    counts = np.zeros(meta["vocab_size"], dtype=np.int64)
    for start in range(0, len(tokens), 1 << 24):
        counts += np.bincount(tokens[start:start + (1 << 24)], minlength=meta["vocab_size"])[:meta["vocab_size"]]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


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
        self.generator = torch.Generator().manual_seed(seed)
        self._labels = {}  # split -> int8 language label per stream position, computed once

    def tokens(self, split):
        return split_tokens(self.data_dir, split, self.meta)

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
        """(x, y[, language of y]) of batch_size random windows of split."""
        data = self.check_split(split, block_size)
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=self.generator).numpy()
        return self.windows(split, starts, block_size, device, with_language)

    def disjoint_starts(self, split, count, block_size):
        """Starts of up to `count` windows of split that share no target token, spaced evenly over the
        whole stream (its sources and domains in their share), fewer where the split is too short."""
        room = len(self.check_split(split, block_size)) - block_size  # a window reads block_size + 1 tokens
        count = min(count, room // block_size)
        return (np.arange(count) * (room // count)).astype(np.int64) if count else np.zeros(0, np.int64)

    def windows(self, split, starts, block_size, device="cpu", with_language=False):
        """(x, y[, language of y]) of the windows of split starting at `starts` (a numpy array)."""
        data = self.check_split(split, block_size)
        window = starts[:, None] + np.arange(block_size + 1)
        xy = torch.from_numpy(data[window].astype(np.int64))
        if int(xy.max()) >= self.meta["vocab_size"]:  # in a file too large to be scanned up front
            raise DataError(f"{split}.bin of {self.data_dir} holds token id {int(xy.max())}, outside the "
                            f"vocabulary of {self.meta['vocab_size']} that meta.json gives: prepare the dataset again")
        tensors = [xy]
        if with_language:  # the label of each target y, i.e. of positions 1..block_size of the window
            tensors.append(torch.from_numpy(self.language_labels(split)[window[:, 1:]]))
        if torch.device(device).type == "cuda":
            # whole, contiguous buffers, pinned: the copy then overlaps compute (a strided slice such as
            # xy[:, :-1] would be staged through pageable memory, synchronously); x and y are cut on the GPU
            tensors = [t.pin_memory().to(device, non_blocking=True) for t in tensors]
        else:
            tensors = [t.to(device) for t in tensors]
        return (tensors[0][:, :-1], tensors[0][:, 1:], *tensors[1:])

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def resolve_dataset(data_dir):
    """--data_dir as train.py takes it (a directory, or a dataset name under data/), as a path string;
    None stays None (the checkpoint's own dataset)."""
    if data_dir is None:
        return None
    try:
        return str(resolve_data_dir(data_dir))
    except DataError as e:
        fail(f"--data_dir: {e}")
