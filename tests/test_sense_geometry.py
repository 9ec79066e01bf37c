"""sense_geometry.py: topology rho, Procrustes, the sense-mixture ablation, and the evaluate.py task."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from backpacks.eval import sense_geometry
from tiny import tiny_model


def test_topology_is_one_for_identical_sense_sets():
    rng = np.random.default_rng(0)
    senses = rng.normal(size=(30, 6, 8))
    result = sense_geometry.topology(senses, senses * 2.0 + 0.5)  # scaled and shifted: same centred geometry
    assert result['pairs']['mean'] == pytest.approx(1.0)
    assert result['pairs']['ci95'] == pytest.approx([1.0, 1.0])
    assert abs(result['random_pairing']['mean']) < 0.2  # unrelated words: near 0
    lo, hi = sense_geometry.topology(senses, rng.normal(size=(30, 6, 8)))['pairs']['ci95']
    assert lo < 0 < hi


def test_rowwise_spearman_matches_scipy():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 10)), rng.normal(size=(5, 10))
    a[0, :3] = 0.0  # ties
    expected = [spearmanr(x, y).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(sense_geometry.rowwise_spearman(a, b), expected, atol=1e-12)


def test_procrustes_recovers_a_random_rotation():
    rng = np.random.default_rng(0)
    english = rng.normal(size=(200, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    french = english @ rotation.T + 0.01 * rng.normal(size=(200, 16))  # French = rotated English
    result = sense_geometry.procrustes(english, french)
    assert result['in_sample'] > 0.99 and result['held_out_half'] > 0.99
    assert result['in_sample_random_pairing'] < 0.5 and result['held_out_half_random_pairing'] < 0.2


def test_mixture_vectors_weight_senses_by_norm():
    senses = np.array([[[3.0, 0.0], [0.0, 1.0]]])  # norms 3 and 1
    pi = np.exp([3 / 0.7, 1 / 0.7]) / np.exp([3 / 0.7, 1 / 0.7]).sum()
    np.testing.assert_allclose(sense_geometry.norm_mixture_vectors(senses, 0.7), [[3 * pi[0], pi[1]]])


def test_alpha_mixture_weighs_senses_and_pieces_by_the_sense_weight_network():
    """The alpha form weighs sense l of piece j by alpha[l,last,j] / k: a one-piece word gets the plain mean
    of its senses (weights 1/k), where the norm form weighs senses by softmax(||c_l|| / tau_pool)."""
    model = tiny_model()
    with torch.no_grad():
        model.sense_weight_net.c_attn.weight *= 30  # alpha far from uniform over a word's pieces
        d = model.config.n_embd
        model.sense_network.final_mlp.c_proj.weight[:d] *= 200  # sense 0 (the first d outputs): a large norm
        pieces = [[7], [3, 11, 5]]  # a one-piece and a three-piece word, batched with right padding
        one, three = sense_geometry.alpha_mixture_vectors(model, pieces, batch_size=2, device='cpu')
        senses = model.sense_vectors(torch.tensor([7]))[0]  # (k, d)
        np.testing.assert_allclose(one, senses.mean(dim=0).numpy(), rtol=1e-5, atol=1e-6)
        pi = torch.softmax(senses.norm(dim=-1) / 0.7, dim=0)
        assert pi[0] > 0.9  # the norm form all but picks sense 0
        np.testing.assert_allclose(sense_geometry.norm_mixture_vectors(senses[None].numpy(), 0.7)[0],
                                   (pi[:, None] * senses).sum(0).numpy(), rtol=1e-5, atol=1e-6)
        assert np.abs((pi[:, None] * senses).sum(0).numpy() - one).max() > 0.1
        alpha = model.contextualization(torch.tensor([pieces[1]]))[0, :, -1]  # (k, 3): the last piece's row
        assert (alpha - 1 / 3).abs().max() > 0.2
        by_hand = torch.einsum('lj,jld->d', alpha, model.sense_vectors(torch.tensor(pieces[1]))) / 4
        np.testing.assert_allclose(three, by_hand.numpy(), rtol=1e-4, atol=1e-6)


def test_top1_and_uniform_ablations_equal_a_hand_computation():
    model = tiny_model()
    idx = torch.randint(0, 40, (2, 7))
    with torch.no_grad():
        alpha = model.contextualization(idx)  # (B,k,T,T)
        senses = model.senses(idx)  # (B,k,T,d)
        P = alpha @ senses
        norms = P.norm(dim=-1)  # (B,k,T)
        best = norms.argmax(dim=1)  # (B,T)
        top1 = torch.stack([torch.stack([P[b, best[b, i], i] for i in range(7)]) for b in range(2)])
        expected = {'full': P.sum(1), 'top1': top1, 'uniform': P.mean(1)}
        for name, fn in sense_geometry.MIXTURES.items():
            logits, _ = model(idx, contributions_fn=fn)
            torch.testing.assert_close(logits, expected[name] @ model.token_embeddings.t(), atol=1e-5, rtol=1e-4)


def test_bootstrap_interval_covers_the_mean():
    values = np.random.default_rng(0).normal(loc=0.3, scale=0.1, size=400)
    result = sense_geometry.bootstrap_mean(values)
    lo, hi = result['ci95']
    assert lo < result['mean'] < hi and hi - lo == pytest.approx(2 * 1.96 * 0.1 / 20, rel=0.2)


@pytest.mark.slow
def test_evaluate_task(sample_dataset, tmp_path, repo_root, make_checkpoint, enfr_data_root):
    out = make_checkpoint(tmp_path / 'run', sample_dataset)
    result = subprocess.run([sys.executable, 'evaluate.py', '--out_dir', str(out), '--tasks', 'sensia', '--device', 'cpu',
                             '--data_root', str(enfr_data_root), '--geometry_pairs', '50'],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    r = json.loads((out / 'eval' / 'results.json').read_text())['sensia']
    assert 4 <= r['word_pairs'] <= 50 and r['sentence_pairs'] == 25
    assert set(r['mixture_ablation']) == {'full', 'top1', 'uniform'} and r['procrustes']['mixture'] == 'norm'
    assert r['test_pairs']['recall@1_chance'] == pytest.approx(1 / 25)
    assert -1 <= r['topology']['pairs']['mean'] <= 1
