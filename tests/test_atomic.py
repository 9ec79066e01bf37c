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


def test_full_disk_under_torch_save_is_one_disk_full_error(tmp_path, monkeypatch):
    """torch.save wraps a failed write in a RuntimeError: it still surfaces as a DiskFullError that says
    the space needed, the previous file stays and no temporary is left."""
    import errno
    import io

    import torch

    from backpacks import atomic

    class FillingDisk(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    path = tmp_path / "ckpt.pt"
    atomic.atomic_write(path, lambda f: torch.save({"w": torch.zeros(10_000)}, f))
    before = path.read_bytes()
    monkeypatch.setattr(atomic, "open", FillingDisk, raising=False)
    with pytest.raises(atomic.DiskFullError) as e:
        atomic.atomic_write(path, lambda f: torch.save({"w": torch.ones(10_000)}, f))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    needed = atomic.size_text(len(before))  # at least the previous version's size
    assert str(e.value).startswith(f"no space left on device (the file needs at least {needed}, ") and "\n" not in str(e.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
