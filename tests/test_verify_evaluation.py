"""verify_evaluation.py: a complete, sane results.json passes; each kind of breakage fails its check."""
import copy
import json
import math
import os
import subprocess
import sys

import pytest

import verify_evaluation

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: intra-op threads only thrash


def spearman(rho):
    return {"rho": rho, "p_value": 0.2, "n": 40, "rho_ci95": [rho - 0.1, rho + 0.1], "in_corpus": {"rho": rho, "p_value": 0.3, "n": 12}}


def translation_entry(n):
    return {"n": n, "bleu": {"score": 12.5, "ci95": [10.0, 15.0], "signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"},
            "chrf": {"score": 35.0, "signature": "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0"},
            "sentence_bleu_nltk": {"mean": 0.1, "median": 0.08, "std": 0.05, "min": 0.0, "max": 0.4, "n": n},
            "exact_match": 0.0, "word_accuracy": 0.2, "char_accuracy": 0.4, "seconds": 3.0,
            "sentences_per_second": n / 3.0, "sources_truncated": 0, "examples": []}


def retrieval_entry(n):
    return {"pair_cosine": {"mean": 0.6, "std": 0.1}, "derangement_cosine": {"mean": 0.3, "std": 0.1}, "n": n,
            "chance_recall@1": 1 / n, "recall@1_en_to_fr": 0.5, "recall@1_fr_to_en": 0.4}


def bli_direction(sources, queries):
    precision = {"cosine": {"p@1": 0.2, "p@5": 0.4, "ci95": {"p@1": [0.1, 0.3], "p@5": [0.3, 0.5]}},
                 "csls": {"p@1": 0.25, "p@5": 0.45}}
    return {"dictionary_sources": sources, "queries": queries, "coverage": queries / sources, "candidates": 300,
            "embedding": precision, "mean": precision}


def good_results(test_jsonl, available=25, asked=10):
    """A Backpack's results.json in evaluate.py's schema (values made up, all within range)."""
    used = min(asked, available)
    loss = math.log(50.0)
    return {
        "loss": {"split": "test", "all": {"loss": loss, "perplexity": 50.0, "tokens": 2048},
                 "en": {"loss": loss, "perplexity": 50.0, "tokens": 1000},
                 "fr": {"loss": None, "perplexity": None, "tokens": 0}, "seconds": 1.0},
        "translation": {"test_set": str(test_jsonl), "samples_asked": asked, "samples_used": used,
                        "stop": "next language tag or end-of-text", "max_new_tokens": None,
                        "en-fr": {"greedy": translation_entry(used), "beam4": translation_entry(used)},
                        "fr-en": {"greedy": translation_entry(used), "beam4": translation_entry(used)}},
        "wordsim": {"representations": ["embedding", "mean"],
                    "sets": {"multisimlex-en": {"pairs": 50, "pairs_used": 40, "coverage": 0.8,
                                                "spearman": {"embedding": spearman(0.1),
                                                             "mean": {"rho": None, "p_value": None, "n": 40,
                                                                      "note": "constant input: rho undefined"}}},
                             "simlex999": {"skipped": "simlex999.txt: file not found"}}},
        "bli": {"representations": ["embedding", "mean"], "en-fr": bli_direction(5000, 157),
                "fr-en": bli_direction(9205, 177)},
        "sentence": {"test_set": str(test_jsonl), "pairs_asked": 20, "pairs_used": 20,
                     "backbone": {p: retrieval_entry(20) for p in ("mean", "first", "last")},
                     "backpack_output": {p: retrieval_entry(20) for p in ("mean", "first", "last")}},
        "senses": {"top_tokens": [{"word": "the", "pieces": [" the"], "senses": [[" a", " of"]]}],
                   "alpha_entropy": {"mean": 2.1, "mean_normalised": 0.7, "per_sense_normalised": [0.6, 0.8]},
                   "translation_pair_cosines": {"pairs": 30, "per_sense_pair_cosine": [0.3, 0.5],
                                                "per_sense_derangement_cosine": [0.0, 0.1]}},
        "sensia": {"skipped": "not requested (--tasks)"},
        "xnli": {"skipped": "not requested (--tasks)"}, "pawsx": {"skipped": "not requested (--tasks)"},
        "run": {"model_type": "backpack", "checkpoint": "out/best.pt", "checkpoint_sha256": "a" * 64},
        "computed": {task: {"checkpoint": "out/best.pt", "checkpoint_sha256": "a" * 64, "settings": {}}
                     for task in ("loss", "translation", "wordsim", "bli", "sentence", "senses")},
    }


@pytest.fixture
def test_jsonl(tmp_path):
    path = tmp_path / "data" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"en": f"sentence {i}", "fr": f"phrase {i}"}) + "\n" for i in range(25)))
    return path


def run_verify(tmp_path, results, capsys):
    """(exit status, printed lines) of verify_evaluation.main on results written as OUT/eval/results.json."""
    (tmp_path / "eval").mkdir(exist_ok=True)
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit) as exit_info:
        verify_evaluation.main(["--out_dir", str(tmp_path)])
    return exit_info.value.code, capsys.readouterr().out.splitlines()


def test_good_results_pass(tmp_path, test_jsonl, capsys):
    status, lines = run_verify(tmp_path, good_results(test_jsonl), capsys)
    assert status == 0, "\n".join(lines)
    assert all(line.startswith(("PASS", "SKIP")) for line in lines[:-1])
    assert "PASS translation samples used 10 == min(asked 10, available 25)" in lines
    assert "SKIP wordsim.sets.simlex999: skipped, reason: 'simlex999.txt: file not found'" in lines
    assert not any(line.startswith("PASS") and "skipped" in line for line in lines)
    assert lines[-1].endswith("0 failing, 4 skipped")  # simlex999 and the tasks not requested: sensia, xnli, pawsx


def test_skipped_tasks_are_skip_and_required_tasks_must_run(tmp_path, test_jsonl, capsys):
    results = good_results(test_jsonl)
    results["bli"] = {"skipped": "muse-en-fr.0-5000.tsv: file not found"}
    status, lines = run_verify(tmp_path, results, capsys)
    assert status == 0 and "SKIP bli: skipped, reason: 'muse-en-fr.0-5000.tsv: file not found'" in lines
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    for require, expected in (("wordsim,bli", 1), ("loss,wordsim", 0)):
        with pytest.raises(SystemExit) as exit_info:
            verify_evaluation.main(["--out_dir", str(tmp_path), "--require", require])
        assert exit_info.value.code == expected
    assert "FAIL bli: skipped although required" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="^error: --require names unknown task"):
        verify_evaluation.main(["--out_dir", str(tmp_path), "--require", "bleu"])


def test_fewer_available_pairs_than_asked_pass(tmp_path, test_jsonl, capsys):
    status, lines = run_verify(tmp_path, good_results(test_jsonl, asked=500), capsys)
    assert status == 0, "\n".join(lines)


def set_path(results, path, value):
    *parents, last = path.split("/")
    node = results
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()
BREAKAGES = {
    "BLEU above 100": ("translation/en-fr/greedy/bleu/score", 120.0, "FAIL corpus BLEU"),
    "chrF as a fraction overflow": ("translation/fr-en/beam4/chrf/score", -1.0, "FAIL corpus chrF"),
    "NaN written as null": ("translation/en-fr/greedy/char_accuracy", None, "FAIL character accuracy"),
    "NaN literal": ("loss/all/loss", float("nan"), "FAIL no NaN or infinity"),
    "infinite perplexity": ("loss/en/perplexity", float("inf"), "FAIL no NaN or infinity"),
    "perplexity below 1": ("loss/all/perplexity", 0.5, "FAIL held-out perplexity"),
    "P@1 above 1": ("bli/fr-en/mean/csls/p@1", 1.5, "FAIL BLI precision"),
    "BLEU interval above 100": ("translation/en-fr/greedy/bleu/ci95", [90.0, 101.0], "FAIL corpus BLEU 95% interval"),
    "P@1 interval above 1": ("bli/en-fr/mean/cosine/ci95/p@1", [0.5, 1.2], "FAIL BLI precision at k, 95% interval"),
    "rho below -1": ("wordsim/sets/multisimlex-en/spearman/embedding/rho", -1.2, "FAIL Spearman rho"),
    "p-value above 1": ("wordsim/sets/multisimlex-en/spearman/embedding/p_value", 2.0, "FAIL Spearman p-value"),
    "recall above 1": ("sentence/backbone/last/recall@1_fr_to_en", 3.0, "FAIL sentence retrieval recall@1"),
    "missing section": ("bli", DELETE, "FAIL bli: section missing"),
    "missing metric": ("translation/en-fr/greedy/bleu", DELETE, "FAIL corpus BLEU"),
    "skipped without reason": ("senses", {"skipped": ""}, "FAIL senses: skipped"),
    "sub-entry skipped without reason": ("wordsim/sets/simlex999", {"skipped": " "}, "FAIL wordsim.sets.simlex999"),
    "too few samples": ("translation/samples_used", 8, "FAIL translation samples used 8"),
    "scored count differs": ("translation/fr-en/greedy/n", 9, "FAIL translation fr-en greedy: 9 sentences"),
    "no greedy decoding": ("translation/fr-en/greedy", DELETE, "FAIL translation fr-en greedy present"),
    "coverage inconsistent": ("bli/en-fr/coverage", 0.5, "FAIL bli.en-fr: queries"),
    "perplexity is not exp(loss)": ("loss/all/perplexity", 60.0, "FAIL perplexity 60"),
    "missing overall loss": ("loss/all", DELETE, "FAIL held-out loss"),
    "loss on val": ("loss/split", "val", "FAIL loss on the test split"),
    "string instead of a section": ("translation/en-fr", "oops", "FAIL translation en-fr greedy present"),
    "string instead of the run section": ("run", "oops", "FAIL run: section missing (found 'oops')"),
    "string instead of a wordsim set": ("wordsim/sets", "oops", "FAIL"),
    "backpack without its output states": ("sentence/backpack_output", DELETE, "FAIL sentence Backpack output"),
    "a task of another checkpoint": ("computed/bli/checkpoint_sha256", "b" * 64,
                                     "FAIL every task computed from the checkpoint of 'run': not bli"),
    "a task without its record": ("computed/loss", DELETE, "FAIL every task with results records"),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_each_breakage_fails_its_check(tmp_path, test_jsonl, capsys, name):
    path, value, expected = BREAKAGES[name]
    results = copy.deepcopy(good_results(test_jsonl))
    set_path(results, path, value)
    status, lines = run_verify(tmp_path, results, capsys)
    assert status == 1
    assert any(line.startswith(expected) for line in lines), "\n".join(lines)


def test_transformer_may_skip_senses(tmp_path, test_jsonl, capsys):
    results = good_results(test_jsonl)
    results["run"]["model_type"] = "transformer"
    results["senses"] = {"skipped": "a transformer has no sense vectors"}
    del results["sentence"]["backpack_output"]
    assert run_verify(tmp_path, results, capsys)[0] == 0


def test_what_evaluate_writes_without_the_offline_data_passes(tmp_path, test_jsonl, capsys):
    """No dictionary: the sense translation-pair cosines are skipped with the reason; and sacreBLEU's
    chrF bootstrap, failing on a short output, leaves a null interval with its note."""
    results = good_results(test_jsonl)
    results["senses"]["translation_pair_cosines"] = {"skipped": "lexicon/muse-en-fr.0-5000.tsv: not found"}
    results["translation"]["fr-en"]["greedy"]["chrf"].update(
        ci95=None, ci95_note="sacreBLEU's bootstrap failed on this output (don't know how to coerce float and float32)")
    status, lines = run_verify(tmp_path, results, capsys)
    assert status == 0, "\n".join(lines)
    assert "SKIP senses.translation_pair_cosines: skipped, reason: 'lexicon/muse-en-fr.0-5000.tsv: not found'" in lines


def test_missing_or_invalid_results_give_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="^error: --out_dir .*missing is not a directory"):
        verify_evaluation.main(["--out_dir", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="^error: .*results.json not found"):
        verify_evaluation.main(["--out_dir", str(tmp_path)])
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text("{not json")
    with pytest.raises(SystemExit, match="^error: .*not valid JSON"):
        verify_evaluation.main(["--out_dir", str(tmp_path)])


@pytest.mark.slow
def test_evaluate_output_verifies(sample_dataset, enfr_data_root, tmp_path, repo_root, make_checkpoint):
    """The real schema: evaluate.py on a tiny checkpoint, then the CLI of verify_evaluation.py."""
    run = make_checkpoint(tmp_path / "run", sample_dataset)
    msl = enfr_data_root / "wordsim" / "multisimlex" / "msl_en.tsv"
    evaluate = subprocess.run(
        [sys.executable, "evaluate.py", "--out_dir", str(run), "--device", "cpu", "--data_root", str(enfr_data_root),
         "--translation_samples", "6", "--beam", "2", "--bli_candidates", "200", "--sentence_pairs", "8",
         "--loss_batches", "2", "--sense_pairs", "50", "--sense_sentences", "8", "--wordsim", f"msl-en={msl}"],
        cwd=repo_root, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    verify = subprocess.run([sys.executable, "verify_evaluation.py", "--out_dir", str(run)],
                            cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout
    assert "FAIL" not in verify.stdout and "translation samples used 6 == min(asked 6, available 25)" in verify.stdout


def test_recorded_available_count_is_used(tmp_path, capsys):
    results = good_results("moved/test.jsonl", asked=500)  # the test set is not readable from here
    results["translation"]["samples_available"] = 25
    status, lines = run_verify(tmp_path, results, capsys)
    assert status == 0 and "PASS translation samples used 25 == min(asked 500, available 25)" in lines
    results["translation"]["samples_available"] = 40
    status, lines = run_verify(tmp_path, results, capsys)
    assert status == 1 and "FAIL translation samples used 25 == min(asked 500, available 40)" in lines
