"""The study (experiments/study.sh): the matched baselines' plan (plan.py), the measures read from each run's
results and the paired tests between runs (measures.py), study.md (report.py) and its figures (figures.py)."""
