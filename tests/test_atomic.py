import os

import pytest

from backpacks.atomic import atomic_write, atomic_write_text, temporary_name


def test_writes_and_creates_parent(tmp_path):
    path = tmp_path / "sub" / "report.md"
    atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]


def test_failed_write_keeps_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_text(path, "old")

    def crash(f):
        f.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_two_writers_of_one_file_never_share_a_temporary(tmp_path):
    """A write that starts while another of the same file is under way (another run, another process)
    must not clobber or delete the first one's temporary file."""
    path = tmp_path / "ckpt.pt"
    assert temporary_name("ckpt.pt") != temporary_name("ckpt.pt") and f"-{os.getpid()}-" in temporary_name("x")

    def outer(f):
        f.write(b"first")
        atomic_write(path, lambda g: g.write(b"second"))  # the other writer, finishing in between

    atomic_write(path, outer)
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
