"""
The study's Python steps (experiments/study.sh runs them; see docs/study.md):

    python -m experiments.study plan --out out/study --results R --data_dir out/study/data/study --iters 1200 [--n_embd=64 ...]
    python -m experiments.study units --results R [--seeds 3]        # one line per unit: name, train.py settings
    python -m experiments.study collect --results R --unit NAME --run_dir out/study/units/NAME
    python -m experiments.study status --results R [--seeds 3]
    python -m experiments.study report --out out/study

plan: the Transformers matched to the Backpack of config/study.py (with the --key=value overrides
train.py gets) by tokens, training FLOPs and parameters, and the standard test sets (FLORES-200
devtest, MUSE 5000-6500) or, when they cannot be had, what stands in; writes OUT/plan.env (sourced
by study.sh), OUT/plan.json, and R/plan.json, the plan every unit in the results folder R ran under
(a new plan that differs is refused: its units would not be comparable).
units, collect, status: the units (backpacks/study/units.py), one unit's results into R, and what is done.
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
from backpacks.study import plan, report as study_report, units
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
              "data_sha256": meta.get("data_sha256"), "tokenizer_sha256": meta.get("tokenizer_sha256"),
              "corpus": meta.get("command"), "sense_share": share, "matched": runs, "machine": describe_machine("cuda" if torch.cuda.is_available() else "cpu"),
              "translation_test": "FLORES-200 devtest" if flores else f"the dataset's test split ({flores_missing})",
              "bli_dictionary": "MUSE en-fr 5000-6500" if muse else
              f"MUSE en-fr 0-5000, the training dictionary, as no model here trains on it ({muse_missing})"}
    committed = Path(args.results) / "plan.json"
    if committed.is_file():
        why = units.plan_disagreement(units.read_json(committed), json.loads(json.dumps(record, default=str)))
        if why:
            cli.fail(f"{committed}: {why}")
    atomic_write_text(Path(args.out) / "plan.env", "\n".join(lines) + "\n")
    for path in (Path(args.out) / "plan.json", committed):
        atomic_write_text(path, json.dumps(record, indent=2, default=str))
    for name, run in runs.items():
        print(f"  {name}: {run['max_iters']} iterations, width {run['n_embd']}: {run['why']}")
    print(f"  translation test: {record['translation_test']}\n  lexicon induction: {record['bli_dictionary']}")


def read_plan(results):
    path = Path(results) / "plan.json"
    if not path.is_file():
        cli.fail(f"{path} not found: run the plan step first (bash experiments/study.sh runs it)")
    return units.read_json(path)


def unit_named(plan_record, name):
    found = [u for u in units.planned_units(plan_record, seeds=len(units.SEEDS), other_seeds=len(units.SEEDS))
             if u.name == name]
    if not found:
        cli.fail(f"--unit {name!r} is not a unit of the plan (e.g. backpack_seed1337, transformer_flops_seed2337)")
    return found[0]


def print_units(args):
    """One line per unit still to run: its name, then its train.py settings (study.sh reads them)."""
    plan_record = read_plan(args.results)
    done = units.done_units(args.results)
    for unit in units.planned_units(plan_record, args.seeds, args.other_seeds):
        if unit.name not in done:
            print(unit.name, unit.model_type, *unit.train_settings(plan_record["data_dir"]))


def collect_unit(args):
    plan_record = read_plan(args.results)
    unit = unit_named(plan_record, args.unit)
    try:
        record = units.collect(unit, args.run_dir, plan_record, describe_machine("cpu"))
    except ValueError as e:
        cli.fail(str(e))
    print(f"  wrote {units.write_record(record, args.results)}")


def print_status(args):
    plan_record = read_plan(args.results)
    print("\n".join(units.status_lines(units.planned_units(plan_record, args.seeds, args.other_seeds),
                                       units.done_units(args.results))))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    planning = sub.add_parser("plan", help="the matched baselines and test sets")
    planning.add_argument("--out", required=True, help="the study's directory")
    planning.add_argument("--results", required=True, help="the results folder (its plan.json is checked or written)")
    planning.add_argument("--data_dir", required=True, help="the prepared bilingual dataset")
    planning.add_argument("--iters", type=int, required=True, help="the Backpack's iterations")
    for name, text in (("units", "the units not yet in the results folder"), ("status", "what is done and left")):
        listing = sub.add_parser(name, help=text)
        listing.add_argument("--results", required=True, help="the results folder")
        listing.add_argument("--seeds", type=int, default=len(units.SEEDS), choices=range(1, len(units.SEEDS) + 1),
                             help="seeds of the decisive pair (the Backpack and the FLOP-matched Transformer)")
        listing.add_argument("--other_seeds", type=int, default=1, choices=range(0, len(units.SEEDS) + 1),
                             help="seeds of the token- and parameter-matched Transformers")
    collecting = sub.add_parser("collect", help="one unit's results into the results folder")
    collecting.add_argument("--results", required=True, help="the results folder")
    collecting.add_argument("--unit", required=True, help="the unit's name (as `units` prints it)")
    collecting.add_argument("--run_dir", required=True, help="the unit's out_dir, with its evaluated snapshots")
    reporting = sub.add_parser("report", help="study.md and its figures")
    reporting.add_argument("--out", required=True, help="the study's directory")
    args, overrides = p.parse_known_args(argv)
    if overrides and args.command != "plan":
        p.error(f"unrecognised arguments: {' '.join(overrides)}")
    return args, overrides


def main(argv=None):
    args, overrides = parse_args(argv)
    if args.command == "plan":
        write_plan(args, overrides)
    elif args.command == "units":
        print_units(args)
    elif args.command == "collect":
        collect_unit(args)
    elif args.command == "status":
        print_status(args)
    else:
        print(study_report.write_report(Path(args.out)))


if __name__ == "__main__":
    sys.exit(main())
