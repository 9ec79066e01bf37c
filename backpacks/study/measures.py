"""The study's measures, read from each run's eval/results.json, and the paired tests between runs.

A measure names one number of a run (a test loss, a word-similarity rho, a P@1, a recall@1), its 95%
interval, and the per-item data behind it, so that two runs evaluated on the same items (the same
test windows, word pairs, dictionary queries or sentence pairs) can be compared by a paired bootstrap
(metrics.paired_difference): both runs are resampled together, so the items' difficulty cancels.
"""
from dataclasses import dataclass
from typing import Callable

from backpacks import metrics

WORDSIM_SETS = ("multisimlex-en", "multisimlex-fr", "multisimlex-en-fr", "simlex999", "wordsim353")
LABELS = {"backpack": "Backpack", "transformer_tokens": "T tokens", "transformer_flops": "T FLOPs",
          "transformer_params": "T params", "backpack_seed2": "Backpack seed 2",
          "transformer_tokens_seed2": "T tokens seed 2"}
# the Backpack's word vector against the Transformer's embedding, declared before any result: the mean
# of its senses (the Backpack's own lexical representation); choosing the best representation on the
# test sets would select on the reporting data
BACKPACK_VECTOR = "mean"


def evaluated(runs):
    """{name: results.json} of the runs that were evaluated."""
    return {name: run["results"] for name, run in runs.items() if run["results"]}


def word_vector(run_name):
    """The representation a run's word-level measures use."""
    return BACKPACK_VECTOR if run_name.startswith("backpack") else "embedding"


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
        """(value, interval, items) of a run, or None where the run does not have it."""
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


def _get(path):
    def find(results):
        for key in path:
            results = results[key]
        return results
    return find


def loss_measure(lang):
    return Measure(f"test loss ({lang})", _get(("loss",)), lambda e: e[lang]["loss"], lambda e: e[lang].get("ci95"),
                   lambda e: (e["windows"][lang]["loss_sum"], e["windows"][lang]["tokens"]),
                   metrics.resampled_ratio, higher_is_better=False)


def wordsim_measure(name, rep):
    return Measure(f"word similarity {name} rho ({rep})", _get(("wordsim", "sets", name)),
                   lambda e: e["spearman"][rep]["rho"], lambda e: e["spearman"][rep].get("rho_ci95"),
                   lambda e: (e["spearman"][rep]["similarities"], e["gold"]), metrics.resampled_spearman)


def bli_measure(direction, rep, method="csls"):
    key = f"{method}_excluding_identical"
    return Measure(f"BLI {direction} P@1 {method} ({rep}, non-identical)", _get(("bli", direction, rep, key)),
                   lambda e: e["p@1"], lambda e: e["ci95"]["p@1"], lambda e: e["hits@1"], metrics.resampled_mean)


def retrieval_measure(states, direction="en_to_fr"):
    key = f"recall@1_{direction}"
    return Measure(f"sentence retrieval R@1 {direction.replace('_to_', '->')} ({states} mean-pool)",
                   _get(("sentence", states, "mean")), lambda e: e[key], lambda e: e["ci95"][key],
                   lambda e: e["hits"][key], metrics.resampled_mean)


def item_count(items):
    """Items behind a measure: a list, or a tuple of parallel lists (values, gold scores / window lengths)."""
    return len(items[0]) if isinstance(items, tuple) else len(items)


def same_items(a, b):
    """Why two runs' per-item data, each (results, items), are not over the same items, or None: other
    data or tokenizer (other test windows, queries, pairs), or other gold scores or window lengths."""
    (results_a, items_a), (results_b, items_b) = a, b
    runs = [r.get("run", {}) for r in (results_a, results_b)]
    for key, what in (("data_sha256", "data"), ("tokenizer_sha256", "tokenizer")):
        if None not in (runs[0].get(key), runs[1].get(key)) and runs[0][key] != runs[1][key]:
            return f"other {what}: not the same items"
    n_a, n_b = item_count(items_a), item_count(items_b)
    if n_a != n_b:
        return f"different items ({n_a} against {n_b})"
    if isinstance(items_a, tuple) and list(items_a[1]) != list(items_b[1]):  # gold scores / window lengths
        return "different items (other gold scores or window lengths)"
    return None


def paired(a, b):
    """metrics.paired_difference between two (measure, results) of the same items (a - b), e.g. a
    Transformer's embedding against the Backpack's sense mean on the same word pairs; (None, why) when
    there is no test."""
    (measure_a, results_a), (measure_b, results_b) = a, b
    read_a, read_b = measure_a.read(results_a), measure_b.read(results_b)
    if read_a is None or read_b is None:
        return None, "not measured on both"
    items_a, items_b = read_a[2], read_b[2]
    if items_a is None or items_b is None:
        return None, "no per-item data (evaluate again)"
    why = same_items((results_a, items_a), (results_b, items_b))
    if why:
        return None, why
    return metrics.paired_difference(measure_a.statistic, items_a, items_b, item_count(items_a)), None


def verdict(test, higher_is_better, label_a="a", label_b="b", same="no significant difference", p_value=None):
    """Which of a and b a paired test (a - b) favours at 5% (p_value: an adjusted one), or `same`."""
    p = test["p_value"] if test and p_value is None else p_value
    if test is None or p is None:
        return "no test"
    if p >= 0.05:
        return same
    return label_a if (test["difference"] > 0) == higher_is_better else label_b


def fmt_test(test):
    """'+0.012 [0.004, 0.020], p=0.003' of a paired test."""
    if test is None:
        return "n/a"
    ci, p = test["ci95"], test["p_value"]
    p_text = f"p<{2 / metrics.BOOTSTRAP_SAMPLES:.3f}" if p == 0 else f"p={p:.3f}"
    return f"{test['difference']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "") + f", {p_text}"
