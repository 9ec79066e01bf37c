"""The study's measures, read from the units' evaluations, and the paired tests between models.

A measure names one number of an evaluation (a test loss, a word-similarity rho, a P@1, a chrF, an
accuracy), its 95% interval, and the per-item data behind it (test windows, word pairs, dictionary
queries, sentences, examples). Two models are compared on the same items by a two-level paired
bootstrap (compare): each resample draws the test items, the same for every model and seed, and, per
model, its seeds with replacement; a model's statistic is the mean over its drawn seeds. With one seed
per model this is the usual paired bootstrap over items; with several, the seeds' spread widens the
interval, as training noise should. p = (c + 1) / (B + 1) per side, c the resamples on the far side of 0.
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from sacrebleu.metrics import CHRF

from backpacks import metrics

SAMPLES = 10_000
WORDSIM_SETS = ("multisimlex-en", "multisimlex-fr", "multisimlex-en-fr", "simlex999", "wordsim353")
MODELS = ("backpack", "transformer_flops", "transformer_tokens", "transformer_params", "transformer_params_nonemb")
LABELS = {"backpack": "Backpack", "transformer_flops": "T FLOPs", "transformer_tokens": "T tokens",
          "transformer_params": "T params", "transformer_params_nonemb": "T params (non-emb.)"}
# the Backpack's word vector against the Transformer's embedding, declared before any result: the mean
# of its senses (the Backpack's own lexical representation); its other vectors are exploratory
BACKPACK_VECTOR = "mean"


def word_vector(model):
    """The representation a model's word-level measures use."""
    return BACKPACK_VECTOR if model == "backpack" else "embedding"


@dataclass(frozen=True)
class Measure:
    name: str
    find: Callable  # results -> the entry that holds the value, or None
    value: Callable  # entry -> float
    interval: Callable  # entry -> [low, high] or None
    items: Callable  # entry -> per-item data for the statistic
    statistic: Callable  # metrics.resampled_*
    higher_is_better: bool = True

    def read(self, results):
        """(value, interval, items) of one evaluation, or None where it does not have the measure."""
        entry = optional(self.find, results)
        value = optional(self.value, entry)
        if value is None:  # not measured: a skipped task, a representation the model does not have
            return None
        return value, optional(self.interval, entry), optional(self.items, entry)


def optional(read, entry):
    """read(entry), or None where entry lacks it (a skipped task, a representation the model does not have)."""
    try:
        return read(entry)
    except (KeyError, TypeError, IndexError):
        return None


def _get(*path):
    def find(results):
        for key in path:
            results = results[key]
        return results
    return find


def loss_measure(lang):
    return Measure(f"test loss ({lang})", _get("loss"), lambda e: e[lang]["loss"], lambda e: e[lang].get("ci95"),
                   lambda e: (e["windows"][lang]["loss_sum"], e["windows"][lang]["tokens"]),
                   metrics.resampled_ratio, higher_is_better=False)


def wordsim_measure(name, rep):
    return Measure(f"{name} rho ({rep})", _get("wordsim", "sets", name),
                   lambda e: e["spearman"][rep]["rho"], lambda e: e["spearman"][rep].get("rho_ci95"),
                   lambda e: (e["spearman"][rep]["similarities"], e["gold"]), metrics.resampled_spearman)


def bli_measure(direction, rep, method="csls"):
    key = f"{method}_excluding_identical"
    return Measure(f"BLI {direction} P@1 {method.upper()} ({rep})", _get("bli", direction, rep, key),
                   lambda e: e["p@1"], lambda e: e["ci95"]["p@1"], lambda e: e["hits@1"], metrics.resampled_mean)


def lexical_measures():
    """(group, label, measure of a representation) of the word-level measures: each word-similarity set,
    then lexicon induction each way (P@1, CSLS, identical pairs excluded)."""
    return ([(name, f"{name} rho", lambda rep, name=name: wordsim_measure(name, rep)) for name in WORDSIM_SETS]
            + [(f"BLI {d}", f"BLI {d} P@1", lambda rep, d=d: bli_measure(d, rep)) for d in ("en-fr", "fr-en")])


def retrieval_measure(states="backbone", direction="en_to_fr"):
    key = f"recall@1_{direction}"
    return Measure(f"sentence retrieval R@1 {direction.replace('_to_', '->')} ({states} mean-pool)",
                   _get("sentence", states, "mean"), lambda e: e[key], lambda e: e["ci95"][key],
                   lambda e: e["hits"][key], metrics.resampled_mean)


def chrf_measure(direction):
    """Corpus chrF (sacreBLEU) of greedy translations; its per-item data, each sentence's chrF, carries the
    paired test (of the mean sentence chrF: corpus chrF is not a mean over sentences)."""
    def items(entry):
        return sentence_chrf(tuple(entry[1]["greedy"]["hypotheses"]), tuple(entry[0]["references"][direction]))
    return Measure(f"{direction} chrF (greedy)", lambda r: (r["translation"], r["translation"][direction]),
                   lambda e: e[1]["greedy"]["chrf"]["score"], lambda e: e[1]["greedy"]["chrf"].get("ci95"),
                   items, metrics.resampled_mean)


@lru_cache(maxsize=64)
def sentence_chrf(hypotheses, references):
    chrf = CHRF()
    return [chrf.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]


def choice_measure(task, lang):
    return Measure(f"{task} {lang} accuracy (tuned)", _get(task, lang, "accuracy"), lambda e: e["accuracy"],
                   lambda e: [e["ci_low"], e["ci_high"]], lambda e: e["hits"], metrics.resampled_mean)


def item_count(items):
    """Items behind a measure: a list, or a tuple of parallel lists (values, gold scores / window lengths)."""
    return len(items[0]) if isinstance(items, tuple) else len(items)


def same_items(items_a, items_b):
    """Why two evaluations' per-item data are not over the same items, or None."""
    n_a, n_b = item_count(items_a), item_count(items_b)
    if n_a != n_b:
        return f"different items ({n_a} against {n_b})"
    if isinstance(items_a, tuple) and list(items_a[1]) != list(items_b[1]):  # gold scores / window lengths
        return "different items (other gold scores or window lengths)"
    return None


def seed_items(measure, evaluations):
    """(per-seed items, None) of a measure over one model's evaluations (one per seed), or (None, why not)."""
    reads = [measure.read(results) for results in evaluations]
    if not reads or any(r is None for r in reads):
        return None, "not measured"
    if any(r[2] is None for r in reads):
        return None, "no per-item data"
    return [r[2] for r in reads], None


_resampled = {}  # (statistic, id of the items' first list, samples, seed) -> (items, its resampled statistic)


def resampled(statistic, items, samples, seed):
    """statistic over the item resamples of bootstrap_indices(n, samples, seed), computed once per items: a
    seed's items are read once from its results and tested against several models."""
    key = (statistic, id(items[0] if isinstance(items, tuple) else items), samples, seed)
    if key not in _resampled:  # the items are kept with the value, so their id is not reused
        idx = metrics.bootstrap_indices(item_count(items), samples, seed)
        _resampled[key] = (items, statistic(items, idx))
    return _resampled[key][1]


def compare(items_a, items_b, statistic, samples=None, seed=0):
    """Two-level paired bootstrap of mean-over-seeds statistic(a) - statistic(b) (see the module docstring).
    items_a, items_b: per-seed per-item data of two models over the same items. samples: SAMPLES unless
    given. Returns the difference, its 95% percentile interval, the two-sided p and the counts, or None
    where no resample is finite."""
    samples = samples or SAMPLES
    n = item_count(items_a[0])
    rng = np.random.default_rng(seed + 1)
    every = np.arange(n)[None]

    def over_seeds(items):
        stacked = np.stack([resampled(statistic, x, samples, seed) for x in items])  # (seeds, samples)
        drawn = rng.integers(0, len(items), size=(samples, len(items)))  # each resample's seeds
        point = np.mean([statistic(x, every)[0] for x in items])
        return point, stacked[drawn, np.arange(samples)[:, None]].mean(axis=1)

    (point_a, a), (point_b, b) = over_seeds(items_a), over_seeds(items_b)
    diff = (a - b)[np.isfinite(a - b)]
    if diff.size == 0:
        return None
    far_side = min(int((diff <= 0).sum()), int((diff >= 0).sum()))
    return {"difference": float(point_a - point_b), "ci95": metrics.percentile_interval(diff),
            "p_value": min(1.0, 2 * (far_side + 1) / (diff.size + 1)), "n": int(n),
            "seeds": [len(items_a), len(items_b)]}


def verdict(test, higher_is_better, label_a, label_b, p_value):
    """Which of a and b a test of a - b favours at 5% (p_value: the adjusted one), else 'inconclusive'."""
    if test is None or p_value is None:
        return "no test"
    if p_value >= 0.05:
        return "inconclusive"
    return f"{label_a} better" if (test["difference"] > 0) == higher_is_better else f"{label_b} better"


def fmt_test(test):
    """'+0.0120 [+0.0040, +0.0200]' of a test."""
    if test is None:
        return "n/a"
    ci = test["ci95"]
    return f"{test['difference']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")


def fmt_p(p):
    return "n/a" if p is None else f"{p:.4f}" if p >= 0.0001 else f"{p:.1e}"
