"""train.py: settings parsing, short CPU runs, exact resume after SIGKILL, atomic saves, SIGTERM,
DDP with two gloo processes, finetuning a backpack-gpt2 checkpoint, and bad inputs."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from backpacks import devices, objectives
import model as model_module
import train
from backpacks.checkpoint import load_checkpoint, load_trained_model, save_checkpoint
from backpacks.dataset import BatchSampler
from backpacks.hf_format import load_backpack_gpt2
from backpacks.init_from import model_from_settings
from conftest import native_on_this_cpu
from tiny import EN, FR, SHAPE_KEYS, TINY_TRAIN_ARGS, error_of, read_log, train_args

CHECKPOINT_KEYS = {'model', 'model_type', 'model_args', 'config', 'meta', 'data_dir', 'iter_num', 'best_val_loss',
                   'optimizer', 'scaler', 'rng', 'sampler', 'training_log'}


def run_cli(repo_root, args, **kwargs):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, 'train.py', *args], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


# ----------------------------------------------------------------------------- settings

def test_overrides_are_typed():
    got = train.parse_args(['--max_iters=5', '--learning_rate', '1', '--compile', '--out_dir=out-x',
                            '--bias', 'false', '--data_dir', 'some/path', '--min_lr_ratio=0.05'])
    assert got == {'max_iters': 5, 'learning_rate': 1.0, 'compile': True, 'out_dir': 'out-x', 'bias': False,
                   'data_dir': 'some/path', 'min_lr_ratio': 0.05}
    assert type(got['learning_rate']) is float


def test_config_files_then_overrides(repo_root):
    by_name = train.parse_args(['--config', 'train_europarl_scratch', '--max_iters=7'])
    by_path = train.parse_args([str(repo_root / 'config' / 'train_europarl_scratch.py'), '--max_iters', '7'])
    assert by_name == by_path
    assert by_name['max_iters'] == 7 and by_name['n_senses'] == 16 and by_name['learning_rate'] == 3e-4
    finetune = train.parse_args(['--config=train_europarl_finetune.py'])
    assert finetune['init_from'] == 'backpack-gpt2' and finetune['learning_rate'] == 1e-5
    transformer = train.parse_args(['--config', 'train_europarl_scratch', '--config', 'train_europarl_transformer_baseline'])
    assert transformer['model_type'] == 'transformer' and transformer['n_layer'] == 6  # the later file wins


@pytest.mark.parametrize('backpack, transformer', [
    (['config/train_europarl_scratch.py'], ['config/train_europarl_scratch.py', 'config/train_europarl_transformer_baseline.py']),
    (['config/train_sample_tiny.py'], ['config/train_sample_tiny.py', 'config/train_sample_tiny_transformer.py'])])
def test_matched_configs_differ_only_in_the_model(backpack, transformer):
    """The Backpack-vs-Transformer comparison is fair only while the pair shares every other setting: each
    Transformer config is an overlay given after its Backpack's."""
    b, t = ({**train.DEFAULTS, **train.parse_args(argv)} for argv in (backpack, transformer))
    assert (b['model_type'], t['model_type']) == ('backpack', 'transformer')
    differing = {k for k in b.keys() | t.keys() if b.get(k) != t.get(k)}
    assert differing <= {'model_type', 'out_dir', 'n_senses'}, differing
    assert t['n_senses'] == train.DEFAULTS['n_senses']  # a Transformer has no senses: its settings keep the default


def test_parameter_matched_transformer_config():
    """The size-matched baseline differs from the backbone-matched one only in width, and its total
    parameter count is within 3% of the tiny Backpack's (vocabulary 512: the sample corpus's BPE)."""
    from model import ModelConfig, build_model
    b, t, m = (train.parse_args(['config/train_sample_tiny.py', *overlay]) for overlay in
               ([], ['config/train_sample_tiny_transformer.py'], ['config/train_sample_tiny_transformer_matched.py']))
    assert {k for k in t if t[k] != m[k]} == {'out_dir', 'n_embd'} and m['n_embd'] > t['n_embd']

    def total(cfg):
        config = ModelConfig(**{k: cfg[k] for k in ('n_layer', 'n_head', 'n_embd', 'block_size')}, n_senses=b['n_senses'],
                             vocab_size=512)
        with torch.device('meta'):
            return build_model(cfg['model_type'], config).num_params(non_embedding=False)
    assert abs(total(m) / total(b) - 1) < 0.03
    assert total(t) / total(b) < 0.7  # the backbone-matched baseline is much smaller
    assert (total(b), total(t), total(m)) == (1_369_472, 875_264, 1_339_840)  # as docs/evaluation.md states them


@pytest.mark.parametrize('argv, expected', [
    (['--lerning_rate=1e-3'], '--learning_rate'),
    (['--max_iter', '10'], '--max_iters'),
    (['--max_iters=1.5'], 'max_iters must be a int'),
    (['--compile=maybe'], 'compile must be a bool'),
    (['--learning_rate=fast'], 'learning_rate must be a float'),
    (['--batch_size'], '--batch_size needs a value'),
    (['--config', 'no_such_config'], "config file 'no_such_config' not found"),
])
def test_bad_settings(argv, expected):
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv)
    assert str(e.value).startswith('error: ') and expected in str(e.value)


def test_bad_setting_values(tmp_path):
    assert 'model_type must be one of backpack, transformer' in error_of(['--model_type=rnn'])
    assert "unknown preset 'backpack-huge'" in error_of(['--preset=backpack-huge'])
    assert 'is a transformer' in error_of(['--preset=transformer-micro', '--model_type=backpack'])


@pytest.mark.slow
def test_cli_error_is_one_line(repo_root):
    result = run_cli(repo_root, ['--lerning_rate=1e-3'])
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert result.stderr.strip() == ("error: unknown setting 'lerning_rate' in the command line; "
                                     "did you mean --learning_rate?")
    assert run_cli(repo_root, ['--help']).returncode == 0


def test_learning_rate_schedule():
    cfg = {**train.DEFAULTS, 'learning_rate': 1.0, 'warmup_iters': 10, 'max_iters': 110, 'min_lr_ratio': 0.1}
    lrs = [train.learning_rate_at(i, cfg) for i in range(120)]
    assert lrs[0] < lrs[5] < lrs[9] < 1.0 and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1) == lrs[119]
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


# ----------------------------------------------------------------------------- training runs

def load_checkpoint_model_counts(out):
    from backpacks.checkpoint import load_trained_model
    return load_trained_model(out, 'latest')[0].param_counts()


@pytest.mark.slow
@pytest.mark.parametrize('model_type', ['backpack', 'transformer'])
def test_short_run_loss_decreases(sample_dataset, tmp_path, capsys, model_type):
    out = tmp_path / 'out'
    train.main([*TINY_TRAIN_ARGS, f'--model_type={model_type}', '--max_iters=30', f'--data_dir={sample_dataset}',
                f'--out_dir={out}', '--checkpoint_interval=10'])
    printed = capsys.readouterr().out
    assert 'unigram entropy of train.bin' in printed
    counts = load_checkpoint_model_counts(out)
    assert (f"{counts['total'] / 1e6:.2f}M parameters ({counts['embedding'] / 1e6:.2f}M embedding, "
            f"{counts['non_embedding'] / 1e6:.2f}M non-embedding)") in printed
    log = read_log(out)
    assert [e['iter'] for e in log] == [0, 5, 10, 15, 20, 25, 30]
    assert log[-1]['val_loss'] < log[0]['val_loss'] - 0.5 and log[-1]['train_loss'] < log[0]['train_loss'] - 0.5
    for key in ('val_loss_en', 'val_loss_fr', 'lr', 'elapsed_s'):
        assert np.isfinite(log[-1][key])
    assert log[-1]['tokens_per_s'] > 0 and log[0]['tokens_per_s'] is None

    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert CHECKPOINT_KEYS <= set(ckpt) and ckpt['iter_num'] == 30 and ckpt['model_type'] == model_type
    assert ckpt['training_log'] == log and ckpt['data_dir'] == str(sample_dataset.resolve())
    assert ckpt['meta']['vocab_size'] == ckpt['model_args']['vocab_size']
    assert ckpt['config']['n_layer'] == 1 and not any(k.startswith('_orig_mod.') for k in ckpt['model'])
    best, best_ckpt = load_trained_model(out, 'best')
    assert best_ckpt['best_val_loss'] == min(e['val_loss'] for e in log)
    assert sorted(p.name for p in out.iterdir()) == ['best.pt', 'ckpt.pt', 'training_log.json']


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(synthetic_dataset, tmp_path, repo_root):
    common = [*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', '--dropout=0.1', '--deterministic',
              '--eval_interval=4', '--checkpoint_interval=4', '--lr_decay_iters=20', '--gradient_accumulation_steps=2']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    straight = subprocess.Popen([sys.executable, 'train.py', *common, '--max_iters=20', f'--out_dir={tmp_path / "a"}'],
                                cwd=repo_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # the same run told to go on for ever, killed as soon as its first checkpoint lands
    killed = subprocess.Popen([sys.executable, 'train.py', *common, '--max_iters=1000000', f'--out_dir={tmp_path / "b"}'],
                              cwd=repo_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / 'b' / 'ckpt.pt').exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    k = load_checkpoint(tmp_path / 'b' / 'ckpt.pt')['iter_num']
    assert 4 <= k < 20
    resumed = run_cli(repo_root, ['--init_from=resume', f'--out_dir={tmp_path / "b"}', '--max_iters=20'])
    assert resumed.returncode == 0, resumed.stderr
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    a, b = (load_checkpoint(tmp_path / name / 'ckpt.pt') for name in ('a', 'b'))
    assert a['iter_num'] == b['iter_num'] == 20
    assert a['model'].keys() == b['model'].keys()
    assert all(torch.equal(a['model'][name], b['model'][name]) for name in a['model'])
    assert all(torch.equal(a['optimizer']['state'][i]['exp_avg_sq'], b['optimizer']['state'][i]['exp_avg_sq'])
               for i in a['optimizer']['state'])
    strip = lambda log: [{k: v for k, v in e.items() if k not in ('tokens_per_s', 'mfu', 'mfu_yardstick', 'elapsed_s')} for e in log]
    assert strip(a['training_log']) == strip(b['training_log']) == strip(read_log(tmp_path / 'b'))
    assert [e['iter'] for e in b['training_log']] == [0, 4, 8, 12, 16, 20]


@pytest.mark.slow
def test_interrupted_save_keeps_previous_checkpoint(synthetic_dataset, tmp_path, monkeypatch):
    out = tmp_path / 'out'
    real_save = torch.save

    def save_dies_halfway(obj, f, *args, **kwargs):
        if 'ckpt.pt' in str(getattr(f, 'name', f)) and (out / 'ckpt.pt').exists():
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            raise OSError(28, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save_dies_halfway)
    message = error_of([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', f'--out_dir={out}', '--max_iters=12',
                        '--checkpoint_interval=4', '--eval_interval=100'])
    assert 'could not write' in message and 'ckpt.pt: no space left on device (the file needs at least' in message
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] == 4
    assert sorted(p.name for p in out.iterdir()) == ['best.pt', 'ckpt.pt', 'training_log.json']


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero(synthetic_dataset, tmp_path, repo_root):
    out = tmp_path / 'out'
    proc = subprocess.Popen([sys.executable, 'train.py', *TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}',
                             f'--out_dir={out}', '--max_iters=1000000', '--checkpoint_interval=5'],
                            cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / 'ckpt.pt').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    # while it runs, its out_dir is locked: a second run into it is refused and changes nothing
    assert f'another training (pid {proc.pid}) is writing into {out}' in error_of(['--init_from=resume', f'--out_dir={out}'])
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert time.time() - sent < 10
    ckpt = load_checkpoint(out / 'ckpt.pt')
    assert ckpt['iter_num'] >= 5 and f"stopped by SIGTERM at iteration {ckpt['iter_num']}" in stdout


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_checkpoint(synthetic_dataset, tmp_path, monkeypatch):
    out = tmp_path / 'out'
    real_forward = model_module.BackpackLM.forward
    training_calls = []

    def forward_goes_nan(self, idx, targets=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, **kwargs)
        if targets is not None and self.training:
            training_calls.append(1)
            if len(training_calls) > 6:
                loss = loss * float('nan')
        return logits, loss

    monkeypatch.setattr(model_module.BackpackLM, 'forward', forward_goes_nan)
    message = error_of([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', f'--out_dir={out}', '--max_iters=20',
                        '--checkpoint_interval=4'])
    assert 'loss is not finite at iteration 6' in message
    assert f"the last good state is in {out / 'best.pt'} (iteration 5) and {out / 'ckpt.pt'} (iteration 4)" in message
    ckpt = load_checkpoint(out / 'ckpt.pt')
    assert ckpt['iter_num'] == 4 and all(torch.isfinite(t).all() for t in ckpt['model'].values())


def nan_in_evaluation_after(monkeypatch, n_calls):
    """Evaluation forwards (model in eval mode) return NaN logits after n_calls; training stays finite."""
    real_forward = model_module.BackpackLM.forward
    eval_calls = []

    def forward(self, idx, targets=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, **kwargs)
        if not self.training:
            eval_calls.append(1)
            if len(eval_calls) > n_calls:
                logits = logits * float('nan')
        return logits, loss

    monkeypatch.setattr(model_module.BackpackLM, 'forward', forward)


def test_evaluations_since_best():
    log = lambda *losses: [{'val_loss': v} for v in losses]
    assert objectives.evaluations_since_best([]) == 0
    assert objectives.evaluations_since_best(log(5.0, 4.0, 3.0)) == 0
    assert objectives.evaluations_since_best(log(5.0, 3.0, 3.5, 3.0)) == 2  # a tie is no improvement
    assert objectives.evaluations_since_best(log(5.0, 3.0, 3.5, 3.1, 4.0)) == 3


def scripted_val_losses(monkeypatch, losses):
    """estimate_losses replaced by a script: the n-th evaluation of a run (counted in its on-disk
    training_log.json, so resumed runs continue the script) reports val loss losses[n]."""
    def scripted(model, sampler, cfg, autocast, device, ddp):
        log_path = train.Path(cfg['out_dir']) / 'training_log.json'
        done = len(read_log(log_path.parent)) if log_path.exists() else 0
        return {'train_loss': losses[done], 'val_loss': losses[done], 'val_loss_en': None, 'val_loss_fr': None}
    monkeypatch.setattr(objectives, 'estimate_losses', scripted)


@pytest.mark.slow
def test_early_stopping_and_its_resume_are_exact(synthetic_dataset, tmp_path, monkeypatch, capsys):
    scripted_val_losses(monkeypatch, [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.0, 1.0])
    common = [*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', '--early_stop_evals=3', '--decay_lr=False',
              '--checkpoint_interval=100']
    train.main([*common, '--max_iters=100', f'--out_dir={tmp_path / "a"}'])
    assert 'early stop at iteration 25: val loss has not improved for 3 evaluations' in capsys.readouterr().out
    a = load_checkpoint(tmp_path / 'a' / 'ckpt.pt')
    assert a['iter_num'] == 25 and [e['iter'] for e in read_log(tmp_path / 'a')] == [0, 5, 10, 15, 20, 25]
    assert load_checkpoint(tmp_path / 'a' / 'best.pt')['iter_num'] == 10

    # the same run stopped at iteration 15 and resumed with a larger budget stops at the same place, bitwise
    train.main([*common, '--max_iters=15', f'--out_dir={tmp_path / "b"}'])
    train.main(['--init_from=resume', f'--out_dir={tmp_path / "b"}', '--max_iters=100'])
    b = load_checkpoint(tmp_path / 'b' / 'ckpt.pt')
    assert b['iter_num'] == 25 and all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    # resuming a run that stopped early trains no further
    train.main(['--init_from=resume', f'--out_dir={tmp_path / "b"}', '--max_iters=100'])
    assert load_checkpoint(tmp_path / 'b' / 'ckpt.pt')['iter_num'] == 25 and len(read_log(tmp_path / 'b')) == 6


def test_early_stopping_is_off_by_default(synthetic_dataset, tmp_path, monkeypatch):
    scripted_val_losses(monkeypatch, [5.0, 6.0, 7.0, 8.0])
    train.main([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', '--max_iters=15', f'--out_dir={tmp_path}'])
    assert load_checkpoint(tmp_path / 'ckpt.pt')['iter_num'] == 15


def test_first_line_names_the_machine_and_the_dtype_auto_chose(synthetic_dataset, tmp_path, capsys):
    train.main([*TINY_TRAIN_ARGS, '--dtype=auto', f'--data_dir={synthetic_dataset}', '--max_iters=2',
                f'--out_dir={tmp_path}'])
    dtype, reason = devices.resolve_dtype('auto', 'cpu')  # what this CPU multiplies natively
    assert capsys.readouterr().out.splitlines()[0] == f"machine: {devices.describe_machine('cpu')}; dtype {dtype} ({reason})"
    ckpt = load_checkpoint(tmp_path / 'ckpt.pt')
    assert ckpt['dtype'] == dtype and ckpt['config']['dtype'] == 'auto'  # a resume elsewhere resolves it again
    assert ckpt['training_log'][-1]['mfu'] > 0
    assert ckpt['training_log'][-1]['mfu_yardstick'].startswith(f'measured {dtype} 1024x1024 matmul on cpu')


def test_a_dtype_the_device_cannot_run_is_one_line(synthetic_dataset, tmp_path, monkeypatch):
    def refuse(*args):
        raise devices.DeviceError('this GPU (compute capability 7.5) has no bfloat16 support')
    monkeypatch.setattr(devices, 'resolve_dtype', refuse)
    assert error_of([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', f'--out_dir={tmp_path}']) == \
        'error: this GPU (compute capability 7.5) has no bfloat16 support'


@pytest.mark.slow
def test_non_finite_val_loss_saves_nothing(synthetic_dataset, tmp_path, monkeypatch):
    """A diverged evaluation stops the run before ckpt.pt is written at the same iteration."""
    out = tmp_path / 'out'
    nan_in_evaluation_after(monkeypatch, 2 * 2 * 2)  # evaluations at 0 and 4 are finite (2 splits x eval_iters 2)
    message = error_of([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', f'--out_dir={out}', '--max_iters=20',
                        '--eval_interval=4', '--checkpoint_interval=4'])
    assert 'loss is not finite at iteration 8' in message
    assert f"in {out / 'best.pt'} (iteration 4) and {out / 'ckpt.pt'} (iteration 4)" in message
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] == 4 and not (out / '.lock').exists()
    assert all(np.isfinite(e['val_loss']) for e in read_log(out))


def test_no_checkpoint_yet_is_said(synthetic_dataset, tmp_path, monkeypatch):
    out = tmp_path / 'out'
    nan_in_evaluation_after(monkeypatch, 0)
    message = error_of([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', f'--out_dir={out}', '--max_iters=4'])
    assert 'loss is not finite at iteration 0' in message and 'no checkpoint had been written' in message
    assert not out.exists()  # nothing was written, so the run's directory is gone too


def test_non_finite_weights_are_never_saved(synthetic_dataset, tmp_path, monkeypatch):
    """An optimizer step that makes a weight infinite right before a checkpoint (no forward in between)."""
    out = tmp_path / 'out'
    real_step, steps = torch.optim.AdamW.step, []

    def step_breaks_a_weight(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 4:
            with torch.no_grad():
                self.param_groups[0]['params'][0][0, 0] = float('inf')
        return result

    monkeypatch.setattr(torch.optim.AdamW, 'step', step_breaks_a_weight)
    message = error_of([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', f'--out_dir={out}', '--max_iters=20',
                        '--eval_interval=100', '--checkpoint_interval=4'])
    assert 'weights are not finite at iteration 4' in message
    assert f"the last good state is in {out / 'best.pt'} (iteration 0)." in message
    assert not (out / 'ckpt.pt').exists()


@pytest.mark.slow
def test_ddp_two_gloo_processes_step_as_one_process_on_the_same_global_batch(synthetic_dataset, tmp_path, repo_root):
    """Two processes x 2 micro-steps (gradients all-reduced once, on the last micro-step) must take exactly
    the step of one process whose loss averages the same 4 micro-batches; rank r draws with seed + r."""
    out = tmp_path / 'out'
    settings = [*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', '--max_iters=1', '--gradient_accumulation_steps=4',
                '--eval_iters=1']
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py']
    result = subprocess.run([*torchrun, *settings, f'--out_dir={out}'], cwd=repo_root,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '2 process(es) on cpu' in result.stdout and result.stdout.count('unigram entropy') == 1
    ckpt = load_checkpoint(out / 'ckpt.pt')
    assert ckpt['iter_num'] == 1 and len(ckpt['rng']) == len(ckpt['sampler']) == 2
    assert not torch.equal(ckpt['rng'][0]['torch'], ckpt['rng'][1]['torch'])  # seed + rank

    explicit = train.parse_args(settings)
    cfg = {**train.DEFAULTS, **explicit}
    torch.manual_seed(cfg['seed'])  # rank 0's initialisation, which DDP broadcasts to rank 1
    model = model_from_settings(cfg, explicit, vocab_size=98)
    optimizer = model.configure_optimizers(cfg['weight_decay'], train.learning_rate_at(0, cfg),
                                           (cfg['beta1'], cfg['beta2']), 'cpu')
    batches = []
    for rank in (0, 1):
        sampler = BatchSampler(synthetic_dataset, seed=cfg['seed'] + rank)
        batches += [sampler.get_batch('train', cfg['batch_size'], cfg['block_size']) for _ in range(2)]
    assert not torch.equal(batches[0][0], batches[2][0])  # the ranks see different data
    loss = sum(model(x, y)[1] for x, y in batches) / len(batches)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg['grad_clip'])
    optimizer.step()
    for name, expected in model.state_dict().items():
        assert (ckpt['model'][name] - expected).abs().max() <= 1e-6, name


def gradients_of_first_step(monkeypatch, *argv):
    """The gradients the optimizer receives at the first iteration of train.main(argv)."""
    real_step, gradients = torch.optim.AdamW.step, []

    def recording_step(self, *args, **kwargs):
        if not gradients:
            gradients.append([p.grad.clone() for group in self.param_groups for p in group['params']])
        return real_step(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.optim.AdamW, 'step', recording_step)
        train.main(list(argv))
    return gradients[0]


def test_gradient_accumulation_equals_a_larger_batch(synthetic_dataset, tmp_path, monkeypatch):
    """2 micro-steps of batch 4 draw the windows of 1 micro-step of batch 8 (one generator, drawn in order)
    and must give its gradients: loss / micro_steps, not a sum nor another scale (Adam would hide a scale
    in the weights, so the gradients themselves are compared; grad_clip=0 leaves them as computed)."""
    common = [*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', '--max_iters=1', '--eval_iters=1', '--grad_clip=0']
    accumulated = gradients_of_first_step(monkeypatch, *common, '--batch_size=4', '--gradient_accumulation_steps=2',
                                          f'--out_dir={tmp_path / "a"}')
    large_batch = gradients_of_first_step(monkeypatch, *common, '--batch_size=8', '--gradient_accumulation_steps=1',
                                          f'--out_dir={tmp_path / "b"}')
    assert len(accumulated) == len(large_batch) and sum(g.abs().sum() for g in large_batch) > 0
    for a, b in zip(accumulated, large_batch):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def assert_resume_is_bitwise(dataset, tmp_path, dtype, *settings):
    """A run stopped at iteration 4 and resumed to 8 ends bitwise equal to a run straight to 8."""
    common = [*TINY_TRAIN_ARGS, f'--dtype={dtype}', f'--data_dir={dataset}', '--dropout=0.1', '--eval_interval=4',
              '--checkpoint_interval=4', '--lr_decay_iters=8', '--eval_iters=1', *settings]
    train.main([*common, '--max_iters=8', f'--out_dir={tmp_path / "a"}'])
    train.main([*common, '--max_iters=4', f'--out_dir={tmp_path / "b"}'])
    assert load_checkpoint(tmp_path / 'b' / 'ckpt.pt')['iter_num'] == 4
    train.main(['--init_from=resume', f'--out_dir={tmp_path / "b"}', '--max_iters=8'])
    a, b = (load_checkpoint(tmp_path / name / 'ckpt.pt') for name in ('a', 'b'))
    assert a['iter_num'] == b['iter_num'] == 8 and a['dtype'] == b['dtype'] == dtype
    assert all(torch.equal(a['model'][name], b['model'][name]) for name in a['model'])
    assert all(torch.equal(a['optimizer']['state'][i]['exp_avg'], b['optimizer']['state'][i]['exp_avg'])
               for i in a['optimizer']['state'])
    assert a['scaler'] == b['scaler']
    strip = lambda log: [{k: v for k, v in e.items() if k not in ('tokens_per_s', 'mfu', 'mfu_yardstick', 'elapsed_s')} for e in log]
    assert strip(a['training_log']) == strip(b['training_log'])
    return a


def test_resume_on_fewer_processes_than_saved_the_run(synthetic_dataset, tmp_path, capsys):
    """A run saved by 2 processes on a 2-GPU box (its per-process lists and GPU generators fabricated here)
    resumes in 1 CPU process with reseeded streams; with deterministic=True, which promises a bitwise
    continuation, it is one line instead."""
    out = tmp_path / 'out'
    train.main([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', '--eval_iters=1', '--max_iters=2',
                f'--out_dir={out}'])
    ckpt = load_checkpoint(out / 'ckpt.pt')
    two_gpus = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    ckpt['rng'] = [{**ckpt['rng'][0], 'cuda': two_gpus} for _ in range(2)]
    ckpt['sampler'] = ckpt['sampler'] * 2
    save_checkpoint(ckpt, out / 'ckpt.pt')
    assert error_of(['--init_from=resume', f'--out_dir={out}', '--max_iters=4', '--deterministic']) == (
        f"error: {out / 'ckpt.pt'} was saved by 2 process(es) and 1 would resume it: deterministic=True cannot "
        "continue it bitwise; resume with 2 process(es) (torchrun --nproc_per_node), or with --deterministic=False "
        "for reseeded data and dropout streams")
    capsys.readouterr()
    train.main(['--init_from=resume', f'--out_dir={out}', '--max_iters=4'])
    assert 'warning: 2 processes saved this run, 1 resume it' in capsys.readouterr().out
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] == 4


@pytest.mark.slow
@native_on_this_cpu('bfloat16')
def test_resume_bitwise_bfloat16(synthetic_dataset, tmp_path):
    ckpt = assert_resume_is_bitwise(synthetic_dataset, tmp_path, 'bfloat16')
    assert ckpt['scaler'] == {}  # bf16 needs no loss scaling: the scaler is off


@pytest.mark.slow
@native_on_this_cpu('float16')  # the GradScaler path on a GPU: experiments/gpu_check.sh
def test_resume_bitwise_float16_with_grad_scaler(synthetic_dataset, tmp_path):
    ckpt = assert_resume_is_bitwise(synthetic_dataset, tmp_path, 'float16')
    # the scaler's state went through the checkpoint: 8 steps without overflow since its last scale change
    assert ckpt['scaler']['_growth_tracker'] == 8 and ckpt['scaler']['scale'] > 0


# ----------------------------------------------------------------------------- finetuning

@pytest.fixture
def restores_determinism():
    """train.main(--deterministic) switches deterministic algorithms on for the process: switch them back."""
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)


@pytest.mark.cuda
def test_short_run_on_cuda_with_auto_dtype(synthetic_dataset, tmp_path, capsys):
    train.main([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', '--max_iters=10', '--device=cuda', '--dtype=auto',
                f'--out_dir={tmp_path / "out"}'])
    log = read_log(tmp_path / 'out')
    assert log[-1]['iter'] == 10 and log[-1]['val_loss'] < log[0]['val_loss']
    assert '1 process(es) on cuda' in capsys.readouterr().out


@pytest.mark.cuda
def test_resume_bitwise_float16_with_grad_scaler_on_cuda(synthetic_dataset, tmp_path, restores_determinism):
    ckpt = assert_resume_is_bitwise(synthetic_dataset, tmp_path, 'float16', '--device=cuda', '--deterministic')
    assert ckpt['scaler']['scale'] > 0 and ckpt['config']['device'] == 'cuda'


@pytest.mark.slow
def test_finetune_from_backpack_gpt2_tiny(synthetic_dataset, tmp_path, reference_tiny_dir):
    reference = reference_tiny_dir
    pretrained = load_backpack_gpt2(reference)
    args = train_args('--init_from=backpack-gpt2', f'--pretrained_path={reference}', '--block_size=16',
                      f'--data_dir={synthetic_dataset}', drop=SHAPE_KEYS)  # the shape is the checkpoint's
    train.main([*args, '--max_iters=0', f'--out_dir={tmp_path / "start"}'])
    start = load_checkpoint(tmp_path / 'start' / 'ckpt.pt')
    emb = start['model']['backbone.wte.weight']
    old = pretrained.token_embeddings.detach()
    assert emb.shape == (98, 32) and torch.equal(emb[:96], old)
    assert torch.allclose(emb[EN], old.mean(0)) and torch.equal(emb[EN], emb[FR])
    assert start['model']['backbone.wpe.weight'].shape == (16, 32)
    assert start['model_args']['vocab_size'] == 98 and start['model_args']['block_size'] == 16
    assert start['model_args']['n_senses'] == 4 and start['model_args']['scale_attn_by_inverse_layer_idx']

    train.main([*args, '--max_iters=40', '--eval_interval=20', '--learning_rate=1e-2', f'--out_dir={tmp_path / "ft"}'])
    log = read_log(tmp_path / 'ft')
    assert log[-1]['val_loss'] < log[0]['val_loss'] - 0.5
    train.main(['--init_from=resume', f'--out_dir={tmp_path / "ft"}', '--max_iters=45'])  # keeps its pretrained_path
    assert load_checkpoint(tmp_path / 'ft' / 'ckpt.pt')['iter_num'] == 45


def test_finetune_needs_gpt2_dataset(sample_dataset, tmp_path, repo_root):
    reference = repo_root.parent / 'shared' / 'reference' / 'backpack-gpt2-tiny'
    message = error_of([*TINY_TRAIN_ARGS, '--init_from=backpack-gpt2', f'--pretrained_path={reference}',
                        '--block_size=16', f'--data_dir={sample_dataset}', f'--out_dir={tmp_path}'])
    assert 'needs a dataset made with the gpt2 tokenizer' in message and "'bpe'" in message


# ----------------------------------------------------------------------------- bad input

def test_missing_data(tmp_path):
    assert str(tmp_path / 'nowhere') in error_of([*TINY_TRAIN_ARGS, f'--data_dir={tmp_path / "nowhere"}',
                                                  f'--out_dir={tmp_path / "out"}'])
    (tmp_path / 'empty').mkdir()
    assert 'meta.json' in error_of([*TINY_TRAIN_ARGS, f'--data_dir={tmp_path / "empty"}',
                                    f'--out_dir={tmp_path / "out"}'])


def test_resume_without_checkpoint(tmp_path):
    assert 'does not exist' in error_of(['--init_from=resume', f'--out_dir={tmp_path}'])


def test_resume_with_best_pt_only_advises_what_works(synthetic_dataset, tmp_path):
    """A run that left best.pt but no ckpt.pt: the advice (cp best.pt ckpt.pt, then resume) works."""
    out = tmp_path / 'out'
    train.main([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', f'--out_dir={out}', '--max_iters=5'])
    (out / 'ckpt.pt').unlink()
    message = error_of(['--init_from=resume', f'--out_dir={out}', '--max_iters=10'])
    assert f"`cp {out / 'best.pt'} {out / 'ckpt.pt'}` and --init_from=resume" in message
    shutil.copyfile(out / 'best.pt', out / 'ckpt.pt')
    train.main(['--init_from=resume', f'--out_dir={out}', '--max_iters=10'])
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] == 10 and read_log(out)[-1]['iter'] == 10


@pytest.mark.parametrize('argv, expected', [
    (['--out_dir='], '--out_dir is empty'),
    (['--learning_rate=-1e-3'], 'learning_rate must be >= 0'),
    (['--device=tpu'], "unknown device 'tpu'"),
    (['--beta2=1.5'], 'beta1, beta2 in [0, 1)'),
])
def test_bad_values_are_refused_before_any_work(argv, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert expected in error_of(argv)
    assert list(tmp_path.iterdir()) == []


def broken_copy(dataset, tmp_path, breakage):
    """A copy of dataset with one thing broken: an empty or odd-length train.bin, or a meta.json key gone."""
    copy = tmp_path / 'broken'
    shutil.copytree(dataset, copy)
    if breakage == 'empty':
        (copy / 'train.bin').write_bytes(b'')
    elif breakage == 'odd':
        (copy / 'train.bin').write_bytes((copy / 'train.bin').read_bytes()[:-1])
    else:
        meta = json.loads((copy / 'meta.json').read_text())
        del meta[breakage]
        (copy / 'meta.json').write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize('breakage, expected', [
    ('empty', 'train.bin has 0 bytes'), ('odd', 'not a whole positive number of uint16 tokens'),
    ('special_tokens', "lacks 'special_tokens'"), ('vocab_size', "lacks 'vocab_size'")])
def test_broken_dataset_is_one_line_and_leaves_no_out_dir(synthetic_dataset, tmp_path, breakage, expected):
    data = broken_copy(synthetic_dataset, tmp_path, breakage)
    assert expected in error_of([*TINY_TRAIN_ARGS, f'--data_dir={data}', f'--out_dir={tmp_path / "out"}'])
    assert not (tmp_path / 'out').exists()


def test_new_run_keeps_an_earlier_best_pt(synthetic_dataset, tmp_path):
    """An earlier run killed before its first ckpt.pt left best.pt: a new run must not overwrite it."""
    (tmp_path / 'best.pt').write_bytes(b'earlier model')
    message = error_of([*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', f'--out_dir={tmp_path}', '--max_iters=1'])
    assert 'holds best.pt of an earlier run but no ckpt.pt' in message and '--init_from=resume' in message
    assert (tmp_path / 'best.pt').read_bytes() == b'earlier model'
    assert 'cannot write into --out_dir' in error_of(
        [*TINY_TRAIN_ARGS, f'--data_dir={synthetic_dataset}', f'--out_dir={tmp_path / "best.pt" / "run"}'])


@pytest.mark.slow
def test_unreadable_checkpoint_resume_is_one_line(synthetic_dataset, tmp_path, repo_root):
    (tmp_path / 'ckpt.pt').write_bytes(b'')
    result = run_cli(repo_root, ['--init_from=resume', f'--out_dir={tmp_path}'])
    assert result.returncode == 1 and result.stderr == (
        f"error: {tmp_path / 'ckpt.pt'} is not a readable checkpoint (empty file); "
        "there is no best.pt beside it to fall back on\n")
    torch.save({'model': {}}, tmp_path / 'ckpt.pt')
    assert 'lacks model_type' in error_of(['--init_from=resume', f'--out_dir={tmp_path}'])


@pytest.mark.slow
def test_resume_refuses_another_run(sample_dataset, other_sample_dataset, synthetic_dataset, tmp_path):
    out = tmp_path / 'out'
    train.main([*TINY_TRAIN_ARGS, f'--data_dir={sample_dataset}', f'--out_dir={out}', '--max_iters=2'])
    before = (out / 'ckpt.pt').read_bytes()
    assert 'vocabulary of' in error_of(['--init_from=resume', f'--out_dir={out}', f'--data_dir={synthetic_dataset}'])
    # the same kind and size of tokenizer, but another one: other ids for the same text
    message = error_of(['--init_from=resume', f'--out_dir={out}', f'--data_dir={other_sample_dataset}'])
    assert f"{other_sample_dataset} is not the dataset {out / 'ckpt.pt'} was trained on (its tokenizer differs" in message
    assert '--seed 2' not in message and '--name sample' in message  # the command that made the run's dataset
    assert 'is a backpack run' in error_of(['--init_from=resume', f'--out_dir={out}', '--model_type=transformer'])
    assert 'keeps its architecture' in error_of(['--init_from=resume', f'--out_dir={out}', '--n_embd=64'])
    # scratch over a run
    assert 'exists' in error_of([*TINY_TRAIN_ARGS, f'--data_dir={sample_dataset}', f'--out_dir={out}'])
    assert (out / 'ckpt.pt').read_bytes() == before
    train.main(['--init_from=resume', f'--out_dir={out}', '--max_iters=4'])  # the saved settings are the run's
    ckpt = load_checkpoint(out / 'ckpt.pt')
    assert ckpt['iter_num'] == 4 and ckpt['config']['n_embd'] == 32 and ckpt['config']['max_iters'] == 4
