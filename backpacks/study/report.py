"""study.md: the study's one report, generated from its results folder alone (the plan, one JSON per
unit, SENSIA's evaluations, the interventions) and never edited by hand.

    path = write_report(Path("docs/study_run/results"), Path("docs/study_run"))

Sections: a summary of what holds and what does not (the README quotes its tables), setup (corpus,
shape, which unit ran on which machine), the models and their matching, learning curves, the main
comparison, SENSIA against its controls, the interventions, senses read as tokens. A part whose units
are not done says so instead.
"""
import datetime
import json
from pathlib import Path

import numpy as np

from backpacks import metrics
from backpacks.atomic import atomic_write_text
from backpacks.eval.report import fmt_interval, markdown_table
from backpacks.study import figures, units
from backpacks.study import measures as sm
from backpacks.study.measures import LABELS, word_vector
from backpacks.study.sections import interventions_section, senses_section, sensia_findings, sensia_section

SECTIONS = ("Summary", "Setup", "Models", "Learning curves", "Main comparison", "SENSIA", "Interventions", "Senses")
SENSIA_RUNS = ("english", "sensia", "lm_only", "mcl")
CONTROL_PHRASES = {"a better": "above the control", "b better": "below the control", "inconclusive": "inconclusive"}


def read_json(path):
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load(results):
    """Everything the report reads, from the results folder: plan, units by model (seeds in order), SENSIA,
    interventions."""
    by_model = {}
    for record in units.done_units(results).values():
        by_model.setdefault(record["model"], []).append(record)
    return {"plan": read_json(results / "plan.json") or {},
            "models": {m: sorted(by_model[m], key=lambda r: r["seed"]) for m in sm.MODELS if m in by_model},
            "sensia": {name: r for name in SENSIA_RUNS if (r := read_json(results / f"sensia_{name}.json"))},
            "interventions": read_json(results / "interventions.json")}


def final(record):
    """The evaluation of a unit's last snapshot (its end of training)."""
    return record["snapshots"][str(record["max_iters"])]


def finals(data, model):
    return [final(r) for r in data["models"].get(model, [])]


# ----------------------------------------------------------------------------- the measures and their tests

def declared_rows():
    """(label, measure of the Backpack, measure of a Transformer) of the summary: one declared measure each."""
    rows = [("test loss", sm.loss_measure("all"), sm.loss_measure("all"))]
    rows += [(label, of(sm.BACKPACK_VECTOR), of("embedding")) for _, label, of in sm.lexical_measures()]
    rows += [(m.name, m, m) for m in [sm.chrf_measure(d) for d in ("en-fr", "fr-en")] + [sm.retrieval_measure()]]
    rows += [(m.name, m, m) for m in [sm.choice_measure(t, lang) for t in ("xnli", "pawsx") for lang in ("en", "fr")]]
    return rows


def secondary_rows():
    """Rows of the main comparison beyond the summary's: per-language losses, the embedding of both
    models, and the Backpack's exploratory vectors (chosen after the declared sense mean: not evidence)."""
    rows = [(f"test loss ({lang})", m, m) for lang in ("en", "fr") for m in [sm.loss_measure(lang)]]
    for name in sm.WORDSIM_SETS:
        rows.append((f"{name} rho, embedding of both (exploratory)", sm.wordsim_measure(name, "embedding"),
                     sm.wordsim_measure(name, "embedding")))
        rows += [(f"{name} rho, Backpack {rep} (exploratory)", sm.wordsim_measure(name, rep), None)
                 for rep in ("minpair", "maxpair")]
    rows += [(f"BLI {d} P@1, embedding of both (exploratory)", sm.bli_measure(d, "embedding"),
              sm.bli_measure(d, "embedding")) for d in ("en-fr", "fr-en")]
    return rows


def measure_for(model, backpack_measure, transformer_measure):
    return backpack_measure if model == "backpack" else transformer_measure


def value_cell(measure, evaluations):
    """A model's value: with one seed, value [95% item interval]; with several, their mean and range."""
    reads = [measure.read(r) for r in evaluations] if measure else []
    if not reads or any(r is None for r in reads):
        return "n/a"
    if len(reads) == 1:
        return fmt_interval(reads[0][0], reads[0][1])
    values = [r[0] for r in reads]
    return f"{np.mean(values):.4f} (seeds {min(values):.4f} to {max(values):.4f}, n={len(values)})"


def test_between(data, model, backpack_measure, transformer_measure, reference="backpack"):
    """compare() of model against the reference model on the row's measures, or (None, why)."""
    measure = measure_for(model, backpack_measure, transformer_measure)
    reference_measure = measure_for(reference, backpack_measure, transformer_measure)
    if measure is None or reference_measure is None:
        return None, "not this model's row"
    items, why = sm.seed_items(measure, finals(data, model))
    reference_items, why_reference = sm.seed_items(reference_measure, finals(data, reference))
    if items is None or reference_items is None:
        return None, why or why_reference
    why = sm.same_items(items[0], reference_items[0])
    return (None, why) if why else (sm.compare(items, reference_items, measure.statistic), None)


def tested_family(data, rows, models):
    """{(label, model): (test, why, higher_is_better)} with Holm-adjusted p-values over the family."""
    family = {}
    for label, mb, mt in rows:
        for model in models:
            test, why = test_between(data, model, mb, mt)
            family[(label, model)] = (test, why, mb.higher_is_better)
    return family, holm_adjust(test for test, _, _ in family.values())


def holm_adjust(tests):
    """Set each test's p_holm, Holm's adjustment over the family (None: no test); return how many there are."""
    tests = [test for test in tests if test]
    for test, p in zip(tests, metrics.holm([test["p_value"] for test in tests])):
        test["p_holm"] = p
    return len(tests)


def test_cell(test, why, higher_is_better, model):
    if test is None:
        return f"no test ({why})"
    phrase = sm.verdict(test, higher_is_better, LABELS[model], "Backpack", test["p_holm"])
    return f"{phrase}: {sm.fmt_test(test)}, p={sm.fmt_p(test['p_value'])}, Holm {sm.fmt_p(test['p_holm'])}"


# ----------------------------------------------------------------------------- summary

def seeds_text(data, model):
    n = len(data["models"].get(model, []))
    return f"{n} seed{'s' if n != 1 else ''}"


def decisive_table(data):
    family, count = tested_family(data, declared_rows(), ["transformer_flops"])
    rows = []
    for label, mb, mt in declared_rows():
        test, why, better = family[(label, "transformer_flops")]
        rows.append([label, value_cell(mb, finals(data, "backpack")), value_cell(mt, finals(data, "transformer_flops")),
                     sm.fmt_test(test) if test else f"no test ({why})",
                     sm.fmt_p(test["p_value"]) if test else "", sm.fmt_p(test["p_holm"]) if test else "",
                     sm.verdict(test, better, "T FLOPs", "Backpack", test["p_holm"]) if test else "no test"])
    header = ["measure", f"Backpack ({seeds_text(data, 'backpack')})",
              f"T FLOPs ({seeds_text(data, 'transformer_flops')})", "T FLOPs - Backpack [95%]", "p", "p (Holm)",
              "verdict"]
    return markdown_table(header, rows), count


def others_table(data):
    others = [m for m in sm.MODELS[2:] if m in data["models"]]
    if not others:
        return "No token- or parameter-matched Transformer is done yet.", 0
    family, count = tested_family(data, declared_rows(), others)
    rows = [[label] + [test_cell(*family[(label, m)], m) for m in others] for label, _, _ in declared_rows()]
    return markdown_table(["measure"] + [f"{LABELS[m]} ({seeds_text(data, m)}) - Backpack" for m in others], rows), count


def control_rows(data):
    """(model, lexical measure) against the random-pieces control of the model's own width, paired on the
    same word pairs or queries and over the model's seeds (the control is the same for every seed)."""
    groups = [(group, of) for group, _, of in sm.lexical_measures()]
    family = {}
    for model in data["models"]:
        evaluations = finals(data, model)
        for group, measure in groups:
            items, why = sm.seed_items(measure(word_vector(model)), evaluations)
            control, why_control = sm.seed_items(measure("random_pieces"), evaluations[:1])
            why = why or why_control or sm.same_items(items[0], control[0])
            test = None if why else sm.compare(items, control, measure("random_pieces").statistic)
            family[(model, group)] = (test, why)
    return groups, family, holm_adjust(test for test, _ in family.values())


def control_table(data):
    groups, family, count = control_rows(data)
    rows = []
    for model in data["models"]:
        cells = []
        for group, _ in groups:
            test, why = family[(model, group)]
            cells.append(f"{CONTROL_PHRASES[sm.verdict(test, True, 'a', 'b', test['p_holm'])]} ({sm.fmt_test(test)})"
                         if test else f"no test ({why})")
        rows.append([f"{LABELS[model]} ({word_vector(model)}, width {data['models'][model][0]['n_embd']})"] + cells)
    return markdown_table(["model"] + [g for g, _ in groups], rows), count


def summary_section(data):
    if "backpack" not in data["models"] or "transformer_flops" not in data["models"]:
        done = ", ".join(r["unit"] for records in data["models"].values() for r in records) or "none"
        return f"## Summary\n\nThe decisive pair (the Backpack and the FLOP-matched Transformer) is not done yet (units done: {done}).\n"
    decisive, decisive_count = decisive_table(data)
    others, others_count = others_table(data)
    control, control_count = control_table(data)
    return "\n".join([
        "## Summary", "",
        "Each measure at the end of training, on held-out items. A model with several seeds shows their mean and "
        f"range. Tests are paired over the same items and over seeds: each of {sm.SAMPLES:,} resamples draws the "
        "items and, per model, its seeds with replacement (backpacks/study/measures.py), so the interval holds "
        "item and seed variance together. With one seed per model, seed variance is not in the interval. p is two-sided, "
        "(c+1)/(B+1). 'inconclusive' means not significant at 5% after Holm's adjustment; the interval shows how "
        "large a difference the data still allow. Word-level rows compare the Backpack's sense mean (declared "
        "before any result) with the Transformer's embedding. chrF rows test the mean sentence chrF.", "",
        f"**The decisive pair**: the Backpack against the Transformer given the same training FLOPs. Holm's "
        f"adjustment runs over the {decisive_count} tests of this table.", "", decisive, "",
        f"**The other matchings** (same tokens; same total parameters; same non-embedding parameters). Holm's "
        f"adjustment runs over the {others_count} tests of this table.", "", others, "",
        f"**Against spelling**: each model's word vector against the random-pieces control of its own width. The "
        f"control is random vectors over the same subword pieces, averaged over 8 draws. Holm's adjustment runs "
        f"over the {control_count} tests of this table.", "", control, "",
        *sensia_findings(data["sensia"]), ""])


# ----------------------------------------------------------------------------- setup, models, curves

def setup_section(data):
    plan = data["plan"]
    rows = [[r["unit"], r.get("machine", "not recorded"), r.get("dtype", "?"), f"{r['max_iters']:,}",
             f"{(r.get('train_seconds') or 0) / 60:.1f}",
             f"{sum((s.get('run') or {}).get('seconds', 0) for s in r['snapshots'].values()) / 60:.1f}"]
            for records in data["models"].values() for r in records]
    return "\n".join([
        "## Setup", "",
        f"- Corpus: `{plan.get('corpus', 'not recorded')}`. prepare.py held out the val and test pairs "
        "(near-duplicates stay in one split).",
        f"- Model shape: {describe_shape(plan)}.",
        f"- Translation test set: {plan.get('translation_test', 'not recorded')}.",
        f"- Lexicon induction dictionary: {plan.get('bli_dictionary', 'not recorded')}.",
        "- Test loss: disjoint windows spaced evenly over the test stream, the same for every model.", "",
        "Which unit ran where, and its wall time (training; evaluation of all its snapshots):", "",
        markdown_table(["unit", "machine", "dtype", "iterations", "train minutes", "eval minutes"], rows)
        if rows else "No unit is done.", ""])


def describe_shape(plan):
    s = plan.get("settings", {})
    return (f"{s.get('n_layer')} layers, {s.get('n_head')} heads, width {s.get('n_embd')}, {s.get('n_senses')} senses "
            f"(Backpack), block {s.get('block_size')}, batch {s.get('batch_size')}, vocabulary {plan.get('vocab_size')}")


def models_section(data):
    matched, per_iter = data["plan"].get("matched", {}), figures.tokens_per_iter(data["plan"])
    rows = []
    for model, records in data["models"].items():
        run = final(records[0])["run"]
        iters = records[0]["max_iters"]
        flops = iters * per_iter * figures.flops_per_token(run, data["plan"])
        rows.append([LABELS[model], f"{run['params']['total']:,}", f"{run['params']['non_embedding']:,}",
                     f"{iters:,}", f"{iters * per_iter / 1e6:.2f}M", f"{flops / 1e15:.3f}",
                     ", ".join(str(r["seed"]) for r in records),
                     matched.get(model, {}).get("why", "the reference")])
    header = ["model", "parameters", "non-embedding", "iterations", "tokens", "training PFLOPs", "seeds", "matching"]
    return "\n".join(["## Models", "", markdown_table(header, rows), "",
                      "Training FLOPs: tokens x model.flops_per_token (6N + attention, per token). The Backpack's "
                      f"count has its sense network on the {data['plan'].get('sense_share', 1):.1%} of positions "
                      "it really computes (distinct tokens per batch, measured on the study's batches).", ""])


def curves_section(data, out):
    names = figures.learning_curves(out, data)
    if not names:
        return "## Learning curves\n\nNo unit is done.\n"
    return "\n".join(["## Learning curves", "",
                      "Each measure at every snapshot (every 300 iterations and the last). A line is the mean over a "
                      "model's seeds and its band their range. Dashed lines are the random-pieces control of each "
                      "width: it does not train, so it is flat.", "", *(f"![{n}]({n})" for n in names), ""])


# ----------------------------------------------------------------------------- main comparison

def main_section(data):
    if "backpack" not in data["models"]:
        return "## Main comparison\n\nThe Backpack is not done: no comparison.\n"
    models = list(data["models"])
    rows = declared_rows() + secondary_rows()
    family, count = tested_family(data, rows, models[1:])
    values = [[label] + [value_cell(measure_for(m, mb, mt), finals(data, m)) for m in models] for label, mb, mt in rows]
    tests = [[label] + [test_cell(*family[(label, m)], m) for m in models[1:]] for label, _, mt in rows if mt]
    return "\n".join([
        "## Main comparison", "",
        "Every measure of every model. One seed: value [95% bootstrap interval over the items; Wilson for "
        "accuracies; sacreBLEU's for chrF]. Several seeds: mean (range). Rows marked exploratory are the "
        "Backpack's other vectors (its embedding, its closest and farthest sense pair): they were chosen after "
        "the declared sense mean and are not evidence.", "",
        markdown_table(["measure"] + [LABELS[m] for m in models], values), "",
        f"Each model minus the Backpack, paired over items and seeds, with Holm's adjustment over the {count} tests "
        "of this table (for losses, lower is better):", "",
        markdown_table(["measure"] + [f"{LABELS[m]} - Backpack" for m in models[1:]], tests), ""])


def write_report(results, out=None):
    """Write out/study.md (out: default the results folder's parent) and its figures; return its path."""
    results = Path(results)
    out = Path(out) if out else results.parent
    data = load(results)
    parts = ["# The study: Backpack against matched Transformers, SENSIA against its controls, sense interventions",
             "", f"Generated {datetime.date.today().isoformat()} from {results.name}/ by "
             "`python -m experiments.study report` (experiments/study.sh runs it last; docs/study.md).", "",
             summary_section(data), setup_section(data), models_section(data), curves_section(data, out),
             main_section(data), sensia_section(data["sensia"], figures.sensia_figures(out, data["sensia"])),
             interventions_section(data["interventions"], figures.intervention_figures(out, data["interventions"])),
             senses_section(final(data["models"]["backpack"][0]) if "backpack" in data["models"] else None)]
    path = out / "study.md"
    atomic_write_text(path, "\n".join(parts))
    return path
