"""sensia.py: InfoNCE, sense pooling, the three-phase schedule, recall@1, freezing in the polish phase
(also across a kill and resume, and of the sense vectors themselves), and a two-process gloo DDP step against the single-process one."""
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from backpacks import sensia
import train
from backpacks.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from backpacks.dataset import load_meta
from backpacks.hf_format import save_backpack_gpt2
from tiny import SENSIA_TRAIN_ARGS, tiny_model, write_synthetic_dataset

SENSE_PARTS = ('sense_network.', 'sense_weight_net.')


def test_info_nce_matches_direct_computation():
    torch.manual_seed(0)
    u, v = F.normalize(torch.randn(6, 5), dim=-1), F.normalize(torch.randn(6, 5), dim=-1)
    tau, B = 0.07, 6
    direct = 0.0
    for i in range(B):
        direct -= math.log(math.exp(u[i] @ v[i] / tau) / sum(math.exp(u[i] @ v[j] / tau) for j in range(B)))
        direct -= math.log(math.exp(v[i] @ u[i] / tau) / sum(math.exp(v[i] @ u[j] / tau) for j in range(B)))
    assert sensia.info_nce(u, v, tau).item() == pytest.approx(direct / (2 * B), rel=1e-5)
    one_way = -sum(math.log(math.exp(u[i] @ v[i] / tau) / sum(math.exp(u[i] @ v[j] / tau) for j in range(B)))
                   for i in range(B)) / B
    assert sensia.info_nce(u, v, tau, symmetric=False).item() == pytest.approx(one_way, rel=1e-5)


def test_info_nce_is_minimal_on_aligned_pairs():
    z = torch.eye(8)  # orthogonal sentence vectors, each paired with itself
    aligned = sensia.info_nce(z, z, 0.05).item()
    assert aligned < 1e-6
    assert sensia.info_nce(z, z.roll(1, dims=0), 0.05).item() > 10


@pytest.mark.parametrize('context', sensia.CONTEXT_STATES)
def test_pooling_unchanged_by_extra_right_padding(context):
    model = tiny_model()
    hidden = {}
    model.backbone.register_forward_hook(lambda m, i, out: hidden.update(h=out))
    idx, lengths = sensia.pad_batch([[1, 2, 3], [4, 5, 6, 7, 8]], pad=0, device='cpu')
    padded = torch.cat([idx, torch.full((2, 6), 9)], dim=1)  # another pad id, six more columns
    a = sensia.sentence_vectors(model, idx, lengths, 0.7, context, lambda: hidden['h'])
    b = sensia.sentence_vectors(model, padded, lengths, 0.7, context, lambda: hidden['h'])
    for x, y in zip(a[1:3], b[1:3]):  # z_sns and z_ctx
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a[3][a[4]], b[3][b[4]], atol=1e-6, rtol=1e-5)  # entropy on real tokens


def test_schedule_anchors():
    assert sensia.loss_weights(0.1) == pytest.approx((0.4703, 0.4208, 0.1089), abs=1e-3)
    assert sensia.loss_weights(0.35) == pytest.approx((0.275, 0.275, 0.45), abs=1e-9)
    assert sensia.loss_weights(0.0) == pytest.approx((0.55 / 1.02, 0.45 / 1.02, 0.02 / 1.02))  # renormalised
    assert sensia.loss_weights(0.2) == pytest.approx((0.40, 0.40, 0.20))
    assert sensia.loss_weights(0.7) == pytest.approx((0.15, 0.15, 0.70))
    assert sensia.loss_weights(0.3, enabled=(False, False, True)) == (0.0, 0.0, 1.0)  # LM-only control
    w = sensia.loss_weights(0.1, enabled=(True, False, True))  # no-context ablation: renormalised
    assert w[1] == 0 and sum(w) == pytest.approx(1) and w[0] / w[2] == pytest.approx(0.475 / 0.11)
    assert sensia.loss_weights(0.0, a=0.0) == pytest.approx((0.40, 0.40, 0.20))  # no alignment phase
    assert sensia.phase(0.9, 0.2, 1.0) == 'joint' and sensia.phase(0.3, 0.2, 0.2) == 'polish'
    assert sensia.temperature(0.1, 0.2, 0.05, 0.0) == 0.05  # fixed by default
    assert sensia.temperature(0.1, 0.2, 0.05, 0.03) == pytest.approx(0.04)
    assert sensia.temperature(0.5, 0.2, 0.05, 0.03) == 0.03


def test_recall_at_1_constructed_case():
    en = torch.eye(4)
    fr = torch.eye(4)[[0, 1, 3, 2]]  # pairs 0, 1 right; 2 and 3 swapped
    fr[3] = torch.tensor([0.0, 0.0, 0.9, 0.1])  # fr of pair 3 now closest to en 2, and en 3 closest to fr 2
    r = sensia.bidirectional_recall(en, fr)
    assert r['en_fr'] == 0.5 and r['fr_en'] == 0.5 and r['mean'] == 0.5
    fr[2] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # pair 2 fixed: en 3 now finds fr 3, but fr 3 still finds en 2
    r = sensia.bidirectional_recall(en, fr)
    assert (r['en_fr'], r['fr_en']) == (1.0, 0.75)
    assert r['pair_hits'] == [1.0, 1.0, 1.0, 0.5]  # pair 3: found one way only
    assert sum(r['pair_hits']) / 4 == r['mean']


def sensia_run(out, data, *extra):
    return [sys.executable, 'train.py', *SENSIA_TRAIN_ARGS, f'--data_dir={data}', f'--out_dir={out}', *extra]


@pytest.mark.slow
def test_polish_freezes_senses_across_kill_and_resume(sample_dataset, tmp_path, repo_root):
    """The sense network and sense-weight network stay bit-identical from the first polish step on,
    while the rest trains, and a run killed after freezing resumes into the same bits."""
    common = ['--max_iters=12', '--sensia_align_end=0.1', '--sensia_polish_start=0.25', '--eval_interval=4',
              '--checkpoint_interval=4', '--dropout=0.1']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    straight = subprocess.run(sensia_run(tmp_path / 'a', sample_dataset, *common, '--checkpoint_interval=3'),
                              cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = subprocess.Popen(sensia_run(tmp_path / 'b', sample_dataset, *common), cwd=repo_root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / 'b' / 'ckpt.pt').exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    at_kill = load_checkpoint(tmp_path / 'b' / 'ckpt.pt')
    assert at_kill['iter_num'] == 4 and at_kill['sampler'][0]['frozen']  # froze at iteration 3
    resumed = subprocess.run([sys.executable, 'train.py', '--init_from=resume', f'--out_dir={tmp_path / "b"}'],
                             cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (load_checkpoint(tmp_path / name / 'ckpt.pt') for name in ('a', 'b'))
    assert a['iter_num'] == b['iter_num'] == 12
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])  # bitwise resume
    sense = [k for k in a['model'] if k.startswith(SENSE_PARTS)]
    rest = [k for k in a['model'] if not k.startswith(SENSE_PARTS)]
    assert sense and all(torch.equal(a['model'][k], at_kill['model'][k]) for k in sense)
    assert any(not torch.equal(a['model'][k], at_kill['model'][k]) for k in rest)
    log = a['training_log']
    assert [e['phase'] for e in log] == ['align', 'polish', 'polish', 'polish'] and log[-1]['frozen']
    assert 0 <= log[-1]['val_pairs_recall@1_sns'] <= 1 and log[-1]['val_pairs_sense_entropy_fr'] <= math.log(4) + 1e-6


DDP_WORKER = '''
import json, os, sys
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), 'tests')]
import train
from backpacks import sensia
from backpacks.dataset import load_meta
from tiny import tiny_model
from pathlib import Path
data, out = Path(sys.argv[1]), sys.argv[2]
ddp = 'RANK' in os.environ
if ddp:
    torch.distributed.init_process_group('gloo')
rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if ddp else (0, 1)
meta = load_meta(data)
cfg = {**train.DEFAULTS, 'objective': 'sensia', 'batch_size': 4, 'block_size': 32, 'max_iters': 100}
model = tiny_model(vocab_size=meta['vocab_size'], block_size=cfg['block_size']).train()
objective = sensia.SensiaObjective(cfg, model, data, meta, 'cpu', 0)
rows = list(range(8))[rank * 8 // world:(rank + 1) * 8 // world]  # the global batch, split over processes
batch = objective.val.batch(rows, 'cpu')
wrapped = DDP(model) if ddp else model
loss, _ = objective.loss(wrapped, batch, iter_num=30)  # joint phase: all three terms
loss.backward()
if rank == 0:
    torch.save({k: p.grad for k, p in model.named_parameters()}, out)
if ddp:
    torch.distributed.barrier()  # both processes leave together: gloo aborts a peer whose partner closed first
    torch.distributed.destroy_process_group()
'''


@pytest.mark.slow
def test_ddp_step_equals_single_process_step(sample_dataset, tmp_path, repo_root):
    worker = tmp_path / 'worker.py'
    worker.write_text(DDP_WORKER)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    single = subprocess.run([sys.executable, str(worker), str(sample_dataset), str(tmp_path / 'single.pt')],
                            cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    double = subprocess.run([*torchrun, str(worker), str(sample_dataset), str(tmp_path / 'ddp.pt')],
                            cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-2000:]
    a, b = (torch.load(tmp_path / name, weights_only=True) for name in ('single.pt', 'ddp.pt'))
    assert a.keys() == b.keys()
    for name in a:  # float32 summation order differs between one and two processes: atol scales with the gradient
        scale = max(1.0, a[name].abs().max().item())
        torch.testing.assert_close(b[name], a[name], atol=2e-6 * scale, rtol=1e-4, msg=name)


@pytest.mark.parametrize('fixed', [False, True])
def test_sensia_freeze_sense_input_keeps_the_sense_vectors_fixed(sample_dataset, tmp_path, fixed):
    """Freezing the sense networks (both codebases) leaves the sense vectors moving with the tied embedding;
    sensia_freeze_sense_input keeps them bit-identical through a training step while E still gets a
    gradient, and a model rebuilt from the weights (a resume) reads the same frozen copy."""
    meta = load_meta(sample_dataset)
    cfg = {**train.DEFAULTS, 'objective': 'sensia', 'batch_size': 4, 'block_size': 32, 'max_iters': 10,
           'sensia_freeze_sense_input': fixed}
    model = tiny_model(vocab_size=meta['vocab_size'], block_size=cfg['block_size']).train()
    objective = sensia.SensiaObjective(cfg, model, sample_dataset, meta, 'cpu', seed=0)
    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu')
    ids = torch.arange(meta['vocab_size'])
    assert not objective.prepare(model, 4) and objective.prepare(model, 5)  # p = 0.5: the polish phase starts
    before = model.sense_vectors(ids).detach().clone()
    loss, _ = objective.loss(model, objective.batch(), 5)
    loss.backward()
    assert model.token_embeddings.grad.abs().sum() > 0
    optimizer.step()
    after = model.sense_vectors(ids).detach()
    assert torch.equal(before, after) == fixed
    state = {'model': model.state_dict(), 'model_type': 'backpack', 'model_args': vars(model.config)}
    assert ('sense_input' in state['model']) == fixed
    rebuilt = model_from_checkpoint(state)
    sensia.SensiaObjective(cfg, rebuilt, sample_dataset, meta, 'cpu', seed=0).load_state_dict(objective.state_dict())
    assert torch.equal(rebuilt.sense_vectors(ids), after)  # the copy of the first freeze, not of E now
    if fixed:
        with pytest.raises(ValueError, match='no place for the frozen copy'):
            save_backpack_gpt2(rebuilt, tmp_path)


def test_bad_settings_and_data(sample_dataset, tmp_path, repo_root, make_checkpoint):
    with pytest.raises(SystemExit, match='sensia_losses must be'):
        train.main(['--objective=sensia', '--sensia_losses=sense,typo'])
    with pytest.raises(SystemExit, match='sensia_align_end <= sensia_polish_start'):
        train.main(['--objective=sensia', '--sensia_align_end=0.6'])
    with pytest.raises(SystemExit, match='needs sensia_freeze=True'):
        train.main(['--objective=sensia', '--sensia_freeze=False', '--sensia_freeze_sense_input=True'])
    transformer = make_checkpoint(tmp_path / 'tf', sample_dataset, model_type='transformer')
    with pytest.raises(SystemExit, match='is a transformer; objective .sensia. adapts'):
        train.main([*SENSIA_TRAIN_ARGS, f'--data_dir={sample_dataset}', f'--init_from={transformer}',
                    f'--out_dir={tmp_path / "o"}'])
    no_pairs = write_synthetic_dataset(tmp_path / 'no_pairs')
    with pytest.raises(SystemExit, match='has no pairs_train.bin'):
        train.main([*SENSIA_TRAIN_ARGS, f'--data_dir={no_pairs}', f'--out_dir={tmp_path / "o"}'])
    other = make_checkpoint(tmp_path / 'other', no_pairs)  # vocabulary of 98 (gpt2 kind), not 512 (bpe)
    with pytest.raises(SystemExit, match='was trained with another tokenizer'):
        train.main([*SENSIA_TRAIN_ARGS, f'--data_dir={sample_dataset}', f'--init_from={other}',
                    f'--out_dir={tmp_path / "o"}'])


@pytest.mark.parametrize('size', ['tiny', 'backpack_gpt2'])
def test_controls_differ_from_sensia_only_in_their_objective(size):
    """The controls are overlays given after a SENSIA config: same data, steps, schedule and optimiser as
    SENSIA; only the loss terms (and, for MCL, what is pooled and frozen) and the run folder differ."""
    sensia_cfg = train.parse_args([f'config/adapt_sensia_{size}.py'])
    allowed = {'lm_only': {'out_dir', 'sensia_losses'},
               'mcl': {'out_dir', 'sensia_losses', 'sensia_context', 'sensia_freeze'}}
    for control, keys in allowed.items():
        other = train.parse_args([f'config/adapt_sensia_{size}.py', f'config/adapt_{control}.py'])
        differing = {k for k in set(sensia_cfg) | set(other) if sensia_cfg.get(k) != other.get(k)}
        assert differing == keys, (control, differing)
        assert other['out_dir'] != sensia_cfg['out_dir']  # without --out_dir, never into the SENSIA run


def sensia_run_saved_by_two_processes(data, out):
    """A short SENSIA run (z_ctx from the backbone's hidden states: a forward hook) whose ckpt.pt is
    rewritten as if two processes had saved it; the iteration best.pt holds."""
    train.main([*SENSIA_TRAIN_ARGS, f'--data_dir={data}', f'--out_dir={out}', '--max_iters=8', '--eval_interval=4',
                '--checkpoint_interval=4', '--sensia_context=hidden'])
    ckpt = load_checkpoint(out / 'ckpt.pt')
    ckpt['rng'], ckpt['sampler'] = ckpt['rng'] * 2, ckpt['sampler'] * 2
    save_checkpoint(ckpt, out / 'ckpt.pt')
    return min(ckpt['training_log'], key=lambda e: e['val_loss_fr_pairs'])['iter']


def nan_sensia_loss(monkeypatch):
    real_loss = sensia.SensiaObjective.loss

    def loss(self, model, batch, iter_num):
        total, scalars = real_loss(self, model, batch, iter_num)
        return total * float('nan'), scalars
    monkeypatch.setattr(sensia.SensiaObjective, 'loss', loss)


@pytest.mark.slow
def test_divergence_after_resume_names_the_iteration_best_pt_holds(sample_dataset, tmp_path, monkeypatch):
    """Under SENSIA best.pt is chosen by val_loss_fr_pairs, so its iteration is looked up under that key."""
    out = tmp_path / 'run'
    best_iter = sensia_run_saved_by_two_processes(sample_dataset, out)
    nan_sensia_loss(monkeypatch)
    with pytest.raises(SystemExit) as e:
        train.main(['--init_from=resume', f'--out_dir={out}', '--max_iters=12', '--deterministic=False'])
    assert f"{out / 'best.pt'} (iteration {best_iter}) and {out / 'ckpt.pt'} (iteration 8)" in str(e.value)


@pytest.mark.slow
def test_resume_on_another_process_count_hooks_the_backbone_once(sample_dataset, tmp_path, monkeypatch):
    """Reseeding for another number of processes builds the objective once: no stale forward hook."""
    out = tmp_path / 'run'
    sensia_run_saved_by_two_processes(sample_dataset, out)
    hooked, real_register = [], torch.nn.Module.register_forward_hook

    def register(module, hook, **kwargs):
        hooked.append(type(module).__name__)
        return real_register(module, hook, **kwargs)
    monkeypatch.setattr(torch.nn.Module, 'register_forward_hook', register)
    train.main(['--init_from=resume', f'--out_dir={out}', '--max_iters=10', '--deterministic=False'])
    assert hooked == ['GPT2Backbone']


def test_info_nce_is_computed_in_float32_under_autocast():
    """At tau 0.05 a bfloat16 similarity would carry about 0.1 of noise per logit."""
    torch.manual_seed(0)
    u, v = F.normalize(torch.randn(32, 64), dim=-1), F.normalize(torch.randn(32, 64), dim=-1)
    exact = sensia.info_nce(u, v, 0.05)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(sensia.info_nce(u, v, 0.05), exact)


@pytest.mark.parametrize('losses', ['sense', 'context', 'lm', 'sense,context', 'context,lm', 'sense,context,lm'])
@pytest.mark.parametrize('context', sensia.CONTEXT_STATES)
def test_every_trainable_parameter_gets_a_gradient(sample_dataset, losses, context):
    """DDP's contract without find_unused_parameters: a parameter that trains must get a gradient every step
    (else the second step fails). With only the context loss on the backbone's state, the sense networks are
    frozen: they would not have moved anyway."""
    meta = load_meta(sample_dataset)
    cfg = {**train.DEFAULTS, 'objective': 'sensia', 'batch_size': 4, 'block_size': 32, 'max_iters': 10,
           'sensia_losses': losses, 'sensia_context': context}
    model = tiny_model(vocab_size=meta['vocab_size'], block_size=cfg['block_size']).train()
    objective = sensia.SensiaObjective(cfg, model, sample_dataset, meta, 'cpu', seed=0)
    loss, _ = objective.loss(model, objective.batch(), iter_num=3)  # the joint phase: every enabled term
    loss.backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    frozen = not any(p.requires_grad for p in model.sense_network.parameters())
    assert frozen == (losses == 'context' and context != 'output')


RANK_DEPENDENT_WORKER = '''
import os, sys
import train
from backpacks import sensia
real = sensia.SensiaObjective.evaluate

def evaluate(self, model, iter_num):  # rank 0's selection loss rises, rank 1's falls: they disagree on best.pt
    result = real(self, model, iter_num)
    result['val_loss_fr_pairs'] = float(iter_num if os.environ['RANK'] == '0' else -iter_num)
    return result
sensia.SensiaObjective.evaluate = evaluate
train.main(sys.argv[1:])
'''


@pytest.mark.slow
def test_ddp_processes_agree_on_best_pt_and_train_the_context_loss_alone(sample_dataset, tmp_path, repo_root):
    """Saving is collective, so every process must decide "improved" alike (rank 0's numbers); and with only
    the context loss on the backbone's state the sense networks get no gradient, which DDP refuses at its
    second step unless they are frozen. Before either fix this run hung or failed."""
    worker = tmp_path / 'worker.py'
    worker.write_text(RANK_DEPENDENT_WORKER)
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(worker)]
    settings = [*SENSIA_TRAIN_ARGS, f'--data_dir={sample_dataset}', '--max_iters=4', '--eval_interval=2',
                '--batch_size=4', '--gradient_accumulation_steps=2', '--sensia_losses=context',
                '--sensia_context=hidden', f'--out_dir={tmp_path / "out"}']
    result = subprocess.run([*torchrun, *settings], cwd=repo_root, env={**os.environ, 'OMP_NUM_THREADS': '1',
                            'PYTHONPATH': str(repo_root)}, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(tmp_path / 'out' / 'best.pt')['iter_num'] == 0  # rank 0's lowest
    assert load_checkpoint(tmp_path / 'out' / 'ckpt.pt')['iter_num'] == 4
