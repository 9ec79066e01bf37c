"""Atomic file writes: readers see the old file or the new one, never half of one.

Every output of the project (checkpoints, pretrained weights, datasets' side files, results,
reports, plots, logs) goes through atomic_write, so a crash or a preemption mid-write leaves
the previous file intact.
"""
import os
from pathlib import Path


def atomic_write(path, write):
    """Call write(f) on a binary temporary file beside path, fsync it, then rename it onto path
    (and fsync the directory so the rename itself survives a crash). On failure path is untouched
    and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp')
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
