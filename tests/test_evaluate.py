"""evaluate.py and compare_models.py end to end on tiny checkpoints trained here, and bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import compare_models
import evaluate
from backpacks.eval import tasks
from backpacks.checkpoint import load_checkpoint, save_checkpoint
from backpacks.eval.report import fmt
from tiny import train_args

# six iterations of a tiny run, in a block of 64: a sentence of the sample corpus is about 35 tokens
TRAIN_ARGS = train_args("--block_size=64", "--max_iters=6", "--eval_interval=3", "--learning_rate=1e-3",
                        "--log_interval=3")
# small counts everywhere so a whole evaluation takes seconds
FAST_EVAL = ["--device", "cpu", "--translation_samples", "8", "--beam", "2", "--loss_batches", "2",
             "--batch_size", "8", "--sentence_pairs", "16", "--bli_candidates", "300", "--sense_sentences", "4",
             "--sense_pairs", "50", "--sense_num_pairs", "2", "--sense_top_k", "3", "--max_new_tokens", "12"]


def run(args, cwd, check=True):
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result


def train_tiny(repo_root, data_dir, out_dir, model_type):
    run(["train.py", "--data_dir", str(data_dir), "--out_dir", str(out_dir), "--model_type", model_type, *TRAIN_ARGS],
        repo_root)
    return out_dir


@pytest.fixture(scope="module")
def tiny_runs(repo_root, sample_dataset, tmp_path_factory):
    """{'backpack': out_dir, 'transformer': out_dir}, each trained for a few iterations."""
    root = tmp_path_factory.mktemp("runs")
    return {kind: train_tiny(repo_root, sample_dataset, root / kind, kind) for kind in ("backpack", "transformer")}


def eval_args(out_dir, *extra):
    return ["--out_dir", str(out_dir), *FAST_EVAL, *extra]


@pytest.mark.slow
def test_evaluate_backpack_end_to_end(repo_root, tiny_runs, enfr_data_root):
    out_dir = tiny_runs["backpack"]
    result = run(["evaluate.py", *eval_args(out_dir, "--data_root", str(enfr_data_root))], repo_root)
    assert "| metric | value [95% interval] |" in result.stdout and "en-fr greedy BLEU" in result.stdout
    results = json.loads((out_dir / "eval" / "results.json").read_text())
    for task in tasks.DEFAULT_TASKS:
        assert "skipped" not in results[task], (task, results[task])
        assert results[task]["seconds"] >= 0
    run_info = results["run"]
    assert run_info["model_type"] == "backpack" and run_info["iter_num"] > 0 and run_info["which"] == "best"
    used = run_info["resources"]
    assert used["dictionary"]["path"] == str(enfr_data_root / "lexicon" / "muse-en-fr.0-5000.tsv")
    assert len(used["dictionary"]["sha256"]) == 64 and used["dictionary"]["bytes"] > 0
    assert used["wordsim:simlex999"]["path"].endswith("simlex999.txt") and run_info["fetch"] is False

    loss = results["loss"]
    assert loss["split"] == "test" and "test loss (all)" in result.stdout
    assert loss["all"]["tokens"] > 0 and loss["all"]["perplexity"] > 1
    assert loss["en"]["tokens"] > 0 and loss["fr"]["tokens"] > 0
    low, high = loss["all"]["ci95"]  # per-window values: an interval, and paired tests between models
    assert low <= loss["all"]["loss"] <= high
    windows = loss["windows"]["fr"]
    assert len(windows["tokens"]) == loss["windows_scored"] and sum(windows["tokens"]) == loss["fr"]["tokens"]

    translation = results["translation"]
    assert translation["samples_asked"] == 8 and translation["samples_used"] == 8
    for direction in ("en-fr", "fr-en"):
        for decoding in ("greedy", "beam2"):
            entry = translation[direction][decoding]
            assert 0 <= entry["bleu"]["score"] <= 100 and entry["bleu"]["signature"].startswith("nrefs:1")
            assert 0 <= entry["chrf"]["score"] <= 100
            assert set(entry["sentence_bleu_nltk"]) >= {"mean", "median", "std", "max"}
            assert 0 <= entry["char_accuracy"] <= 1 and entry["seconds"] > 0
            assert len(entry["examples"]) == 5

    wordsim = results["wordsim"]["sets"]
    assert set(wordsim) >= {"multisimlex-en", "multisimlex-fr", "multisimlex-en-fr", "simlex999", "wordsim353"}
    msl = wordsim["multisimlex-fr"]
    assert msl["resource"]["rows"] == 1888 and msl["pairs"] == 1888
    assert set(msl["spearman"]) >= {"embedding", "mean", "minpair", "maxpair", "sense:0", "sense:3"}
    assert -1 <= msl["spearman"]["mean"]["rho"] <= 1 and 0 <= msl["spearman"]["mean"]["p_value"] <= 1
    assert msl["words"]["single_piece"] <= msl["words"]["words"]
    assert len(msl["gold"]) == len(msl["spearman"]["mean"]["similarities"]) == msl["pairs_used"]
    assert wordsim["wordsim353-sim"]["resource"]["malformed"] == 1  # the shared CSV's last line has no words

    bli = results["bli"]
    for direction in ("en-fr", "fr-en"):
        assert bli[direction]["queries"] > 0 and 0 < bli[direction]["coverage"] <= 1
        for rep in ("embedding", "mean", "random_pieces"):
            assert set(bli[direction][rep]) <= {"cosine", "csls", "cosine_excluding_identical", "csls_excluding_identical"}
            csls = bli[direction][rep]["csls"]
            assert set(csls) == {"p@1", "p@5", "ci95", "hits@1"} and csls["ci95"]["p@1"][0] <= csls["p@1"] <= csls["ci95"]["p@1"][1]
            assert len(csls["hits@1"]) == bli[direction]["queries"] and sum(csls["hits@1"]) / len(csls["hits@1"]) == csls["p@1"]
    assert bli["dictionary_split"].startswith("MUSE 0-5000: MUSE's training dictionary")
    assert bli["candidates_asked"] == 300

    sentence = results["sentence"]
    assert sentence["pairs_used"] == 16
    for states in ("backbone", "backpack_output"):
        for pooling in ("mean", "first", "last"):
            entry = sentence[states][pooling]
            assert 0 <= entry["recall@1_en_to_fr"] <= 1 and 0 <= entry["recall@1_fr_to_en"] <= 1
            assert entry["ci95"]["recall@1_en_to_fr"][0] <= entry["recall@1_en_to_fr"] <= entry["ci95"]["recall@1_en_to_fr"][1]
            assert sum(entry["hits"]["recall@1_fr_to_en"]) / 16 == entry["recall@1_fr_to_en"]
            assert "mean" in entry["derangement_cosine"]

    senses = results["senses"]
    assert len(senses["top_tokens"]) == 4 and len(senses["top_tokens"][0]["senses"]) == 4
    assert len(senses["top_tokens"][0]["senses"][0]) == 3
    assert len(senses["alpha_entropy"]["per_sense"]) == 4
    assert senses["translation_pair_cosines"]["pairs"] > 0

    report = (out_dir / "eval" / "report.md").read_text()
    assert "Translation examples" in report and "Sense projections" in report
    assert "| metric | value [95% interval] |" in report and "(MUSE 0-5000: MUSE's training dictionary" in report
    bleu = translation["en-fr"]["greedy"]["bleu"]
    assert f"| en-fr greedy BLEU | {fmt(bleu['score'])} [" in report and 0 <= bleu["ci95"][0] <= bleu["ci95"][1] <= 100
    assert "test loss (all)" in report and "parameters (non-embedding)" in report
    verified = run(["verify_evaluation.py", "--out_dir", str(out_dir)], repo_root, check=False)
    assert verified.returncode == 0, verified.stdout


@pytest.mark.slow
def test_evaluate_transformer_and_options(tiny_runs, enfr_data_root, tmp_path, capsys):
    out_dir = tiny_runs["transformer"]
    sim = tmp_path / "sim.tsv"
    sim.write_text("# comment\nparliament\tcommission\t5\nreport\tvote\tx\nthe\ta\t2\nand\tor\t1\n", encoding="utf-8")
    (tmp_path / "empty_dictionary.tsv").write_text("", encoding="utf-8")
    evaluate.main(eval_args(out_dir, "--data_root", str(enfr_data_root), "--tasks", "wordsim,sentence,senses,bli",
                            "--wordsim", f"mine={sim}", "--dictionary", str(tmp_path / "empty_dictionary.tsv"),
                            "--ckpt", "latest"))
    results = json.loads((out_dir / "eval" / "results.json").read_text())
    assert results["run"]["which"] == "latest"
    assert results["loss"] == {"skipped": "not requested (--tasks)"}
    assert "no sense vectors" in results["senses"]["skipped"]
    assert "empty_dictionary.tsv" in results["bli"]["skipped"]
    mine = results["wordsim"]["sets"]["mine"]
    assert mine["resource"]["malformed"] == 1 and mine["resource"]["malformed_lines"][0]["line"] == 3
    assert mine["pairs_used"] == 3 and list(mine["spearman"]) == ["embedding", "random_pieces"]
    assert "backbone" in results["sentence"] and "backpack_output" not in results["sentence"]
    assert "malformed line(s) skipped: line 3" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_external_test_corpus(tiny_runs, tmp_path, capsys):
    prefix = tmp_path / "corpus"
    (tmp_path / "corpus.en").write_text("The house is red.\nWe vote today.\nThank you.\n", encoding="utf-8")
    (tmp_path / "corpus.fr").write_text("La maison est rouge.\nNous votons aujourd'hui.\nMerci.\n", encoding="utf-8")
    args = evaluate.parse_args(eval_args(tiny_runs["backpack"], "--tasks", "translation", "--test_corpus", str(prefix),
                                         "--beam", "1"))
    results = tasks.evaluate_out_dir(args.out_dir, args)
    translation = results["translation"]
    assert translation["samples_used"] == 3 and translation["test_set"].startswith(str(prefix))
    assert list(translation["en-fr"]) == ["greedy"]
    (tmp_path / "corpus.fr").write_text("Une seule ligne.\n", encoding="utf-8")
    computed = results["computed"]["translation"]
    results = tasks.evaluate_out_dir(args.out_dir, args)
    # skipped now: the result computed before stays, with its record, and the reason is printed
    assert results["translation"]["samples_used"] == 3 and results["computed"]["translation"] == computed
    err = capsys.readouterr().err
    assert "has 3 lines" in err and f"keeping the result computed at {computed['computed_at']}" in err


@pytest.mark.slow
def test_evaluate_without_offline_data(tiny_runs, tmp_path):
    """No data root and nothing cached, fetching off: the resource tasks are skipped with the command that
    fetches them; the rest runs."""
    run_dir, empty = tmp_path / "run", tmp_path / "empty"
    shutil.copytree(tiny_runs["backpack"], run_dir, ignore=shutil.ignore_patterns("eval"))  # no earlier results
    empty.mkdir()
    args = evaluate.parse_args(eval_args(run_dir, "--tasks", "loss,wordsim,bli", "--data_root", str(empty)))
    assert args.fetch is False  # BACKPACK_OFFLINE=1 (conftest)
    results = tasks.evaluate_out_dir(args.out_dir, args)
    assert results["loss"]["all"]["loss"] > 0
    assert "fetching is off" in results["bli"]["skipped"] and "resources fetch muse-en-fr" in results["bli"]["skipped"]
    assert "resources fetch simlex999" in results["wordsim"]["skipped"]
    assert results["run"]["resources"] == {}


@pytest.mark.slow
def test_standard_test_sets(repo_root, tiny_runs, tmp_path, resource_cache, monkeypatch):
    """--test_set flores200 from the resources cache; --test_set wmt14 through sacreBLEU's own cache (env
    SACREBLEU, prepared here as sacreBLEU lays it out, since this machine is offline)."""
    flores = resource_cache / "data" / "parallel"
    flores.mkdir(parents=True, exist_ok=True)
    (flores / "flores200-devtest.en").write_text("The house is red.\nThank you.\n", encoding="utf-8")
    (flores / "flores200-devtest.fr").write_text("La maison est rouge.\nMerci.\n", encoding="utf-8")
    (tmp_path / "nowhere").mkdir()
    args = evaluate.parse_args(eval_args(tiny_runs["backpack"], "--tasks", "translation", "--test_set", "flores200",
                                         "--beam", "1", "--data_root", str(tmp_path / "nowhere")))
    results = tasks.evaluate_out_dir(args.out_dir, args)
    assert results["translation"]["samples_used"] == 2
    assert results["translation"]["test_set"] == str(flores / "flores200-devtest") + ".{en,fr}"
    assert results["run"]["resources"]["test_set_fr"]["path"] == str(flores / "flores200-devtest.fr")

    sacrebleu_dir = tmp_path / "sacrebleu"
    wmt14 = sacrebleu_dir / "wmt14"
    wmt14.mkdir(parents=True)
    for field, text in (("src", "The vote.\nThe house.\nYes.\n"), ("ref", "Le vote.\nLa maison.\nOui.\n"),
                        ("docid", "d\nd\nd\n"), ("genre", "news\nnews\nnews\n"), ("origlang", "en\nen\nen\n")):
        (wmt14 / f"wmt14.en-fr.{field}").write_text(text, encoding="utf-8")
    out = tiny_runs["transformer"]
    result = subprocess.run([sys.executable, "evaluate.py", *eval_args(out, "--tasks", "translation", "--test_set",
                                                                      "wmt14", "--beam", "1")],
                            cwd=repo_root, capture_output=True, text=True,
                            env={**os.environ, "SACREBLEU": str(sacrebleu_dir), "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "eval" / "results.json").read_text())
    translation, used = results["translation"], results["run"]["resources"]["test_set"]
    assert translation["test_set"] == "sacrebleu:wmt14 en-fr" and translation["samples_used"] == 3
    assert translation["en-fr"]["greedy"]["bleu"]["signature"].startswith("nrefs:1|")
    assert used["sacrebleu_test_set"] == "wmt14" and used["archive_md5"] == ["84c597844c1542e29c2aff23aaee4310"]
    assert used["reference"]["path"] == str(wmt14 / "wmt14.en-fr.ref")

    with pytest.raises(SystemExit, match="unknown --test_set 'wmt99'.*wmt14"):
        evaluate.parse_args(eval_args(out, "--test_set", "wmt99"))
    from sacrebleu.dataset import DATASETS
    monkeypatch.setattr(DATASETS["wmt15"], "_outdir", str(tmp_path / "empty_sacrebleu"))  # nothing cached
    fresh = tmp_path / "fresh_run"  # without earlier results, which a skipped task would keep
    shutil.copytree(out, fresh, ignore=shutil.ignore_patterns("eval"))
    args = evaluate.parse_args(eval_args(fresh, "--tasks", "translation", "--test_set", "wmt15"))
    results = tasks.evaluate_out_dir(args.out_dir, args)
    assert "fetching is off" in results["translation"]["skipped"]


@pytest.mark.slow
def test_compare_models(tiny_runs, enfr_data_root, tmp_path, capsys):
    output_dir = tmp_path / "comparison"
    compare_models.main(["--backpack_dir", str(tiny_runs["backpack"]), "--transformer_dir", str(tiny_runs["transformer"]),
                         "--output_dir", str(output_dir), "--data_root", str(enfr_data_root),
                         *FAST_EVAL, "--tasks", "loss,translation,wordsim,bli,sentence"])
    table = capsys.readouterr().out
    assert "| metric | backpack (backpack) | transformer (transformer) |" in table
    comparison = json.loads((output_dir / "comparison.json").read_text())
    models = comparison["models"]
    assert [m["model_type"] for m in models.values()] == ["backpack", "transformer"]
    assert all(m["source"] == "evaluated" for m in models.values())
    backpack, transformer = models.values()
    assert "wordsim multisimlex-en rho (mean)" in backpack["headline"]
    assert "wordsim multisimlex-en rho (mean)" not in transformer["headline"]
    assert transformer["skipped_tasks"] == {task: "not requested (--tasks)" for task in ("senses", "sensia", "xnli", "pawsx")}
    for name in ("loss_curves", "metrics_translation", "metrics_wordsim", "metrics_bli", "metrics_sentence"):
        assert name in comparison["plots"]
    for png in ("loss_curves.png", "metrics_translation.png", "metrics_wordsim.png"):
        assert (output_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (output_dir / "comparison.md").read_text()
    assert "| vs backpack (backpack) |" in markdown and "backbone-matched to backpack" in markdown
    p = comparison["paired_bootstrap_p_values"]["en-fr greedy BLEU"]["transformer (transformer)"]
    assert 0 < p <= 1 and f"transformer (transformer): p={p:.3f}" in markdown
    assert comparison["matching"] == {"transformer (transformer)": "backbone-matched"}
    assert "en-fr greedy BLEU" in backpack["intervals95"]

    # --reuse reads the results written above instead of evaluating again
    compare_models.main(["--backpack_dir", str(tiny_runs["backpack"]), "--transformer_dir", str(tiny_runs["transformer"]),
                         "--output_dir", str(output_dir), "--data_root", str(enfr_data_root), "--reuse",
                         *FAST_EVAL, "--tasks", "loss,translation,wordsim,bli,sentence"])
    comparison = json.loads((output_dir / "comparison.json").read_text())
    assert all(m["source"] == "reused" for m in comparison["models"].values())


@pytest.mark.slow
def test_reuse_only_results_of_the_same_checkpoint_and_settings(tiny_runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_runs["transformer"], run_dir, ignore=shutil.ignore_patterns("eval"))
    argv = ["--backpack_dir", str(run_dir), "--transformer_dir", str(run_dir), "--output_dir", str(tmp_path / "cmp"),
            "--reuse", *FAST_EVAL, "--tasks", "loss"]

    def sources(*extra):
        compare_models.main(argv + list(extra))
        return [m["source"] for m in json.loads((tmp_path / "cmp" / "comparison.json").read_text())["models"].values()]
    assert sources() == ["evaluated", "reused"]  # the second column reuses what the first wrote
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["run"]["settings"]["loss_batches"] == 2 and len(results["run"]["checkpoint_sha256"]) == 64
    assert sources("--loss_batches", "3") == ["evaluated", "reused"]
    assert "other settings: loss_batches" in capsys.readouterr().err
    ckpt = load_checkpoint(run_dir / "best.pt")
    ckpt["iter_num"] += 1  # another checkpoint in the same out_dir
    save_checkpoint(ckpt, run_dir / "best.pt")
    assert sources("--loss_batches", "3") == ["evaluated", "reused"]
    assert "computed from another best.pt" in capsys.readouterr().err
    del results["computed"]  # no per-task records: nothing to reuse
    (run_dir / "eval" / "results.json").write_text(json.dumps(results))
    assert sources()[0] == "evaluated" and "does not record its tasks' checkpoint" in capsys.readouterr().err


def test_comparison_marks_overlapping_intervals_and_says_what_is_matched():
    labels = ["b", "t", "m"]
    intervals = [{"BLEU": [1.0, 2.0], "rho": [0.1, 0.2]}, {"BLEU": [1.5, 3.0], "rho": [0.3, 0.4]}, {"BLEU": [2.5, 3.0]}]
    assert compare_models.significance("BLEU", labels, intervals) == "t: n.s.; m: disjoint"
    assert compare_models.significance("rho", labels, intervals) == "t: disjoint"
    assert compare_models.significance("loss", labels, intervals) == ""
    assert compare_models.significance("BLEU", labels, intervals, {"BLEU": {"t": 0.2, "m": 0.001}}) == \
        "t: p=0.200 n.s.; m: p=0.001"
    table, _ = compare_models.comparison_table(labels, [{"BLEU": 1.5}, {"BLEU": 2.0}, {"BLEU": 2.7}], intervals)
    assert "| BLEU | 1.5000 [1.0000, 2.0000] | 2.0000 [1.5000, 3.0000] | 2.7000 [2.5000, 3.0000] | t: n.s.; m: disjoint |" in table
    run = lambda layers, width, total: {"run": {"model_args": {"n_layer": layers, "n_head": 4, "n_embd": width},
                                                "params": {"total": total}}}
    assert compare_models.matching([run(4, 128, 1000), run(4, 128, 600), run(4, 160, 980), run(6, 128, 700)]) == \
        ["backbone-matched", "parameter-matched", "unmatched"]


# ----------------------------------------------------------------------------- bad input

def assert_clean_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and all(f in last for f in fragments), last


@pytest.mark.slow
def test_missing_checkpoint_is_a_clean_error(repo_root, tmp_path):
    assert_clean_error(run(["evaluate.py", "--out_dir", str(tmp_path / "none"), "--device", "cpu"], repo_root, check=False),
                       "no checkpoint")
    with pytest.raises(SystemExit, match="not a directory"):
        compare_models.main(["--backpack_dir", str(tmp_path / "a"), "--transformer_dir", str(tmp_path / "b"),
                             "--device", "cpu", "--output_dir", str(tmp_path / "comparison")])
    assert list(tmp_path.iterdir()) == []  # no empty output directory left behind


@pytest.mark.parametrize("argv, message", [(["--tasks", "loss,bleu"], "unknown task"),
                                           (["--translation_samples", "0"], "--translation_samples"),
                                           (["--sentence_pairs", "1"], "--sentence_pairs"),
                                           (["--wordsim", "no_equals_sign"], "NAME=PATH")])
def test_bad_options_are_clean_errors(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        evaluate.parse_args(["--out_dir", str(tmp_path), *argv])


@pytest.mark.slow
def test_missing_meta_or_tokenizer_is_a_clean_error(repo_root, tiny_runs, sample_dataset, tmp_path):
    ckpt = load_checkpoint(tiny_runs["transformer"] / "best.pt")
    del ckpt["meta"]
    (tmp_path / "no_meta").mkdir()
    save_checkpoint(ckpt, tmp_path / "no_meta" / "best.pt")
    assert_clean_error(run(["evaluate.py", "--out_dir", str(tmp_path / "no_meta"), "--device", "cpu"], repo_root,
                           check=False), "'meta'")

    no_tokenizer = tmp_path / "dataset"
    shutil.copytree(sample_dataset, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(SystemExit, match="error: cannot load the tokenizer"):
        evaluate.main(["--out_dir", str(tiny_runs["transformer"]), "--device", "cpu", "--data_dir", str(no_tokenizer)])


@pytest.mark.slow
def test_missing_dataset_files_skip_their_tasks(tiny_runs, sample_dataset, tmp_path):
    """A dataset without val.bin / test.jsonl / word_counts.json: those tasks say why they were skipped."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("meta.json", "tokenizer.json"):
        shutil.copy(sample_dataset / name, bare / name)
    # no resources either (an empty --data_root): the dataset's own missing files must be what is named
    run_dir = tmp_path / "run"  # without earlier results, which the skipped tasks would keep
    shutil.copytree(tiny_runs["backpack"], run_dir, ignore=shutil.ignore_patterns("eval"))
    args = evaluate.parse_args(eval_args(run_dir, "--data_dir", str(bare), "--data_root", str(tmp_path),
                                         "--tasks", "loss,translation,bli,sentence,senses"))
    results = tasks.evaluate_out_dir(args.out_dir, args)
    assert "test.bin not found" in results["loss"]["skipped"] and "prepare it again" in results["loss"]["skipped"]
    assert "test.jsonl" in results["translation"]["skipped"] and "test.jsonl" in results["sentence"]["skipped"]
    assert "word_counts.json" in results["bli"]["skipped"]
    senses = results["senses"]
    assert "word_counts.json" in senses["top_tokens"]["skipped"]
    assert "test.jsonl" in senses["alpha_entropy"]["skipped"]


@pytest.mark.slow
def test_undecodable_resource_lines_and_a_full_disk(tiny_runs, tmp_path, monkeypatch, capsys):
    """A word-similarity file with a non-UTF-8 line is used without it (the line is reported); a disk
    that fills up while writing the results is one line."""
    wordsim = tmp_path / "ws.tsv"
    wordsim.write_bytes(b"the of 3\nand\xe9 the 2\nof and 1\nthe and 4\n")
    args = evaluate.parse_args(eval_args(tiny_runs["backpack"], "--tasks", "wordsim", "--wordsim", f"ws={wordsim}"))
    results = tasks.evaluate_out_dir(args.out_dir, args)
    resource = results["wordsim"]["sets"]["ws"]["resource"]
    assert resource["rows"] == 3 and resource["malformed_lines"] == [{"line": 2, "reason": "not UTF-8 (byte 0xe9 at column 4)"}]
    assert "line 2 (not UTF-8" in capsys.readouterr().err

    def full_disk(path, text):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("backpacks.eval.results.atomic_write_text", full_disk)
    with pytest.raises(SystemExit, match="error: cannot write the results into .*eval: No space left on device"):
        tasks.evaluate_out_dir(args.out_dir, args)


# ----------------------------------------------------------------------------- results.json across evaluations

QUICK = ["--device", "cpu", "--loss_batches", "1", "--batch_size", "4", "--translation_samples", "2",
         "--max_new_tokens", "3", "--examples", "1"]


def test_a_subset_of_tasks_is_merged_and_another_checkpoint_is_set_aside(sample_dataset, make_checkpoint, tmp_path, capsys):
    """--tasks loss after --tasks translation keeps the translation; each task records its checkpoint,
    settings and time; results of another checkpoint are moved aside, never mixed or lost."""
    run_dir = make_checkpoint(tmp_path / "run", sample_dataset)
    evaluate.main(["--out_dir", str(run_dir), "--tasks", "translation", *QUICK])
    evaluate.main(["--out_dir", str(run_dir), "--tasks", "loss", *QUICK, "--seed", "7"])
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["translation"]["samples_used"] == 2 and results["loss"]["all"]["tokens"] > 0
    assert results["sentence"] == {"skipped": "not requested (--tasks)"} and set(results["computed"]) == {"translation", "loss"}
    translation, loss = results["computed"]["translation"], results["computed"]["loss"]
    assert translation["checkpoint_sha256"] == loss["checkpoint_sha256"] == results["run"]["checkpoint_sha256"]
    assert translation["settings"]["seed"] == 1337 and loss["settings"]["seed"] == 7 and "tasks" not in loss["settings"]
    assert translation["resources"]["test_set"]["path"].endswith("test.jsonl") and loss["resources"] == {}
    assert translation["computed_at"] <= loss["computed_at"]
    assert "Translation examples" in (run_dir / "eval" / "report.md").read_text()

    ckpt = load_checkpoint(run_dir / "best.pt")
    ckpt["iter_num"] = 5  # another checkpoint in the same out_dir
    save_checkpoint(ckpt, run_dir / "best.pt")
    evaluate.main(["--out_dir", str(run_dir), "--tasks", "loss", *QUICK])
    aside = run_dir / "eval" / f"results.iter0-{results['run']['checkpoint_sha256'][:12]}.json"
    assert json.loads(aside.read_text()) == results
    assert (run_dir / "eval" / f"{aside.stem}.report.md").is_file()
    assert f"moved to {aside}" in capsys.readouterr().err
    fresh = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(fresh["computed"]) == {"loss"} and fresh["computed"]["loss"]["iter_num"] == 5
    assert fresh["translation"] == {"skipped": "not requested (--tasks)"}


def test_results_record_the_fingerprint_of_the_tokenizer_read(sample_dataset, make_checkpoint, tmp_path):
    run_dir = make_checkpoint(tmp_path / "run", sample_dataset)
    ckpt = load_checkpoint(run_dir / "best.pt")
    ckpt["meta"]["tokenizer_sha256"] = "0" * 64  # the run says it was trained with another tokenizer
    save_checkpoint(ckpt, run_dir / "best.pt")
    bare = tmp_path / "no_meta"  # the dataset's tokenizer without its meta.json: nothing else to compare with
    bare.mkdir()
    shutil.copy(sample_dataset / "tokenizer.json", bare)
    with pytest.raises(SystemExit, match="tokenizer.json is not the tokenizer that was recorded"):
        evaluate.main(["--out_dir", str(run_dir), "--tasks", "loss", "--data_dir", str(bare), *QUICK])


def test_a_dataset_name_is_taken_for_data_dir(sample_dataset, make_checkpoint, tmp_path, monkeypatch):
    """--data_dir NAME means data/NAME, as for train.py."""
    from backpacks import dataset
    monkeypatch.setattr(dataset, "DATA_ROOT", sample_dataset.parent)
    run_dir = make_checkpoint(tmp_path / "run", sample_dataset)
    args = evaluate.parse_args(["--out_dir", str(run_dir), "--tasks", "loss", "--data_dir", sample_dataset.name, *QUICK])
    assert args.data_dir == str(sample_dataset)
    assert tasks.evaluate_out_dir(args.out_dir, args)["run"]["data_dir"] == str(sample_dataset)
