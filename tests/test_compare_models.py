"""compare_models.py's table: values with their intervals and each model against the first."""
import json

import compare_models


def test_table_marks_overlapping_intervals_as_not_significant():
    headlines = [{"xnli en accuracy (tuned)": 0.40, "pawsx en accuracy (tuned)": 0.50, "test loss (all)": 3.8},
                 {"xnli en accuracy (tuned)": 0.36, "pawsx en accuracy (tuned)": 0.60, "test loss (all)": 3.5}]
    intervals = [{"xnli en accuracy (tuned)": (0.36, 0.44), "pawsx en accuracy (tuned)": (0.46, 0.54)},
                 {"xnli en accuracy (tuned)": (0.32, 0.40), "pawsx en accuracy (tuned)": (0.56, 0.64)}]
    table, names = compare_models.comparison_table(["A", "B"], headlines, intervals)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert rows["xnli en accuracy (tuned)"].endswith("| 0.4000 [0.3600, 0.4400] | 0.3600 [0.3200, 0.4000] | B: n.s. |")
    assert rows["pawsx en accuracy (tuned)"].endswith("| B: disjoint |")
    assert rows["test loss (all)"].endswith("| 3.8000 | 3.5000 |  |")  # no interval: no claim


def test_significance_with_three_models_is_against_the_first():
    labels = ["A", "B", "C"]
    intervals = [{"m": (0.1, 0.2)}, {"m": (0.15, 0.3)}, {"m": (0.5, 0.6)}]
    assert compare_models.significance("m", labels, intervals) == "B: n.s.; C: disjoint"
    assert compare_models.significance("m", labels, [{"m": (0.1, 0.2)}, {}, {}]) == ""
    p_values = {"m": {"B": 0.2, "C": 0.001}}
    assert compare_models.significance("m", labels, intervals, p_values) == "B: p=0.200 n.s.; C: p=0.001"


def test_runs_of_other_data_and_tokenizers_are_marked_not_comparable(sample_dataset, other_sample_dataset,
                                                                      make_checkpoint, tmp_path, capsys):
    """Runs trained on other data with another tokenizer: the table says 'not comparable' with the
    reasons, never 'matched', and the paired test, which needs the same test sentences, is dropped
    with a note."""
    runs = [make_checkpoint(tmp_path / name, data) for name, data in (("a", sample_dataset), ("b", other_sample_dataset))]
    compare_models.main(["--backpack_dir", str(runs[0]), "--transformer_dir", str(runs[1]), "--device", "cpu",
                         "--tasks", "loss,translation", "--loss_batches", "1", "--batch_size", "4",
                         "--translation_samples", "2", "--max_new_tokens", "2", "--output_dir", str(tmp_path / "cmp")])
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    reasons = ["another tokenizer", "other training data"]
    assert comparison["not_comparable"] == {"b (backpack)": reasons}
    assert comparison["matching"] == {"b (backpack)": "not comparable (another tokenizer, other training data)"}
    assert comparison["paired_bootstrap_p_values"] == {}
    assert "b (backpack) translated other test sentences" in comparison["paired_bootstrap_dropped"]
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "**Not comparable with a (backpack):** b (backpack) was trained with another tokenizer, other training data" \
        in markdown and "no paired bootstrap test" in markdown and "-matched to" not in markdown
    assert "warning: Not comparable" in capsys.readouterr().err


def test_paired_test_only_on_identical_test_sentences():
    translation = lambda refs: {"translation": {"references": {"en-fr": refs}, "en-fr": {"greedy": {"hypotheses": refs}}}}
    same = [translation(["a b", "c d"]), translation(["a b", "c d"])]
    p_values, dropped = compare_models.paired_translation_tests(["A", "B"], same)
    assert set(p_values) == {"en-fr greedy BLEU", "en-fr greedy chrF"} and dropped is None
    p_values, dropped = compare_models.paired_translation_tests(["A", "B"], [same[0], translation(["a b", "x"])])
    assert p_values == {} and "B translated other test sentences than A" in dropped
