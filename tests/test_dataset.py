"""dataset.py: locating a prepared dataset, get_batch, resumable sampler state, language labels."""
import io
import json
import shutil

import numpy as np
import pytest
import torch

from backpacks import dataset
from backpacks.dataset import BatchSampler, DataError, check_same_dataset, language_labels, load_meta, resolve_data_dir


def test_resolve_data_dir_by_path_and_by_name(sample_dataset, monkeypatch):
    assert resolve_data_dir(sample_dataset) == sample_dataset.resolve()
    assert resolve_data_dir(str(sample_dataset)) == sample_dataset.resolve()
    monkeypatch.setattr(dataset, "DATA_ROOT", sample_dataset.parent)
    assert resolve_data_dir("sample") == sample_dataset
    with pytest.raises(DataError, match="run python -m data.europarl.prepare"):
        resolve_data_dir("no_such_dataset")


def test_load_meta_errors(tmp_path, monkeypatch, sample_dataset):
    monkeypatch.setattr(dataset, "DATA_ROOT", tmp_path / "empty")
    with pytest.raises(DataError, match="has no meta.json.*run python -m data.europarl.prepare"):
        load_meta(tmp_path)
    monkeypatch.setattr(dataset, "DATA_ROOT", sample_dataset.parent)
    with pytest.raises(DataError, match="prepared datasets under data/: sample"):
        load_meta(tmp_path)
    with pytest.raises(DataError, match="no meta.json"):
        BatchSampler(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_meta(tmp_path)


def test_meta_without_a_key_or_with_a_bad_dtype(tmp_path, sample_dataset):
    meta = load_meta(sample_dataset)
    for broken, expected in ((dict(meta, dtype="uint8"), "dtype 'uint8'"),
                             ({k: v for k, v in meta.items() if k != "dtype"}, "lacks 'dtype'"),
                             (dict(meta, special_tokens={"en": 1, "fr": 2}), "lacks 'special_tokens' with en, fr, eot")):
        (tmp_path / "meta.json").write_text(json.dumps(broken))
        with pytest.raises(DataError, match=expected):
            load_meta(tmp_path)


@pytest.mark.parametrize("size", [0, 7])
def test_empty_or_truncated_token_file(tmp_path, sample_dataset, size):
    shutil.copytree(sample_dataset, tmp_path / "d")
    (tmp_path / "d" / "train.bin").write_bytes(b"\x01" * size)
    with pytest.raises(DataError, match=f"train.bin has {size} bytes, not a whole positive number of uint16"):
        BatchSampler(tmp_path / "d").get_batch("train", 2, 8)


def test_check_same_dataset(sample_dataset, other_sample_dataset, capsys):
    ours, other = load_meta(sample_dataset), load_meta(other_sample_dataset)
    assert ours["vocab_size"] == other["vocab_size"] and ours["tokenizer_sha256"] != other["tokenizer_sha256"]
    check_same_dataset(ours, ours, "run/ckpt.pt", sample_dataset)
    with pytest.raises(DataError) as e:
        check_same_dataset(ours, other, "run/ckpt.pt", other_sample_dataset)
    message = str(e.value)
    assert "is not the dataset run/ckpt.pt was trained on (its tokenizer differs" in message
    assert ours["command"] in message and "\n" not in message
    same_tokenizer = dict(ours, data_sha256="0" * 64)
    check_same_dataset(ours, same_tokenizer, "run/ckpt.pt", "d", check_data=False)
    with pytest.raises(DataError, match="its token data differs"):
        check_same_dataset(ours, same_tokenizer, "run/ckpt.pt", "d")
    legacy = {k: v for k, v in ours.items() if not k.endswith("_sha256")}
    for _ in range(3):
        check_same_dataset(legacy, ours, "old/ckpt.pt", sample_dataset)
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == ["warning: old/ckpt.pt records no tokenizer_sha256 (prepared before fingerprints): "
                        "cannot check that the run's own dataset is used",
                        "warning: old/ckpt.pt records no data_sha256 (prepared before fingerprints): "
                        "cannot check that the run's own dataset is used"]


def test_get_batch_shapes_and_targets(sample_dataset):
    meta = load_meta(sample_dataset)
    sampler = BatchSampler(sample_dataset, seed=0)
    stream = np.fromfile(sample_dataset / "train.bin", dtype=meta["dtype"]).astype(np.int64)
    x, y = sampler.get_batch("train", 6, 32, "cpu")
    assert x.shape == y.shape == (6, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x.numpy(), y.numpy()):  # every row is a window of the stream
        starts = np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(stream, 33) == np.append(row_x, row_y[-1]), axis=1))
        assert len(starts) >= 1
    assert int(x.max()) < meta["vocab_size"]


def test_get_batch_is_deterministic_per_seed(sample_dataset):
    a, b, c = BatchSampler(sample_dataset, seed=7), BatchSampler(sample_dataset, seed=7), BatchSampler(sample_dataset, seed=8)
    for _ in range(3):
        xa, ya = a.get_batch("val", 4, 16, "cpu")
        xb, yb = b.get_batch("val", 4, 16, "cpu")
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.get_batch("train", 4, 16)[0], c.get_batch("train", 4, 16)[0])


def test_state_dict_resume_draws_the_same_batches(sample_dataset):
    sampler = BatchSampler(sample_dataset, seed=3)
    sampler.get_batch("train", 4, 16, "cpu")
    state = sampler.state_dict()
    buffer = io.BytesIO()  # as it travels inside a checkpoint
    torch.save(state, buffer)
    buffer.seek(0)
    restored_state = torch.load(buffer, weights_only=True)
    expected = [sampler.get_batch("train", 4, 16, "cpu") for _ in range(2)]
    resumed = BatchSampler(sample_dataset, seed=999)
    resumed.load_state_dict(restored_state)
    for (x, y), (rx, ry) in zip(expected, [resumed.get_batch("train", 4, 16, "cpu") for _ in range(2)]):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_block_size_too_large_for_the_split(sample_dataset):
    tokens = load_meta(sample_dataset)["splits"]["val"]["tokens"]
    with pytest.raises(DataError, match="too few for block_size"):
        BatchSampler(sample_dataset).get_batch("val", 2, tokens, "cpu")
    with pytest.raises(DataError, match="heldout.bin .*missing"):
        BatchSampler(sample_dataset).get_batch("heldout", 2, 8, "cpu")


def test_language_labels_follow_the_latest_tag_strictly_before():
    EN, FR, EOT = 1, 2, 0
    tokens = np.array([7, EN, 5, 6, FR, 8, 9, EOT, FR, 4, EN, 3, EOT])
    expected = [-1, -1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert language_labels(tokens, EN, FR).tolist() == expected
    assert language_labels(tokens, EN, FR).dtype == np.int8


def reference_labels(stream, en, fr):
    labels, current = [], -1
    for token in stream:
        labels.append(current)
        if token == en:
            current = 0
        elif token == fr:
            current = 1
    return np.array(labels, np.int8)


def test_get_batch_with_language(sample_dataset):
    meta = load_meta(sample_dataset)
    en, fr = meta["special_tokens"]["en"], meta["special_tokens"]["fr"]
    stream = np.fromfile(sample_dataset / "val.bin", dtype=meta["dtype"])
    labels = reference_labels(stream, en, fr)
    sampler, twin = BatchSampler(sample_dataset, seed=5), BatchSampler(sample_dataset, seed=5)
    x, y, lang = sampler.get_batch("val", 8, 64, "cpu", with_language=True)
    assert torch.equal(x, twin.get_batch("val", 8, 64, "cpu")[0])  # labels do not consume randomness
    assert lang.shape == (8, 64) and lang.dtype == torch.int8
    assert set(lang.unique().tolist()) <= {-1, 0, 1}
    for row_y, row_lang in zip(y.numpy(), lang.numpy()):
        starts = np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(stream.astype(np.int64), 64) == row_y, axis=1))
        assert any(np.array_equal(labels[s:s + 64], row_lang) for s in starts)
    assert np.array_equal(sampler.language_labels("val"), labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_get_batch_on_cuda(sample_dataset):
    x, y, lang = BatchSampler(sample_dataset).get_batch("train", 2, 8, "cuda", with_language=True)
    assert x.is_cuda and y.is_cuda and lang.is_cuda


@pytest.mark.parametrize("mode, limit, caught", [("auto", 1 << 30, True), ("auto", 0, False), ("full", 0, True),
                                                 ("size", 1 << 30, False)])
def test_which_checks_each_verify_mode_makes(tmp_path, sample_dataset, monkeypatch, mode, limit, caught):
    """test.bin edited at the same size: only a hash sees it. auto hashes files up to FULL_CHECK_BYTES,
    full every file, size none; a change of size is refused in every mode."""
    copy = tmp_path / "d"
    shutil.copytree(sample_dataset, copy)
    monkeypatch.setenv(dataset.VERIFY_VARIABLE, mode)
    monkeypatch.setattr(dataset, "FULL_CHECK_BYTES", limit)
    tokens = np.fromfile(copy / "test.bin", np.uint16)
    tokens[:2] = tokens[1::-1] + 1
    tokens.tofile(copy / "test.bin")
    sampler = BatchSampler(copy)
    if caught:
        with pytest.raises(DataError, match="test.bin is not the file prepared"):
            sampler.get_batch("test", 2, 8)
    else:
        sampler.get_batch("test", 2, 8)
    tokens[:-1].tofile(copy / "test.bin")
    with pytest.raises(DataError, match="test.bin has 6834 bytes but meta.json records 6836"):
        sampler.get_batch("test", 2, 8)
