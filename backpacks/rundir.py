"""The output directory of a training run: one run at a time, nothing of an earlier run overwritten,
nothing left behind by a run that failed to start; the signals that end a run with a checkpoint, and
the line that ends a diverged one without.

    with run_directory(out_dir, new_run=True):   # SystemExit with one line if it cannot be used
        ... train, writing out_dir/ckpt.pt, best.pt, training_log.json ...
    with stop_handlers() as stop:                # stop['signal']: 'SIGTERM' once one came
        ... train until stop['signal'], then save ckpt.pt ...
    diverged("loss is not finite at iteration 8", out_path, saved)   # names the files holding a good state

The lock is an exclusive fcntl.flock on out_dir/.lock. The kernel drops a flock when its process
exits, however it exits (SIGKILL included), so a lock can never outlive its run: a .lock file left
by a killed run is stale by construction and the next run simply locks it again. flock is not
reliable on some network filesystems (old NFS); there two runs may not exclude each other.
"""
import contextlib
import errno
import fcntl
import os
import signal
from pathlib import Path

from backpacks.atomic import remove_stale_temporaries
from backpacks.cli import fail

RUN_FILES = ('ckpt.pt', 'best.pt', 'training_log.json')
LOCK_NAME = '.lock'


def check_new_run(out_path):
    """Refuse to start a new run where an earlier run's checkpoints or log would be overwritten."""
    found = [name for name in RUN_FILES if (out_path / name).exists()]
    if not found:
        return
    if 'ckpt.pt' in found:
        fail(f"{out_path / 'ckpt.pt'} exists: continue it with --init_from=resume, or train into another --out_dir")
    fail(f"{out_path} holds {' and '.join(found)} of an earlier run but no ckpt.pt: {ways_without_ckpt(out_path)}")


def no_checkpoint_to_resume(out_path):
    """The message for --init_from=resume where out_path holds no ckpt.pt: what does work from there."""
    found = [name for name in RUN_FILES[1:] if (out_path / name).exists()]
    if not found:
        return f"--init_from=resume but {out_path / 'ckpt.pt'} does not exist; start a run with --init_from=scratch"
    return f"--init_from=resume but {out_path} holds {' and '.join(found)} and no ckpt.pt: {ways_without_ckpt(out_path)}"


def ways_without_ckpt(out_path):
    """What works in an out_dir with an earlier run's best.pt or training_log.json but no ckpt.pt
    (best.pt holds everything a resume needs, as ckpt.pt does)."""
    if (out_path / 'best.pt').exists():
        return (f"continue from best.pt with `cp {out_path / 'best.pt'} {out_path / 'ckpt.pt'}` and "
                "--init_from=resume, or train into another --out_dir")
    return "train into another --out_dir, or move training_log.json away"


def acquire_lock(out_path):
    """An open file descriptor holding the exclusive lock of out_path, or SystemExit naming the holder."""
    lock_path = out_path / LOCK_NAME
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors='replace').strip() or 'unknown'
            os.close(fd)
            fail(f"another training (pid {holder}) is writing into {out_path}: wait for it to finish, "
                 "or train into another --out_dir")
        # the previous holder unlinks the file when it releases it: lock the file that is there now
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def missing_directories(path):
    """path and those of its ancestors that do not exist yet, deepest first."""
    return [p for p in (path, *path.parents) if not p.exists()]


@contextlib.contextmanager
def run_directory(out_dir, new_run, is_master=True):
    """Lock out_dir for this run (created if needed); for a new run refuse earlier runs' files.
    On exit the lock is released, and directories this run created are removed if still empty.
    Temporary files of dead processes (a killed run's half-written checkpoint) are removed.
    Only the master process (rank 0) locks and writes; the others just run the body."""
    if not is_master:
        yield
        return
    out_path = Path(out_dir)
    if out_path.exists() and not out_path.is_dir():
        fail(f"--out_dir {out_path} is a file, not a directory")
    created = missing_directories(out_path.resolve())
    fd = None
    try:
        out_path.mkdir(parents=True, exist_ok=True)
        fd = acquire_lock(out_path)
    except OSError as e:
        remove_empty(created)
        reason = 'no space left on device' if e.errno == errno.ENOSPC else e.strerror
        fail(f"cannot write into --out_dir {out_path}: {reason}")
    except SystemExit:
        remove_empty(created)
        raise
    try:
        remove_stale_temporaries(out_path)
        if new_run:
            check_new_run(out_path)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out_path / LOCK_NAME)  # while still locked: see acquire_lock
        os.close(fd)
        remove_empty(created)


def remove_empty(directories):
    for directory in directories:
        with contextlib.suppress(OSError):  # not empty, or already gone
            directory.rmdir()


@contextlib.contextmanager
def stop_handlers():
    """SIGTERM/SIGINT (preemption, Ctrl-C) only set stop['signal']: the current step ends, ckpt.pt is saved.
    A second Ctrl-C kills at once. The previous handlers are back on exit."""
    stop = {'signal': None}

    def request_stop(signum, frame):
        stop['signal'] = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def diverged(problem, out_path, saved):
    """fail() for a non-finite loss or weights, naming exactly the files that hold the last good state
    (saved: {file name: iteration} of the checkpoints that exist and are finite)."""
    kept = [f"{out_path / name} (iteration {it})" for name, it in sorted(saved.items())]
    where = ("the last good state is in " + " and ".join(kept)) if kept else \
        "no checkpoint had been written, so none holds a good state"
    fail(f"{problem}; stopped without saving: {where}. Lower learning_rate or check the data")
