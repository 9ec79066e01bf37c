import ast
import json
import shutil

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import native_on_this_cpu
from backpacks.hf_format import PretrainedFormatError, load_backpack_gpt2, save_backpack_gpt2
from model import (PRESETS, BackpackLM, ModelConfig, StandardTransformerLM, _positions_and_mask, build_model,
                   preset_config, product_mixing, sdpa_mixing)
from tiny import tiny_config, tiny_model

# The numbers below (ids below 64, 32 positions, 4 senses of 32 dimensions) are tiny_model's defaults.
MODELS = ['backpack', 'transformer']
MIXING = dict(n_embd=64, n_senses=8)  # the mixing paths' tests: 8 senses, twice the default's, of the same width 8


@pytest.fixture(scope='module')
def reference_dir(reference_tiny_dir):
    return reference_tiny_dir


def test_model_py_depends_on_torch_alone(repo_root):
    """model.py defines the models; the backpack-gpt2 files (backpacks/hf_format.py) and everything else build on it."""
    tree = ast.parse((repo_root / 'model.py').read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.split('.')[0] for name in modules} <= {'dataclasses', 'inspect', 'math', 'torch'}


@pytest.mark.parametrize('model_type', MODELS)
def test_causal(model_type):
    model = tiny_model(model_type)
    idx = torch.randint(0, 64, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = torch.randint(0, 64, (2, 8))
    logits, _ = model(idx)
    logits_changed, _ = model(changed)
    torch.testing.assert_close(logits[:, :12], logits_changed[:, :12])
    assert not torch.allclose(logits[:, 12:], logits_changed[:, 12:])


def test_alpha_is_a_causal_distribution():
    model = tiny_model('backpack')
    alpha = model.contextualization(torch.randint(0, 64, (2, 10)))
    assert alpha.shape == (2, 4, 10, 10)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 4, 10))
    assert (alpha.triu(1) == 0).all()


@pytest.mark.parametrize('model_type', MODELS)
def test_head_is_tied_to_embedding(model_type):
    model = tiny_model(model_type)
    idx = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        model.token_embeddings[7] += 1.0
    states = model.output_states(idx) if model_type == 'backpack' else model.hidden_states(idx)
    torch.testing.assert_close(model(idx)[0][..., 7], states @ model.token_embeddings[7])


def test_logits_are_linear_in_the_senses():
    """The Backpack's defining property: scaling every sense vector scales the logits."""
    model = tiny_model('backpack')
    idx = torch.randint(0, 64, (2, 9))
    logits, _ = model(idx)
    scaled, _ = model(idx, senses_fn=lambda senses: 3 * senses)
    torch.testing.assert_close(scaled, 3 * logits)


def test_sense_interventions_per_sense_and_token():
    model = tiny_model('backpack')
    idx = torch.randint(0, 64, (1, 8))

    def silence_sense_2_of_token_3(senses):
        senses = senses.clone()
        senses[:, 2, 3] = 0
        return senses

    logits, _ = model(idx)
    edited, _ = model(idx, senses_fn=silence_sense_2_of_token_3)
    torch.testing.assert_close(edited[:, :3], logits[:, :3])  # positions before token 3 cannot see it
    assert not torch.allclose(edited[:, 3:], logits[:, 3:])
    alpha_doubled, _ = model(idx, alpha_fn=lambda alpha: 2 * alpha)
    torch.testing.assert_close(alpha_doubled, 2 * logits)


def test_sense_vectors_depend_on_the_token_only():
    model = tiny_model('backpack')
    senses = model.sense_vectors(torch.tensor([5, 9, 5]))
    assert senses.shape == (3, 4, 32)
    torch.testing.assert_close(senses[0], senses[2])


def test_fast_mixing_matches_reference_path():
    model = tiny_model('backpack', **MIXING)
    idx = torch.randint(0, 64, (3, 32))
    fast, _ = model(idx)
    model.fast_mixing = False
    reference, _ = model(idx)
    assert (fast - reference).abs().max() < 1e-5


def test_cpu_mixing_matches_reference_in_gradients_and_with_padding():
    model = tiny_model('backpack', **MIXING)
    idx, targets = torch.randint(0, 64, (3, 32)), torch.randint(0, 64, (3, 32))
    grads = []
    for fast in (True, False):
        model.fast_mixing = fast
        model.zero_grad()
        model(idx, targets)[1].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert max((a - b).abs().max() for a, b in zip(*grads)) < 1e-5
    mask = torch.ones(3, 32, dtype=torch.bool)
    mask[0, :5] = False  # a left-padded row
    steps = []
    for fast in (True, False):
        model.fast_mixing = fast
        steps.append(model.step(idx, attention_mask=mask)[0])
    assert (steps[0] - steps[1]).abs().max() < 1e-5


def left_padded_mask(B, T):
    """The SDPA mask (B,1,T,T) of rows left-padded by 0, 3, 6, ... tokens, as step() builds it."""
    attention_mask = torch.ones(B, T, dtype=torch.bool)
    for row in range(B):
        attention_mask[row, :3 * row] = False
    return _positions_and_mask(torch.zeros(B, T, dtype=torch.long), 0, attention_mask)[1]


@pytest.mark.parametrize('padded', [False, True])
@pytest.mark.parametrize('mixing', [sdpa_mixing, product_mixing])
def test_mixing_branches_match_the_reference_product_with_gradients(mixing, padded):
    """Both device branches of BackpackLM._mix, called directly on the CPU (the CUDA one, SDPA with values
    wider than queries, runs in SDPA's math kernel here): o and the gradients of q, k and the senses equal
    the reference sum_l alpha_l C_l, plain causal and with left padding."""
    torch.manual_seed(0)
    B, n_senses, T, d = 3, 4, 12, 32
    q, k = (torch.randn(B, n_senses, T, d // n_senses, requires_grad=True) for _ in range(2))
    senses = torch.randn(B, n_senses, T, d, requires_grad=True)
    mask = left_padded_mask(B, T) if padded else None
    upstream = torch.randn(B, T, d)
    results = []
    for mix in (mixing, lambda q, k, senses, mask: (BackpackLM._alpha(q, k, mask) @ senses).sum(dim=1)):
        out = mix(q, k, senses, mask)
        results.append((out, *torch.autograd.grad(out, (q, k, senses), upstream)))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def fast_and_reference_outputs(model, device='cpu'):
    """(idx, [[logits, parameter gradients..., left-padded step() logits] of the fast mixing path, the
    same of the reference product]) on one random batch idx."""
    idx, targets = torch.randint(0, 64, (3, 32), device=device), torch.randint(0, 64, (3, 32), device=device)
    mask = torch.ones(3, 32, dtype=torch.bool, device=device)
    mask[0, :5] = False
    results = []
    for fast in (True, False):
        model.fast_mixing = fast
        model.zero_grad()
        logits, loss = model(idx, targets)
        loss.backward()
        results.append([logits, *(p.grad for p in model.parameters()), model.step(idx, attention_mask=mask)[0]])
    model.fast_mixing = True
    return idx, results


def test_cuda_mixing_branch_in_the_model_matches_the_reference(monkeypatch):
    """The whole Backpack with its CUDA mixing forced on the CPU: logits, parameter gradients and a
    left-padded step() equal the reference path's."""
    monkeypatch.setattr(BackpackLM, '_mix', lambda self, q, k, senses, mask: sdpa_mixing(q, k, senses, mask))
    _, results = fast_and_reference_outputs(tiny_model('backpack', **MIXING))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_the_model_on_cuda_matches_the_reference_path():
    """On the GPU the Backpack mixes through SDPA: logits, gradients and a left-padded step() equal the
    reference product's in float32, and the bfloat16/float16 autocast logits stay close to them."""
    model = tiny_model('backpack', **MIXING).cuda()
    idx, results = fast_and_reference_outputs(model, 'cuda')
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.no_grad(), torch.autocast('cuda', dtype=dtype):
            low, _ = model(idx)
        torch.testing.assert_close(low.float(), results[1][0], rtol=0.05, atol=0.05)


def test_loss_ignores_minus_one_targets():
    model = tiny_model('transformer')
    idx = torch.randint(0, 64, (2, 10))
    targets = torch.randint(0, 64, (2, 10))
    logits, loss = model(idx, targets)
    masked = targets.clone()
    masked[:, :5] = -1
    _, masked_loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 64), targets[:, 5:].reshape(-1))
    torch.testing.assert_close(masked_loss, expected)
    assert model(idx)[1] is None


@pytest.mark.parametrize('name,millions', [
    ('backpack-micro', 41.7), ('backpack-mini', 103.9), ('backpack-small', 170.1),
    ('transformer-micro', 30.1), ('transformer-mini', 71.9), ('transformer-small', 124.1)])
def test_preset_parameter_counts(name, millions):
    model_type, config = preset_config(name, vocab_size=50264, block_size=512)
    with torch.device('meta'):
        model = build_model(model_type, config)
    assert abs(model.num_params(non_embedding=False) / 1e6 - millions) < 0.2
    assert set(PRESETS) == {f'{k}-{s}' for k in MODELS for s in ('micro', 'mini', 'small')}


@pytest.mark.parametrize('model_type', MODELS)
def test_parameter_counts_separate_embedding(model_type):
    model = tiny_model(model_type)
    V, T, d = model.config.vocab_size, model.config.block_size, model.config.n_embd
    counts = model.param_counts()
    assert counts['embedding'] == V * d + T * d  # token table (also the tied head) and positions
    assert counts['total'] == sum(p.numel() for p in model.parameters())
    assert counts['non_embedding'] == counts['total'] - V * d - T * d == model.num_params()
    assert counts['non_embedding'] == sum(p.numel() for name, p in model.named_parameters()
                                          if not name.startswith(('backbone.wte', 'backbone.wpe')))


def test_reference_checkpoint_matches(reference_dir):
    model = load_backpack_gpt2(reference_dir).eval()
    idx = torch.from_numpy(np.load(reference_dir / 'input_ids.npy')).long()
    with torch.no_grad():
        logits, _ = model(idx)
        alpha = model.contextualization(idx)
        senses = model.senses(idx)
    for got, name in [(logits, 'logits'), (alpha, 'contextualization'), (senses, 'senses')]:
        expected = np.load(reference_dir / f'expected_{name}.npy')
        assert got.shape == expected.shape
        assert np.abs(got.numpy() - expected).max() < 1e-4, name


def test_save_backpack_gpt2_round_trip(reference_dir, tmp_path):
    model = load_backpack_gpt2(reference_dir).eval()
    save_backpack_gpt2(model, tmp_path)
    reloaded = load_backpack_gpt2(tmp_path).eval()
    idx = torch.from_numpy(np.load(reference_dir / 'input_ids.npy')).long()
    assert torch.equal(model(idx)[0], reloaded(idx)[0])
    original = torch.load(reference_dir / 'pytorch_model.bin', weights_only=True)
    written = torch.load(tmp_path / 'pytorch_model.bin', weights_only=True)
    assert set(original) == set(written)
    for name, tensor in original.items():
        assert torch.equal(tensor, written[name]), name


def test_load_backpack_gpt2_errors(reference_dir, tmp_path):
    with pytest.raises(PretrainedFormatError, match='no config.json'):
        load_backpack_gpt2(tmp_path)
    bad = tmp_path / 'gpt2'
    shutil.copytree(reference_dir, bad)
    config = json.loads((bad / 'config.json').read_text())
    (bad / 'config.json').write_text(json.dumps({**config, 'model_type': 'gpt2'}))
    with pytest.raises(PretrainedFormatError, match="model_type is 'gpt2'"):
        load_backpack_gpt2(bad)
    (bad / 'config.json').write_text(json.dumps({**config, 'n_embd': 64}))
    with pytest.raises(PretrainedFormatError, match='shape'):
        load_backpack_gpt2(bad)
    with pytest.raises(PretrainedFormatError, match='not a directory'):
        load_backpack_gpt2(tmp_path / 'missing' / 'deeper' / 'path')
    (bad / 'config.json').write_text('{"model_type": "backpack-gpt2",')
    with pytest.raises(PretrainedFormatError, match='is not readable JSON'):
        load_backpack_gpt2(bad)
    (bad / 'config.json').write_text(json.dumps({k: v for k, v in config.items() if k != 'num_senses'}))
    with pytest.raises(PretrainedFormatError, match='lacks the number.s. num_senses'):
        load_backpack_gpt2(bad)


class RunsCode:
    def __reduce__(self):
        return (print, ('this ran',))


@pytest.mark.parametrize('kind', ['truncated', 'malicious'])
def test_unreadable_pretrained_weights(reference_dir, tmp_path, capsys, kind):
    shutil.copytree(reference_dir, tmp_path / 'p')
    weights = tmp_path / 'p' / 'pytorch_model.bin'
    if kind == 'truncated':
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        torch.save({'backpack.word_embeddings.weight': RunsCode()}, weights)
    with pytest.raises(PretrainedFormatError) as e:
        load_backpack_gpt2(tmp_path / 'p')
    assert str(e.value).startswith(f"{weights} is not a readable weights file") and 'weights_only' not in str(e.value)
    assert 'this ran' not in capsys.readouterr().out


@pytest.mark.parametrize('model_type', MODELS)
def test_too_long_input_is_a_clear_error(model_type):
    with pytest.raises(ValueError, match='longer than block_size 32'):
        tiny_model(model_type)(torch.zeros(1, 33, dtype=torch.long))


def uncached_greedy(model, idx, steps):
    for _ in range(steps):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1:].argmax(-1)], dim=1)
    return idx


@pytest.mark.parametrize('model_type', MODELS)
def test_cached_generation_equals_uncached_greedy(model_type):
    model = tiny_model(model_type, block_size=24)
    idx = torch.randint(0, 64, (3, 6))
    # 30 new tokens run past block_size, exercising the sliding window too
    assert torch.equal(model.generate(idx, 30, temperature=0), uncached_greedy(model, idx, 30))


@pytest.mark.parametrize('model_type', MODELS)
def test_left_padded_step_matches_unpadded(model_type):
    model = tiny_model(model_type)
    short, long = torch.randint(1, 64, (1, 4)), torch.randint(1, 64, (1, 7))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, :3] = False
    logits, cache = model.step(batch, attention_mask=mask)
    torch.testing.assert_close(logits[0, 3:], model(short)[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1], model(long)[0][0], atol=1e-5, rtol=1e-5)
    next_ids = torch.tensor([[5], [6]])
    logits, cache = model.step(next_ids, cache, torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], 1))
    torch.testing.assert_close(logits[0, -1], model(torch.cat([short, next_ids[:1]], 1))[0][0, -1], atol=1e-5, rtol=1e-5)
    cache.reorder(torch.tensor([1]))
    assert cache.length == 8 and cache.layers[0][0].shape[0] == 1


def test_generate_stops_rows_at_eos():
    model = tiny_model('transformer')
    idx = torch.randint(0, 64, (2, 4))
    free = model.generate(idx, 5, temperature=0)
    first = free[0, 4].item()
    stopped = model.generate(idx, 5, temperature=0, eos_id=first)
    assert (stopped[0, 4:] == first).all()


def relative_error(approx, exact):
    """||approx - exact|| / ||exact||: all-zero logits score 1, whatever the logits' scale."""
    approx, exact = approx.detach().float(), exact.detach()
    return float((approx - exact).norm() / exact.norm())


@native_on_this_cpu('bfloat16')
@pytest.mark.parametrize('model_type', MODELS)
def test_bf16_autocast_forward_on_cpu(model_type):
    model = tiny_model(model_type)
    idx = torch.randint(0, 64, (2, 12))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.002 per operation); measured 0.003-0.006
    assert relative_error(logits, model(idx)[0]) < 0.02


@native_on_this_cpu('bfloat16')
def test_bf16_autocast_matches_the_reference_logits(reference_dir):
    """Trained weights (logits up to 7) against the reference implementation's fp32 logits."""
    model = load_backpack_gpt2(reference_dir).eval()
    idx = torch.from_numpy(np.load(reference_dir / 'input_ids.npy')).long()
    expected = torch.from_numpy(np.load(reference_dir / 'expected_logits.npy'))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        logits, _ = model(idx)
    assert relative_error(logits, expected) < 0.02  # measured 0.006


def elementwise_params(module):
    """Parameters outside the matrix products (biases, LayerNorms): flops_per_token charges them 6 each."""
    return sum(p.numel() for m in module.modules() for name, p in m.named_parameters(recurse=False)
               if not (name == 'weight' and isinstance(m, (torch.nn.Linear, torch.nn.Embedding))))


@pytest.mark.parametrize('repeats', [False, True])
@pytest.mark.parametrize('model_type', MODELS)
def test_flops_per_token_against_torch_flop_counter(model_type, repeats):
    """torch.utils.flop_counter counts 2 FLOPs per multiply-add of every matrix product of a forward and
    backward pass: Linear layers, the tied LM head, attention (QK^T, AV) and the Backpack's sense scores and
    mixing (the math SDPA kernel is forced: the counter does not see inside CPU's fused kernel). Causal
    masking is not subtracted by either. flops_per_token counts 6 per parameter (PaLM/nanoGPT) and so also
    charges the biases and LayerNorm parameters, elementwise work the counter ignores: the two must differ
    by exactly 6 x those parameters, which are a small share (< 4% here) of the total. With repeated
    tokens the Backpack's sense network runs once per distinct token: flops_per_token given the batch's
    distinct share counts exactly that."""
    model = tiny_model(model_type).train()
    B, T = 2, model.config.block_size
    idx = torch.randint(0, 8, (B, T)) if repeats else torch.randperm(64).view(B, T)
    share = model.sense_share(idx) if model_type == 'backpack' else 1.0
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        _, loss = model(idx, idx)
        loss.backward()
    token_only = model.sense_network if model_type == 'backpack' else torch.nn.Module()
    elementwise = 6 * (elementwise_params(model) - (1 - share) * elementwise_params(token_only))
    assert model.flops_per_token(T, share) - elementwise == pytest.approx(counter.get_total_flops() / (B * T), rel=1e-12)
    assert 0 < elementwise < 0.04 * model.flops_per_token(T)
    assert (model.flops_per_token(T, share) < model.flops_per_token(T)) == (repeats and model_type == 'backpack')


def test_flops_count_sense_network_and_mixing():
    backpack, transformer = tiny_model('backpack'), tiny_model('transformer')
    extra_params = backpack.num_params() - transformer.num_params()
    T, d, k = 32, 32, 4
    assert backpack.flops_per_token() - transformer.flops_per_token() == 6 * extra_params + 3 * (2 * T * d + 2 * k * T * d)


def test_optimizer_decays_only_matrices():
    model = tiny_model('backpack')
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decayed, plain = optimizer.param_groups
    assert decayed['weight_decay'] == 0.1 and all(p.dim() >= 2 for p in decayed['params'])
    assert plain['weight_decay'] == 0.0 and all(p.dim() < 2 for p in plain['params'])
    assert sum(p.numel() for g in optimizer.param_groups for p in g['params']) == model.num_params(False)
    assert optimizer.defaults['fused']  # one kernel per step on the CPU too, instead of a loop over tensors


def test_unknown_model_type_and_preset():
    with pytest.raises(ValueError, match='unknown model_type'):
        build_model('lstm', tiny_config())
    with pytest.raises(ValueError, match='unknown preset'):
        preset_config('backpack-huge')
    assert isinstance(tiny_model('transformer'), StandardTransformerLM)


@pytest.mark.parametrize("sizes, message", [
    (dict(n_embd=0), "n_embd must be at least 1, got 0"), (dict(n_head=-1), "n_head must be at least 1"),
    (dict(n_layer=0), "n_layer must be at least 1"), (dict(n_senses=0), "n_senses must be at least 1"),
    (dict(n_embd=30, n_head=4), "n_embd (30) must be divisible by n_head (4)"), (dict(dropout=1.0), "dropout must be in [0, 1)")])
def test_impossible_sizes_are_one_value_error(sizes, message):
    with pytest.raises(ValueError) as e:
        ModelConfig(**sizes)
    assert str(e.value).startswith(message)


def test_senses_must_divide_the_width_of_a_backpack_only():
    config = ModelConfig(n_layer=1, n_head=2, n_embd=32, n_senses=5, vocab_size=16, block_size=8)
    with pytest.raises(ValueError, match=r"n_embd \(32\) must be divisible by n_senses \(5\)"):
        build_model("backpack", config)
    assert build_model("transformer", config).model_type == "transformer"


def per_position_senses(model):
    """The reference form of BackpackLM.senses: the sense network run at every position."""
    return lambda idx: model.sense_vectors(idx).transpose(1, 2)


def loss_and_gradients(model, idx, targets, **edits):
    model.zero_grad()
    logits, loss = model(idx, targets, **edits)
    loss.backward()
    return [logits, loss, *(p.grad.clone() for p in model.parameters() if p.grad is not None)]


@pytest.mark.parametrize('frozen', [False, True])
def test_senses_once_per_distinct_token_equal_the_per_position_form(frozen, monkeypatch):
    """Senses computed once per distinct token and gathered back: the same logits, loss and gradients
    (summed over a token's positions) as the sense network at every position, also when it reads the
    frozen copy of E, and the same (B,k,T,d) senses for an edit to see and change."""
    model = tiny_model('backpack').train()
    if frozen:
        model.freeze_sense_input()
        with torch.no_grad():
            model.token_embeddings.add_(0.1 * torch.randn_like(model.token_embeddings))  # E moves, the copy not
    idx, targets = torch.randint(0, 8, (3, 20)), torch.randint(0, 64, (3, 20))  # many repeated tokens
    seen = []

    def silence_sense_1_of_position_4(senses):
        seen.append(senses)
        senses = senses.clone()
        senses[:, 1, 4] = 0
        return senses

    results = []
    for reference in (False, True):
        if reference:
            monkeypatch.setattr(model, 'senses', per_position_senses(model))
        results.append(loss_and_gradients(model, idx, targets))
        results[-1] += loss_and_gradients(model, idx, targets, senses_fn=silence_sense_1_of_position_4)
    assert len(results[0]) == len(results[1])
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert seen[0].shape == (3, 4, 20, 32)
    torch.testing.assert_close(seen[0], seen[1], rtol=1e-6, atol=1e-7)


def test_sense_network_runs_per_position_with_dropout_in_training_or_few_repeats():
    """With dropout, training runs the sense network per position (a token's positions get different
    masks); without, it runs once per distinct token, unless the batch repeats too few tokens."""
    model = tiny_model('backpack', dropout=0.5).train()
    idx = torch.tensor([[5, 5, 5, 9]])
    senses = model.senses(idx)
    assert not torch.equal(senses[:, :, 0], senses[:, :, 1]) and model.sense_share(idx) == 1.0
    senses = model.eval().senses(idx)
    assert torch.equal(senses[:, :, 0], senses[:, :, 1]) and model.sense_share(idx) == 0.5
    assert model.sense_share(torch.randperm(64).view(2, 32)) == 1.0
