"""compare_models.py's table: values with their intervals and each model against the first."""
import compare_models


def test_table_marks_overlapping_intervals_as_not_significant():
    headlines = [{"xnli en accuracy (tuned)": 0.40, "pawsx en accuracy (tuned)": 0.50, "val loss (all)": 3.8},
                 {"xnli en accuracy (tuned)": 0.36, "pawsx en accuracy (tuned)": 0.60, "val loss (all)": 3.5}]
    intervals = [{"xnli en accuracy (tuned)": (0.36, 0.44), "pawsx en accuracy (tuned)": (0.46, 0.54)},
                 {"xnli en accuracy (tuned)": (0.32, 0.40), "pawsx en accuracy (tuned)": (0.56, 0.64)}]
    table, names = compare_models.comparison_table(["A", "B"], headlines, intervals)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert rows["xnli en accuracy (tuned)"].endswith("| 0.4000 [0.3600, 0.4400] | 0.3600 [0.3200, 0.4000] | B: n.s. |")
    assert rows["pawsx en accuracy (tuned)"].endswith("| B: disjoint |")
    assert rows["val loss (all)"].endswith("| 3.8000 | 3.5000 |  |")  # no interval: no claim


def test_significance_with_three_models_is_against_the_first():
    labels = ["A", "B", "C"]
    intervals = [{"m": (0.1, 0.2)}, {"m": (0.15, 0.3)}, {"m": (0.5, 0.6)}]
    assert compare_models.significance("m", labels, intervals) == "B: n.s.; C: disjoint"
    assert compare_models.significance("m", labels, [{"m": (0.1, 0.2)}, {}, {}]) == ""
    p_values = {"m": {"B": 0.2, "C": 0.001}}
    assert compare_models.significance("m", labels, intervals, p_values) == "B: p=0.200 n.s.; C: p=0.001"
