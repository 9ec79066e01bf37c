"""The evaluation and sampling half of the bad-input probe (test_bad_inputs_training.py has training's and prepare's): each case, a bad argument, file or environment given to a script, must stop it
with a non-zero exit and one line on stderr that names the problem, never a traceback.

One case per line: a short id, the command line (the script first; {placeholders} name the
files the fixtures below make) with optional environment, and a fragment of the one line it must
give. Cases run in-process through the script's main(argv); SUBPROCESS cases (where the whole
process matters: library warnings, retry logs) run as their own process and are marked slow.
"""
import importlib
import os
import pickle
import shutil
import subprocess
import sys

import pytest

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
    # verify_evaluation.py
    ("verify-out-dir", "verify_evaluation.py --out_dir {missing}", {}, "is not a directory"),
]
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
    as a run's checkpoint, a plain file and a path that does not exist."""
    root = tmp_path_factory.mktemp("bad_inputs")
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
            "text": root / "text", "missing": root / "missing", "tmp": root}


def command(line, env, paths):
    return [part.format(**paths) for part in line.split()], {k: v.format(**paths) for k, v in env.items()}


@pytest.mark.parametrize("case, line, env, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(case, line, env, fragment, paths, monkeypatch, capsys):
    argv, env = command(line, env, paths)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    script = importlib.import_module(argv[0].removesuffix(".py"))
    with pytest.raises(SystemExit) as stopped:
        script.main(argv[1:] + (["--device", "cpu"] if "--device" not in argv and argv[0] != "verify_evaluation.py"
                                else []))
    message = str(stopped.value.code)
    assert message.startswith("error: ") and "\n" not in message and fragment in message, message
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("case, line, env, fragment", SUBPROCESS, ids=[c[0] for c in SUBPROCESS])
def test_bad_input_is_one_line_in_a_process(case, line, env, fragment, paths, repo_root):
    argv, env = command(line, env, paths)
    result = subprocess.run([sys.executable, *argv], cwd=repo_root, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
