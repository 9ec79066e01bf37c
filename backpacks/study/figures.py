"""The study's figures (PNG, written atomically beside study.md); each function returns the names of
the files it wrote, none where its data is missing."""
from functools import lru_cache

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402

from backpacks.atomic import save_figure  # noqa: E402
from backpacks.study import measures as sm  # noqa: E402
from backpacks.study.plan import meta_model  # noqa: E402
from backpacks.study.measures import LABELS  # noqa: E402

STYLE = {"backpack": "C0", "transformer_flops": "C2", "transformer_tokens": "C1", "transformer_params": "C3",
         "transformer_params_nonemb": "C4", "sensia": "C0", "lm_only": "C1", "mcl": "C2"}
# the learning curves' panels: (title, measure of a representation; None for the test loss)
PANELS = [("test loss (nats/token)", None)] + [(label, of) for _, label, of in sm.lexical_measures()]


def tokens_per_iter(plan):
    settings = plan.get("settings", {})
    return settings.get("batch_size", 0) * settings.get("block_size", 0)


def flops_per_token(run, plan):
    """Training FLOPs per token of an evaluated model (model.flops_per_token), the Backpack's with its sense
    network on the measured share of positions (the plan's sense_share)."""
    share = plan.get("sense_share", 1.0) if run["model_type"] == "backpack" else 1.0
    return model_flops(run["model_type"], tuple(sorted(run["model_args"].items())), share)


@lru_cache(maxsize=None)
def model_flops(model_type, model_args, share):
    return meta_model(model_type, **dict(model_args)).flops_per_token(distinct_share=share)


def curve_points(records, measure):
    """(iterations, (seeds, snapshots) values) of a model's seeds at their common snapshots."""
    common = sorted(set.intersection(*(set(map(int, r["snapshots"])) for r in records)))
    values = np.array([[(measure.read(r["snapshots"][str(it)]) or (np.nan,))[0] for it in common] for r in records],
                      dtype=float)
    return np.array(common), values


def learning_curves(out, data):
    """Every curve measure against training tokens and against training FLOPs (two figures): per model the
    mean over seeds with the seeds' range as a band, and each width's random-pieces control, dashed."""
    plan, per_iter = data["plan"], tokens_per_iter(data["plan"])
    if not data["models"] or not per_iter:
        return []
    names = []
    for axis, xlabel in (("tokens", "training tokens (millions)"), ("flops", "training FLOPs (PFLOPs)")):
        fig, axes = plt.subplots(2, 4, figsize=(18, 8), layout="constrained")  # titles clear of the row above
        for ax, (title, of) in zip(axes.flat, PANELS):
            controls = {}
            for model, records in data["models"].items():
                measure = sm.loss_measure("all") if of is None else of(sm.word_vector(model))
                iters, values = curve_points(records, measure)
                run = records[0]["snapshots"][str(records[0]["max_iters"])]["run"]
                scale = per_iter / 1e6 if axis == "tokens" else per_iter * flops_per_token(run, plan) / 1e15
                ax.plot(iters * scale, values.mean(axis=0), color=STYLE[model], marker="o", markersize=3,
                        label=f"{LABELS[model]} ({len(records)} seed{'s' if len(records) > 1 else ''})")
                if len(records) > 1:
                    ax.fill_between(iters * scale, values.min(axis=0), values.max(axis=0), color=STYLE[model], alpha=0.2)
                if of is not None:
                    controls.setdefault(records[0]["n_embd"], (iters * scale, curve_points(
                        records[:1], of("random_pieces"))[1][0]))
            for (width, (x, y)), style in zip(sorted(controls.items()), ("--", ":", "-.", (0, (1, 3)))):
                ax.plot(x, y, linestyle=style, marker="x", markersize=4, color="grey", label=f"random pieces, width {width}")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.grid(alpha=0.3)
        axes.flat[0].legend(fontsize=7)
        axes.flat[1].legend(fontsize=7)
        names.append(save_figure(fig, out / f"curves_{axis}.png"))
    return names


def sensia_figures(out, sensia):
    """SENSIA's validation curves against its controls: recall@1, French sense entropy, French loss."""
    logs = {name: run["log"] for name, run in sensia.items() if name != "english" and run.get("log")}
    if not logs:
        return []
    keys = [("val_pairs_recall@1_sns", "recall@1 (z_sns, both ways)"),
            ("val_pairs_sense_entropy_fr", "sense entropy, French"), ("val_loss_fr_pairs", "French loss (nats/token)")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, log in logs.items():
        colour = STYLE.get(name, "C7")
        for ax, (key, title) in zip(axes, keys):
            points = [(e["iter"], e[key]) for e in log if isinstance(e.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), color=colour, marker="o", markersize=3, label=name)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("adaptation step")
            ax.grid(alpha=0.3)
    chance = next((e.get("val_pairs_recall@1_chance") for log in logs.values() for e in log), None)
    if chance:
        axes[0].axhline(chance, color="grey", linestyle="--", linewidth=0.8, label="chance")
    axes[0].legend(fontsize=8)
    return [save_figure(fig, out / "sensia_curves.png")]


def intervention_figures(out, interventions):
    """Topic control: bag mass against strength, per language, annealing on and off (± one SE)."""
    summary = ((interventions or {}).get("topic") or {}).get("summary")
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
