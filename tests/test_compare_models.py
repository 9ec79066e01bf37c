"""compare_models.py's table: values with their intervals and the overlap (significance) column."""
import compare_models


def test_table_marks_overlapping_intervals_as_not_significant():
    headlines = [{"xnli en accuracy (tuned)": 0.40, "pawsx en accuracy (tuned)": 0.50, "val loss (all)": 3.8},
                 {"xnli en accuracy (tuned)": 0.36, "pawsx en accuracy (tuned)": 0.60, "val loss (all)": 3.5}]
    intervals = [{"xnli en accuracy (tuned)": (0.36, 0.44), "pawsx en accuracy (tuned)": (0.46, 0.54)},
                 {"xnli en accuracy (tuned)": (0.32, 0.40), "pawsx en accuracy (tuned)": (0.56, 0.64)}]
    table, names = compare_models.comparison_table(["A", "B"], headlines, intervals)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert rows["xnli en accuracy (tuned)"].endswith("| 0.4000 [0.360, 0.440] | 0.3600 [0.320, 0.400] | "
                                                     "not significant (intervals overlap) |")
    assert rows["pawsx en accuracy (tuned)"].endswith("| intervals disjoint |")
    assert rows["val loss (all)"].endswith("| 3.8000 | 3.5000 |  |")  # no interval: no claim


def test_significance_with_three_models():
    assert compare_models.significance([(0.1, 0.2), (0.15, 0.3), (0.5, 0.6)]) == \
        "not significant between columns 1 and 2"
    assert compare_models.significance([(0.1, 0.2), None]) == ""
