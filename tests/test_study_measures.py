"""The study's paired tests (backpacks/study/measures.py) on constructed data whose answer is known: the
direction and size of a difference, p = (c+1)/(B+1), seed variance in the interval, agreement with
scipy.stats.bootstrap where both apply, and the measures read from an evaluation."""
import numpy as np
import pytest
from scipy import stats

from backpacks import metrics
from backpacks.study import measures as sm

SAMPLES = 2000


def noisy(rng, base, scale, n=400):
    return list(base + scale * rng.standard_normal(n))


def test_a_known_shift_is_found_with_its_direction_and_size():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(400)
    better, worse = [base + 0.3], [base]  # per-item values, one seed each; the statistic is the mean
    test = sm.compare(better, worse, metrics.resampled_mean, samples=SAMPLES)
    assert test["difference"] == pytest.approx(0.3)
    assert test["ci95"][0] == pytest.approx(0.3) and test["p_value"] == pytest.approx(2 / (SAMPLES + 1))
    assert sm.verdict(test, True, "A", "B", test["p_value"]) == "A better"
    assert sm.verdict(test, False, "A", "B", test["p_value"]) == "B better"  # a loss: lower is better


def test_noise_alone_is_inconclusive_and_p_is_never_zero():
    rng = np.random.default_rng(1)
    a, b = [noisy(rng, 0, 1)], [noisy(rng, 0, 1)]
    test = sm.compare(a, b, metrics.resampled_mean, samples=SAMPLES)
    assert test["ci95"][0] < 0 < test["ci95"][1] and test["p_value"] > 0.05
    assert sm.verdict(test, True, "A", "B", test["p_value"]) == "inconclusive"


def test_one_seed_agrees_with_scipys_paired_bootstrap():
    rng = np.random.default_rng(2)
    base = rng.standard_normal(300)
    a, b = base + 0.1 + 0.5 * rng.standard_normal(300), base + 0.5 * rng.standard_normal(300)
    ours = sm.compare([list(a)], [list(b)], metrics.resampled_mean, samples=SAMPLES)
    theirs = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=True,
                             n_resamples=SAMPLES, method="percentile", random_state=0).confidence_interval
    width = theirs.high - theirs.low
    assert ours["ci95"][0] == pytest.approx(theirs.low, abs=0.1 * width)
    assert ours["ci95"][1] == pytest.approx(theirs.high, abs=0.1 * width)


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(3)
    base = rng.standard_normal(400)
    reference = [list(base)]
    same_seeds = [list(base + 0.2)] * 3
    spread_seeds = [list(base + 0.2 + offset) for offset in (-0.3, 0.0, 0.3)]  # the same mean, seeds disagree
    narrow = sm.compare(same_seeds, reference, metrics.resampled_mean, samples=SAMPLES)
    wide = sm.compare(spread_seeds, reference, metrics.resampled_mean, samples=SAMPLES)
    assert narrow["difference"] == pytest.approx(wide["difference"]) == pytest.approx(0.2)
    assert wide["ci95"][1] - wide["ci95"][0] > 5 * (narrow["ci95"][1] - narrow["ci95"][0])
    assert wide["seeds"] == [3, 1]


def test_a_model_that_tracks_gold_wins_the_word_similarity_test():
    rng = np.random.default_rng(4)
    gold = list(rng.random(300))
    tracking = [(list(np.array(gold) + 0.1 * rng.random(300)), gold)]
    random = [(list(rng.random(300)), gold)]
    test = sm.compare(tracking, random, metrics.resampled_spearman, samples=SAMPLES)
    assert test["difference"] > 0.5 and test["p_value"] < 0.01


def test_lower_loss_wins_with_ratio_statistics():
    windows = [10] * 200
    low = [([2.0 * w for w in windows], windows)]
    high = [([2.5 * w for w in windows], windows)]
    test = sm.compare(low, high, metrics.resampled_ratio, samples=SAMPLES)
    assert test["difference"] == pytest.approx(-0.5)
    assert sm.verdict(test, False, "low", "high", test["p_value"]) == "low better"


def evaluation(similarities, gold, hits):
    return {"wordsim": {"sets": {"simlex999": {"gold": gold, "spearman": {"mean": {
                "rho": 0.5, "rho_ci95": [0.4, 0.6], "similarities": similarities}}}}},
            "xnli": {"fr": {"accuracy": {"accuracy": float(np.mean(hits)), "ci_low": 0.1, "ci_high": 0.9,
                                         "hits": hits}}},
            "translation": {"references": {"en-fr": ["le chat est noir", "une maison"]},
                            "en-fr": {"greedy": {"chrf": {"score": 50.0, "ci95": [40, 60]},
                                                 "hypotheses": ["le chat est noir", "la voiture"]}}}}


def test_measures_read_values_intervals_and_items():
    results = evaluation([0.1, 0.2], [1.0, 2.0], [1, 0, 1])
    assert sm.wordsim_measure("simlex999", "mean").read(results) == (0.5, [0.4, 0.6], ([0.1, 0.2], [1.0, 2.0]))
    assert sm.wordsim_measure("simlex999", "embedding").read(results) is None  # not this model's vector
    assert sm.choice_measure("xnli", "fr").read(results)[2] == [1, 0, 1]
    chrf = sm.chrf_measure("en-fr").read(results)
    assert chrf[0] == 50.0 and chrf[2][0] == pytest.approx(100.0) and chrf[2][1] < 20
    items, why = sm.seed_items(sm.choice_measure("xnli", "fr"), [results, results])
    assert items == [[1, 0, 1]] * 2 and why is None
    assert sm.seed_items(sm.choice_measure("pawsx", "fr"), [results])[1] == "not measured"


def test_items_must_be_the_same_to_be_paired():
    assert sm.same_items([1, 0], [1, 0, 1]) == "different items (2 against 3)"
    assert "other gold" in sm.same_items(([0.1], [1.0]), ([0.1], [2.0]))
    assert sm.same_items(([0.1], [1.0]), ([0.3], [1.0])) is None


def test_the_paired_test_finds_a_consistent_small_gain_that_overlapping_intervals_miss():
    # system a is right on every item b is right on, plus 6% more: the per-system intervals overlap,
    # the paired test (same resamples for both) still finds the gain
    rng = np.random.default_rng(0)
    b = (rng.random(500) < 0.5).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:30]] = 1
    intervals = [metrics.bootstrap_mean_interval(x) for x in (a, b)]
    assert metrics.intervals_overlap(*intervals)
    test = sm.compare([a], [b], metrics.resampled_mean)
    assert test["difference"] == pytest.approx(0.06) and test["ci95"][0] > 0 and test["p_value"] < 0.01
    same = sm.compare([b], [b], metrics.resampled_mean)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_value"] == 1.0
    worse = sm.compare([b], [a], metrics.resampled_mean)
    assert worse["ci95"][1] < 0 and worse["p_value"] < 0.01


def test_the_paired_test_of_spearman():
    rng = np.random.default_rng(1)
    gold = rng.random(300)
    good, noisy = gold + 0.1 * rng.random(300), gold + 2.0 * rng.random(300)
    test = sm.compare([(good, gold)], [(noisy, gold)], metrics.resampled_spearman)
    assert test["difference"] == pytest.approx(stats.spearmanr(good, gold)[0] - stats.spearmanr(noisy, gold)[0])
    assert test["ci95"][0] > 0 and test["p_value"] < 0.01
