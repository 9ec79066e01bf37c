"""Atomic file writes: readers see the old file or the new one, never half of one; and file digests.

Every output of the project (checkpoints, pretrained weights, datasets' side files, results,
reports, plots, logs) goes through atomic_write, so a crash or a preemption mid-write leaves
the previous file intact.

Temporary names are `.NAME.tmp-PID-RANDOM`: two processes writing the same file never share a
temporary, and one left behind by a killed process (SIGKILL skips every cleanup) is recognised
by its dead PID and removed by remove_stale_temporaries. PIDs are those of this machine.
"""
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path

TEMPORARY_RE = re.compile(r'^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$')


def file_digest(*paths, algorithm='sha256'):
    """Hex digest of a file's bytes, or of several files' bytes read one after another."""
    digest = hashlib.new(algorithm)
    for path in paths:
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 24), b''):
                digest.update(block)
    return digest.hexdigest()


def temporary_name(name, kind='tmp'):
    """A hidden name beside `name`, unique to this process and call, with this process's PID."""
    return f'.{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}'


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temporaries(directory):
    """(path, regular name, kind) of every temporary in directory left by a process that is dead."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = []
    for path in directory.iterdir():
        match = TEMPORARY_RE.match(path.name)
        if match and int(match['pid']) != os.getpid() and not process_alive(int(match['pid'])):
            stale.append((path, match['name'], match['kind']))
    return stale


def remove_stale_temporaries(directory):
    """Delete the temporary files and directories of dead processes in directory; returns their names."""
    removed = []
    for path, _, _ in stale_temporaries(directory):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def atomic_write(path, write):
    """Call write(f) on a binary temporary file beside path, fsync it, then rename it onto path
    (and fsync the directory so the rename itself survives a crash). On failure path is untouched
    and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name))
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))
