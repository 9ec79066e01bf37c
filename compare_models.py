"""
Compare trained models side by side: the same evaluation suite (evaluate.py) on each, a
Markdown table of the headline metrics, JSON, and PNG plots (training loss curves from each
out_dir's training_log.json, and metric bars).

$ python compare_models.py --backpack_dir out/backpack_full --transformer_dir out/transformer_full \
      --device cpu --translation_samples 500
$ python compare_models.py --backpack_dir A --transformer_dir B --extra_dirs C D --reuse

Every evaluate.py option passes through (--tasks, --beam, --data_root, ...). --reuse reads
DIR/eval/results.json instead of evaluating again when it was computed from the same checkpoint file
with the same evaluation settings (else it evaluates again and says why). Writes comparison.json,
comparison.md, loss_curves.png and metrics_<group>.png into --output_dir (default out/comparison).
A model trained with another tokenizer or on other data than the first is marked "not comparable"
with the reason, and the paired test of BLEU and chrF runs only on identical test sentences (the
table says when it is dropped).
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402

from backpacks import cli, metrics  # noqa: E402
from backpacks.atomic import atomic_write_text, file_digest, save_figure  # noqa: E402
from backpacks.checkpoint import CHECKPOINT_FILES  # noqa: E402
from backpacks.cli import fail  # noqa: E402
from backpacks.eval import options, report, tasks  # noqa: E402
from backpacks.eval.results import NOT_REQUESTED, task_settings  # noqa: E402

DEFAULT_OUTPUT_DIR = "out/comparison"

NOTE = ("Brackets: 95% bootstrap intervals over the test items (sacreBLEU's own for BLEU and chrF). Last column: "
        "for BLEU and chrF the p-value of sacreBLEU's paired bootstrap test against the first model (same sentences, "
        "1000 resamples); for the rest, n.s. where the intervals overlap (a conservative test), disjoint where not. "
        "Backbone-matched: same layers, heads and width; parameter-matched: total parameters within 5%.")
# bar-chart groups: headline metric names containing the key go into metrics_<group>.png
METRIC_GROUPS = {"loss": "test loss", "translation": ("BLEU", "chrF"), "wordsim": "wordsim",
                 "bli": "BLI", "sentence": "sentence", "multiple_choice": ("xnli", "pawsx")}


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    p.add_argument("--backpack_dir", required=True, help="out_dir of the Backpack run")
    p.add_argument("--transformer_dir", required=True, help="out_dir of the Transformer run")
    p.add_argument("--extra_dirs", nargs="*", default=[], help="more out_dirs to compare")
    p.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR, help="where comparison.json/.md and the plots go")
    p.add_argument("--reuse", action="store_true", help="use DIR/eval/results.json when it exists")
    options.add_eval_arguments(p)
    args = options.check_args(p.parse_args(argv))
    check_run_dirs(args)
    return args


def check_run_dirs(args):
    """Every run to compare has its checkpoint, before the first evaluation starts."""
    for out_dir in run_dirs(args):
        options.check_run_dir(out_dir, args.ckpt)
    cli.check_writable(args.output_dir, "--output_dir")


def run_dirs(args):
    return [args.backpack_dir, args.transformer_dir] + list(args.extra_dirs)


def reuse_mismatch(results, out_dir, args):
    """Why earlier results may not stand for this comparison (None: they may): a requested task
    missing, computed from another checkpoint file or with other evaluation settings."""
    computed = results.get("computed") if isinstance(results, dict) else None
    if not isinstance(computed, dict):
        return "it does not record its tasks' checkpoint and settings"
    checkpoint = Path(out_dir) / CHECKPOINT_FILES[args.ckpt]
    checkpoint_sha256 = file_digest(checkpoint)
    settings = task_settings(args.settings)
    for task in args.task_list:
        record = computed.get(task)
        if not isinstance(record, dict):
            return f"it has no {task} results"
        if record.get("checkpoint_sha256") != checkpoint_sha256:
            return f"its {task} results were computed from another {checkpoint.name} (iter {record.get('iter_num')})"
        recorded = record.get("settings") or {}
        differing = sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))
        if differing:
            return f"its {task} results were computed with other settings: {', '.join(differing)}"
    return None


def model_results(out_dir, args):
    """Evaluation results of the requested tasks of one out_dir: reused from eval/results.json if asked
    and computed from the same checkpoint with the same settings, else computed."""
    path = Path(out_dir) / "eval" / "results.json"
    if args.reuse and path.is_file():
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            fail(f"{path} is not valid JSON ({e}); run without --reuse")
        mismatch = reuse_mismatch(results, out_dir, args)
        if mismatch is None:
            return requested_only(results, args.task_list), "reused"
        print(f"not reusing {path}: {mismatch}; evaluating again", file=sys.stderr)
    return requested_only(tasks.evaluate_out_dir(out_dir, args), args.task_list), "evaluated"


def requested_only(results, task_list):
    """The results with only the requested tasks: results.json may hold others, computed with other settings."""
    return {key: value if key in task_list or key not in tasks.TASKS else NOT_REQUESTED
            for key, value in results.items()}


def unique_labels(out_dirs, results):
    """One short column label per model: directory name and model type."""
    labels = []
    for out_dir, res in zip(out_dirs, results):
        label = f"{Path(out_dir).resolve().name} ({res['run']['model_type']})"
        labels.append(label if label not in labels else f"{label} #{len(labels) + 1}")
    return labels


def paired_translation_tests(labels, results):
    """({headline name of a BLEU / chrF row: {label: p-value of sacreBLEU's paired bootstrap against the
    first model}}, why there is none). The test needs every model to have translated the same test
    sentences; otherwise it is dropped and the reason says so."""
    translations = [r.get("translation", {}) for r in results]
    references = [t.get("references") for t in translations]
    if not references[0]:
        return {}, None if "skipped" in translations[0] else f"{labels[0]} records no test references"
    others = [label for label, ref in zip(labels[1:], references[1:]) if ref != references[0]]
    if others:
        return {}, (f"no paired bootstrap test: {', '.join(others)} translated other test sentences than {labels[0]} "
                    "(or none)")
    p_values = {}
    for direction, refs in references[0].items():
        for decoding in translations[0].get(direction, {}):
            systems = {label: t.get(direction, {}).get(decoding, {}).get("hypotheses")
                       for label, t in zip(labels, translations)}
            if all(systems.values()):
                for label, tests in metrics.paired_bootstrap(systems, refs).items():
                    for metric, p in tests.items():
                        p_values.setdefault(f"{direction} {decoding} {metric}", {})[label] = p
    return p_values, None


def not_comparable(labels, results):
    """{label: reasons} of each later model that was not trained like the first: with another tokenizer
    (its losses are per other tokens) or on other data (other test text, other word counts), or
    whose data fingerprint is not recorded."""
    first = results[0]["run"]
    found = {}
    for label, result in zip(labels[1:], results[1:]):
        run, reasons = result["run"], []
        if run.get("tokenizer_sha256") != first.get("tokenizer_sha256"):
            reasons.append("another tokenizer")
        if None in (run.get("data_sha256"), first.get("data_sha256")):
            reasons.append("no recorded data fingerprint")
        elif run.get("data_sha256") != first.get("data_sha256"):
            reasons.append("other training data")
        if reasons:
            found[label] = reasons
    return found


def significance(name, labels, intervals, p_values=None, incomparable=()):
    """Each later model against the first on one metric: sacreBLEU's paired bootstrap p-value where
    there is one (n.s. when p >= 0.05); else 'n.s.' where the two 95% intervals overlap (the
    difference is not significant), 'disjoint' where they do not, 'not comparable' for a model
    trained with another tokenizer or on other data; '' without both intervals."""
    if p_values and name in p_values:
        return "; ".join(f"{label}: p={p:.3f}{' n.s.' if p >= 0.05 else ''}" for label, p in p_values[name].items())
    first = intervals[0].get(name)
    marks = [f"{label}: " + ("not comparable" if label in incomparable else
                             "n.s." if metrics.intervals_overlap(first, iv[name]) else "disjoint")
             for label, iv in zip(labels[1:], intervals[1:]) if first and iv.get(name)]
    return "; ".join(marks)


def comparison_table(labels, headlines, intervals, p_values=None, incomparable=()):
    """Markdown table: one row per headline metric, one column per model (value [95% interval]), and
    each model against the first (paired bootstrap p-value, else whether the intervals overlap)."""
    metrics_order = list(dict.fromkeys(name for h in headlines for name in h))
    rows = [[name] + [report.fmt_interval(h.get(name), iv.get(name)) for h, iv in zip(headlines, intervals)]
            + [significance(name, labels, intervals, p_values, incomparable)] for name in metrics_order]
    header = ["metric"] + labels + [f"vs {labels[0]}"]
    return report.markdown_table(header, rows), metrics_order


def matching(results):
    """How each later model relates to the first: the same backbone (n_layer, n_head, n_embd), the
    same total parameters (within 5%), or neither; this says which comparison a table makes."""
    first = results[0]["run"]
    notes = []
    for r in results[1:]:
        run = r["run"]
        same_backbone = all((first.get("model_args") or {}).get(k) == (run.get("model_args") or {}).get(k)
                            for k in ("n_layer", "n_head", "n_embd"))
        totals = [x.get("params", {}).get("total") for x in (first, run)]
        same_size = None not in totals and abs(totals[1] / totals[0] - 1) <= 0.05
        notes.append("backbone-matched" if same_backbone else "parameter-matched" if same_size else "unmatched")
    return notes


def match_notes(labels, results, incomparable):
    """matching(), where a model not comparable with the first is said to be so, with the reasons."""
    return [f"not comparable ({', '.join(incomparable[label])})" if label in incomparable else match
            for label, match in zip(labels[1:], matching(results))]


def caveats(labels, incomparable, dropped_test):
    """Markdown lines saying what the table cannot show (also printed as warnings)."""
    lines = [f"**Not comparable with {labels[0]}:** {label} was trained with {', '.join(reasons)}; its losses are "
             "not over the same tokens and text, and its intervals are not compared with the first model's."
             for label, reasons in incomparable.items()]
    if dropped_test:
        lines.append(f"**Note:** {dropped_test}.")
    for line in lines:
        print(f"warning: {line.replace('**', '')}", file=sys.stderr)
    return "".join(line + "\n\n" for line in lines)


def read_training_log(out_dir):
    path = Path(out_dir) / "training_log.json"
    if not path.is_file():
        return None, f"{path} not found"
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        return None, f"{path} is not valid JSON ({e})"
    if not isinstance(log, list) or not log or not all(isinstance(e, dict) and "iter" in e for e in log):
        return None, f"{path} is not a list of entries with 'iter'"
    return log, None


def plot_loss_curves(out_dirs, labels, path):
    """Train (dashed) and val (solid) loss against iteration, one colour per model."""
    fig, ax = plt.subplots(figsize=(8, 5))
    plotted, notes = 0, {}
    for i, (out_dir, label) in enumerate(zip(out_dirs, labels)):
        log, problem = read_training_log(out_dir)
        if problem:
            notes[label] = problem
            continue
        colour = f"C{i}"
        for key, style in (("val_loss", "-"), ("train_loss", "--")):
            points = [(e["iter"], e[key]) for e in log if isinstance(e.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), style, color=colour, marker="o", markersize=3, label=f"{label} {key}")
                plotted += 1
    if not plotted:
        plt.close(fig)
        return {"skipped": "no training_log.json with losses", "notes": notes}
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Training curves")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return {"path": str(path), "notes": notes}


def plot_metric_bars(labels, headlines, group, names, path):
    """Grouped bars: one group per metric, one bar per model (missing values are left out)."""
    width = 0.8 / len(labels)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) * len(labels) + 2), 5))
    for i, (label, headline) in enumerate(zip(labels, headlines)):
        values = [headline.get(n) if headline.get(n) is not None else math.nan for n in names]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_title(f"{group} metrics")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return {"path": str(path)}


def interventions_links(out_dirs, output_dir):
    """Links (relative to the report) to the sense-intervention reports of the runs that have one
    (written by experiments/run_interventions.py)."""
    reports = [Path(d) / "interventions" / "interventions.md" for d in out_dirs]
    return "".join(f"\nSense interventions of {p.parent.parent}: [interventions.md]({os.path.relpath(p, output_dir)})\n"
                   for p in reports if p.is_file())


def main(argv=None):
    args = parse_args(argv)
    out_dirs = run_dirs(args)
    output_dir = Path(args.output_dir)  # created by the first write, so a failure leaves none behind
    results, sources = zip(*(model_results(d, args) for d in out_dirs))
    labels = unique_labels(out_dirs, results)
    headlines, intervals = zip(*(report.headline_metrics(r, with_intervals=True) for r in results))
    p_values, dropped_test = paired_translation_tests(labels, results)
    incomparable = not_comparable(labels, results)
    table, metric_names = comparison_table(labels, headlines, intervals, p_values, incomparable)
    matches = match_notes(labels, results, incomparable)
    sizes = "\n".join(
        f"- {label}: {params['total']:,} parameters ({params['embedding']:,} embedding, "
        f"{params['non_embedding']:,} non-embedding)" + (f"; {match} to {labels[0]}" if match else "")
        for label, params, match in zip(labels, (r["run"].get("params") or {} for r in results), [None] + matches)
        if params)

    plots = {"loss_curves": plot_loss_curves(out_dirs, labels, output_dir / "loss_curves.png")}
    for group, keys in METRIC_GROUPS.items():
        keys = (keys,) if isinstance(keys, str) else keys
        names = [n for n in metric_names if any(k in n for k in keys)]
        if names:
            plots[f"metrics_{group}"] = plot_metric_bars(labels, headlines, group, names,
                                                         output_dir / f"metrics_{group}.png")

    comparison = {
        "models": {label: {"out_dir": str(d), "results": str(Path(d) / "eval" / "results.json"), "source": src,
                           "model_type": r["run"]["model_type"], "iter_num": r["run"]["iter_num"],
                           "params": r["run"].get("params"),
                           "skipped_tasks": {t: r[t]["skipped"] for t in tasks.TASKS if "skipped" in r.get(t, {})},
                           "headline": h, "intervals95": iv}
                   for label, d, r, h, iv, src in zip(labels, out_dirs, results, headlines, intervals, sources)},
        "matching": dict(zip(labels[1:], matches)), "not_comparable": incomparable,
        "paired_bootstrap_p_values": p_values, "paired_bootstrap_dropped": dropped_test,
        "metrics": metric_names, "plots": plots, "command": " ".join(sys.argv)}
    atomic_write_text(output_dir / "comparison.json",
                          json.dumps(report.json_safe(comparison), indent=2, ensure_ascii=False))
    markdown = "# Model comparison\n\n" + sizes + "\n\n" + caveats(labels, incomparable, dropped_test) + table + "\n\n" + NOTE + "\n\n" + "\n".join(
        f"![{name}]({Path(p['path']).name})" for name, p in plots.items() if "path" in p) + "\n" + interventions_links(out_dirs, output_dir)
    atomic_write_text(output_dir / "comparison.md", markdown)
    print(table)
    print(f"wrote {output_dir}/comparison.json, comparison.md and {len(plots)} plot(s)")


if __name__ == "__main__":
    main()
