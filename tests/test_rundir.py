"""rundir.py: one run per out_dir (flock), no overwriting of an earlier run, no leftovers."""
import subprocess
import sys

import pytest

from backpacks.atomic import temporary_name
from backpacks.rundir import run_directory

HOLD_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from backpacks.rundir import run_directory
with run_directory({out!r}, new_run=True):
    print('locked', flush=True)
    time.sleep(600)
"""


def error_of(out_dir, new_run=True):
    with pytest.raises(SystemExit) as e:
        with run_directory(out_dir, new_run):
            pass
    assert str(e.value).startswith('error: ')
    return str(e.value)


def dead_pid():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def test_second_run_in_same_out_dir_is_refused_while_first_holds_it(tmp_path):
    out = tmp_path / 'run'
    with run_directory(out, new_run=True):
        assert (out / '.lock').is_file()
        message = error_of(out, new_run=False)
        assert 'another training' in message and str(out) in message
    assert not out.exists()  # created by the run, left empty: removed


@pytest.mark.slow
def test_lock_of_a_killed_run_is_stale(tmp_path, repo_root):
    out = tmp_path / 'run'
    holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK.format(root=str(repo_root), out=str(out))],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'locked'
    assert f'pid {holder.pid}' in error_of(out)
    holder.kill()
    holder.wait()
    assert (out / '.lock').exists()  # SIGKILL skipped the cleanup, but the kernel dropped the flock
    with run_directory(out, new_run=True):
        pass


@pytest.mark.parametrize('files, expected', [
    (['ckpt.pt'], '--init_from=resume'),
    (['best.pt'], 'cp '),
    (['best.pt', 'training_log.json'], 'another --out_dir'),
    (['training_log.json'], 'another --out_dir'),
])
def test_new_run_refuses_an_earlier_runs_files(tmp_path, files, expected):
    for name in files:
        (tmp_path / name).write_text('earlier run')
    message = error_of(tmp_path)
    assert expected in message and all(name in message for name in files)
    assert all((tmp_path / name).read_text() == 'earlier run' for name in files)
    with run_directory(tmp_path, new_run=False):  # a resumed run may use them
        pass


def test_failed_start_leaves_no_directories(tmp_path):
    out = tmp_path / 'a' / 'b'
    with pytest.raises(SystemExit):
        with run_directory(out, new_run=True):
            raise SystemExit('error: bad data')
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / 'kept'
    with run_directory(kept, new_run=True):
        (kept / 'ckpt.pt').write_text('x')
    assert sorted(p.name for p in kept.iterdir()) == ['ckpt.pt']


def test_unwritable_out_dir_is_one_line(tmp_path):
    (tmp_path / 'file').write_text('x')
    assert 'is a file' in error_of(tmp_path / 'file')
    # root may write anywhere, so the unwritable directory is one below a file
    assert 'cannot write into --out_dir' in error_of(tmp_path / 'file' / 'run')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file']


@pytest.mark.slow
def test_temporaries_of_dead_processes_are_removed(tmp_path):
    pid = dead_pid()
    stale = tmp_path / f'.ckpt.pt.tmp-{pid}-abcd1234'
    stale.write_bytes(b'half a checkpoint')
    mine = tmp_path / temporary_name('best.pt')
    mine.write_bytes(b'being written')
    with run_directory(tmp_path, new_run=True):
        assert not stale.exists() and mine.exists()
