"""backpacks/eval/context.py: loading a run for evaluation refuses another dataset and names the fallback
of an unreadable checkpoint (one line each)."""
import json
import shutil

import pytest
import torch

from backpacks.eval.context import load_for_eval


def test_load_for_eval_refuses_another_dataset(sample_dataset, other_sample_dataset, make_checkpoint, tmp_path):
    out = make_checkpoint(tmp_path / "run", sample_dataset)
    with pytest.raises(SystemExit) as e:
        load_for_eval(out, "best", "cpu", other_sample_dataset)
    assert str(e.value).startswith(f"error: {other_sample_dataset} is not the dataset {out / 'best.pt'} was trained on")
    same_tokenizer = tmp_path / "same_tokenizer"  # re-prepared with the same tokenizer but other data
    shutil.copytree(sample_dataset, same_tokenizer)
    meta = json.loads((same_tokenizer / "meta.json").read_text())
    (same_tokenizer / "meta.json").write_text(json.dumps(dict(meta, data_sha256="0" * 64)))
    with pytest.raises(SystemExit, match="its token data differs"):
        load_for_eval(out, "best", "cpu", same_tokenizer)
    assert load_for_eval(out, "best", "cpu", sample_dataset)[3] == sample_dataset


def test_load_for_eval_refuses_a_replaced_test_stream(sample_dataset, make_checkpoint, tmp_path):
    """A test.bin replaced by val.bin would turn the test loss into a val loss: refused before any task."""
    data = tmp_path / "data"
    shutil.copytree(sample_dataset, data)
    out = make_checkpoint(tmp_path / "run", data)
    shutil.copyfile(data / "val.bin", data / "test.bin")
    with pytest.raises(SystemExit, match=r"^error: .*test\.bin has \d+ bytes but meta\.json records \d+"):
        load_for_eval(out, "best", "cpu", data)


def test_load_for_eval_unreadable_checkpoint_names_the_fallback(sample_dataset, make_checkpoint, tmp_path):
    out = make_checkpoint(tmp_path / "run", sample_dataset)
    shutil.copy(out / "best.pt", out / "ckpt.pt")
    (out / "best.pt").write_bytes((out / "best.pt").read_bytes()[:100])
    with pytest.raises(SystemExit) as e:
        load_for_eval(out, "best", "cpu")
    assert str(e.value) == (f"error: {out / 'best.pt'} is not a readable checkpoint (truncated or not a PyTorch file); "
                            f"{out / 'ckpt.pt'} is the fallback")


def tensors_in(obj):
    """Every tensor in a nest of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    return [t for value in values for t in tensors_in(value)]


def test_load_for_eval_moves_only_the_model_to_the_device(sample_dataset, make_checkpoint, tmp_path):
    """Evaluation and sample.py load through load_for_eval: the checkpoint is read onto the CPU and only the
    model goes to the device ('meta' stands in for a GPU here); the optimizer state is not kept at all."""
    out = make_checkpoint(tmp_path / "run", sample_dataset)
    model, ckpt, _, _ = load_for_eval(out, "best", "meta")
    assert {p.device.type for p in model.parameters()} == {"meta"} and not model.training
    assert "optimizer" not in ckpt and "model" not in ckpt
    assert tensors_in(ckpt) and {t.device.type for t in tensors_in(ckpt)} == {"cpu"}
    assert {"meta", "model_type", "model_args", "data_dir"} <= set(ckpt)


@pytest.mark.cuda
def test_load_for_eval_holds_only_the_model_on_the_gpu(sample_dataset, make_checkpoint, tmp_path):
    out = make_checkpoint(tmp_path / "run", sample_dataset)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    model, ckpt, _, _ = load_for_eval(out, "best", "cuda")
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert torch.cuda.memory_allocated() - before <= weights + 2 ** 20  # the optimizer state never got there
