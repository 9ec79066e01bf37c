"""study.md from a constructed results folder: every section, the verdicts the constructed data imply (a
Backpack whose sense mean tracks the human scores, a Transformer with the lower loss), seeds in the values
and tests, and parts that did not run said so."""
import json

import numpy as np
import pytest

from backpacks.study import measures
from backpacks.study import report as study_report
from backpacks.study import sections

RNG = np.random.default_rng(0)
GOLD = list(RNG.random(300))
WINDOWS = [100] * 200


@pytest.fixture(autouse=True)
def fewer_resamples(monkeypatch):
    monkeypatch.setattr(measures, "SAMPLES", 2000)


def evaluation(model_type, n_embd, similarities, loss_per_token):
    args = {"vocab_size": 64, "block_size": 16, "n_layer": 1, "n_head": 1, "n_embd": n_embd, "dropout": 0.0}
    if model_type == "backpack":
        args["n_senses"] = 2
    rep = "mean" if model_type == "backpack" else "embedding"
    control = list(RNG.random(len(GOLD)))

    def spearman(sims):
        return {"rho": 0.5, "rho_ci95": [0.4, 0.6], "similarities": sims}
    return {"run": {"model_type": model_type, "model_args": args, "seconds": 30,
                    "params": {"total": 1000, "embedding": 500, "non_embedding": 500}},
            "loss": {"all": {"loss": loss_per_token, "ci95": [loss_per_token - 0.01, loss_per_token + 0.01]},
                     "windows": {"all": {"loss_sum": [loss_per_token * w + RNG.normal(0, 1) for w in WINDOWS],
                                         "tokens": WINDOWS}}},
            "wordsim": {"sets": {"simlex999": {"gold": GOLD, "spearman": {rep: spearman(similarities),
                                                                           "random_pieces": spearman(control)}}}}}


def unit(model, seed, iters, similarities, loss):
    model_type = "backpack" if model == "backpack" else "transformer"
    snapshots = {str(it): evaluation(model_type, 8, similarities, loss + 1.0 * (iters - it) / iters)
                 for it in range(iters // 2, iters + 1, iters // 2)}
    return {"unit": f"{model}_seed{seed}", "model": model, "model_type": model_type, "seed": seed,
            "max_iters": iters, "n_embd": 8, "machine": "a test machine", "dtype": "float32", "train_seconds": 60,
            "snapshots": snapshots}


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def constructed_results(tmp_path, seeds=(1337, 2337)):
    results = tmp_path / "results"
    write(results / "plan.json", {"settings": {"batch_size": 2, "block_size": 16, "n_layer": 1}, "vocab_size": 64,
                                  "sense_share": 0.5, "matched": {"transformer_flops": {"why": "same FLOPs"}}})
    for seed in seeds:
        tracking = list(np.array(GOLD) + 0.1 * RNG.random(len(GOLD)))
        write(results / f"backpack_seed{seed}.json", unit("backpack", seed, 20, tracking, 4.0))
        write(results / f"transformer_flops_seed{seed}.json", unit("transformer_flops", seed, 28, list(RNG.random(300)), 3.8))
    return results


def table_row(text, label):
    return next(line for line in text.splitlines() if line.startswith(f"| {label} |"))


def test_report_has_every_section_and_the_constructed_verdicts(tmp_path):
    text = study_report.write_report(constructed_results(tmp_path), tmp_path).read_text()
    for section in study_report.SECTIONS:
        assert f"## {section}" in text
    summary = text.split("## Summary")[1].split("## Setup")[0]
    assert table_row(summary, "simlex999 rho").endswith("| Backpack better |")
    assert table_row(summary, "test loss").endswith("| T FLOPs better |")
    assert "(2 seeds)" in summary and "n=2)" in table_row(summary, "test loss")
    assert "Holm's adjustment runs over the 2 tests of this table" in summary  # the measures the units have
    assert "No token- or parameter-matched Transformer is done yet." in summary
    assert table_row(summary, "Backpack (mean, width 8)").count("above the control") == 1
    assert "| backpack_seed2337 | a test machine | float32 | 20 | 1.0 | 1.0 |" in text
    assert "The interventions did not run." in text and "No SENSIA run was evaluated." in text
    assert (tmp_path / "curves_tokens.png").stat().st_size > 1000 and (tmp_path / "curves_flops.png").is_file()


def test_a_report_before_the_decisive_pair_is_done_says_so(tmp_path):
    results = constructed_results(tmp_path, seeds=(1337,))
    (results / "transformer_flops_seed1337.json").unlink()
    text = study_report.write_report(results, tmp_path).read_text()
    assert "The decisive pair (the Backpack and the FLOP-matched Transformer) is not done yet (units done: " \
           "backpack_seed1337)" in text


def test_skipped_sense_tables_give_their_reason():
    """Without the offline data folder the senses task records why its tables were skipped (a dict, not a
    list): the report says so instead of failing on it."""
    skipped = {"senses": {"top_tokens": {"skipped": "no dictionary: MUSE en-fr not found"}}}
    assert "No sense tables: no dictionary: MUSE en-fr not found." in sections.senses_section(skipped)
    tables = {"senses": {"top_tokens": [{"word": "house", "senses": [["maison"], ["home"]]}]}}
    assert "| sense 1 |" in sections.senses_section(tables).replace("  ", " ")


def test_sensia_is_tested_against_its_control_on_the_same_pairs():
    def run(hits):
        return {"results": {"sensia": {"test_pairs": {
            "pairs": len(hits), "recall@1_chance": 1 / len(hits), "ppl_fr": 100.0, "recall@1_sns": float(np.mean(hits)),
            "recall@1_ctx": 0.5, "pair_hits": {"recall@1_sns": hits, "recall@1_ctx": [0.5] * len(hits)}}}}}
    line = sections.sensia_findings({"sensia": run([1.0] * 150 + [0.0] * 50), "lm_only": run([0.0] * 200)})[0]
    assert "z_sns 1.000" not in line and "difference +0.7500" in line and "paired p=0.0010" in line
    assert "z_ctx" in line and "difference +0.0000" in line
