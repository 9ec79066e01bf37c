"""Measures read from results.json and the paired tests between runs, on constructed results whose
better run is known."""
import numpy as np
import pytest

from backpacks import metrics
from backpacks.study import measures as sm


def results_with(similarities, gold, window_losses):
    return {"wordsim": {"sets": {"simlex999": {"gold": list(gold), "spearman": {
                "embedding": {"rho": 0.0, "rho_ci95": [-0.1, 0.1], "similarities": list(similarities)}}}}},
            "loss": {"all": {"loss": float(np.mean(window_losses)), "ci95": None},
                     "windows": {"all": {"loss_sum": list(window_losses), "tokens": [1] * len(window_losses)}}}}


@pytest.fixture
def two_runs():
    rng = np.random.default_rng(0)
    gold = rng.random(400)
    good = results_with(gold + 0.2 * rng.random(400), gold, 3.0 + rng.random(200))
    poor = results_with(gold + 3.0 * rng.random(400), gold, 3.3 + rng.random(200))
    return good, poor


def test_the_run_that_tracks_human_scores_wins_the_paired_word_similarity_test(two_runs):
    good, poor = two_runs
    measure = sm.wordsim_measure("simlex999", "embedding")
    test, why = sm.paired((measure, poor), (measure, good))
    assert why is None and test["difference"] < 0 and test["ci95"][1] < 0 and test["p_value"] < 0.01
    assert sm.verdict(test, True, "poor", "good") == "good"


def test_lower_loss_is_better(two_runs):
    good, poor = two_runs
    measure = sm.loss_measure("all")
    assert not measure.higher_is_better
    test, _ = sm.paired((measure, poor), (measure, good))
    assert test["difference"] == pytest.approx(0.3, abs=0.06) and test["p_value"] < 0.01
    assert sm.verdict(test, False, "poor", "good") == "good"


def test_no_test_without_per_item_data_or_on_different_items(two_runs):
    good, poor = two_runs
    measure = sm.wordsim_measure("simlex999", "embedding")
    del poor["wordsim"]["sets"]["simlex999"]["spearman"]["embedding"]["similarities"]
    assert sm.paired((measure, poor), (measure, good)) == (None, "no per-item data (evaluate again)")
    shorter = results_with([0.1, 0.2, 0.3], [1, 2, 3], [1.0])
    assert sm.paired((measure, shorter), (measure, good))[1] == "different items (3 against 400)"
    assert sm.paired((sm.bli_measure("en-fr", "embedding"), good), (measure, good)) == (None, "not measured on both")
    other_gold = results_with(list(range(400)), list(range(400)), [1.0])
    assert sm.paired((measure, other_gold), (measure, good))[1] == "different items (other gold scores or window lengths)"
    other_data = {**good, "run": {"data_sha256": "a"}}
    assert sm.paired((measure, other_data), (measure, {**good, "run": {"data_sha256": "b"}}))[1] == \
        "other data: not the same items"
    assert sm.verdict(None, True) == "no test"


def test_a_difference_within_noise_is_reported_as_such():
    rng = np.random.default_rng(3)
    gold = rng.random(200)
    a, b = (results_with(gold + rng.random(200), gold, [1.0] * 200) for _ in range(2))
    measure = sm.wordsim_measure("simlex999", "embedding")
    test, _ = sm.paired((measure, a), (measure, b))
    assert test["p_value"] >= 0.05 and sm.verdict(test, True) == "no significant difference"
    assert sm.fmt_test(test).startswith(("+", "-")) and "p=" in sm.fmt_test(test)


def test_holm_adjusts_a_family_and_can_turn_a_nominal_win_into_none():
    assert metrics.holm([0.01, 0.04, None, 0.03]) == [0.03, 0.06, None, 0.06]
    test = {"difference": 0.1, "p_value": 0.04}
    assert sm.verdict(test, True, "a", "b") == "a"
    assert sm.verdict(test, True, "a", "b", p_value=metrics.holm([0.04, 0.5])[0]) == "no significant difference"
