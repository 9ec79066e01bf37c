"""The study's units: one model at one seed, trained, evaluated at its snapshots, and written as one
small JSON file (no weights) into the results folder, which is committed with the report. A stop loses
at most the unit under way; another machine continues with the units whose file is missing.

    units = planned_units(plan, seeds=3)      # [Unit], in the order experiments/study.sh runs them
    unit.train_settings(data_dir)             # train.py --key=value settings after config/study.py
    record = collect(unit, run_dir, plan, machine)   # what results/<unit.name>.json holds

Order: the decisive pair first (the Backpack and the FLOP-matched Transformer), seed by seed, then one
seed of the token-matched and the two parameter-matched Transformers.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from backpacks.atomic import atomic_write_text
from backpacks.checkpoint import load_checkpoint

SEEDS = (1337, 2337, 3337)
DECISIVE = ("backpack", "transformer_flops")
OTHERS = ("transformer_tokens", "transformer_params", "transformer_params_nonemb")
SNAPSHOT_INTERVAL = 300  # iterations between the evaluated snapshots: the learning curves' points
PER_ITEM_LENGTH = 64  # lists longer than this are per-item data (test windows, word pairs, queries): kept for the
                      # last snapshot only, where the paired tests are made; the curves read values and intervals
# entries whose per-item data no test reads (the exploratory vectors, BLI's other retrieval rules): values only
UNTESTED = {"minpair", "maxpair", "cosine", "cosine_excluding_identical", "csls"}
# the plan's entries two machines must agree on before their units are compared
PLAN_KEYS = ("settings", "iters", "vocab_size", "data_sha256", "tokenizer_sha256", "matched")


@dataclass(frozen=True)
class Unit:
    model: str  # 'backpack' or a matching of the plan ('transformer_flops', ...)
    seed: int
    max_iters: int
    n_embd: int

    @property
    def name(self):
        return f"{self.model}_seed{self.seed}"

    @property
    def model_type(self):
        return "backpack" if self.model == "backpack" else "transformer"

    def train_settings(self, data_dir):
        """train.py settings after config/study.py: warmup over the first tenth of the unit's own iterations
        (the same schedule shape for every model), snapshots for the learning curves."""
        return [f"--model_type={self.model_type}", f"--n_embd={self.n_embd}", f"--seed={self.seed}",
                f"--max_iters={self.max_iters}", f"--warmup_iters={self.max_iters // 10}", f"--data_dir={data_dir}",
                f"--eval_interval={SNAPSHOT_INTERVAL // 2}", f"--checkpoint_interval={SNAPSHOT_INTERVAL // 2}",
                f"--snapshot_interval={SNAPSHOT_INTERVAL}"]


def planned_units(plan, seeds=len(SEEDS), other_seeds=1):
    """The study's units: `seeds` seeds of the decisive pair, then `other_seeds` of the other matchings."""
    def unit(model, seed):
        matched = plan["matched"].get(model, {"max_iters": plan["iters"], "n_embd": plan["settings"]["n_embd"]})
        return Unit(model, seed, matched["max_iters"], matched["n_embd"])
    return ([unit(model, seed) for seed in SEEDS[:seeds] for model in DECISIVE]
            + [unit(model, seed) for seed in SEEDS[:other_seeds] for model in OTHERS])


def plan_disagreement(committed, new):
    """Why a new plan cannot add units to results made under the committed one, or None."""
    differing = [key for key in PLAN_KEYS if committed.get(key) != new.get(key)]
    if not differing:
        return None
    return (f"the results folder's plan differs in {', '.join(differing)} (another corpus, shape or tokenizer): "
            "its units would not be comparable; use another results folder")


def snapshots(run_dir):
    """{iteration: snapshot directory} of a trained unit, in order."""
    found = sorted((Path(run_dir) / "snapshots").glob("iter_*/ckpt.pt"))
    return {int(path.parent.name.split("_")[1]): path.parent for path in found}


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def collect(unit, run_dir, plan, machine):
    """The unit's record: its settings, the machine and dtype it trained with, its training log and the
    evaluation of every snapshot (each results.json as evaluate.py wrote it)."""
    taken = snapshots(run_dir)
    missing = [it for it, path in taken.items() if not (path / "eval" / "results.json").is_file()]
    if not taken or missing or max(taken) != unit.max_iters:
        raise ValueError(f"{run_dir}: snapshots {sorted(taken)} (not evaluated: {missing}); "
                         f"the unit needs every snapshot to iteration {unit.max_iters} evaluated")
    last = load_checkpoint(taken[max(taken)] / "ckpt.pt", map_location="cpu")
    return {"unit": unit.name, "model": unit.model, "model_type": unit.model_type, "seed": unit.seed,
            "max_iters": unit.max_iters, "n_embd": unit.n_embd,
            "plan": {key: plan.get(key) for key in PLAN_KEYS},
            "machine": machine, "dtype": last.get("dtype"), "train_seconds": last.get("elapsed_s"),
            "config": last.get("config"), "training_log": last.get("training_log"),
            "snapshots": {str(it): compact(read_json(path / "eval" / "results.json"), per_item=it == unit.max_iters)
                          for it, path in taken.items()}}


def compact(value, per_item):
    """value with floats to 6 significant digits (float32 similarities print 17), and without per-item lists
    unless per_item (nor under the UNTESTED entries): the results folder stays a few MB for the whole study."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: compact(v, per_item and k not in UNTESTED) for k, v in value.items()
                if per_item or not (isinstance(v, list) and len(v) > PER_ITEM_LENGTH)}
    if isinstance(value, list):
        return [compact(v, per_item) for v in value]
    return value


def sensia_record(name, run_dir):
    """A SENSIA run's record (results/sensia_<name>.json): its evaluation and its training log."""
    return {"unit": f"sensia_{name}", "results": compact(read_json(Path(run_dir) / "eval" / "results.json"), True),
            "log": read_json(Path(run_dir) / "training_log.json")}


def write_record(record, results_dir):
    path = Path(results_dir) / f"{record['unit']}.json"
    atomic_write_text(path, json.dumps(record, separators=(",", ":"), default=str) + "\n")
    return path


def done_units(results_dir):
    """{unit name: record} of the units whose results are in the folder."""
    return {path.stem: read_json(path) for path in sorted(Path(results_dir).glob("*_seed*.json"))}


def seconds_per_iteration(records, model_type):
    """Measured training seconds per iteration of a model type in the done units (None before any)."""
    rates = [r["train_seconds"] / r["max_iters"] for r in records.values()
             if r["model_type"] == model_type and r.get("train_seconds")]
    return sum(rates) / len(rates) if rates else None


def status_lines(units, records):
    """What is done, what is left and an estimate of the training time left, from measured step times."""
    left = [u for u in units if u.name not in records]
    lines = [f"  done: {', '.join(u.name for u in units if u.name in records) or 'none'}",
             f"  left: {', '.join(u.name for u in left) or 'none'}"]
    estimates = [seconds_per_iteration(records, u.model_type) for u in left]
    if left and None not in estimates:
        total = sum(e * u.max_iters for e, u in zip(estimates, left))
        lines.append(f"  estimate: {total / 3600:.1f} hours of training left at the done units' step times "
                     "(evaluation adds a few minutes per unit)")
    elif left:
        lines.append("  estimate: none yet (no unit of each model type is done to time it)")
    return lines
