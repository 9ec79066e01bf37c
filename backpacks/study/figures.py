"""The study's figures (PNG, written atomically beside study.md); each function returns the names of
the files it wrote, none where its data is missing."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402

from backpacks.atomic import save_figure  # noqa: E402
from backpacks.study import measures as sm  # noqa: E402
from backpacks.study.plan import meta_model  # noqa: E402
from backpacks.study.measures import LABELS, word_vector  # noqa: E402

STYLE = {"backpack": ("C0", "-"), "transformer_tokens": ("C1", "-"), "transformer_flops": ("C2", "-"),
         "transformer_params": ("C3", "-"), "backpack_seed2": ("C0", ":"), "transformer_tokens_seed2": ("C1", ":"),
         "sensia": ("C0", "-"), "lm_only": ("C1", "-"), "mcl": ("C2", "-")}


def flops_per_token(run):
    """Training FLOPs per token of an evaluated run's model (model.flops_per_token)."""
    return meta_model(run["model_type"], **run["model_args"]).flops_per_token()


def loss_figures(out, data, tokens_per_iter):
    """Validation loss against training tokens and against training FLOPs, every model."""
    runs = sm.evaluated(data["runs"])
    if not runs or not tokens_per_iter:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name, results in runs.items():
        log = [e for e in data["runs"][name]["log"] or [] if isinstance(e.get("val_loss"), (int, float))]
        tokens = np.array([e["iter"] for e in log]) * tokens_per_iter
        colour, style = STYLE[name]
        for ax, x in zip(axes, (tokens / 1e6, tokens * flops_per_token(results["run"]) / 1e15)):
            ax.plot(x, [e["val_loss"] for e in log], style, color=colour, marker="o", markersize=3, label=LABELS[name])
    for ax, xlabel in zip(axes, ("training tokens (millions)", "training FLOPs (PFLOPs)")):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss (nats/token)")
    axes[0].legend(fontsize=8)
    return [save_figure(fig, out / "loss_curves.png")]


def interval_bars(ax, groups, series):
    """Grouped bars with 95% interval whiskers: series {label: [(value, [low, high]) or None per group]}."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (label, points) in enumerate(series.items()):
        values = np.array([p[0] if p else np.nan for p in points], dtype=float)
        errors = np.array([[p[0] - p[1][0], p[1][1] - p[0]] if p and p[1] else [0, 0] for p in points], dtype=float).T
        errors = np.clip(np.nan_to_num(errors), 0, None)  # a percentile interval may leave out its point estimate
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, yerr=errors, capsize=2, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)


def main_figures(out, data):
    """Word similarity and lexicon induction: each model's vector, and the random-pieces control."""
    runs = sm.evaluated(data["runs"])
    if "backpack" not in runs:
        return []
    panels = [("word similarity: Spearman rho", sm.WORDSIM_SETS,
               lambda group, rep: sm.wordsim_measure(group, rep)),
              ("lexicon induction: P@1, CSLS, non-identical pairs", ("en-fr", "fr-en"),
               lambda group, rep: sm.bli_measure(group, rep))]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [5, 2]})
    for ax, (title, groups, measure) in zip(axes, panels):
        series = {}
        for name, results in runs.items():
            rep = word_vector(name)
            series[f"{LABELS[name]} ({rep})"] = [measure(g, rep).read(results) for g in groups]
        series["random pieces (Backpack's pieces)"] = [measure(g, "random_pieces").read(runs["backpack"]) for g in groups]
        interval_bars(ax, groups, series)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    return [save_figure(fig, out / "lexical.png")]


def sensia_figures(out, data):
    """SENSIA's validation curves against its controls: recall@1, French sense entropy, French loss."""
    logs = {name: run["log"] for name, run in data["sensia"].items() if name != "english" and run["log"]}
    if not logs:
        return []
    keys = [("val_pairs_recall@1_sns", "recall@1 (z_sns, both ways)"),
            ("val_pairs_sense_entropy_fr", "sense entropy, French"), ("val_loss_fr_pairs", "French loss (nats/token)")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, log in logs.items():
        colour, style = STYLE.get(name, ("C7", "-"))
        for ax, (key, title) in zip(axes, keys):
            points = [(e["iter"], e[key]) for e in log if isinstance(e.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), style, color=colour, marker="o", markersize=3, label=name)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("adaptation step")
            ax.grid(alpha=0.3)
    chance = next((e.get("val_pairs_recall@1_chance") for log in logs.values() for e in log), None)
    if chance:
        axes[0].axhline(chance, color="grey", linestyle="--", linewidth=0.8, label="chance")
    axes[0].legend(fontsize=8)
    return [save_figure(fig, out / "sensia_curves.png")]


def intervention_figures(out, data):
    """Topic control: bag mass against strength, per language, annealing on and off (± one SE)."""
    summary = ((data["interventions"] or {}).get("topic") or {}).get("summary")
    if not summary:
        return []
    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4), squeeze=False)
    for ax, (lang, entry) in zip(axes[0], summary.items()):
        for annealing, colour in (("off", "C0"), ("on", "C2")):
            curve = entry["backpack"][annealing]
            strengths = sorted(curve, key=float)
            means = [curve[s]["mass"]["mean"] for s in strengths]
            errors = [curve[s]["mass"]["se"] or 0 for s in strengths]
            ax.errorbar([float(s) for s in strengths], means, yerr=errors, color=colour, marker="o", capsize=3,
                        label=f"Backpack, annealing {annealing}")
        ax.axhline(entry["transformer"][min(entry["transformer"], key=float)]["mass"]["mean"], color="C1",
                   linestyle="--", label="Transformer, unedited")
        ax.set_title(f"topic control ({lang})", fontsize=10)
        ax.set_xlabel("strength (scale of the topic senses)")
        ax.set_ylabel("bag probability mass")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return [save_figure(fig, out / "topic_control.png")]
