"""study.md from a constructed study directory: every section, the verdicts the constructed data imply,
and a part that did not run said so."""
import json

import numpy as np

from backpacks.study import report as study_report


def results(model_type, n_embd, similarities, gold):
    args = {"vocab_size": 64, "block_size": 16, "n_layer": 1, "n_head": 1, "n_embd": n_embd, "dropout": 0.0}
    if model_type == "backpack":
        args["n_senses"] = 2
    rep = "mean" if model_type == "backpack" else "embedding"
    return {"run": {"model_type": model_type, "model_args": args, "iter_num": 10, "best": {"value": 3.0},
                    "params": {"total": 1000, "embedding": 500, "non_embedding": 500}},
            "wordsim": {"sets": {"simlex999": {"gold": gold, "spearman": {
                rep: {"rho": 0.5, "rho_ci95": [0.4, 0.6], "similarities": similarities},
                "random_pieces": {"rho": 0.0, "rho_ci95": [-0.1, 0.1], "similarities": list(np.random.default_rng(1).random(len(gold)))}}}}}}


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_report_has_every_section_and_the_constructed_verdict(tmp_path):
    rng = np.random.default_rng(0)
    gold = rng.random(300)
    write(tmp_path / "plan.json", {"settings": {"batch_size": 2, "block_size": 16, "n_layer": 1}, "vocab_size": 64,
                                   "machine": "a test machine", "matched": {"transformer_tokens": {"why": "same tokens"}}})
    write(tmp_path / "backpack" / "eval" / "results.json",
          results("backpack", 8, list(gold + 0.1 * rng.random(300)), list(gold)))
    write(tmp_path / "transformer_tokens" / "eval" / "results.json",
          results("transformer", 8, list(gold + 5 * rng.random(300)), list(gold)))
    for name in ("backpack", "transformer_tokens"):
        write(tmp_path / name / "training_log.json", [{"iter": 0, "val_loss": 4.0}, {"iter": 10, "val_loss": 3.0}])
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "times.tsv").write_text("train backpack\t60\ntrain backpack\t30\n")

    text = study_report.write_report(tmp_path).read_text()
    for section in study_report.SECTIONS:
        assert f"## {section}" in text
    summary = text.split("## Summary")[1].split("## Setup")[0]
    assert "| simlex999 rho: sense mean (B) / embedding (T) | Backpack better |" in summary
    assert "| Backpack (mean) | above the control |" in summary.replace(" | no test", "")
    assert "| train backpack | 1.5 |" in text  # a resumed step's parts add up
    assert "The interventions did not run." in text and "No SENSIA run was evaluated." in text
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000 and (tmp_path / "lexical.png").is_file()


def test_skipped_sense_tables_give_their_reason():
    """Without the offline data folder the senses task records why its tables were skipped (a dict, not a
    list): the report says so instead of failing on it."""
    skipped = {"senses": {"top_tokens": {"skipped": "no dictionary: MUSE en-fr not found"}}}
    assert "No sense tables: no dictionary: MUSE en-fr not found." in study_report.senses_section(skipped)
    tables = {"senses": {"top_tokens": [{"word": "house", "senses": [["maison"], ["home"]]}]}}
    assert "| sense 1 |" in study_report.senses_section(tables).replace("  ", " ")
