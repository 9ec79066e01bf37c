"""
The study's two Python steps (experiments/study.sh runs them; see docs/study.md):

    python -m experiments.study plan --out out/study --data_dir out/study/data/study --iters 300 [--n_embd=64 ...]
    python -m experiments.study report --out out/study

plan: the Transformers matched to the Backpack of config/study.py (with the --key=value overrides
train.py gets) by tokens, training FLOPs and parameters, and the standard test sets (FLORES-200
devtest, MUSE 5000-6500) or, when they cannot be had, what stands in; writes OUT/plan.env (sourced
by study.sh) and OUT/plan.json (read by the report).
report: OUT/study.md and its PNG figures from the runs' results; prints the report's path last.
"""
import argparse
import json
import runpy
import shlex
import sys
from pathlib import Path

import torch

from backpacks import cli
from backpacks.study import plan, report as study_report
from backpacks.atomic import atomic_write_text
from backpacks.dataset import load_meta
from backpacks.eval.context import DEFAULT_DATA_ROOT
from backpacks.devices import describe_machine
from backpacks.eval.resources import fetch_allowed_by_environment

SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "n_senses", "block_size")


def study_settings(overrides):
    """config/study.py's settings with train.py-style --key=value overrides."""
    defaults = {k: v for k, v in runpy.run_path(str(cli.config_file("study"))).items() if not k.startswith("_")}
    return {**defaults, **cli.parse_settings(overrides, defaults, __doc__)}


def write_plan(args, overrides):
    settings = study_settings(overrides)
    shape = plan.Shape(**{k: settings[k] for k in SHAPE_KEYS})
    meta = load_meta(Path(args.data_dir))
    share = plan.sense_share(shape, args.data_dir, settings["batch_size"])
    runs = plan.matched_runs(shape, meta["vocab_size"], args.iters, share)
    fetch = fetch_allowed_by_environment()
    flores, flores_missing = plan.standard_set("flores200", DEFAULT_DATA_ROOT, fetch)
    muse, muse_missing = plan.standard_set("muse_test", DEFAULT_DATA_ROOT, fetch)
    env = {f"{name.upper()}_{key.upper()}": value for name, run in runs.items() for key, value in run.items() if key != "why"}
    lines = [f"{k}={v}" for k, v in env.items()]
    lines.append("TEST_SET=(" + ("--test_set flores200" if flores else "") + ")")
    lines.append("DICTIONARY=(" + (f"--dictionary {shlex.quote(str(muse[0]))}" if muse else "") + ")")
    record = {"settings": settings, "iters": args.iters, "vocab_size": meta["vocab_size"], "data_dir": args.data_dir,
              "corpus": meta.get("command"), "sense_share": share, "matched": runs, "machine": describe_machine("cuda" if torch.cuda.is_available() else "cpu"),
              "translation_test": "FLORES-200 devtest" if flores else f"the dataset's test split ({flores_missing})",
              "bli_dictionary": "MUSE en-fr 5000-6500" if muse else
              f"MUSE en-fr 0-5000, the training dictionary, as no model here trains on it ({muse_missing})"}
    atomic_write_text(Path(args.out) / "plan.env", "\n".join(lines) + "\n")
    atomic_write_text(Path(args.out) / "plan.json", json.dumps(record, indent=2, default=str))
    for name, run in runs.items():
        print(f"  {name}: {run['max_iters']} iterations, width {run['n_embd']}: {run['why']}")
    print(f"  translation test: {record['translation_test']}\n  lexicon induction: {record['bli_dictionary']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    planning = sub.add_parser("plan", help="the matched baselines and test sets")
    planning.add_argument("--out", required=True, help="the study's directory")
    planning.add_argument("--data_dir", required=True, help="the prepared bilingual dataset")
    planning.add_argument("--iters", type=int, required=True, help="the Backpack's iterations")
    reporting = sub.add_parser("report", help="study.md and its figures")
    reporting.add_argument("--out", required=True, help="the study's directory")
    args, overrides = p.parse_known_args(argv)
    if args.command == "plan":
        write_plan(args, overrides)
    else:
        if overrides:
            p.error(f"unrecognised arguments: {' '.join(overrides)}")
        print(study_report.write_report(Path(args.out)))


if __name__ == "__main__":
    sys.exit(main())
