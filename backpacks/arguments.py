"""Checks of command-line values that evaluate.py, compare_models.py and sample.py share: each bad
value stops the script with one line (errors.fail) before any model is loaded."""
import os
from pathlib import Path

from backpacks.dataset import DataError, resolve_data_dir
from backpacks.errors import fail
from backpacks.generation import new_token_cap

MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes no more, torch's no more than 2**64 - 1


def check_at_least(args, minimum, names):
    """Every option in names that is set (not None) is an integer >= minimum."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            fail(f"--{name} must be >= {minimum}, got {value}")


def check_seed(seed):
    if not 0 <= seed <= MAX_SEED:
        fail(f"--seed must be within [0, {MAX_SEED}], got {seed}")


def resolve_dataset(data_dir):
    """--data_dir as train.py takes it (a directory, or a dataset name under data/), as a path string;
    None stays None (the checkpoint's own dataset)."""
    if data_dir is None:
        return None
    try:
        return str(resolve_data_dir(data_dir))
    except DataError as e:
        fail(f"--data_dir: {e}")


def check_max_new_tokens(max_new_tokens, block_size):
    """Refuse a --max_new_tokens that translation would lower to its cap (half the context)."""
    cap = new_token_cap(block_size)
    if max_new_tokens is not None and max_new_tokens > cap:
        fail(f"--max_new_tokens {max_new_tokens} is more than a translation may take with this model: at most "
             f"{cap}, half its {block_size}-token context (the prompt keeps the other half)")


def check_directory(path, what):
    if not Path(path).is_dir():
        fail(f"{what} {path} is not a directory")


def check_writable(path, what):
    """path can be created or written: the nearest existing part of it is a writable directory."""
    existing = next(p for p in (Path(path), *Path(path).absolute().parents) if p.exists())
    if not existing.is_dir():
        fail(f"{what} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"{what} {path}: {existing} is not writable")


def check_directory_variable(name):
    """An environment variable that, when set, names a directory (existing or to be created)."""
    value = os.environ.get(name)
    if value and Path(value).exists() and not Path(value).is_dir():
        fail(f"environment variable {name}={value} is a file, not a directory")
