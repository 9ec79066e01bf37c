"""The library behind the scripts at the top of the repository (train.py, evaluate.py, sample.py, ...).

Training:   settings (train.py's checks of its settings), dataset, tokenizer (reading prepared data),
            objectives (the LM loss) and sensia (sense adaptation), checkpoint (and resuming),
            init_from (where a run starts), rundir (its output directory, its stop signals), wandb_log
            (live logging)
Models:     ../model.py (the Backpack and the Transformer, torch alone), hf_format (backpack-gpt2's files),
            generation (translation), interventions (editing senses)
Running:    cli (the command line: one line for a bad value), devices (device, dtype, processes),
            atomic (files written whole), textfile, metrics (statistics)
eval/:      evaluate.py's tasks, their resources, results.json and report.md
study/:     experiments/study.sh's plan, measures, report and figures
"""
