"""Live logging (wandb_log, as nanoGPT does it): off by default and then wandb is never imported; on, every
training_log entry reaches wandb from rank 0; without the wandb package it is one line before any work."""
import sys
import types

import pytest

import train
from backpacks.wandb_log import open_live_log
from tiny import TINY_TRAIN_ARGS, read_log


def fake_wandb(calls):
    """A stand-in for the wandb package that records init() and log() calls."""
    run = types.SimpleNamespace(log=lambda data, step: calls.append(('log', step, data)))
    return types.SimpleNamespace(init=lambda **kwargs: calls.append(('init', kwargs)) or run)


def test_wandb_receives_every_evaluation(synthetic_dataset, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, 'wandb', fake_wandb(calls))
    out = tmp_path / 'run'
    train.main([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', '--max_iters=10', f'--out_dir={out}',
                '--wandb_log', '--wandb_project=bp-tests'])
    (kind, init), *logs = calls
    assert kind == 'init' and init['project'] == 'bp-tests' and init['name'] == 'run'
    assert init['config']['max_iters'] == 10 and init['config']['wandb_log'] is True
    entries = read_log(out)
    assert [step for _, step, _ in logs] == [e['iter'] for e in entries] == [0, 5, 10]
    assert all(data['val_loss'] == e['val_loss'] and data['lr'] == e['lr'] and 'mfu_yardstick' not in data
               for (_, _, data), e in zip(logs, entries))


def test_off_by_default_without_importing_wandb(synthetic_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # importing it would raise
    train.main([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', '--max_iters=0', f'--out_dir={tmp_path / "run"}'])
    assert open_live_log({**train.DEFAULTS, 'wandb_log': False}) is None


def test_missing_wandb_is_one_line_before_any_work(tmp_path, monkeypatch):
    """Before even the dataset is read (this one does not exist)."""
    monkeypatch.setitem(sys.modules, 'wandb', None)
    with pytest.raises(SystemExit) as e:
        train.main([*TINY_TRAIN_ARGS, f'--data_dir={tmp_path / "absent"}', f'--out_dir={tmp_path / "run"}',
                    '--wandb_log'])
    assert str(e.value) == ("error: wandb_log=True but the wandb package is not installed: pip install wandb "
                            "(and wandb login), or train without --wandb_log")
    assert not (tmp_path / 'run').exists()


def test_only_rank_0_logs(synthetic_dataset, tmp_path, monkeypatch):
    """Every process but rank 0 trains without a live log: setup_run opens it on the master only."""
    calls = []
    monkeypatch.setitem(sys.modules, 'wandb', fake_wandb(calls))
    monkeypatch.setattr(train.Run, 'master', property(lambda self: False))
    train.main([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', '--max_iters=0', f'--out_dir={tmp_path / "run"}',
                '--wandb_log'])
    assert calls == []
