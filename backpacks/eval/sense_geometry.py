"""Sense geometry of a finished Backpack (the SENSIA paper's analyses), run by `evaluate.py --tasks sensia`:

  topology:   per dictionary pair, the k context-free senses (averaged over subword pieces) of each word
              are centred and L2-normalised; Spearman rho between the upper triangles of the English and
              the French Gram matrices; mean over pairs with a bootstrap 95% interval, and the same on
              a random pairing of the words (the floor)
  procrustes: mixture-weighted word vectors, mean-centred; Q = orthogonal_procrustes(T, E) (the SVD of
              T^T E); mean cosine of T Q with E, on the true pairs and on a random pairing (the floor),
              fitted on all pairs (as the authors) and fitted on one half, scored on the other. Mixtures
              (--geometry_mixture): 'norm' (default), e = sum_l pi_l c_l with pi = softmax_l(||c_l|| /
              tau_pool), the z_sns pooling; 'alpha', the sense-weight network's weights (the paper's
              form), e = o / k at the word's last piece, o = sum_l sum_j alpha[l,last,j] C_j[l] the
              Backpack output for the word alone (alpha_mixture_vectors)
  mixture:    French cross-entropy on test sentences with the full sense mixture o = sum_l P[l], the top-1
              sense (largest ||P[l,i]|| at each position, weight 1) and the uniform mean over senses,
              through the model's contributions_fn hook
  pairs:      recall@1 both ways of z_sns and z_ctx, French sense entropy and perplexity on test pairs

The words are context-free dictionary pairs, each read alone; the authors' code takes aligned words of
parallel sentences in context and weighs the senses with the backbone's hidden states (see docs/sensia.md,
differences from the authors' code).
"""
import numpy as np
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.stats import rankdata

from backpacks.eval import lexical
from backpacks import metrics
from backpacks import sensia


def bootstrap_mean(values, seed=0, n_boot=1000):
    """{'mean', 'ci95': [lo, hi], 'n'} of values, percentile bootstrap over items."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return {'mean': float(values.mean()), 'ci95': [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            'n': int(len(values))}


def gram_upper(senses):
    """(W, k(k-1)/2) upper triangles of the Gram matrices of centred, L2-normalised senses (W, k, d)."""
    centred = senses - senses.mean(axis=1, keepdims=True)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=-1, keepdims=True), 1e-12)
    gram = unit @ unit.transpose(0, 2, 1)
    rows, cols = np.triu_indices(senses.shape[1], k=1)
    return gram[:, rows, cols]


def rowwise_spearman(a, b):
    """Spearman rho of each row of a with the same row of b (Pearson of average ranks)."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra, rb = ra - ra.mean(axis=1, keepdims=True), rb - rb.mean(axis=1, keepdims=True)
    return (ra * rb).sum(axis=1) / np.maximum(np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1)), 1e-12)


def topology(senses_en, senses_fr, seed=0):
    """Sense topology rho of the pairs (senses_en[i], senses_fr[i]), and of a random pairing."""
    upper_en, upper_fr = gram_upper(senses_en), gram_upper(senses_fr)
    perm = metrics.random_derangement(len(upper_en), np.random.default_rng(seed))
    return {'pairs': bootstrap_mean(rowwise_spearman(upper_en, upper_fr), seed),
            'random_pairing': bootstrap_mean(rowwise_spearman(upper_en, upper_fr[perm]), seed)}


def norm_mixture_vectors(senses, tau_pool):
    """e = sum_l pi_l c_l with pi = softmax_l(||c_l|| / tau_pool), for senses (W, k, d)."""
    a = np.linalg.norm(senses, axis=-1) / tau_pool
    pi = np.exp(a - a.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    return (pi[..., None] * senses).sum(axis=1)


@torch.no_grad()
def alpha_mixture_vectors(model, pieces, batch_size, device):
    """(W, d) e = o / k at the last piece of each word read alone, o = sum_l sum_j alpha[l,last,j] C_j[l]:
    sense l of piece j weighted by alpha[l,last,j] / k. For each sense alpha sums to 1 over the pieces,
    so every sense weighs 1/k in all and a one-piece word gets the plain mean of its senses; alpha
    decides how each sense's weight spreads over the word's pieces."""
    vectors = []
    for i in range(0, len(pieces), batch_size):
        idx, lengths = sensia.pad_batch(pieces[i:i + batch_size], 0, device)  # right padding is never attended
        vectors.append(sensia.last_token(model.output_states(idx).float(), lengths).cpu())
    return torch.cat(vectors).numpy() / model.config.n_senses


GEOMETRY_MIXTURES = ('norm', 'alpha')


def procrustes_cosine(T, E, fit=None):
    """Mean cosine of T Q with E, Q the orthogonal map fitted on the rows `fit` (default all) of the
    mean-centred T and E; scored on the other rows when fit is given."""
    T, E = T - T.mean(axis=0), E - E.mean(axis=0)
    fit = np.arange(len(T)) if fit is None else fit
    score = np.setdiff1d(np.arange(len(T)), fit) if len(fit) < len(T) else fit
    Q, _ = orthogonal_procrustes(T[fit], E[fit])
    return float(metrics.paired_cosine(T[score] @ Q, E[score]).mean())


def procrustes(vectors_en, vectors_fr, seed=0):
    """French -> English Procrustes cosine on the pairs and on a random pairing, in-sample and held out."""
    rng = np.random.default_rng(seed)
    perm = metrics.random_derangement(len(vectors_en), rng)
    half = rng.permutation(len(vectors_en))[:len(vectors_en) // 2]
    return {'in_sample': procrustes_cosine(vectors_fr, vectors_en),
            'in_sample_random_pairing': procrustes_cosine(vectors_fr, vectors_en[perm]),
            'held_out_half': procrustes_cosine(vectors_fr, vectors_en, fit=half),
            'held_out_half_random_pairing': procrustes_cosine(vectors_fr, vectors_en[perm], fit=half),
            'pairs': int(len(vectors_en))}


def top1_contributions(P):
    """Only the sense with the largest ||P[l,i]|| at each position, with weight 1."""
    best = P.float().norm(dim=-1).argmax(dim=1, keepdim=True)  # (B,1,T)
    return P * torch.zeros_like(P[..., 0]).scatter_(1, best, 1.0).unsqueeze(-1)


def uniform_contributions(P):
    """The mean over senses instead of their sum."""
    return P / P.shape[1]


MIXTURES = {'full': None, 'top1': top1_contributions, 'uniform': uniform_contributions}


@torch.no_grad()
def mixture_ablation(model, batches):
    """French cross-entropy (nats/token) of batches of (idx, lengths) under each sense mixture."""
    totals = {name: [0.0, 0] for name in MIXTURES}
    for idx, lengths in batches:
        for name, fn in MIXTURES.items():
            logits, _ = model(idx, contributions_fn=fn)
            _, nll, count = sensia.next_token_losses(logits, idx, lengths)
            totals[name][0] += float(nll)
            totals[name][1] += int(count)
    return {name: {'loss': total / max(1, count), 'tokens': count} for name, (total, count) in totals.items()}


def word_pair_vectors(model, tokenizer, pairs):
    """(WordVectors of the words, pairs kept: both words have pieces)."""
    vectors = lexical.WordVectors(model, tokenizer, [w for pair in pairs for w in pair])
    return vectors, [(en, fr) for en, fr in pairs if en in vectors and fr in vectors]


def word_mixtures(model, vectors, words, mixture, tau_pool, batch_size, device):
    """(W, d) mixture-weighted vectors of words (in vectors) for Procrustes."""
    if mixture == 'norm':
        return norm_mixture_vectors(vectors.senses[vectors.rows(words)], tau_pool)
    return alpha_mixture_vectors(model, [vectors.pieces[w] for w in words], batch_size, device)


def analyse(model, tokenizer, word_pairs, sentence_pairs, batch_size, device, tau_pool=0.7, seed=0, mixture='norm'):
    """Every analysis above on a Backpack: word_pairs [(en, fr)] of the dictionary, sentence_pairs
    [(en ids, fr ids)] of the test split (no tags); mixture: Procrustes' word vectors (GEOMETRY_MIXTURES)."""
    vectors, kept = word_pair_vectors(model, tokenizer, word_pairs)
    if len(kept) < 4:
        raise ValueError(f"only {len(kept)} dictionary pairs have both words in the vocabulary (need 4)")
    english, french = [e for e, _ in kept], [f for _, f in kept]
    mixed = [word_mixtures(model, vectors, words, mixture, tau_pool, batch_size, device)
             for words in (english, french)]
    pad = tokenizer.eot_id

    def batches(both_sides):
        for i in range(0, len(sentence_pairs), batch_size):
            chunk = sentence_pairs[i:i + batch_size]
            seqs = ([e for e, _ in chunk] if both_sides else []) + [f for _, f in chunk]
            yield sensia.pad_batch(seqs, pad, device)

    return {'word_pairs': len(kept), 'sentence_pairs': len(sentence_pairs), 'tau_pool': tau_pool,
            'topology': topology(vectors.senses[vectors.rows(english)], vectors.senses[vectors.rows(french)], seed),
            'procrustes': {**procrustes(*mixed, seed), 'mixture': mixture},
            'mixture_ablation': mixture_ablation(model, batches(False)),
            'test_pairs': sensia.pair_metrics(model, batches(True), tau_pool, per_pair=True)}
