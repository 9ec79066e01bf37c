"""
Evaluate a trained checkpoint: loss, translation, word similarity, lexicon induction,
sentence retrieval, (Backpack) sense analysis and zero-shot multiple choice (XNLI, PAWS-X,
on request: --tasks xnli,pawsx). Every number comes from the model, on
named data, by a named method; a task whose resource is missing is skipped with the reason.

$ python evaluate.py --out_dir out/backpack_tiny --device cpu
$ python evaluate.py --out_dir out/transformer_tiny --tasks translation,bli --beam 4

Writes OUT_DIR/eval/results.json (one top-level section per task, each either its results or
{"skipped": reason}; "computed" with the checkpoint, settings, resources and time of each task; "run"
with this evaluation's checkpoint, counts and timings) and OUT_DIR/eval/report.md, and prints a
summary table. The tasks computed now are merged into an existing results.json of the same
checkpoint; one of another checkpoint is moved aside first (backpacks/eval/results.py). Resources (word-similarity sets, dictionaries,
FLORES) are looked up by their path in the layout under --data_root (env ENFR_DATA, else
../shared/data/en-fr beside the repository), then in the resources.py cache, and fetched into the
cache when missing (unless --no-fetch or an offline variable such as HF_HUB_OFFLINE is set);
results.json names the file and sha256 each metric used. The dataset (test.bin, test.jsonl,
word_counts.json, pairs_train.bin, tokenizer) is the checkpoint's.
"""
import argparse
from pathlib import Path

from backpacks.cli import ArgumentParser
from backpacks.eval.report import headline_table
from backpacks.eval.options import add_eval_arguments, check_args, check_run_dir
from backpacks.eval.tasks import evaluate_out_dir


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--out_dir", required=True, help="training output directory with best.pt / ckpt.pt")
    add_eval_arguments(p)
    args = check_args(p.parse_args(argv))
    check_run_dir(args.out_dir, args.ckpt)
    return args


def main(argv=None):
    args = parse_args(argv)
    results = evaluate_out_dir(args.out_dir, args)
    print(headline_table(results))
    print(f"wrote {Path(args.out_dir) / 'eval' / 'results.json'} and report.md")


if __name__ == "__main__":
    main()
