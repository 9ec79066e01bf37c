"""
The study's Python steps (experiments/study.sh runs them; see docs/study.md):

    python -m experiments.study plan --out out/study --results R --data_dir out/study/data/study --iters 1200 [--n_embd=64 ...]
    python -m experiments.study units --results R [--seeds 3]        # one line per unit: name, train.py settings
    python -m experiments.study collect --results R --unit NAME --run_dir out/study/units/NAME
    python -m experiments.study status --results R [--seeds 3]
    python -m experiments.study gpu_profile --data_dir out/study/data/study   # PROFILE=gpu: shape, iterations
    python -m experiments.study report --results R [--out DIR]

plan: the Transformers matched to the Backpack of config/study.py (with the --key=value overrides
train.py gets) by tokens, training FLOPs and parameters, and the standard test sets (FLORES-200
devtest, MUSE 5000-6500) or, when they cannot be had, what stands in; writes OUT/plan.env (sourced
by study.sh), OUT/plan.json, and R/plan.json, the plan every unit in the results folder R ran under
(a new plan that differs is refused: its units would not be comparable).
gpu_profile: times the GPU shape's Backpack step with bench.py on this machine's GPU and prints two lines,
the shape's train.py settings and the Backpack's iterations for about 8 minutes of training per unit.
units, collect, status: the units (backpacks/study/units.py), one unit's results into R, and what is done.
report: study.md and its PNG figures, generated from the results folder alone, in --out (default: the
results folder's parent); prints the report's path last.
"""
import argparse
import json
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from backpacks import cli
from backpacks.study import measures, plan, report as study_report, units
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
        cli.fail(f"{results} holds no plan.json: not a study's results folder (bash experiments/study.sh's plan "
                 "step writes it)")
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
    """A unit's results, or a SENSIA run's (--unit sensia_<run>), into the results folder."""
    try:
        if args.unit.startswith("sensia_"):
            record = units.sensia_record(args.unit.removeprefix("sensia_"), args.run_dir)
        else:
            plan_record = read_plan(args.results)
            record = units.collect(unit_named(plan_record, args.unit), args.run_dir, plan_record,
                                   describe_machine("cpu"))
    except (ValueError, OSError) as e:
        cli.fail(str(e))
    print(f"  wrote {units.write_record(record, args.results)}")


def print_status(args):
    plan_record = read_plan(args.results)
    print("\n".join(units.status_lines(units.planned_units(plan_record, args.seeds, args.other_seeds),
                                       units.done_units(args.results))))


def print_gpu_profile(args):
    """The GPU profile's shape and iterations, from the Backpack's step time that bench.py measures here."""
    if not torch.cuda.is_available():
        cli.fail("PROFILE=gpu needs a CUDA GPU and this machine has none; run the CPU study without PROFILE")
    shape = [f"--{k}={v}" for k, v in plan.GPU_SHAPE.items()]
    bench = subprocess.run([sys.executable, "bench.py", "--device=cuda", f"--data_dir={args.data_dir}", *shape],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = [json.loads(line) for line in bench.stdout.splitlines() if line.startswith("{")]
    step_ms = next((line["step_ms"] for line in lines if line.get("model") == "backpack"), None)
    if bench.returncode or step_ms is None:
        cli.fail(f"bench.py could not time the GPU shape: {bench.stderr.strip()[-500:]}")
    iters, why = plan.gpu_iters(step_ms, load_meta(Path(args.data_dir))["splits"]["train"]["tokens"])
    print(f"  PROFILE=gpu: {why}", file=sys.stderr)
    print(" ".join(shape))
    print(iters)


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
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
    profiling = sub.add_parser("gpu_profile", help="PROFILE=gpu's shape and iterations, timed on this GPU")
    profiling.add_argument("--data_dir", required=True, help="the prepared bilingual dataset")
    collecting = sub.add_parser("collect", help="one unit's results into the results folder")
    collecting.add_argument("--results", required=True, help="the results folder")
    collecting.add_argument("--unit", required=True, help="the unit's name (as `units` prints it)")
    collecting.add_argument("--run_dir", required=True, help="the unit's out_dir, with its evaluated snapshots")
    reporting = sub.add_parser("report", help="study.md and its figures, from the results folder alone")
    reporting.add_argument("--results", required=True, help="the results folder")
    reporting.add_argument("--out", default=None, help="where study.md and its figures go (default: the results "
                                                        "folder's parent)")
    reporting.add_argument("--samples", type=int, default=measures.SAMPLES,
                           help="bootstrap resamples per test (default %(default)s; the smoke run takes fewer)")
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
    elif args.command == "gpu_profile":
        print_gpu_profile(args)
    else:
        read_plan(args.results)
        cli.check_at_least(args, 100, ["samples"])
        measures.SAMPLES = args.samples  # read by every test at call time
        print(study_report.write_report(Path(args.results), args.out and Path(args.out)))


if __name__ == "__main__":
    sys.exit(main())
