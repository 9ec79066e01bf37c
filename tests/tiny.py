"""The tiny things the tests share (conftest.py builds its fixtures on them; a test file imports them from here).

tiny_model / tiny_config: the one tiny model every in-process test builds (TINY_SHAPE, seeded, in eval mode);
a test passes overrides only where it depends on another shape, and says why.
TINY_TRAIN_ARGS: the one list of train.py arguments of a tiny CPU run; its variants (SENSIA's, bench.py's, a
stand-in GPU's, ...) are built from it by train_args(), not copied.
write_synthetic_dataset, read_log, error_of: the synthetic gpt2-kind dataset and the helpers of train.py runs.
one_line, snapshot, read_only: what the bad-input probes (tests/test_bad_inputs_*.py) assert and inject."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from model import ModelConfig, build_model

# ----------------------------------------------------------------------------- the tiny model

# Two layers, so that what one layer hands the next (the KV cache, causality, padding) is exercised.
TINY_SHAPE = dict(n_layer=2, n_head=2, n_embd=32, n_senses=4)


def tiny_config(vocab_size=64, block_size=32, **overrides):
    """The ModelConfig of the tiny model: TINY_SHAPE with overrides (any ModelConfig field)."""
    return ModelConfig(vocab_size=vocab_size, block_size=block_size, **{**TINY_SHAPE, **overrides})


def tiny_model(model_type='backpack', vocab_size=64, block_size=32, seed=0, **overrides):
    """A tiny model_type model of tiny_config(vocab_size, block_size, **overrides), its weights drawn after
    torch.manual_seed(seed), in eval mode (dropout is 0 unless overridden, so the mode changes no number)."""
    torch.manual_seed(seed)
    return build_model(model_type, tiny_config(vocab_size, block_size, **overrides)).eval()


def tiny_translation_model(model_type, seed=0):
    """A tiny model for decoding tests: a block of 64, against which their sources (up to 40 ids) and
    budgets were chosen, and the special tokens' embeddings halved, as random models otherwise tend to stop at once (the tied
    head favours the tag just read). Its ids are IdTokenizer's: 0, 1, 2 the tags, vocabulary 64."""
    model = tiny_model(model_type, block_size=64, seed=seed)
    with torch.no_grad():
        model.token_embeddings[:3] *= 0.5
    return model


# ----------------------------------------------------------------------------- train.py arguments

def shape_args(**overrides):
    """TINY_SHAPE (with overrides) as --key=value arguments: train.py's and bench.py's."""
    return [f'--{key}={value}' for key, value in {**TINY_SHAPE, **overrides}.items()]


SHAPE_KEYS = tuple(f'--{key}' for key in TINY_SHAPE)
MODEL_KEYS = (*SHAPE_KEYS, '--block_size')

# The tiny model with one layer: these runs are the slow tests, and their thresholds were set on it.
TINY_TRAIN_ARGS = [*shape_args(n_layer=1), '--block_size=32', '--batch_size=8', '--eval_iters=2', '--eval_interval=5',
                   '--log_interval=5', '--warmup_iters=2', '--learning_rate=3e-3', '--device=cpu', '--dtype=float32']


def train_args(*changes, base=TINY_TRAIN_ARGS, drop=()):
    """A variant of base (TINY_TRAIN_ARGS unless told): each --key=value of changes in place of base's
    argument of that key (or added), and base's arguments of the keys in drop left out."""
    key = lambda arg: arg.split('=', 1)[0]
    replaced = {key(arg) for arg in changes} | set(drop)
    return [arg for arg in base if key(arg) not in replaced] + list(changes)


# SENSIA runs: evaluated on 16 pairs, bitwise reproducible (a killed run resumes into the same bits)
SENSIA_TRAIN_ARGS = train_args('--eval_iters=1', '--log_interval=100', '--objective=sensia', '--sensia_eval_pairs=16',
                               '--deterministic')

# bench.py times the model TINY_TRAIN_ARGS trains, on random batches of 2 over a vocabulary of 64
TINY_BENCH_ARGS = [arg for arg in TINY_TRAIN_ARGS if arg.split('=', 1)[0] in MODEL_KEYS] + [
    '--vocab_size=64', '--batch_size=2', '--warmup=1', '--steps=2']


# ----------------------------------------------------------------------------- a synthetic dataset, train.py runs

EN, FR, EOT = 96, 97, 95  # tag and end-of-text ids of the synthetic gpt2-kind dataset (96 + 2 tags)


def write_synthetic_dataset(path, seed=0):
    """A gpt2-kind dataset of vocabulary 98 whose "French" repeats the English ids shifted by 45:
    learnable in a few iterations, and matching the 96-token backpack-gpt2-tiny checkpoint."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    splits = {}
    for split, n_pairs in (('train', 400), ('val', 60)):
        stream = []
        for _ in range(n_pairs):
            words = rng.integers(0, 40, size=rng.integers(3, 9))
            stream += [EN, *words, FR, *(words + 45), EOT]
        np.array(stream, dtype=np.uint16).tofile(path / f'{split}.bin')
        n_tokens = len(stream) - 3 * n_pairs
        splits[split] = {'pairs': n_pairs, 'sequences': n_pairs, 'tokens': len(stream),
                         'tokens_en': n_tokens // 2, 'tokens_fr': n_tokens // 2}
    meta = {'vocab_size': 98, 'dtype': 'uint16',
            'tokenizer': {'kind': 'gpt2', 'path': 'tiktoken:gpt2', 'base_vocab_size': 96},
            'special_tokens': {'en': EN, 'fr': FR, 'eot': EOT}, 'bidirectional': False, 'seed': seed,
            'splits': splits, 'cleaning': {}, 'sources': [], 'command': 'tests/tiny.py synthetic data'}
    (path / 'meta.json').write_text(json.dumps(meta))
    return path


def read_log(out_dir):
    """The training_log.json of a run."""
    return json.loads((out_dir / 'training_log.json').read_text())


def error_of(argv):
    """The one-line error (`error: ...`) train.main(argv) exits with."""
    import train
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert str(e.value).startswith('error: '), e.value
    return str(e.value)


# ----------------------------------------------------------------------------- the bad-input probes

def one_line(stopped, capsys):
    """The one line an entry point stopped with (pytest.raises(SystemExit)'s info): fail() exits with the
    line itself, argparse prints it and exits with 2; it must start `error: ` and the status be non-zero."""
    code = stopped.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err
    assert code not in (0, None), message
    assert message.startswith('error: ') and '\n' not in message.strip() and 'Traceback' not in message, message
    return message


def snapshot(root):
    """{path: sha256} of every file under root: equal before and after a refused command, nothing was changed,
    added or lost."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


def read_only(path, monkeypatch):
    """path, a folder no one may write (mode 555); as root, who may write anywhere, os.access then answers
    for path as it would for a user."""
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    if os.access(path, os.W_OK):
        access = os.access
        monkeypatch.setattr(os, 'access', lambda p, mode, **kw: access(p, mode, **kw) and not (
            mode & os.W_OK and os.path.realpath(p) == os.path.realpath(path)))
    return path
