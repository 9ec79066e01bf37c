"""The training and data half of the bad-input probe (test_bad_inputs_evaluation.py has the readers',
test_bad_inputs_environment.py the bad environments of every entry point): each must end in one line
(`error: ...`) and a non-zero exit, never a traceback, a wrong result or a changed or lost file. One case per line: an id, the command line (the
script, then its arguments; {data} is a copy of the sample dataset, {out} an empty run directory,
{run} the arguments of a tiny run from {data} into {out}), the fault injected before it runs (see FAULTS;
'' for none), and a fragment of the one line it must give. Cases run in-process through the scripts'
main(argv); the slow ones run the same command lines as subprocesses, to see the stderr a user sees."""
import errno
import io
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

import train
from backpacks import atomic
from data.europarl import prepare
from tiny import one_line, snapshot, train_args

RUN_ARGS = train_args('--eval_iters=1', '--eval_interval=2', '--max_iters=2')  # a tiny run of two iterations
PREPARE = '--source local --corpus data/europarl/sample/parliament --vocab_size 300 --out_root {data}/..'

CASES = [
    # id                     command line                                         fault                         the one line
    ('n_embd-zero',           'train {run} --n_embd=0',                            '',                           'n_embd must be at least 1, got 0'),
    ('n_head-zero',           'train {run} --n_head=0',                            '',                           'n_head must be at least 1'),
    ('n_layer-negative',      'train {run} --n_layer=-2',                          '',                           'n_layer must be at least 1'),
    ('n_senses-zero',         'train {run} --n_senses=0',                          '',                           'n_senses must be at least 1'),
    ('heads-do-not-divide',   'train {run} --n_embd=30 --n_head=4',                '',                           'n_embd (30) must be divisible by n_head (4)'),
    ('senses-do-not-divide',  'train {run} --n_senses=5',                          '',                           'n_embd (32) must be divisible by n_senses (5)'),
    ('preset-heads',          'train {run} --preset=backpack-micro --n_head=5',    '',                           'n_embd (32) must be divisible by n_head (5)'),
    ('test-is-val',           'train {run}',                                       'test_is_val',                'test.bin has 6840 bytes but meta.json records 6836'),
    ('test-same-size',        'train {run}',                                       'test_edited',                'test.bin is not the file prepared (sha256'),
    ('ids-beyond-vocab',      'train {run}',                                       'meta_vocab_300',             'holds token id 511, outside the vocabulary of 300'),
    ('ids-beyond-vocab-sized', 'train {run}',                                       'meta_vocab_300 size_only',   'holds token id 511, outside the vocabulary of 300'),
    ('ids-in-unscanned-file', 'train {run}',                                       'train_ids_9999 size_only',   'holds token id 9999, outside the vocabulary of 512'),
    ('vocab-not-tokenizer',   'train {run}',                                       'meta_vocab_600',             'vocab 512 vs 600'),
    ('verify-mode',           'train {run}',                                       'verify_bogus',               'BACKPACK_VERIFY_DATA=\'bogus\': use auto, full, size'),
    ('rank-not-int',          'train {run}',                                       'rank_abc',                   "environment variable RANK='abc' is not a non-negative integer"),
    ('rank-beyond-world',     'train {run}',                                       'rank_3_of_2',                'RANK (3) and LOCAL_RANK (0) must be below WORLD_SIZE (2)'),
    ('pretrained-ignored',    'train {run} --pretrained_path=x',                   '',                           'pretrained_path is only read with --init_from=backpack-gpt2'),
    ('init-from-old-name',    'train {run} --init_from=backpack-small',            '',                           "init_from 'backpack-small' is now 'backpack-gpt2'"),
    ('decay-before-warmup',   'train {run} --warmup_iters=10 --lr_decay_iters=5',  '',                           'ends the decay before warmup_iters'),
    ('init-from-empty-dir',   'train {run} --init_from={data}',                    '',                           'has no best.pt or ckpt.pt to start from'),
    ('sensia-index-cut',      'train {run} --objective=sensia',                    'pairs_index_cut',            'pairs_train_index.npy is not a readable index'),
    ('sensia-pairs-cut',      'train {run} --objective=sensia',                    'pairs_tokens_cut',           'pairs_train.bin has 27538 bytes but meta.json records 55076'),
    ('sensia-pairs-cut-sized', 'train {run} --objective=sensia',                    'pairs_tokens_cut no_records', 'pairs_train_index.npy points outside the 13769 tokens'),
    ('sensia-batch',          'train {run} --objective=sensia --batch_size=500',   '',                           'has 450 usable pairs, fewer than the 500'),
    ('resume-best-only',      'train --init_from=resume --out_dir={out}',          'best_pt_only',               'no ckpt.pt: continue from best.pt with `cp'),
    ('checkpoint-disk-full',  'train --init_from=resume --out_dir={out} --max_iters=4', 'earlier_run disk_full',      '.pt: no space left on device (the file needs at least'),
    ('prepare-existing',      f'prepare {PREPARE} --name {{data_name}}',           '',                           'already holds a dataset (data_sha256 '),
    ('prepare-seed',          f'prepare {PREPARE} --name fresh --seed -1',         '',                           '--seed must be >= 0'),
    ('prepare-disk-full',     f'prepare {PREPARE} --name fresh',                   'prepare_disk_full',          'fresh/train.jsonl: no space left on device (the dataset needs at least'),
    ('out-dir-file',          'train {run} --out_dir={data}/meta.json',            '',                           'meta.json is a file, not a directory'),
    ('data-dir-file',         'train {run} --data_dir={data}/meta.json',           '',                           'is a file, not a dataset directory'),
    ('setting-type',          'train {run} --max_iters=ten',                       '',                           "max_iters must be a int (default"),
    ('prepare-corpus-missing', 'prepare --source local --corpus {data}/none --out_root {out}', '',                'missing file: neither'),
    ('prepare-out-root-file', f'prepare {PREPARE} --name fresh --out_root {{data}}/meta.json', '',               'cannot write into --out_root'),
    ('prepare-vocab',         f'prepare {PREPARE} --name fresh --vocab_size 100',  '',                           '--vocab_size must be between 260'),
    ('prepare-type',          f'prepare {PREPARE} --name fresh --max_pairs many',  '',                           "argument --max_pairs: invalid int value: 'many'"),
]


# ----------------------------------------------------------------------------- faults

def truncate(path, n_bytes):
    with open(path, 'r+b') as f:
        f.truncate(n_bytes)


def edit_meta(data, **changes):
    meta = json.loads((data / 'meta.json').read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    (data / 'meta.json').write_text(json.dumps(meta))


class FillingDisk(io.FileIO):
    """A file on a disk that fills up after 4 KB: writes beyond raise ENOSPC, as a full disk does."""

    def write(self, data):
        if self.tell() + len(data) > 4096:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return super().write(data)


def earlier_run(data, out, monkeypatch):
    train.main([*RUN_ARGS, f'--data_dir={data}', f'--out_dir={out}'])


def best_pt_only(data, out, monkeypatch):
    earlier_run(data, out, monkeypatch)
    (out / 'ckpt.pt').unlink()


def disk_full_for_prepare(data, out, monkeypatch):
    def full(*_):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(prepare, 'write_jsonl', full)


FAULTS = {
    'test_is_val': lambda data, out, mp: shutil.copyfile(data / 'val.bin', data / 'test.bin'),
    'test_edited': lambda data, out, mp: (data / 'test.bin').write_bytes((data / 'val.bin').read_bytes()[:6836]),
    'meta_vocab_300': lambda data, out, mp: edit_meta(data, vocab_size=300),
    'meta_vocab_600': lambda data, out, mp: edit_meta(data, vocab_size=600),
    'no_records': lambda data, out, mp: edit_meta(data, token_files=None),
    'size_only': lambda data, out, mp: mp.setenv('BACKPACK_VERIFY_DATA', 'size'),
    'verify_bogus': lambda data, out, mp: mp.setenv('BACKPACK_VERIFY_DATA', 'bogus'),
    'rank_abc': lambda data, out, mp: mp.setenv('RANK', 'abc'),
    'rank_3_of_2': lambda data, out, mp: [mp.setenv(k, v) for k, v in (('RANK', '3'), ('LOCAL_RANK', '0'),
                                          ('WORLD_SIZE', '2'), ('MASTER_ADDR', 'localhost'), ('MASTER_PORT', '29500'))],
    'pairs_index_cut': lambda data, out, mp: truncate(data / 'pairs_train_index.npy', 900),
    'pairs_tokens_cut': lambda data, out, mp: truncate(data / 'pairs_train.bin', 27538),
    'earlier_run': earlier_run,
    'best_pt_only': best_pt_only,
    'disk_full': lambda data, out, mp: mp.setattr(atomic, 'open', FillingDisk, raising=False),
    'train_ids_9999': lambda data, out, mp: (data / 'train.bin').write_bytes(
        np.full((data / 'train.bin').stat().st_size // 2, 9999, np.uint16).tobytes()),
    'prepare_disk_full': disk_full_for_prepare,
}
# files a case may change: the log of the iterations trained before the disk filled (the checkpoint is kept)
MAY_CHANGE = {'checkpoint-disk-full': {'out/training_log.json'}}
IN_PROCESS_ONLY = {'disk_full', 'prepare_disk_full'}  # faults that replace a function
SUBPROCESS_CASES = ('n_head-zero', 'test-is-val', 'rank-not-int', 'sensia-pairs-cut', 'prepare-existing', 'prepare-seed')
SCRIPTS = {'train': ['train.py'], 'prepare': ['-m', 'data.europarl.prepare']}


@pytest.fixture
def data(sample_dataset, tmp_path):
    """A copy of the sample dataset (vocabulary 512) that a fault may break."""
    copy = tmp_path / 'data' / 'sample'
    shutil.copytree(sample_dataset, copy)
    return copy


def prepared_case(case, data, out, monkeypatch):
    """The command line of a case, as a list, after its faults are injected."""
    _, line, faults, _ = case
    for fault in faults.split():
        FAULTS[fault](data, out, monkeypatch)
    run = shlex.join([*RUN_ARGS, f'--data_dir={data}', f'--out_dir={out}'])
    return shlex.split(line.format(run=run, data=data, out=out, data_name=data.name))


def assert_one_line(status, message, fragment):
    assert status not in (0, None), message
    assert message.startswith('error: ') and '\n' not in message.strip() and 'Traceback' not in message, message
    assert fragment in message, message


@pytest.mark.parametrize('case', CASES, ids=[case[0] for case in CASES])
def test_in_process(case, data, tmp_path, monkeypatch, capsys):
    script, *args = prepared_case(case, data, tmp_path / 'out', monkeypatch)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        {'train': train.main, 'prepare': prepare.main}[script](args)
    assert case[3] in one_line(stopped, capsys)
    kept = lambda files: {k: v for k, v in files.items() if k not in MAY_CHANGE.get(case[0], ())}
    assert kept(snapshot(tmp_path)) == kept(before)


@pytest.mark.slow
@pytest.mark.parametrize('case', [c for c in CASES if c[0] in SUBPROCESS_CASES], ids=SUBPROCESS_CASES)
def test_as_a_user_runs_it(case, data, tmp_path, monkeypatch, repo_root):
    """stderr as a user sees it: warnings aside, one error line, no traceback."""
    assert not IN_PROCESS_ONLY & set(case[2].split())
    script, *args = prepared_case(case, data, tmp_path / 'out', monkeypatch)
    run = subprocess.run([sys.executable, *SCRIPTS[script], *args], cwd=repo_root, capture_output=True, text=True,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=300)
    lines = [line for line in run.stderr.splitlines() if not line.startswith('warning: ')]
    assert len(lines) == 1, run.stderr
    assert_one_line(run.returncode, lines[0], case[3])
