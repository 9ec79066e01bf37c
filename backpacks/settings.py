"""The checks train.py's settings pass before any work, each failure one line (cli.parse_settings reads
them; SENSIA's own are sensia.validate_settings).

    validate({**train.DEFAULTS, **explicit})   # SystemExit('error: ...') at the first bad value
"""
from pathlib import Path

from backpacks import sensia
from backpacks.cli import fail
from backpacks.devices import DTYPES, check_device_name
from model import MODEL_CLASSES, PRESETS

INIT_CHOICES = ('scratch', 'resume', 'backpack-gpt2')
ARCH_SIZES = ('n_layer', 'n_head', 'n_embd', 'n_senses')


def validate(cfg):
    choices = {'model_type': tuple(MODEL_CLASSES), 'dtype': ('auto', *DTYPES), 'objective': ('lm', 'sensia'),
               'sensia_context': sensia.CONTEXT_STATES}
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            fail(f"{key} must be one of {', '.join(allowed)}, got {cfg[key]!r}")
    if cfg['init_from'] == 'backpack-small':  # the published weights' old name, since taken by a preset
        fail("init_from 'backpack-small' is now 'backpack-gpt2' (the published stanfordnlp/backpack-gpt2 weights; "
             "--preset=backpack-small is a fresh 170M-parameter Backpack)")
    if cfg['init_from'] not in INIT_CHOICES and not Path(cfg['init_from']).is_dir():
        fail(f"init_from must be one of {', '.join(INIT_CHOICES)} or a run directory, got {cfg['init_from']!r}")
    if cfg['init_from'] not in INIT_CHOICES and not any((Path(cfg['init_from']) / n).is_file() for n in ('best.pt', 'ckpt.pt')):
        fail(f"init_from={cfg['init_from']!r} has no best.pt or ckpt.pt to start from")
    if cfg['pretrained_path'] and cfg['init_from'] not in ('backpack-gpt2', 'resume'):  # a resume keeps its settings
        fail(f"pretrained_path is only read with --init_from=backpack-gpt2 (init_from is {cfg['init_from']!r})")
    sensia.validate_settings(cfg)
    if cfg['preset'] and cfg['preset'] not in PRESETS:
        fail(f"unknown preset {cfg['preset']!r}; choose from {', '.join(PRESETS)}")
    for key in ('eval_interval', 'eval_iters', 'log_interval', 'checkpoint_interval', 'batch_size',
                'block_size', 'gradient_accumulation_steps', *ARCH_SIZES):
        if cfg[key] < 1:
            fail(f"{key} must be at least 1, got {cfg[key]}")
    if cfg['early_stop_evals'] < 0:
        fail(f"early_stop_evals must be >= 0 (0 disables early stopping), got {cfg['early_stop_evals']}")
    if cfg['snapshot_interval'] < 0:
        fail(f"snapshot_interval must be >= 0 (0 keeps no snapshots), got {cfg['snapshot_interval']}")
    if cfg['max_iters'] < 0 or cfg['warmup_iters'] < 0 or not 0.0 <= cfg['dropout'] < 1.0:
        fail("max_iters and warmup_iters must be >= 0 and dropout in [0, 1)")
    for key in ('learning_rate', 'weight_decay', 'grad_clip', 'lr_decay_iters'):
        if not cfg[key] >= 0:  # also refuses nan
            fail(f"{key} must be >= 0, got {cfg[key]}")
    if 0 < cfg['lr_decay_iters'] < cfg['warmup_iters']:
        fail(f"lr_decay_iters ({cfg['lr_decay_iters']}) ends the decay before warmup_iters ({cfg['warmup_iters']}) "
             "ends the warmup: use 0 (decay until max_iters) or a value >= warmup_iters")
    if not (0 <= cfg['min_lr_ratio'] <= 1 and 0 <= cfg['beta1'] < 1 and 0 <= cfg['beta2'] < 1):
        fail("min_lr_ratio must be in [0, 1] and beta1, beta2 in [0, 1)")
    check_device_name(cfg['device'])
    if not cfg['out_dir'].strip():
        fail("--out_dir is empty: name the directory for the checkpoints (e.g. --out_dir=out/my_run)")
