"""Results of an evaluation as text: JSON-safe values, the headline metrics, markdown tables, report.md."""
import math

import numpy as np

from backpacks.eval.multiple_choice import LENGTH_TERMS


def json_safe(obj):
    """Replace non-finite floats (NaN, inf) by None so the JSON is standard."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def headline_metrics(results, with_intervals=False):
    """{metric name: value} of the figures worth a table row, for summaries and comparisons; with
    with_intervals, also {metric name: its 95% bootstrap interval [low, high]} where it has one."""
    rows, intervals = {}, {}
    for kind, count in results.get("run", {}).get("params", {}).items():
        rows[f"parameters ({kind.replace('_', '-')})"] = count
    loss = results.get("loss", {})
    for lang in ("all", "en", "fr"):
        if lang in loss:
            rows[f"{loss['split']} loss ({lang})"] = loss[lang]["loss"]
            intervals[f"{loss['split']} loss ({lang})"] = loss[lang].get("ci95")
    if "all" in loss:
        rows[f"{loss['split']} perplexity"] = loss["all"]["perplexity"]
    translation = results.get("translation", {})
    for direction in ("en-fr", "fr-en"):
        for decoding, entry in translation.get(direction, {}).items():
            for metric, key in (("BLEU", "bleu"), ("chrF", "chrf")):
                rows[f"{direction} {decoding} {metric}"] = entry[key]["score"]
                intervals[f"{direction} {decoding} {metric}"] = entry[key].get("ci95")
            rows[f"{direction} {decoding} char acc"] = entry["char_accuracy"]
    for name, entry in results.get("wordsim", {}).get("sets", {}).items():
        for rep, sp in entry.get("spearman", {}).items():
            if not rep.startswith("sense:"):
                rows[f"wordsim {name} rho ({rep})"] = sp["rho"]
                intervals[f"wordsim {name} rho ({rep})"] = sp.get("rho_ci95")
    bli = results.get("bli", {})
    for direction in ("en-fr", "fr-en"):
        for rep in bli.get("representations", []):
            if rep in bli.get(direction, {}):
                for method in ("cosine", "csls"):
                    subset = bli[direction][rep].get(f"{method}_excluding_identical", {})
                    rows[f"BLI {direction} P@1 {method} ({rep}, non-identical)"] = subset.get("p@1")
                    intervals[f"BLI {direction} P@1 {method} ({rep}, non-identical)"] = \
                        subset.get("ci95", {}).get("p@1")
    sentence = results.get("sentence", {})
    for states in ("backbone", "backpack_output"):
        if states in sentence:
            entry = sentence[states]["mean"]
            rows[f"sentence {states} mean-pool R@1 en->fr"] = entry["recall@1_en_to_fr"]
            intervals[f"sentence {states} mean-pool R@1 en->fr"] = entry.get("ci95", {}).get("recall@1_en_to_fr")
            rows[f"sentence {states} mean-pool cos (pair - random)"] = \
                entry["pair_cosine"]["mean"] - entry["derangement_cosine"]["mean"]
    entropy = results.get("senses", {}).get("alpha_entropy", {})
    if "mean_normalised" in entropy:
        rows["alpha entropy (normalised)"] = entropy["mean_normalised"]
    for name, acc in multiple_choice_accuracies(results).items():
        rows[name], intervals[name] = acc["accuracy"], (acc["ci_low"], acc["ci_high"])
    if with_intervals:
        return rows, {name: interval for name, interval in intervals.items() if interval}
    return rows


def multiple_choice_accuracies(results):
    """{metric name: accuracy dict with its interval} of the XNLI / PAWS-X reporting halves."""
    accuracies = {}
    for task in ("xnli", "pawsx"):
        for line in ("en", "fr", "en->fr"):
            entry = results.get(task, {}).get(line, {})
            if "accuracy" in entry:
                accuracies[f"{task} {line} accuracy (tuned)"] = entry["accuracy"]
                accuracies[f"{task} {line} accuracy (conditional)"] = entry["conditional"]
    return accuracies


def multiple_choice_section(results):
    """report.md lines: accuracy on the reporting half next to its controls, per task and line."""
    out = []
    for task in ("xnli", "pawsx"):
        section = results.get(task, {})
        if "scoring" not in section:
            continue
        parameter = LENGTH_TERMS[section["length_term"]].parameter
        out += [f"## Multiple choice: {task}", "", f"Scoring `{section['scoring']}`, lambda and {parameter} tuned "
                f"on the tuning half, accuracy ({section['interval']} interval) on the reporting half.", ""]
        rows = []
        for line in ("en", "fr", "en->fr"):
            entry = section.get(line, {})
            if "skipped" in entry:
                rows.append([line, f"skipped: {entry['skipped']}"] + [""] * 6)
            elif entry:
                acc, cond, tuned = entry["accuracy"], entry["conditional"], entry["tuned"]
                rows.append([line, f"{tuned['lambda']:.1f} / {tuned[parameter]:.1f}", interval_text(acc),
                             interval_text(cond), f"{entry['chance']:.3f}",
                             f"{entry['majority']['accuracy']:.3f} ({entry['majority']['label']})", str(acc["n"]),
                             f"{entry['contexts_cut']} / {entry['examples'] * round(1 / entry['chance'])}"
                             if line != "en->fr" else ""])
        out += [markdown_table(["line", f"lambda / {parameter}", "accuracy [95% CI]", "conditional [95% CI]", "chance",
                                "majority", "reporting n", "contexts cut / option sequences"], rows), ""]
        out += [f"- template {lang}: `{section[lang]['template']}` (tag {section[lang]['language_tag']})"
                for lang in ("en", "fr") if "template" in section.get(lang, {})] + [""]
    return out


def interval_text(acc):
    return f"{acc['accuracy']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]"


def fmt_interval(value, interval):
    """A value and, if known, its 95% interval: '12.3 [10.1, 14.6]'."""
    return fmt(value) + (f" [{fmt(interval[0])}, {fmt(interval[1])}]" if interval and value is not None else "")


def headline_table(results):
    """The headline metrics as a markdown table, with 95% bootstrap intervals in brackets."""
    rows, intervals = headline_metrics(results, with_intervals=True)
    return markdown_table(["metric", "value [95% interval]"],
                          [[name, fmt_interval(value, intervals.get(name))] for name, value in rows.items()])


def fmt(value):
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def skipped_parts(section, name=""):
    """(dotted name, reason) of every part of the results that was skipped, at any depth."""
    if isinstance(section, dict):
        if "skipped" in section:
            yield name, section["skipped"]
        for key, value in section.items():
            yield from skipped_parts(value, f"{name}.{key}" if name else key)


def render_report(results):
    """report.md: run facts, the headline table, skipped tasks, translation examples, sense tables."""
    run = results["run"]
    out = [f"# Evaluation of {run['out_dir']}", "",
           f"{run['model_type']} checkpoint `{run['checkpoint']}` (iter {run['iter_num']}, "
           f"{run['params']['total']:,} parameters: {run['params']['embedding']:,} embedding, "
           f"{run['params']['non_embedding']:,} non-embedding), dataset `{run['data_dir']}`, evaluated on {run['device']} "
           f"in {run['seconds']:.1f} s.", "",
           headline_table(results), "",
           "Intervals: 95% bootstrap over the test items (sacreBLEU's own for BLEU and chrF; sentences, word "
           "pairs or dictionary queries resampled for the rest).", ""]
    bli = results.get("bli", {})
    if "dictionary" in bli:
        out += [f"Lexicon induction: dictionary `{bli['dictionary']['path']}` ({bli.get('dictionary_split')}), "
                f"{bli['candidates_asked']} candidate words per language.", ""]
    skipped = list(skipped_parts({task: results[task] for task in results if task != "run"}))
    if skipped:
        out += ["## Skipped", ""] + [f"- {name}: {reason}" for name, reason in skipped] + [""]
    translation = results["translation"]
    if "skipped" not in translation:
        out += ["## Translation examples", "", f"Test set: `{translation['test_set']}` "
                f"({translation['samples_used']} pairs per direction).", ""]
        for direction in ("en-fr", "fr-en"):
            for decoding, entry in translation[direction].items():
                out += [f"### {direction}, {decoding} ({entry['seconds']:.1f} s, BLEU signature "
                        f"`{entry['bleu']['signature']}`)", ""]
                for ex in entry["examples"]:
                    out += [f"- source: {ex['source']}", f"  - reference: {ex['reference']}",
                            f"  - model: {ex['hypothesis']}"]
                out.append("")
    malformed = [(name, entry["resource"]) for name, entry in results["wordsim"].get("sets", {}).items()
                 if entry.get("resource", {}).get("malformed")]
    if "dictionary" in results["bli"] and results["bli"]["dictionary"]["malformed"]:
        malformed.append(("dictionary", results["bli"]["dictionary"]))
    if malformed:
        out += ["## Malformed resource lines (skipped, the rest used)", ""]
        out += [f"- {name} (`{res['path']}`): {res['malformed']} line(s): "
                + ", ".join(f"{m['line']} ({m['reason']})" for m in res["malformed_lines"]) for name, res in malformed]
        out.append("")
    out += multiple_choice_section(results)
    senses = results["senses"]
    if isinstance(senses.get("top_tokens"), list):
        out += ["", f"## Sense projections (top {len(senses['top_tokens'][0].get('senses', [[]])[0])} tokens of "
                f"E C_l(w), vocabulary: {senses['vocabulary']})", ""]
        for entry in senses["top_tokens"]:
            if "senses" not in entry:
                continue
            out += [f"### {entry['word']} (pieces: {' '.join(map(repr, entry['pieces']))})", ""]
            out.append(markdown_table(["sense", "top tokens"],
                                      [[str(l), " ".join(repr(t) for t in toks)] for l, toks in enumerate(entry["senses"])]))
            out.append("")
    cosines = senses.get("translation_pair_cosines", {})
    if "per_sense_pair_cosine" in cosines:
        out += [f"## Per-sense cosine of {cosines['pairs']} translation pairs vs random pairs", ""]
        out.append(markdown_table(["sense", "pairs", "random"],
                                  [[str(l), a, b] for l, (a, b) in enumerate(zip(cosines["per_sense_pair_cosine"],
                                                                              cosines["per_sense_derangement_cosine"]))]))
    return "\n".join(out) + "\n"
