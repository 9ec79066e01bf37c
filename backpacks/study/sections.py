"""The study report's sections on SENSIA, the interventions and the senses (report.py assembles them).

    sensia_section(sensia, figure_names)    # sensia: {run: {"results": results.json, "log": training_log}}
    interventions_section(interventions, figure_names)
    senses_section(results)                 # the Backpack's evaluation
"""
from backpacks import metrics
from backpacks.eval.report import fmt, fmt_interval, markdown_table, multiple_choice_accuracies
from backpacks.study import measures as sm
from backpacks.metrics import accuracy_interval


def evaluated(runs):
    """{name: results.json} of the runs that were evaluated."""
    return {name: run["results"] for name, run in runs.items() if run.get("results")}


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


def sensia_section(sensia, figure_names):
    runs = evaluated(sensia)
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


def interventions_section(iv, figure_names):
    if not iv:
        return "## Interventions\n\nThe interventions did not run.\n"
    lines = ["## Interventions", "",
             "On the Backpack against the token-matched Transformer; ± one standard error over topics, professions, "
             "edits or prompts. Full tables: [interventions.md](results/interventions.md).", ""]
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


def sensia_findings(sensia_runs):
    """SENSIA against the LM-only control on the numbers with a chance level or a control."""
    runs = {name: r.get("sensia", {}).get("test_pairs") for name, r in evaluated(sensia_runs).items()}
    if not runs.get("sensia") or not runs.get("lm_only"):
        return ["- SENSIA: not evaluated against its LM-only control."]
    a, b = runs["sensia"], runs["lm_only"]
    return [f"- SENSIA against the LM-only control ({a['pairs']} test pairs, chance {a['recall@1_chance']:.3f}; "
            f"Wilson 95% intervals; one adaptation run each): R@1 z_sns {recall_text(a, 'recall@1_sns')} against "
            f"{recall_text(b, 'recall@1_sns')} ({paired_recall(a, b, 'recall@1_sns')}), z_ctx "
            f"{recall_text(a, 'recall@1_ctx')} against {recall_text(b, 'recall@1_ctx')} "
            f"({paired_recall(a, b, 'recall@1_ctx')}); French test perplexity {a['ppl_fr']:.1f} against {b['ppl_fr']:.1f}."]


def paired_recall(a, b, key):
    """The paired bootstrap of a - b over the same test pairs (each pair's mean hit of both directions)."""
    hits_a, hits_b = (pairs.get("pair_hits", {}).get(key) for pairs in (a, b))
    if not hits_a or not hits_b:
        return "no paired test: no per-pair hits"
    why = sm.same_items(hits_a, hits_b)
    if why:
        return f"no paired test: {why}"
    test = sm.compare([hits_a], [hits_b], metrics.resampled_mean)
    return f"difference {sm.fmt_test(test)}, paired p={sm.fmt_p(test['p_value'])}"
