"""study.md: the study's one report (experiments/study.sh writes the runs; this reads them).

    path = write_report(Path("out/study"))

Sections: setup (machine, corpus, time per step), the models and their matching, training curves,
the main comparison with paired tests against the Backpack, SENSIA against its controls, the
interventions, senses read as tokens, and a summary of what holds and what does not. Every number
is read from a run's results; a part that did not run says so instead.
"""
import datetime
import json
from pathlib import Path

from backpacks import metrics
from backpacks.atomic import atomic_write_text
from backpacks.eval.report import fmt, fmt_interval, markdown_table, multiple_choice_accuracies
from backpacks.metrics import accuracy_interval, intervals_overlap
from backpacks.study import figures
from backpacks.study import measures as sm
from backpacks.study.measures import BACKPACK_VECTOR, LABELS, evaluated, word_vector

MAIN_RUNS = ("backpack", "transformer_tokens", "transformer_flops", "transformer_params")
SEED_RUNS = ("backpack_seed2", "transformer_tokens_seed2")
SENSIA_RUNS = ("english", "sensia", "lm_only", "mcl")
SECTIONS = ("Summary", "Setup", "Models", "Main comparison", "SENSIA", "Interventions", "Senses")


def read_json(path):
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load(out):
    """Everything the report reads: runs, SENSIA runs, plan, step times, comparison, interventions."""
    def run(directory):
        return {"results": read_json(directory / "eval" / "results.json"),
                "log": read_json(directory / "training_log.json")}
    times = {}
    if (out / "steps" / "times.tsv").is_file():
        for line in (out / "steps" / "times.tsv").read_text().splitlines():
            name, seconds = line.rsplit("\t", 1)
            times[name] = times.get(name, 0) + int(seconds)
    return {"runs": {name: run(out / name) for name in MAIN_RUNS + SEED_RUNS if (out / name).is_dir()},
            "sensia": {name: run(out / "sensia" / name) for name in SENSIA_RUNS if (out / "sensia" / name).is_dir()},
            "plan": read_json(out / "plan.json") or {}, "times": times,
            "comparison": read_json(out / "comparison" / "comparison.json") or {},
            "interventions": read_json(out / "backpack" / "interventions" / "interventions.json")}


# ----------------------------------------------------------------------------- setup and models

def setup_section(data):
    plan, times = data["plan"], data["times"]
    rows = [[name, f"{seconds / 60:.1f}"] for name, seconds in times.items()]
    return "\n".join([
        "## Setup", "",
        f"- Machine: {plan.get('machine', 'not recorded')}.",
        f"- Corpus: `{plan.get('corpus', 'not recorded')}`; val and test pairs held out by prepare.py "
        "(near-duplicates kept in one split).",
        f"- Model shape: {describe_shape(plan)}.",
        f"- Translation test set: {plan.get('translation_test', 'not recorded')}.",
        f"- Lexicon induction dictionary: {plan.get('bli_dictionary', 'not recorded')}.",
        f"- Wall time of the recorded steps: {sum(times.values()) / 60:.0f} minutes.", "",
        markdown_table(["step", "minutes"], rows) if rows else "No step times were recorded.", ""])


def describe_shape(plan):
    s = plan.get("settings", {})
    return (f"{s.get('n_layer')} layers, {s.get('n_head')} heads, width {s.get('n_embd')}, {s.get('n_senses')} senses "
            f"(Backpack), block {s.get('block_size')}, batch {s.get('batch_size')}, vocabulary {plan.get('vocab_size')}")


def tokens_per_iter(plan):
    settings = plan.get("settings", {})
    return settings.get("batch_size", 0) * settings.get("block_size", 0)


def models_section(data, figure_names):
    matched, per_iter = data["plan"].get("matched", {}), tokens_per_iter(data["plan"])
    rows = []
    for name, results in evaluated(data["runs"]).items():
        run, log = results["run"], data["runs"][name]["log"] or [{"iter": results["run"]["iter_num"]}]
        iters = log[-1]["iter"]
        planned = matched.get(name.replace("_seed2", ""), {}).get("max_iters", data["plan"].get("iters"))
        why = matched.get(name.replace("_seed2", ""), {}).get("why", "the reference")
        if planned is not None and iters != planned:
            why = f"NOT matched: trained {iters} of the {planned} iterations the plan asks"
        rows.append([LABELS[name], f"{run['params']['total']:,}", f"{iters:,}", f"{iters * per_iter / 1e6:.2f}M",
                     f"{iters * per_iter * figures.flops_per_token(run) / 1e15:.3f}", fmt(run.get("best", {}).get("value")),
                     f"{run['iter_num']:,}", why + (", second seed" if name.endswith("seed2") else "")])
    header = ["model", "parameters", "iterations", "tokens", "training PFLOPs", "best val loss", "best.pt at", "matching"]
    return "\n".join(["## Models", "", markdown_table(header, rows), "",
                      "The validation loss chose each best.pt and is not reported as a result. Training FLOPs: tokens x "
                      "model.flops_per_token (6N + attention, per token).", "",
                      *(f"![{name}]({name})" for name in figure_names), ""])


# ----------------------------------------------------------------------------- main comparison

def row_measures():
    """(row label, the Backpack's measure, the Transformer's measure, in the summary) of the main table."""
    rows = [(f"test loss ({lang})", m, m, lang == "all") for lang in ("all", "en", "fr") for m in [sm.loss_measure(lang)]]
    mixed = "sense mean (B) / embedding (T)"
    for name in sm.WORDSIM_SETS:
        rows.append((f"{name} rho: {mixed}", sm.wordsim_measure(name, BACKPACK_VECTOR), sm.wordsim_measure(name, "embedding"), True))
        rows += [(f"{name} rho: {rep}", m, m, False) for rep in ("embedding", "random_pieces") for m in [sm.wordsim_measure(name, rep)]]
    for direction in ("en-fr", "fr-en"):
        rows.append((f"BLI {direction} P@1 CSLS: {mixed}", sm.bli_measure(direction, BACKPACK_VECTOR),
                     sm.bli_measure(direction, "embedding"), True))
        rows += [(f"BLI {direction} P@1 CSLS: {rep}", m, m, False) for rep in ("embedding", "random_pieces")
                 for m in [sm.bli_measure(direction, rep)]]
    retrieval = sm.retrieval_measure("backbone")
    return rows + [("sentence retrieval R@1 en->fr (backbone mean-pool)", retrieval, retrieval, True)]


def measure_of(run_name, backpack_measure, transformer_measure):
    return backpack_measure if word_vector(run_name) == BACKPACK_VECTOR else transformer_measure


def paired_rows(runs):
    """(value rows, test rows, summary tests) of the measures with per-item data: each run's value [95%
    interval], and each other run minus the Backpack by a paired bootstrap."""
    reference, others = runs["backpack"], [name for name in runs if name != "backpack"]
    values, tests, summary = [], [], {}
    for label, mb, mt, key in row_measures():
        reads = [measure_of(name, mb, mt).read(results) for name, results in runs.items()]
        values.append([label] + [fmt_interval(r[0], r[1]) if r else "n/a" for r in reads])
        row = [label]
        for name in others:
            test, why = sm.paired((measure_of(name, mb, mt), runs[name]), (mb, reference))
            row.append(sm.fmt_test(test) if test else why)
            if key:
                summary[(label, name)] = (test, mb.higher_is_better)
        tests.append(row)
    return values, tests, summary


def translation_rows(runs, comparison):
    """BLEU and chrF with sacreBLEU's intervals and its paired bootstrap p-values against the Backpack."""
    p_values = comparison.get("paired_bootstrap_p_values", {})
    label_of = {Path(m["out_dir"]).name: label for label, m in comparison.get("models", {}).items()}
    values, tests = [], []
    for direction in ("en-fr", "fr-en"):
        for metric, key in (("BLEU", "bleu"), ("chrF", "chrf")):
            entries = {name: r.get("translation", {}).get(direction, {}).get("greedy", {}).get(key) for name, r in runs.items()}
            label = f"{direction} greedy {metric}"
            values.append([label] + [fmt_interval(e["score"], e.get("ci95")) if e else "n/a" for e in entries.values()])
            row = [label]
            for name in [n for n in runs if n != "backpack"]:
                p = p_values.get(label, {}).get(label_of.get(name))
                a, b = entries.get(name), entries.get("backpack")
                row.append("no paired test" if not (a and b and p is not None) else "identical scores"
                           if a["score"] == b["score"] else f"{a['score'] - b['score']:+.2f}, p={p:.3f} (sacreBLEU paired)")
            tests.append(row)
    return values, tests


def choice_rows(runs):
    """XNLI / PAWS-X accuracies with Wilson intervals; against the Backpack: whether the intervals overlap."""
    accuracies = {name: multiple_choice_accuracies(r) for name, r in runs.items()}
    names = [n for n in accuracies["backpack"] if "(tuned)" in n]
    values, tests = [], []
    for metric in names:
        entries = {name: acc.get(metric) for name, acc in accuracies.items()}
        values.append([metric] + [f"{e['accuracy']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]" if e else "n/a"
                                  for e in entries.values()])
        ref = entries["backpack"]
        tests.append([metric] + [("intervals overlap" if intervals_overlap((e["ci_low"], e["ci_high"]),
                                                                          (ref["ci_low"], ref["ci_high"])) else "disjoint")
                                 if e else "n/a" for name, e in entries.items() if name != "backpack"])
    return values, tests


def main_section(data, figure_names):
    runs = evaluated(data["runs"])
    if "backpack" not in runs:
        return "## Main comparison\n\nThe Backpack was not evaluated: no comparison.\n", {}
    values, tests, summary = paired_rows(runs)
    for rows in (translation_rows(runs, data["comparison"]), choice_rows(runs)):
        values += rows[0]
        tests += rows[1]
    labels = [LABELS[n] for n in runs]
    return "\n".join([
        "## Main comparison", "",
        "Each model's value with its 95% interval (bootstrap over the test items; Wilson for accuracies; "
        "sacreBLEU's for BLEU and chrF). Word vectors: the Backpack's mean of senses (declared before any "
        "result) against the Transformer's embedding, then the embedding of both, then the random-pieces "
        "control (random vectors per subword piece: what spelling alone gives).", "",
        markdown_table(["measure"] + labels, values), "",
        "Each model minus the Backpack on the same items: the difference, its 95% paired-bootstrap interval and "
        "two-sided p (for losses, lower is better). Accuracies of XNLI / PAWS-X were not stored per item: "
        "there, overlapping intervals (a conservative test).", "",
        markdown_table(["measure"] + [f"{label} - Backpack" for label in labels[1:]], tests), "",
        *(f"![{name}]({name})" for name in figure_names), ""]), summary


# ----------------------------------------------------------------------------- SENSIA

def sensia_table(runs):
    """Markdown table of SENSIA runs' evaluations ({name: results.json}): French perplexity, recall@1,
    entropy, topology and Procrustes against their random pairings, the mixture ablation, XNLI / PAWS-X fr."""
    rows = []
    for name, results in runs.items():
        s = results.get("sensia", {})
        if "test_pairs" not in s:
            rows.append([name, f"skipped: {s.get('skipped', 'not evaluated')}"] + [""] * 8)
            continue
        t, p, m = s["test_pairs"], s["procrustes"], s["mixture_ablation"]
        acc = multiple_choice_accuracies(results)
        mc = [acc.get(f"{task} fr accuracy (tuned)") for task in ("xnli", "pawsx")]
        rows.append([name, fmt(t["ppl_fr"]), " / ".join(recall_text(t, key) for key in ("recall@1_sns", "recall@1_ctx")),
                     f"{t['sense_entropy_fr']:.2f} / {t['sense_entropy_max']:.2f}",
                     fmt_interval(s["topology"]["pairs"]["mean"], s["topology"]["pairs"]["ci95"]),
                     fmt_interval(s["topology"]["random_pairing"]["mean"], s["topology"]["random_pairing"]["ci95"]),
                     f"{p['in_sample']:.3f} ({p['in_sample_random_pairing']:.3f})",
                     f"{p['held_out_half']:.3f} ({p['held_out_half_random_pairing']:.3f})",
                     " / ".join(f"{m[k]['loss']:.3f}" for k in ("full", "top1", "uniform")),
                     " / ".join(f"{a['accuracy']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]" if a else "n/a" for a in mc)])
    header = ["run", "French ppl (test)", "R@1 z_sns / z_ctx [95%]", "sense entropy fr / ln k", "topology rho [95%]",
              "random pairing [95%]", "Procrustes in-sample (random)", "Procrustes held-out (random)",
              "French CE full / top-1 / uniform", "XNLI fr / PAWS-X fr (tuned) [95%]"]
    first = next((r["sensia"]["test_pairs"] for r in runs.values() if "test_pairs" in r.get("sensia", {})), {})
    note = (f"{first.get('pairs', 'n/a')} test pairs (R@1 chance {fmt(first.get('recall@1_chance'))}); sense entropy "
            "against its maximum ln k; topology and Procrustes against a random pairing of the same words.")
    return markdown_table(header, rows) + "\n\n" + note


def recall_text(pairs, key):
    """recall@1 over both directions (2 x pairs queries) with its Wilson interval."""
    n = 2 * pairs["pairs"]
    interval = accuracy_interval(round(pairs[key] * n), n)
    return f"{pairs[key]:.3f} [{interval['ci_low']:.3f}, {interval['ci_high']:.3f}]"


def sensia_section(data, figure_names):
    runs = evaluated(data["sensia"])
    if not runs:
        return "## SENSIA\n\nNo SENSIA run was evaluated.\n"
    return "\n".join([
        "## SENSIA", "",
        "An English-only Backpack of the same shape (english), then SENSIA, the LM-only control (the same data, "
        "steps, schedule and freezing, only the French LM loss) and MCL (mean-pooled contrastive baseline), each "
        "evaluated at its last step.", "", sensia_table(runs), "", *(f"![{name}]({name})" for name in figure_names), ""])


# ----------------------------------------------------------------------------- interventions and senses

def mean_se(entry):
    if not entry:
        return "n/a"
    return f"{entry['mean']:.4g}" + (f" ± {entry['se']:.2g}" if entry.get("se") is not None else "")


def interventions_section(data, figure_names):
    iv = data["interventions"]
    if not iv:
        return "## Interventions\n\nThe interventions did not run.\n"
    lines = ["## Interventions", "",
             "On the Backpack against the token-matched Transformer; ± one standard error over topics, professions, "
             "edits or prompts. Full tables: [interventions.md](backpack/interventions/interventions.md).", ""]
    lines += topic_lines(iv.get("topic", {}).get("summary", {}))
    rows = []
    for lang, entry in iv.get("debias", {}).items():
        for model, s in entry.get("summary", {}).get("all", {}).items():
            rows.append([lang, model, mean_se(s.get("unmodified_per_piece")), mean_se(s.get("removed_per_piece")),
                         mean_se(s.get("optimised_per_piece"))])
    lines += ["**Gender bias** (max(p(he)/p(she), p(she)/p(he)) per piece, 1 unbiased; the Backpack's gender sense "
              "removed or scaled by the optimised p; the Transformer's rows edit its own he-she direction alike):", "",
              markdown_table(["lang", "model", "unmodified", "sense removed", "optimised"], rows), ""]
    rows = [[lang, mean_se(s.get("margin_change")), mean_se(s.get("projection")), mean_se(s.get("collateral_kl"))]
            for lang, s in iv.get("knowledge", {}).get("summary", {}).items()]
    lines += ["**Knowledge edits** (change of the margin log p(new) - log p(old) after the edit; > 0 is the "
              "intended direction):", "", markdown_table(["lang", "margin change", "projection", "collateral KL"], rows), ""]
    lines += steering_lines(iv.get("steering", {}))
    return "\n".join(lines + [*(f"![{name}]({name})" for name in figure_names), ""])


def topic_lines(summary):
    """Bag mass and fluency (NLL of the samples) at the strongest edit, against the Transformer with the
    logit bonus on the bag words whose bag mass is closest (run_interventions.py's matching)."""
    rows = []
    for lang, entry in summary.items():
        for annealing in ("off", "on"):
            curve = entry["backpack"][annealing]
            weakest, strongest = sorted(curve, key=float)[0], sorted(curve, key=float)[-1]
            bonus = (entry.get("matched") or {}).get(annealing, {}).get(strongest, {}).get("mass")
            baseline = entry["transformer"].get(str(float(bonus))) if bonus is not None else None
            rows.append([lang, annealing, mean_se(curve[weakest]["mass"]), mean_se(curve[weakest]["rate"]), strongest,
                         mean_se(curve[strongest]["mass"]), mean_se(curve[strongest]["rate"]),
                         mean_se(curve[strongest]["nll"]), fmt(bonus)]
                        + [mean_se(baseline[key]) if baseline else "n/a" for key in ("mass", "rate", "nll")])
    return ["**Topic control** (mass: probability of the topic's bag words on the next token; rate: share of the "
            "sampled words that are bag words; NLL: nats/token of the samples under the unedited model, the fluency "
            "cost; the Transformer gets the logit bonus on the bag words whose mass is closest):", "",
            markdown_table(["lang", "annealing", "mass unedited", "rate unedited", "strength", "mass edited",
                            "rate edited", "NLL edited", "Transformer bonus", "Transformer mass", "Transformer rate",
                            "Transformer NLL"], rows), ""]


def steering_lines(steering):
    """Share of the target language in samples from prompts in the other language, the Backpack's senses
    of the target language scaled (1 is the unedited model), against the Transformer's random directions."""
    rows = []
    for target, by_scale in steering.get("backpack", {}).items():
        prompt = "fr" if target == "en" else "en"  # steering has room to show where the prompt pulls the other way

        def share(entry):  # the results hold the French share of the generated words
            if not entry:
                return "n/a"
            mean = entry["mean"] if target == "fr" else 1 - entry["mean"]
            return f"{mean:.3f}" + (f" ± {entry['se']:.2g}" if entry.get("se") is not None else "")
        strongest = max(by_scale, key=float)
        control = steering.get("transformer", {}).get(strongest, {})
        rows.append([target, prompt, share(by_scale.get("1.0", {}).get(prompt)), strongest,
                     share(by_scale[strongest].get(prompt)), share(control.get(prompt))])
    return ["**Language steering** (share of the generated words in the target language, from prompts in the other "
            "language; the senses most tied to the target language scaled; control: the Transformer with as many "
            "random input directions scaled alike):", "",
            markdown_table(["target", "prompts", "unedited (scale 1)", "scale", "edited", "Transformer control"], rows)
            if rows else "did not run", ""]


def token_text(token):
    """A token as a table cell: printable (else its repr), no table-breaking pipe or backtick."""
    text = token.strip() if token.strip().isprintable() else repr(token)
    return "`" + (text or repr(token)).replace("|", "\\|").replace("`", "'") + "`"


def senses_section(results, words=4, top=6):
    senses = (results or {}).get("senses", {})
    top_tokens = senses.get("top_tokens", [])
    if isinstance(top_tokens, dict):  # the sense tables were skipped (no dictionary words), with the reason
        senses = top_tokens
    entries = top_tokens[:words] if isinstance(top_tokens, list) else []
    if not entries:
        return f"## Senses\n\nNo sense tables: {senses.get('skipped', 'the senses task did not run')}.\n"
    rows = [[f"sense {i}"] + [" ".join(token_text(t) for t in e["senses"][i][:top]) for e in entries]
            for i in range(len(entries[0]["senses"]))]
    return "\n".join(["## Senses", "",
                      f"The Backpack's senses of a few frequent dictionary words and their translations, each read as "
                      f"the {top} tokens it most raises ({senses.get('word_source', '')}).", "",
                      markdown_table(["sense"] + [e["word"] for e in entries], rows), ""])


# ----------------------------------------------------------------------------- summary

def adjusted_verdicts(tests, label_of):
    """{key: phrase} of a family of paired tests {key: (test, higher_is_better)}, Holm-adjusted together."""
    keys = list(tests)
    adjusted = metrics.holm([tests[k][0]["p_value"] if tests[k][0] else None for k in keys])
    return {k: sm.verdict(tests[k][0], tests[k][1], *label_of(k), p_value=p) for k, p in zip(keys, adjusted)}


def tested(tests):
    return sum(1 for test, _ in tests.values() if test and test["p_value"] is not None)


def control_verdicts(runs):
    """For each run: whether its word vector beats the random-pieces control, paired on the same items
    (Holm-adjusted over the table)."""
    groups = [(name, sm.wordsim_measure) for name in sm.WORDSIM_SETS] + [(d, sm.bli_measure) for d in ("en-fr", "fr-en")]
    tests = {(name, group): (sm.paired((measure(group, word_vector(name)), results),
                                       (measure(group, "random_pieces"), results))[0], True)
             for name, results in runs.items() for group, measure in groups}
    phrases = adjusted_verdicts(tests, lambda key: ("above the control", "below the control", "not different from the control"))
    rows = [[f"{LABELS[name]} ({word_vector(name)})"] + [phrases[(name, group)] for group, _ in groups] for name in runs]
    return markdown_table(["model"] + [g for g, _ in groups[:-2]] + ["BLI en-fr", "BLI fr-en"], rows), tested(tests)


def sensia_findings(sensia_runs):
    """SENSIA against the LM-only control on the numbers with a chance level or a control."""
    runs = {name: r.get("sensia", {}).get("test_pairs") for name, r in evaluated(sensia_runs).items()}
    if not runs.get("sensia") or not runs.get("lm_only"):
        return ["- SENSIA: not evaluated against its LM-only control."]
    a, b = runs["sensia"], runs["lm_only"]
    return [f"- SENSIA against the LM-only control ({a['pairs']} test pairs, chance {a['recall@1_chance']:.3f}; "
            f"Wilson 95% intervals): R@1 z_sns {recall_text(a, 'recall@1_sns')} against {recall_text(b, 'recall@1_sns')}, "
            f"z_ctx {recall_text(a, 'recall@1_ctx')} against {recall_text(b, 'recall@1_ctx')}; French test perplexity "
            f"{a['ppl_fr']:.1f} against {b['ppl_fr']:.1f}."]


def summary_section(tests, data):
    runs = evaluated(data["runs"])
    if not tests:
        return "## Summary\n\nNo paired comparison could be made (the Backpack was not evaluated).\n"
    others = [n for n in runs if n != "backpack"]
    phrases = adjusted_verdicts(tests, lambda key: (f"{LABELS[key[1]]} better", "Backpack better",
                                                    "no significant difference"))
    labels = list(dict.fromkeys(label for label, _ in tests))
    rows = [[label] + [phrases.get((label, name), "no test") for name in others] for label in labels]
    control_table, control_tests = control_verdicts(runs)
    return "\n".join([
        "## Summary", "",
        f"Paired bootstrap tests, each model against the Backpack on the same items, at 5% after Holm's adjustment "
        f"over the {tested(tests)} tests of this table (the main comparison has the differences, intervals and "
        "unadjusted p-values). 'no significant difference' is a finding, not a failure to run.", "",
        markdown_table(["measure"] + [LABELS[n] for n in others], rows), "",
        f"Against the spelling control (random vectors over the same subword pieces), paired on the same word pairs "
        f"or queries, Holm-adjusted over the {control_tests} tests of this table:", "", control_table, "",
        *sensia_findings(data["sensia"]), ""])


def write_report(out):
    """Write out/study.md and its figures; return the report's path."""
    data = load(out)
    runs = evaluated(data["runs"])
    main, tests = main_section(data, figures.main_figures(out, data))
    parts = ["# The study: Backpack against matched Transformers, SENSIA against its controls, sense interventions",
             "", f"Written {datetime.date.today().isoformat()} by `bash experiments/study.sh` (docs/study.md).", "",
             summary_section(tests, data), setup_section(data),
             models_section(data, figures.loss_figures(out, data, tokens_per_iter(data["plan"]))),
             main, sensia_section(data, figures.sensia_figures(out, data)),
             interventions_section(data, figures.intervention_figures(out, data)),
             senses_section(runs.get("backpack"))]
    path = out / "study.md"
    atomic_write_text(path, "\n".join(parts))
    return path
