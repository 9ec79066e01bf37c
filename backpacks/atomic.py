"""Atomic file writes: readers see the old file or the new one, never half of one; and file digests.

Every output of the project (checkpoints, pretrained weights, datasets' side files, results,
reports, plots, logs) goes through atomic_write, so a crash or a preemption mid-write leaves
the previous file intact.

Temporary names are `.NAME.tmp-PID-RANDOM`: two processes writing the same file never share a
temporary, and one left behind by a killed process (SIGKILL skips every cleanup) is recognised
by its dead PID and removed by remove_stale_temporaries. PIDs are those of this machine.

A full disk is a DiskFullError (an OSError) that says the space the file needs; the temporary is
removed and the previous file stays. write_json turns any failed write into one line.
"""
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from backpacks.cli import fail

TEMPORARY_RE = re.compile(r'^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$')


class DiskFullError(OSError):
    """No space left on the device for a file (its filename); the message says the space it needs."""

    def __str__(self):
        return self.strerror


def size_text(n_bytes):
    return f"{n_bytes / 1e6:,.1f} MB"


def file_digest(*paths, algorithm='sha256'):
    """Hex digest of a file's bytes, or of several files' bytes read one after another."""
    digest = hashlib.new(algorithm)
    for path in paths:
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 24), b''):
                digest.update(block)
    return digest.hexdigest()


def token_record(tokens, chunk=1 << 24):
    """{'bytes', 'sha256', 'max_id'} of a numpy token array, in memory or memmapped, read chunk tokens at
    a time: what meta.json records of each token file (prepare.py) and what a reader checks against it."""
    digest, max_id = hashlib.sha256(), -1
    for start in range(0, len(tokens), chunk):
        part = tokens[start:start + chunk]
        digest.update(part.tobytes())
        max_id = max(max_id, int(part.max()))
    return {'bytes': int(tokens.nbytes), 'sha256': digest.hexdigest(), 'max_id': max_id}


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


def os_error_in(exception):
    """The OSError that exception is or was raised while handling (torch.save wraps a failed write
    in a RuntimeError), or None."""
    while exception is not None and not isinstance(exception, OSError):
        exception = exception.__cause__ or exception.__context__
    return exception


def disk_full(path, written):
    """DiskFullError for path, which needs at least `written` bytes or the size of its previous version."""
    needed = max(written, path.stat().st_size if path.is_file() else 0)
    free = shutil.disk_usage(path.parent).free
    return DiskFullError(errno.ENOSPC, f"no space left on device (the file needs at least {size_text(needed)}, "
                                       f"{size_text(free)} is free there)", str(path))


def atomic_write(path, write):
    """Call write(f) on a binary temporary file beside path, fsync it, then rename it onto path
    (and fsync the directory so the rename itself survives a crash). On failure path is untouched
    and the temporary file is removed; a failed write surfaces as an OSError (DiskFullError when the
    disk is full), even where the writer wrapped it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name))
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        cause = os_error_in(e)
        if cause is None:
            raise
        if cause.errno == errno.ENOSPC:
            raise disk_full(path, tmp.stat().st_size if tmp.exists() else 0) from e
        if cause is e:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from e
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def save_figure(fig, path):
    """A matplotlib figure as a PNG at path, written atomically, then closed (pyplot keeps open figures)."""
    import matplotlib.pyplot as plt  # only the scripts that draw pay for it
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path).name


def write_json(path, obj):
    """obj as indented JSON at path, atomically; one line (SystemExit) if it cannot be written."""
    try:
        atomic_write_text(path, json.dumps(obj, indent=1))
    except OSError as e:
        unwritable(path, e)


def unwritable(path, error):
    fail(f"could not write {path}: {error}; any previous {path.name} is intact")
