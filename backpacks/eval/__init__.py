"""Evaluation of a trained model (evaluate.py, compare_models.py): the task context (context.py: the model,
tokenizer and dataset loaded for evaluation), the options and tasks (options.py, tasks.py), what the tasks
measure with (lexical, multiple_choice, sense_geometry), the resources they read (resources.py), and the
results they write (results.py: results.json; report.py: report.md)."""
