"""metrics.py against values computed by hand."""
import math

import numpy as np
import pytest
from scipy import stats

from backpacks import metrics


def test_corpus_bleu_matches_hand_computation():
    # 1-4 gram precisions 5/6, 3/5, 2/4, 1/3, no brevity penalty: BLEU = (1/12) ** (1/4)
    result = metrics.corpus_bleu(["the cat sat on a mat"], ["the cat sat on the mat"])
    assert result["score"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    assert result["score"] == pytest.approx(53.7285, abs=1e-4)
    assert result["signature"].startswith("nrefs:1|bs:1000|seed:12345|case:mixed|eff:no|tok:13a")
    assert metrics.corpus_bleu(["a b c d"], ["a b c d"])["score"] == pytest.approx(100.0)


def test_corpus_chrf_scale_and_signature():
    assert metrics.corpus_chrf(["le chat"], ["le chat"])["score"] == pytest.approx(100.0)
    result = metrics.corpus_chrf(["le chien"], ["le chat"])
    assert 0 < result["score"] < 100 and "nc:6" in result["signature"]


def test_sentence_bleu_nltk_method1():
    scores = metrics.sentence_bleu_scores(["the cat sat on the mat", "", "the cat sat on a mat"],
                                          ["the cat sat on the mat"] * 3)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == 0.0
    assert scores[2] == pytest.approx(0.537285, abs=1e-5)  # no zero n-gram count: method1 changes nothing
    stats_ = metrics.summary_stats(scores)
    assert stats_["max"] == pytest.approx(1.0) and stats_["median"] == pytest.approx(scores[2])


@pytest.mark.parametrize("a, b, distance", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3),
                                            ("flaw", "lawn", 2), ("same", "same", 0), ("ab", "ba", 2),
                                            ("élève", "eleve", 2)])
def test_levenshtein_known_values(a, b, distance):
    assert metrics.levenshtein(a, b) == distance
    assert metrics.levenshtein(b, a) == distance


def test_levenshtein_against_plain_dynamic_programming():
    def reference(a, b):
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            prev, row[0] = row[:], i
            for j, cb in enumerate(b, 1):
                row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
        return row[-1]
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = "".join(rng.choice(list("abc"), rng.integers(0, 10)))
        b = "".join(rng.choice(list("abc"), rng.integers(0, 10)))
        assert metrics.levenshtein(a, b) == reference(a, b)


def test_char_and_word_accuracy():
    assert metrics.char_accuracy("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert metrics.char_accuracy("", "") == 1.0
    assert metrics.char_accuracy("abc", "") == 0.0
    # not a length ratio: same length, all different
    assert metrics.char_accuracy("abcd", "wxyz") == 0.0
    assert metrics.word_accuracy("the cat sat", "the dog sat down") == pytest.approx(2 / 4)
    assert metrics.word_accuracy("sat the cat", "the cat sat") == 0.0
    assert metrics.exact_match(["a b", "c "], ["a b", "d"]) == 0.5


def test_translation_metrics_bundle_and_bad_input():
    result = metrics.translation_metrics(["le chat", "bonjour"], ["le chat", "salut"])
    assert set(result) >= {"bleu", "chrf", "sentence_bleu_nltk", "exact_match", "word_accuracy", "char_accuracy"}
    assert result["exact_match"] == 0.5
    with pytest.raises(ValueError):
        metrics.translation_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        metrics.corpus_bleu([], [])


def test_spearman_known_value_and_p_value():
    result = metrics.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert result["rho"] == pytest.approx(1 - 6 * 4 / (5 * 24))  # sum d^2 = 4
    t = 0.8 * math.sqrt(3 / (1 - 0.64))
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(t, df=3))
    assert metrics.spearman([1, 2, 3], [3, 2, 1])["rho"] == pytest.approx(-1.0)
    assert metrics.spearman([1, 1, 1], [1, 2, 3])["rho"] is None
    with pytest.raises(ValueError):
        metrics.spearman([1, 2], [1, 2])


def hub_embedding():
    """Three orthonormal queries; targets t_i = 0.5 q_i + sqrt(.75) e3 (cos 0.5 with q_i, 0 with
    the others) and a hub at cos 1/sqrt(3) ~ 0.577 with every query: cosine retrieval picks the
    hub for every query, CSLS (k=2) the right t_i."""
    queries = np.eye(4)[:3]
    targets = [0.5 * queries[i] + math.sqrt(0.75) * np.eye(4)[3] for i in range(3)]
    hub = np.array([1, 1, 1, 0]) / math.sqrt(3)
    return queries, np.stack(targets + [hub])


def test_csls_on_toy_embedding_with_a_hub():
    queries, targets = hub_embedding()
    gold = [[0], [1], [2]]
    assert metrics.precision_at_k(metrics.cosine_matrix(queries, targets), gold, ks=(1,))["p@1"] == 0.0
    csls = metrics.csls_matrix(queries, targets, k=2)
    assert metrics.precision_at_k(csls, gold, ks=(1, 2)) == {"p@1": 1.0, "p@2": 1.0, "hits@1": [1, 1, 1],
                                                             "ci95": {"p@1": [1.0, 1.0], "p@2": [1.0, 1.0]}}
    # the formula by hand: r_T(q) = (0.577 + 0.5) / 2, r_S(t_i) = (0.5 + 0) / 2, r_S(hub) = 0.577
    c = 1 / math.sqrt(3)
    assert csls[0, 0] == pytest.approx(2 * 0.5 - (c + 0.5) / 2 - 0.25, abs=1e-6)
    assert csls[0, 3] == pytest.approx(2 * c - (c + 0.5) / 2 - c, abs=1e-6)


def test_precision_at_k_and_top_k():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    assert metrics.top_k_indices(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert metrics.precision_at_k(scores, [[2], [0]], ks=(1, 2))["p@2"] == 1.0
    assert metrics.precision_at_k(scores, [[0, 1], []], ks=(1,))["p@1"] == 0.5
    # three of four queries right: P@1 = 0.75 whatever the distractors
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    assert metrics.precision_at_k(scores, [[0], [1], [2], [1]], ks=(1,))["p@1"] == 0.75


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    hits = rng.random(400) < 0.3
    low, high = metrics.bootstrap_mean_interval(hits, seed=1)
    half_width = 1.96 * math.sqrt(hits.mean() * (1 - hits.mean()) / hits.size)  # normal approximation
    assert low < hits.mean() < high and (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert metrics.bootstrap_mean_interval(hits, seed=1) == [low, high]  # seeded
    # the vectorised Spearman bootstrap equals scipy on each resample
    x, y = rng.normal(size=60), rng.normal(size=60)
    y = x + y
    idx = metrics.bootstrap_indices(60, 200, seed=3)
    expected = np.percentile([stats.spearmanr(x[i], y[i]).statistic for i in idx], [2.5, 97.5])
    np.testing.assert_allclose(metrics.bootstrap_spearman_interval(x, y, samples=200, seed=3), expected, atol=1e-12)
    result = metrics.spearman(x, y)
    assert result["rho_ci95"][0] < result["rho"] < result["rho_ci95"][1]
    assert metrics.intervals_overlap([0, 1], [1, 2]) and not metrics.intervals_overlap([0, 1], [1.5, 2])


def test_bleu_and_chrf_carry_sacrebleu_bootstrap_intervals():
    hyps = [f"the cat number {i} sat on the mat" if i % 3 else f"a dog {i} ran" for i in range(60)]
    refs = [f"the cat number {i} sat on a mat" for i in range(60)]
    for result in (metrics.corpus_bleu(hyps, refs), metrics.corpus_chrf(hyps, refs)):
        low, high = result["ci95"]
        assert 0 <= low < result["score"] < high <= 100 and high - low > 1
        assert "bs:1000" in result["signature"]
    low, high = metrics.corpus_bleu(["x y"] * 5, ["a b c d"] * 5)["ci95"]  # BLEU 0: never below it
    assert low == 0.0 and high >= 0.0


def test_sentence_retrieval_and_derangement():
    rng = np.random.default_rng(0)
    perm = metrics.random_derangement(10, rng)
    assert sorted(perm.tolist()) == list(range(10)) and not np.any(perm == np.arange(10))
    a = rng.normal(size=(20, 8))
    result = metrics.sentence_retrieval(a, a + 0.01 * rng.normal(size=a.shape))
    assert result["recall@1_a_to_b"] == 1.0 and result["recall@1_b_to_a"] == 1.0
    assert result["pair_cosine"]["mean"] > 0.99 > result["derangement_cosine"]["mean"]
    assert metrics.recall_at_1(np.array([[0.0, 1.0], [0.0, 1.0]])) == 0.5
    with pytest.raises(ValueError):
        metrics.random_derangement(1, rng)


def test_accuracy_interval_is_the_wilson_interval():
    correct, n, z = 30, 100, stats.norm.ppf(0.975)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    result = metrics.accuracy_interval(correct, n)
    assert result["accuracy"] == 0.3 and result["n"] == 100
    assert result["ci_low"] == pytest.approx(centre - half) and result["ci_high"] == pytest.approx(centre + half)
    assert metrics.accuracy_interval(0, 5)["ci_low"] == 0.0 and metrics.accuracy_interval(5, 5)["ci_high"] == 1.0
    with pytest.raises(ValueError):
        metrics.accuracy_interval(0, 0)


def test_intervals_overlap():
    assert metrics.intervals_overlap((0.1, 0.3), (0.25, 0.5)) and metrics.intervals_overlap((0.25, 0.5), (0.1, 0.3))
    assert metrics.intervals_overlap((0.1, 0.3), (0.3, 0.4))
    assert not metrics.intervals_overlap((0.1, 0.2), (0.21, 0.4))


def test_paired_bootstrap_against_the_first_system():
    refs = [f"the cat number {i} sat on a mat" for i in range(60)]
    good = [f"the cat number {i} sat on the mat" for i in range(60)]
    bad = [f"a dog {i} sat" for i in range(60)]
    close = [refs[0]] + good[1:]  # one sentence better than `good`
    p = metrics.paired_bootstrap({"good": good, "bad": bad, "close": close}, refs)
    assert set(p) == {"bad", "close"} and p["bad"]["BLEU"] < 0.01 and p["bad"]["chrF"] < 0.01
    assert p["close"]["BLEU"] > 0.05 and p["close"]["chrF"] > 0.05


def test_resample_ranks_equal_scipys_average_ranks():
    from scipy.stats import rankdata
    rng = np.random.default_rng(1)
    for values in (rng.random(300), rng.random(300).round(1), rng.integers(0, 5, 40).astype(float)):
        idx = metrics.bootstrap_indices(len(values), samples=50)
        assert np.array_equal(metrics.resample_ranks(values, idx), rankdata(values[idx], axis=1))


def test_a_loss_per_token_is_the_ratio_of_sums():
    # windows of unequal length: the ratio of sums, not the mean of ratios
    sums, counts = np.array([10.0, 1.0]), np.array([10, 1])
    assert metrics.resampled_ratio((sums, counts), np.array([[0, 1]]))[0] == pytest.approx(1.0)
    assert metrics.ratio_interval(sums * 2, counts) == [2.0, 2.0]


def test_window_language_losses_add_up_to_the_totals():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 5, 7, generator=g), torch.randint(0, 7, (3, 5), generator=g)
    targets[0, 0] = -1
    languages = torch.randint(0, 2, (3, 5), generator=g)
    totals = dict(zip(metrics.LOSS_PARTS, metrics.language_loss_sums(logits, targets, languages).tolist()))
    for name, (sums, counts) in metrics.window_language_losses(logits, targets, languages).items():
        assert len(sums) == 3 and sum(sums) == pytest.approx(totals[name][0]) and sum(counts) == totals[name][1]
    assert metrics.language_loss_sums(logits, targets)[1:].eq(0).all()  # no languages: English and French empty
