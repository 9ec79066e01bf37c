"""
Pure metric functions for evaluation: language-model loss by target language, translation quality,
rank correlation, word retrieval (cosine / CSLS) and sentence retrieval. No I/O, no model code.

Uncertainty: every headline metric carries a 95% bootstrap interval over its test items ("ci95"):
sacreBLEU's own bootstrap (its --confidence) for BLEU and chrF, a seeded percentile bootstrap for
Spearman rho and P@k.

Scales: sacreBLEU BLEU and chrF are 0-100 (sacreBLEU's convention); every other score here is
a fraction in [0, 1] (NLTK sentence BLEU, exact match, word / character accuracy, P@k, recall).
Word-level translation metrics split words with sacreBLEU's 13a tokenizer, so punctuation is
a word of its own and the same tokenization is used everywhere.
"""
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

_tokenize_13a = Tokenizer13a()


def words(text):
    """Words of a sentence as the word-level metrics see them (sacreBLEU 13a tokenization)."""
    return _tokenize_13a(text.strip()).split()


LOSS_PARTS = ('all', 'en', 'fr')


def language_loss_sums(logits, targets, languages=None):
    """(3, 2) tensor on the logits' device: [summed next-token loss, scored tokens] of all targets and,
    given the target languages (0 English, 1 French), of the English and the French ones (rows of
    LOSS_PARTS; zeros without languages); targets of -1 are not scored. Kept on the device so that a
    loop over batches syncs with the host once, at its end. Training's val loss and evaluation's test
    loss both count this way."""
    losses, masks = token_losses_by_language(logits, targets, languages)
    sums = torch.zeros(len(LOSS_PARTS), 2, device=losses.device)
    for row, name in enumerate(LOSS_PARTS):
        if name in masks:
            sums[row, 0], sums[row, 1] = torch.where(masks[name], losses, 0).sum(), masks[name].sum()
    return sums


def token_losses_by_language(logits, targets, languages=None):
    """(per-token next-token loss (B,T), {'all', and given languages 'en' and 'fr': mask of the
    scored tokens (B,T)})."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1,
                             reduction='none').view_as(targets)
    scored = targets != -1
    masks = {'all': scored}
    if languages is not None:
        masks.update(en=scored & (languages == 0), fr=scored & (languages == 1))
    return losses, masks


def window_language_losses(logits, targets, languages):
    """{'all', 'en', 'fr': ([summed loss of each window (row)], [its scored tokens])}."""
    losses, masks = token_losses_by_language(logits, targets, languages)
    return {name: ((losses * mask).sum(dim=1).tolist(), mask.sum(dim=1).tolist()) for name, mask in masks.items()}


def _check_parallel(hypotheses, references):
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if len(hypotheses) == 0:
        raise ValueError("no sentences to score")


# -----------------------------------------------------------------------------
# translation metrics

BOOTSTRAP_SAMPLES = 1000


def sacrebleu_score(metric, hypotheses, references):
    """score, signature and 95% interval of a sacreBLEU metric. The interval is sacreBLEU's bootstrap
    (--confidence: 1000 resamples of the sentences, seed SACREBLEU_SEED, default 12345), which reports
    the resamples' mean +- half their 2.5-97.5 percentile range. That symmetric interval can cross 0
    for scores near 0; it is clipped to the metric's range 0-100."""
    _check_parallel(hypotheses, references)
    try:
        result = metric.corpus_score(list(hypotheses), [list(references)], n_bootstrap=BOOTSTRAP_SAMPLES)
    except TypeError as e:  # sacreBLEU 2.6's chrF bootstrap can fail mixing float and float32 statistics
        result = metric.corpus_score(list(hypotheses), [list(references)])
        return result, {"score": result.score, "signature": str(metric.get_signature()), "ci95": None,
                        "ci95_note": f"sacreBLEU's bootstrap failed on this output ({e})"}
    return result, {"score": result.score, "signature": str(metric.get_signature()),
                    "ci95": [max(0.0, result._mean - result._ci), min(100.0, result._mean + result._ci)]}


def corpus_bleu(hypotheses, references):
    """sacreBLEU corpus BLEU (0-100, one reference per sentence), its signature and 95% interval."""
    result, entry = sacrebleu_score(BLEU(), hypotheses, references)
    return {**entry, "precisions": list(result.precisions), "bp": result.bp,
            "sys_len": result.sys_len, "ref_len": result.ref_len}


def paired_bootstrap(systems, references):
    """sacreBLEU's paired bootstrap test (1000 resamples) of each system against the first on the same
    sentences: {system name: {'BLEU': p-value, 'chrF': p-value}} for all but the first."""
    names = list(systems)
    test = PairedTest([(name, list(systems[name])) for name in names],
                      {"BLEU": BLEU(references=[list(references)]), "chrF": CHRF(references=[list(references)])},
                      None, test_type="bs", n_samples=BOOTSTRAP_SAMPLES)
    results = test()[1]
    return {name: {metric: results[key][i].p_value for metric, key in (("BLEU", "BLEU"), ("chrF", "chrF2"))}
            for i, name in enumerate(names) if i > 0}


def corpus_chrf(hypotheses, references):
    """sacreBLEU corpus chrF (0-100, character 6-grams, beta 2), its signature and 95% interval."""
    return sacrebleu_score(CHRF(), hypotheses, references)[1]


def sentence_bleu_scores(hypotheses, references):
    """NLTK sentence BLEU (4-gram, SmoothingFunction().method1) of each pair, in [0, 1]."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # here: nltk adds 1.5 s to every start-up
    _check_parallel(hypotheses, references)
    smooth = SmoothingFunction().method1
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns on hypotheses shorter than 4 words
        for hyp, ref in zip(hypotheses, references):
            hyp_words, ref_words = words(hyp), words(ref)
            scores.append(sentence_bleu([ref_words], hyp_words, smoothing_function=smooth) if hyp_words else 0.0)
    return np.array(scores, dtype=np.float64)


def summary_stats(values):
    """mean / median / std / min / max of a 1-D array of numbers."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "median": float(np.median(values)), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max()), "n": int(values.size)}


def exact_match(hypotheses, references):
    """Fraction of hypotheses equal to their reference after stripping outer whitespace."""
    _check_parallel(hypotheses, references)
    return float(np.mean([h.strip() == r.strip() for h, r in zip(hypotheses, references)]))


def word_accuracy(hypothesis, reference):
    """Words equal at the same position divided by the longer word count (1.0 if both empty)."""
    hyp, ref = words(hypothesis), words(reference)
    longest = max(len(hyp), len(ref))
    if longest == 0:
        return 1.0
    return sum(h == r for h, r in zip(hyp, ref)) / longest


def levenshtein(a, b):
    """Edit distance (unit insert / delete / substitute) between two strings.

    Dynamic programming over rows of the DP table, each row computed with numpy: the
    insertion chain new[j] = min(new[j-1] + 1, ...) is a running minimum of tmp[j] - j, plus j.
    """
    if len(a) < len(b):
        a, b = b, a
    if len(b) == 0:
        return len(a)
    b_codes = np.array([ord(c) for c in b])
    columns = np.arange(len(b) + 1)
    previous = columns.copy()
    for i, char in enumerate(a, start=1):
        current = np.empty_like(previous)
        current[0] = i
        current[1:] = np.minimum(previous[:-1] + (b_codes != ord(char)), previous[1:] + 1)  # substitute, delete
        previous = np.minimum.accumulate(current - columns) + columns  # insert
    return int(previous[-1])


def char_accuracy(hypothesis, reference):
    """1 - Levenshtein(hypothesis, reference) / longer length in characters (1.0 if both empty)."""
    hyp, ref = hypothesis.strip(), reference.strip()
    longest = max(len(hyp), len(ref))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(hyp, ref) / longest


def translation_metrics(hypotheses, references):
    """All translation metrics of a system output against one reference per sentence."""
    _check_parallel(hypotheses, references)
    return {
        "n": len(hypotheses),
        "bleu": corpus_bleu(hypotheses, references),
        "chrf": corpus_chrf(hypotheses, references),
        "sentence_bleu_nltk": summary_stats(sentence_bleu_scores(hypotheses, references)),
        "exact_match": exact_match(hypotheses, references),
        "word_accuracy": float(np.mean([word_accuracy(h, r) for h, r in zip(hypotheses, references)])),
        "char_accuracy": float(np.mean([char_accuracy(h, r) for h, r in zip(hypotheses, references)])),
    }


# -----------------------------------------------------------------------------
# bootstrap intervals

def bootstrap_indices(n, samples=BOOTSTRAP_SAMPLES, seed=0):
    """(samples, n) item indices drawn with replacement: one resample of the test items per row."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def percentile_interval(statistics):
    """95% percentile interval of bootstrap statistics (NaN resamples, e.g. constant ones, left out)."""
    statistics = np.asarray(statistics, dtype=np.float64)
    statistics = statistics[np.isfinite(statistics)]
    if statistics.size == 0:
        return None
    low, high = np.percentile(statistics, [2.5, 97.5])
    return [float(low), float(high)]


def bootstrap_mean_interval(values, samples=BOOTSTRAP_SAMPLES, seed=0):
    """95% bootstrap interval of the mean of per-item values (e.g. the 0/1 hits behind P@1)."""
    values = np.asarray(values, dtype=np.float64)
    return percentile_interval(values[bootstrap_indices(len(values), samples, seed)].mean(axis=1))


def resample_ranks(values, idx):
    """Average ranks (ties share their mean rank, as scipy's rankdata) of values[idx] row by row,
    without sorting each resample: a resample's rank of an item is the number of drawn items below
    its value plus half of those equal to it, counted over the distinct values of the original."""
    distinct, group = np.unique(values, return_inverse=True)  # group: distinct-value index, ascending
    samples, n = idx.shape
    drawn = group[idx]
    counts = np.bincount((drawn + np.arange(samples)[:, None] * len(distinct)).ravel(),
                         minlength=samples * len(distinct)).reshape(samples, len(distinct))
    below = np.cumsum(counts, axis=1) - counts
    rows = np.arange(samples)[:, None]
    return below[rows, drawn] + (counts[rows, drawn] + 1) / 2


def resampled_spearman(predicted_and_gold, idx):
    """Spearman rho of every resample (row of idx) of the (predicted, gold) items, all ranked and
    correlated at once; NaN for a constant resample."""
    ranks = [resample_ranks(np.asarray(x, dtype=np.float64), idx) for x in predicted_and_gold]
    a, b = (r - r.mean(axis=1, keepdims=True) for r in ranks)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def bootstrap_spearman_interval(predicted, gold, samples=BOOTSTRAP_SAMPLES, seed=0):
    """95% bootstrap interval of Spearman rho."""
    return percentile_interval(resampled_spearman((predicted, gold), bootstrap_indices(len(predicted), samples, seed)))


def resampled_mean(values, idx):
    return np.asarray(values, dtype=np.float64)[idx].mean(axis=1)


def resampled_ratio(sums_and_counts, idx):
    """sum(sums) / sum(counts) of every resample: a loss per token over resampled windows."""
    sums, counts = (np.asarray(x, dtype=np.float64) for x in sums_and_counts)
    return sums[idx].sum(axis=1) / counts[idx].sum(axis=1)


def ratio_interval(sums, counts, samples=BOOTSTRAP_SAMPLES, seed=0):
    """95% bootstrap interval of sum(sums) / sum(counts) over the items (e.g. test windows)."""
    return percentile_interval(resampled_ratio((sums, counts), bootstrap_indices(len(sums), samples, seed)))


def holm(p_values):
    """Holm's step-down adjustment of a family of p-values (None stays None): controls the chance of
    any false 'better' in the family at the level tested."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted, running = list(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def intervals_overlap(a, b):
    """Whether two [low, high] intervals share a point (then the difference is not significant)."""
    return a[0] <= b[1] and b[0] <= a[1]


# -----------------------------------------------------------------------------
# correlation

def spearman(predicted, gold, seed=0):
    """Spearman rank correlation (scipy) with its two-sided p-value and 95% bootstrap interval.

    rho is None (not a number) when it is undefined: one of the inputs is constant.
    """
    predicted, gold = np.asarray(predicted, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if predicted.shape != gold.shape or predicted.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of equal length, got {predicted.shape} and {gold.shape}")
    if predicted.size < 3:
        raise ValueError(f"spearman needs at least 3 pairs, got {predicted.size}")
    if np.ptp(predicted) == 0 or np.ptp(gold) == 0:
        return {"rho": None, "p_value": None, "n": int(predicted.size), "note": "constant input: rho undefined"}
    from scipy.stats import spearmanr  # here: scipy.stats adds a second to the start-up of train.py and others
    result = spearmanr(predicted, gold)
    return {"rho": float(result.statistic), "p_value": float(result.pvalue), "n": int(predicted.size),
            "rho_ci95": bootstrap_spearman_interval(predicted, gold, seed=seed)}


# -----------------------------------------------------------------------------
# word retrieval (bilingual lexicon induction)

def normalize_rows(x):
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cosine_matrix(a, b):
    """(len(a), len(b)) cosine similarities."""
    return normalize_rows(a) @ normalize_rows(b).T


def paired_cosine(a, b):
    """Cosine of row i of a with row i of b."""
    return np.sum(normalize_rows(a) * normalize_rows(b), axis=1)


def mean_topk_similarity(similarities, k):
    """Mean of the k largest values of each row (the CSLS neighbourhood radius r)."""
    k = min(k, similarities.shape[1])
    return np.mean(np.partition(similarities, -k, axis=1)[:, -k:], axis=1)


def csls_matrix(queries, targets, k=10, query_space=None):
    """Cross-domain similarity local scaling (Conneau et al. 2018).

    CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y), where r_T(x) is the mean cosine of x with its k
    nearest targets and r_S(y) the mean cosine of y with its k nearest vectors of the source
    space. The source space is `query_space` (e.g. all frequent source-language words, as MUSE
    does) or, when None, the queries themselves.
    """
    cos = cosine_matrix(queries, targets)
    r_target = mean_topk_similarity(cos, k)
    source = queries if query_space is None else query_space
    r_source = mean_topk_similarity(cosine_matrix(targets, source), k)
    return 2 * cos - r_target[:, None] - r_source[None, :]


def top_k_indices(scores, k):
    """Indices of the k highest scores of each row, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def precision_at_k(scores, gold, ks=(1, 5), seed=0):
    """P@k: fraction of queries (rows) with at least one gold candidate among their top k, and its
    95% bootstrap interval over the queries ('ci95': {'p@k': [low, high]}).

    gold: one collection of gold candidate column indices per row.
    """
    if scores.shape[0] != len(gold):
        raise ValueError(f"{scores.shape[0]} score rows but {len(gold)} gold sets")
    if scores.shape[0] == 0:
        raise ValueError("no queries to score")
    ranked = top_k_indices(scores, max(ks))
    hits = np.array([[c in g for c in row] for row, g in zip(ranked.tolist(), map(set, gold))])
    found = {k: hits[:, :k].any(axis=1) for k in ks}
    return {**{f"p@{k}": float(found[k].mean()) for k in ks},
            "ci95": {f"p@{k}": bootstrap_mean_interval(found[k], seed=seed) for k in ks},
            **({"hits@1": found[1].astype(int).tolist()} if 1 in ks else {})}  # per query, for paired tests


# -----------------------------------------------------------------------------
# sentence retrieval

def hits_at_1(similarities):
    """Per row: whether its most similar column is the row's own index (pair i <-> i)."""
    similarities = np.asarray(similarities)
    return similarities.argmax(axis=1) == np.arange(similarities.shape[0])


def recall_at_1(similarities):
    """Fraction of rows whose most similar column is the row's own index."""
    return float(np.mean(hits_at_1(similarities)))


def random_derangement(n, rng):
    """A uniformly random permutation of range(n) with no fixed point (n >= 2), by rejection."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 elements")
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def pair_similarity_vs_derangement(a, b, seed=0):
    """Cosine of true pairs (a_i, b_i) against mismatched pairs (a_i, b_perm(i)), perm a derangement."""
    true_cos = paired_cosine(a, b)
    perm = random_derangement(len(a), np.random.default_rng(seed))
    random_cos = paired_cosine(a, b[perm])
    return {"pair_cosine": {"mean": float(true_cos.mean()), "std": float(true_cos.std())},
            "derangement_cosine": {"mean": float(random_cos.mean()), "std": float(random_cos.std())},
            "n": int(len(a))}


def sentence_retrieval(a, b, seed=0, directions=("a_to_b", "b_to_a")):
    """Pair cosine vs derangement baseline and recall@1 both ways (named by directions) for aligned
    rows of a and b, with 95% bootstrap intervals and the per-pair hits (for paired tests)."""
    sims = cosine_matrix(a, b)
    result = pair_similarity_vs_derangement(a, b, seed)
    result.update({"chance_recall@1": 1.0 / len(a), "ci95": {}, "hits": {}})
    for direction, matrix in zip(directions, (sims, sims.T)):
        hits = hits_at_1(matrix)
        result[f"recall@1_{direction}"] = float(hits.mean())
        result["ci95"][f"recall@1_{direction}"] = bootstrap_mean_interval(hits, seed=seed)
        result["hits"][f"recall@1_{direction}"] = hits.astype(int).tolist()
    return result


# -----------------------------------------------------------------------------
# accuracy with uncertainty

def accuracy_interval(correct, n, confidence=0.95):
    """Accuracy correct / n with its Wilson score interval (scipy), which stays inside [0, 1]
    and keeps its coverage for small n or accuracies near 0 or 1."""
    if n < 1:
        raise ValueError("accuracy needs at least one example")
    from scipy.stats import binomtest
    low, high = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return {"accuracy": correct / n, "ci_low": float(low), "ci_high": float(high), "correct": int(correct),
            "n": int(n), "interval": f"Wilson {confidence:.0%}"}
