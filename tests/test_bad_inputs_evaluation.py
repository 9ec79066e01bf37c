"""The evaluation, sampling and tools half of the bad-input probe (test_bad_inputs_training.py has training's
and prepare's, test_bad_inputs_environment.py the bad environments of every entry point): each case, a bad
argument, file or environment given to a script or `python -m` module, must stop it with a non-zero exit
and one line on stderr that names the problem, never a traceback, and change no file.

One case per line: a short id, the command line (the script or module first; {placeholders} name the
files the fixtures below make) with optional environment, and a fragment of the one line it must
give. Cases run in-process through main(argv) (evaluate.py, sample.py and compare_models.py on the CPU);
SUBPROCESS cases (where the whole process matters: library warnings, retry logs) run as their own process
and are marked slow.
"""
import importlib
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from tiny import one_line, read_only, snapshot

CASES = [
    # evaluate.py: options, paths and the environment, checked before the model loads
    ("eval-seed", "evaluate.py --out_dir {run} --seed -1", {}, "--seed must be within [0, 4294967295]"),
    ("eval-device", "evaluate.py --out_dir {run} --device gpu", {}, "unknown device 'gpu'"),
    ("eval-examples", "evaluate.py --out_dir {run} --examples -1", {}, "--examples must be >= 0"),
    ("eval-max-tokens", "evaluate.py --out_dir {run} --max_new_tokens 0", {}, "--max_new_tokens must be >= 1"),
    ("eval-reps", "evaluate.py --out_dir {run} --word_reps mean,banana", {}, "unknown representation 'banana'"),
    ("eval-data-root", "evaluate.py --out_dir {run} --data_root {missing}", {}, "--data_root"),
    ("eval-dictionary", "evaluate.py --out_dir {run} --dictionary {missing}", {}, "--dictionary"),
    ("eval-wordsim", "evaluate.py --out_dir {run} --wordsim mine={missing}", {}, "--wordsim mine="),
    ("eval-msl", "evaluate.py --out_dir {run} --multisimlex_official {missing}", {}, "is not a directory"),
    ("eval-data-dir", "evaluate.py --out_dir {run} --data_dir no_such_dataset", {}, "dataset 'no_such_dataset' not found"),
    ("eval-out-dir", "evaluate.py --out_dir {missing}", {}, "no checkpoint at"),
    ("eval-cache-var", "evaluate.py --out_dir {run}", {"BACKPACK_CACHE": "{text}"}, "BACKPACK_CACHE="),
    ("eval-enfr-var", "evaluate.py --out_dir {run}", {"ENFR_DATA": "{text}"}, "ENFR_DATA="),
    ("eval-corpus-utf8", "evaluate.py --out_dir {run} --test_corpus {latin1_prefix}", {}, "invalid UTF-8 on line 2"),
    ("eval-corpus-missing", "evaluate.py --out_dir {run} --test_corpus {missing}", {}, "cannot read --test_corpus"),
    ("eval-tokenizer", "evaluate.py --out_dir {run} --data_dir {foreign_tokenizer}", {}, "not the tokenizer that was recorded"),
    ("eval-clamped-tokens", "evaluate.py --out_dir {run} --max_new_tokens 33", {}, "at most 32, half its 64-token"),
    ("eval-pickle", "evaluate.py --out_dir {pickle_run}", {}, "a plain pickle, not a file written by torch.save"),
    # compare_models.py: every run and the output checked before the first evaluation
    ("cmp-run", "compare_models.py --backpack_dir {run} --transformer_dir {run} --extra_dirs {missing}", {},
     "no checkpoint at"),
    ("cmp-output", "compare_models.py --backpack_dir {run} --transformer_dir {run} --output_dir {text}/cmp", {},
     "is a file, not a directory"),
    # sample.py
    ("sample-seed", "sample.py --out_dir {run} --seed 99999999999", {}, "--seed must be within"),
    ("sample-temperature", "sample.py --out_dir {run} --temperature nan", {}, "--temperature must be a finite"),
    ("sample-ignored", "sample.py --out_dir {run} --beam 3", {}, "--beam would be ignored when sampling"),
    ("sample-two-modes", "sample.py --out_dir {run} --senses roi --translate x", {}, "not both"),
    ("sample-start-utf8", "sample.py --out_dir {run} --start FILE:{latin1}", {}, "invalid UTF-8 on line 2"),
    ("sample-translate-utf8", "sample.py --out_dir {run} --translate FILE:{latin1}", {}, "invalid UTF-8 on line 2"),
    ("sample-topic-utf8", "sample.py --out_dir {run} --topic {latin1}", {}, "topic file"),
    ("sample-top-k", "sample.py --out_dir {run} --top_k 100000", {}, "--top_k 100000 is more than"),
    ("sample-clamped-tokens", "sample.py --out_dir {run} --translate x --max_new_tokens 40", {}, "at most 32"),
    ("sample-explain", "sample.py --out_dir {run} --explain --max_new_tokens 80", {}, "--explain attributes"),
    ("sample-tokenizer", "sample.py --out_dir {run} --data_dir {foreign_tokenizer}", {}, "not the tokenizer that was"),
    ("sample-data-dir", "sample.py --out_dir {run} --data_dir no_such_dataset", {}, "dataset 'no_such_dataset' not found"),
    ("eval-seed-type", "evaluate.py --out_dir {run} --seed abc", {}, "argument --seed: invalid int value: 'abc'"),
    ("cmp-output-read-only", "compare_models.py --backpack_dir {run} --transformer_dir {run} --output_dir {read_only}/cmp",
     {}, "is not writable"),
    ("sample-type", "sample.py --out_dir {run} --num_samples x", {}, "argument --num_samples: invalid int value"),
    # verify_evaluation.py
    ("verify-out-dir", "verify_evaluation.py --out_dir {missing}", {}, "is not a directory"),
    ("verify-require", "verify_evaluation.py --out_dir {run} --require loss,nope", {}, "unknown task(s) ['nope']"),
    # bench.py: the shape, counts and dataset before any model is built
    ("bench-steps", "bench.py --steps 0", {}, "--steps must be >= 1"),
    ("bench-shape", "bench.py --n_embd 30 --n_head 4", {}, "n_embd (30) must be divisible by n_head (4)"),
    ("bench-senses", "bench.py --n_embd 32 --n_head 2 --n_senses 5", {}, "must be divisible by n_senses (5)"),
    ("bench-seed", "bench.py --seed -1", {}, "--seed must be within"),
    ("bench-data-dir", "bench.py --data_dir {text}", {}, "is a file, not a dataset directory"),
    # experiments/bench_translation.py
    ("bench-tr-run", "experiments.bench_translation --out_dir {missing}", {}, "no checkpoint at"),
    ("bench-tr-samples", "experiments.bench_translation --out_dir {run} --samples 0", {}, "--samples must be >= 1"),
    ("bench-tr-corpus", "experiments.bench_translation --out_dir {run} --test_corpus {latin1_prefix}", {},
     "invalid UTF-8 on line 2"),
    ("bench-tr-corpus-missing", "experiments.bench_translation --out_dir {run} --test_corpus {missing}", {},
     "cannot read --test_corpus file"),
    # experiments/gpu_check.py: the runs and logs it reports on
    ("gpu-log", "experiments.gpu_check memory {missing}", {}, "LOG {missing} is not a file (it does not exist)"),
    ("gpu-run", "experiments.gpu_check bitwise {run} {text}", {}, "RESUMED_DIR {text} is not a directory"),
    ("gpu-torchrun", "experiments.gpu_check torchrun {text} {missing}", {}, "RUN_DIR {missing} is not a directory"),
    ("gpu-sdpa", "experiments.gpu_check sdpa --device cpu --block_size 0", {}, "--block_size must be >= 1"),
    ("gpu-check", "experiments.gpu_check speed", {}, "argument check: invalid choice: 'speed'"),
    # experiments/run_interventions.py: every path and number before the model loads
    ("iv-run", "experiments.run_interventions --out_dir {missing}", {}, "no checkpoint at"),
    ("iv-baseline", "experiments.run_interventions --out_dir {run} --baseline_dir {missing}", {}, "no checkpoint at"),
    ("iv-data", "experiments.run_interventions --out_dir {run} --intervention_data {text}", {},
     "--intervention_data {text} is not a directory"),
    ("iv-seed", "experiments.run_interventions --out_dir {run} --seed -1", {}, "--seed must be within"),
    ("iv-topics", "experiments.run_interventions --out_dir {run} --topics 0", {}, "--topics must be >= 1"),
    ("iv-annealing", "experiments.run_interventions --out_dir {run} --annealing_divisor 0", {}, "must be > 0"),
    ("iv-data-dir", "experiments.run_interventions --out_dir {run} --data_dir no_such_dataset", {}, "not found"),
    # experiments/visualize_senses.py
    ("vis-run", "experiments.visualize_senses --out_dir {missing} --words a --sentence b", {}, "no checkpoint at"),
    ("vis-output", "experiments.visualize_senses --out_dir {run} --words a --sentence b --output_dir {text}/senses", {},
     "is a file, not a directory"),
    ("vis-output-read-only", "experiments.visualize_senses --out_dir {run} --words a --sentence b --output_dir "
     "{read_only}", {}, "is not writable"),
    ("vis-top", "experiments.visualize_senses --out_dir {run} --words a --sentence b --top 0", {}, "--top must be >= 1"),
    # data/europarl/segregate_languages.py
    ("seg-data", "data.europarl.segregate_languages --data {missing}", {}, "not found"),
    ("seg-data-file", "data.europarl.segregate_languages --data {text}", {}, "is a file, not a dataset directory"),
    ("seg-out-dir", "data.europarl.segregate_languages --data {dataset} --out_dir {text}/seg", {},
     "is a file, not a directory"),
    # backpacks/eval/resources.py
    ("res-data-root", "backpacks.eval.resources list --data_root {text}", {}, "--data_root {text} is not a directory"),
    ("res-name", "backpacks.eval.resources fetch nope", {}, "unknown resource(s) ['nope']"),
    ("res-command", "backpacks.eval.resources download", {}, "invalid choice: 'download'"),
    # experiments/study.py (its own cases are in test_study_*.py)
    ("study-results", "experiments.study report --results {tmp}", {}, "holds no plan.json"),
    ("study-required", "experiments.study status", {}, "the following arguments are required: --results"),
    # backpacks/cli.py: the recipes' first step, their settings
    ("recipe-out", "backpacks.cli --writable OUT={text}/out", {}, "OUT='{text}/out' cannot be written"),
    ("recipe-count", "backpacks.cli --count ITERS=1e3", {}, "ITERS='1e3' is not a positive integer"),
]
ON_THE_CPU = ("evaluate.py", "sample.py", "compare_models.py")
SUBPROCESS = [
    ("pickle-no-warning", "evaluate.py --out_dir {pickle_run} --device cpu", {}, "a plain pickle"),
    ("hf-offline", "-m backpacks.eval.resources fetch pawsx", {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": "{tmp}/hf",
                                                           "BACKPACK_CACHE": "{tmp}/cache"},
     "the Hugging Face hub cannot be reached"),
]


@pytest.fixture(scope="module")
def paths(sample_dataset, other_sample_dataset, make_checkpoint, tmp_path_factory):
    """{placeholder: path} of what the cases name: a tiny run (block 64), a file that is not UTF-8
    on its second line, a dataset folder without meta.json holding another tokenizer, a plain pickle
    as a run's checkpoint, a copy of the sample dataset, a plain file, a path that does not exist and
    a folder that cannot be written."""
    root = tmp_path_factory.mktemp("bad_inputs")
    dataset = shutil.copytree(sample_dataset, root / "dataset")
    (root / "latin1.en").write_bytes(b"The vote.\nLe caf\xe9.\n")
    (root / "latin1.fr").write_bytes(b"Le vote.\nLe cafe.\n")
    foreign = root / "foreign_tokenizer"
    foreign.mkdir()
    shutil.copy(other_sample_dataset / "tokenizer.json", foreign / "tokenizer.json")
    (root / "pickle_run").mkdir()
    (root / "pickle_run" / "best.pt").write_bytes(pickle.dumps({"model": {}}, protocol=4))
    (root / "text").write_text("a plain file\n")
    return {"run": make_checkpoint(root / "run", sample_dataset), "latin1": root / "latin1.en",
            "latin1_prefix": root / "latin1", "foreign_tokenizer": foreign, "pickle_run": root / "pickle_run",
            "text": root / "text", "missing": root / "missing", "tmp": root, "dataset": dataset,
            "read_only": root / "read_only"}


def command(line, env, paths):
    return [part.format(**paths) for part in line.split()], {k: v.format(**paths) for k, v in env.items()}


@pytest.mark.parametrize("case, line, env, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(case, line, env, fragment, paths, monkeypatch, capsys):
    argv, env = command(line, env, paths)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    read_only(paths["read_only"], monkeypatch)
    before = snapshot(paths["tmp"])
    script = importlib.import_module(argv[0].removesuffix(".py"))
    with pytest.raises(SystemExit) as stopped:
        script.main(argv[1:] + (["--device", "cpu"] if "--device" not in argv and argv[0] in ON_THE_CPU else []))
    assert fragment.format(**paths) in one_line(stopped, capsys)
    assert snapshot(paths["tmp"]) == before


@pytest.mark.slow
@pytest.mark.parametrize("case, line, env, fragment", SUBPROCESS, ids=[c[0] for c in SUBPROCESS])
def test_bad_input_is_one_line_in_a_process(case, line, env, fragment, paths, repo_root):
    argv, env = command(line, env, paths)
    result = subprocess.run([sys.executable, *argv], cwd=repo_root, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
