"""The environment half of the bad-input probe (test_bad_inputs_training.py and test_bad_inputs_evaluation.py
have each entry point's own bad arguments): ONE table of bad environments, a variable naming the wrong kind
of thing, a folder that is missing or cannot be written, a value of the wrong type, applied to EVERY entry
point. Each must stop with one line naming the variable (`error: environment variable NAME=...`) and a
non-zero exit, before it changes, adds or removes any file. The scripts and `python -m` modules run
in-process through main(argv), with arguments that are fine; the bash recipes, which run
`python -m backpacks.cli` first, run as a user runs them (slow), with a stand-in interpreter that refuses
every other step."""
import importlib
import os
import shutil
import subprocess
import sys

import pytest

from tiny import TINY_BENCH_ARGS, TINY_TRAIN_ARGS, one_line, read_only, snapshot

BAD_ENVIRONMENTS = [
    # id                    variable                value                 a fragment of the one line
    ('enfr-file',           'ENFR_DATA',            '{text}',             'a file, not a folder'),
    ('cache-below-file',    'BACKPACK_CACHE',       '{text}/cache',       'is a file, not a directory'),
    ('cache-read-only',     'BACKPACK_CACHE',       '{read_only}/cache',  'is not writable'),
    ('hf-home-file',        'HF_HOME',              '{text}',             'is a file, not a directory'),
    ('wandb-dir-read-only', 'WANDB_DIR',            '{read_only}',        'is not writable'),
    ('threads-text',        'OMP_NUM_THREADS',      'abc',                'not a positive integer'),
    ('threads-zero',        'MKL_NUM_THREADS',      '0',                  'not a positive integer'),
    ('offline-maybe',       'HF_HUB_OFFLINE',       'maybe',              'neither on'),
    ('verify-mode',         'BACKPACK_VERIFY_DATA', 'bogus',              'use auto, full, size'),
    ('endpoint-no-scheme',  'HF_ENDPOINT',          'huggingface.co',     'not an http'),
]
ENTRY_POINTS = [
    # module                              arguments that are fine ({placeholders}: the paths fixture's)
    ('train',                             f"{' '.join(TINY_TRAIN_ARGS)} --data_dir={{data}} --out_dir={{out}}"),
    ('data.europarl.prepare',             '--source local --corpus {corpus} --vocab_size 300 --name fresh --out_root {out}'),
    ('data.europarl.segregate_languages', '--data {data}'),
    ('evaluate',                          '--out_dir {run} --device cpu'),
    ('compare_models',                    '--backpack_dir {run} --transformer_dir {run} --output_dir {out} --device cpu'),
    ('sample',                            '--out_dir {run} --device cpu'),
    ('verify_evaluation',                 '--out_dir {run}'),
    ('bench',                             f"{' '.join(TINY_BENCH_ARGS)} --device cpu"),
    ('experiments.bench_translation',     '--out_dir {run} --samples 1'),
    ('experiments.gpu_check',             'machine'),
    ('experiments.run_interventions',     '--out_dir {run}'),
    ('experiments.study',                 'status --results {out}'),
    ('experiments.visualize_senses',      '--out_dir {run} --words vote --sentence hello'),
    ('backpacks.eval.resources',          'list'),
    ('backpacks.cli',                     '--writable OUT={out}'),  # the recipes' first step
]
RECIPES = ['tiny_comparison.sh', 'sensia_tiny.sh', 'gpu_check.sh', 'study.sh']
GUARD = """#!/bin/sh
[ "$1" = -m ] && [ "$2" = backpacks.cli ] && exec {python} "$@"
echo "error: the recipe ran $* before checking its environment" >&2
exit 97
"""


@pytest.fixture(scope='module')
def paths(sample_dataset, make_checkpoint, repo_root, tmp_path_factory):
    """{placeholder: path}: a copy of the sample dataset, a tiny run of it, the sample corpus, a plain file,
    a path that does not exist, a folder to be made read-only, an output folder, and a stand-in python."""
    root = tmp_path_factory.mktemp('bad_environments')
    data = shutil.copytree(sample_dataset, root / 'data' / 'sample')
    (root / 'text').write_text('a plain file\n')
    (root / 'guard').write_text(GUARD.format(python=sys.executable))
    (root / 'guard').chmod(0o755)
    return {'root': root, 'data': data, 'run': make_checkpoint(root / 'run', data), 'text': root / 'text',
            'corpus': repo_root / 'data/europarl/sample/parliament', 'missing': root / 'missing',
            'read_only': root / 'read_only', 'out': root / 'out', 'guard': root / 'guard'}


@pytest.fixture(autouse=True)
def unwritable(paths, monkeypatch):
    read_only(paths['read_only'], monkeypatch)


@pytest.mark.parametrize('environment', BAD_ENVIRONMENTS, ids=[e[0] for e in BAD_ENVIRONMENTS])
@pytest.mark.parametrize('module, arguments', ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_entry_point_refuses_a_bad_environment(module, arguments, environment, paths, monkeypatch, capsys):
    _, name, value, fragment = environment
    monkeypatch.setenv(name, value.format(**paths))
    before = snapshot(paths['root'])
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(module).main(arguments.format(**paths).split())
    message = one_line(stopped, capsys)
    assert f"environment variable {name}=" in message and fragment in message, message
    assert snapshot(paths['root']) == before


def test_good_environments_pass(paths, tmp_path, monkeypatch):
    """The checks refuse only what is wrong: a missing data folder (how CI hides it: the data is absent),
    an empty one, caches still to be created, switches on or off in any spelling huggingface_hub takes, an empty variable."""
    from backpacks import cli
    for name, value in [('ENFR_DATA', str(tmp_path)), ('BACKPACK_CACHE', str(tmp_path / 'new' / 'cache')),
                        ('HF_HOME', ''), ('OMP_NUM_THREADS', '4'), ('MKL_NUM_THREADS', ' 2 '), ('HF_HUB_OFFLINE', 'ON'),
                        ('BACKPACK_OFFLINE', 'false'), ('BACKPACK_VERIFY_DATA', 'Size'),
                        ('HF_ENDPOINT', 'http://127.0.0.1:9')]:
        monkeypatch.setenv(name, value)
    cli.check_environment()
    monkeypatch.setenv('ENFR_DATA', str(tmp_path / 'no-data-folder'))
    cli.check_environment()
    assert not cli.switched_on('BACKPACK_OFFLINE') and cli.switched_on('HF_HUB_OFFLINE')


@pytest.mark.parametrize('recipe', RECIPES)
def test_recipe_checks_before_any_step(recipe, repo_root):
    """The fast stand-in for the slow test below: `python -m backpacks.cli` comes before every other step."""
    lines = (repo_root / 'experiments' / recipe).read_text().splitlines()
    check = next(i for i, line in enumerate(lines) if '"$PYTHON" -m backpacks.cli' in line)
    steps = [i for i, line in enumerate(lines) if '"$PYTHON"' in line or line.lstrip().startswith(('rm ', 'mkdir '))]
    assert steps[0] == check, lines[steps[0]]


@pytest.mark.slow
@pytest.mark.parametrize('environment', BAD_ENVIRONMENTS, ids=[e[0] for e in BAD_ENVIRONMENTS])
@pytest.mark.parametrize('recipe', RECIPES)
def test_recipe_refuses_a_bad_environment(recipe, environment, paths, repo_root):
    _, name, value, fragment = environment
    if '{read_only}' in value and os.geteuid() == 0:
        pytest.skip("as root every folder can be written (the in-process cases stand in)")
    env = {**os.environ, 'PYTHON': str(paths['guard']), 'OUT': str(paths['out']), name: value.format(**paths)}
    before = snapshot(paths['root'])
    run = subprocess.run(['bash', f'experiments/{recipe}'], cwd=repo_root, env=env, capture_output=True, text=True,
                         timeout=60)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1, run.stderr
    assert lines[0].startswith(f"error: environment variable {name}=") and fragment in lines[0], lines[0]
    assert snapshot(paths['root']) == before
