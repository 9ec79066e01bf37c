import os
import re
from dataclasses import asdict

import pytest
import torch

from backpacks import checkpoint
from backpacks.checkpoint import CheckpointError, load_checkpoint, load_trained_model, save_checkpoint
from tiny import tiny_model


def tiny_checkpoint(model_type='backpack'):
    """(the tiny model, the least checkpoint of it that loads)."""
    model = tiny_model(model_type)
    return model, {'model': model.state_dict(), 'model_type': model_type, 'model_args': asdict(model.config),
                   'iter_num': 3, 'meta': {'vocab_size': model.config.vocab_size}}


@pytest.mark.parametrize('model_type', ['backpack', 'transformer'])
def test_round_trip(tmp_path, model_type):
    model, ckpt = tiny_checkpoint(model_type)
    save_checkpoint(ckpt, tmp_path / 'best.pt')
    loaded, loaded_ckpt = load_trained_model(tmp_path, 'best')
    idx = torch.randint(0, 32, (1, 8))
    assert torch.equal(loaded(idx)[0], model.eval()(idx)[0])
    assert loaded_ckpt['iter_num'] == 3 and not loaded.training
    assert [p.name for p in tmp_path.iterdir()] == ['best.pt']  # no temporary file left behind


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    _, ckpt = tiny_checkpoint()
    path = tmp_path / 'ckpt.pt'
    save_checkpoint(ckpt, path)

    def crash(obj, f):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, 'save', crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**ckpt, 'iter_num': 4}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)['iter_num'] == 3
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt.pt']


class RunsCode:
    def __reduce__(self):
        return (os.system, ('echo this ran',))


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match='no checkpoint at'):
        load_trained_model(tmp_path, 'latest')
    with pytest.raises(CheckpointError, match='unknown checkpoint'):
        load_trained_model(tmp_path, 'newest')


def unreadable(path, kind):
    """Write an unreadable checkpoint of the given kind at path."""
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'text':
        path.write_bytes(b'not a checkpoint')
    elif kind == 'truncated':
        save_checkpoint(tiny_checkpoint()[1], path)
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == 'malicious':
        torch.save({'model': RunsCode()}, path)
    elif kind == 'not_a_run':
        torch.save([1, 2, 3], path)


@pytest.mark.parametrize('kind, reason', [
    ('empty', 'empty file'), ('text', 'not a PyTorch file'), ('truncated', 'truncated or not a PyTorch file'),
    ('malicious', 'loading them could run code'), ('not_a_run', 'not written by train.py')])
def test_unreadable_checkpoints_are_one_line_naming_the_fallback(tmp_path, capfd, kind, reason):
    unreadable(tmp_path / 'ckpt.pt', kind)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / 'ckpt.pt')
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'ckpt.pt'} is not a readable checkpoint (") and reason in message
    assert message.endswith("); there is no best.pt beside it to fall back on") and '\n' not in message
    assert 'weights_only' not in message and 'this ran' not in capfd.readouterr().out
    save_checkpoint(tiny_checkpoint()[1], tmp_path / 'best.pt')
    with pytest.raises(CheckpointError, match=f"; {re.escape(str(tmp_path / 'best.pt'))} is the fallback$"):
        load_checkpoint(tmp_path / 'ckpt.pt')


def test_model_args_that_disagree_with_the_weights_are_one_line(tmp_path):
    _, ckpt = tiny_checkpoint()
    ckpt['model_args']['n_embd'] *= 2  # twice as wide as the weights
    save_checkpoint(ckpt, tmp_path / 'best.pt')
    with pytest.raises(CheckpointError, match="model_args .* disagree with its weights: size mismatch") as e:
        load_trained_model(tmp_path, 'best')
    assert '\n' not in str(e.value)


class OneGPU:
    """torch.cuda of a machine with n GPUs, as far as the RNG functions go: device i's generator state is
    tensor([i]) until set; an index beyond the devices raises as CUDA does."""

    def __init__(self, monkeypatch, n=1):
        self.n, self.states = n, {i: torch.tensor([i], dtype=torch.uint8) for i in range(n)}
        for module in (torch.cuda, torch.cuda.random):  # set_rng_state_all calls the module's own function
            monkeypatch.setattr(module, 'set_rng_state', self.set_rng_state)
            monkeypatch.setattr(module, 'get_rng_state', self.get_rng_state)
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: n)
        monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: [self.states[i] for i in range(n)])

    def check(self, device):
        index = torch.device('cuda', device).index if isinstance(device, int) else torch.device(device).index
        if index >= self.n:
            raise RuntimeError('CUDA error: invalid device ordinal')
        return index

    def set_rng_state(self, state, device='cuda'):
        self.states[self.check(device)] = state

    def get_rng_state(self, device='cuda'):
        return self.states[self.check(device)]


def test_each_process_saves_only_its_own_gpu_generator(monkeypatch):
    gpus = OneGPU(monkeypatch, n=2)
    assert torch.equal(checkpoint.rng_state('cuda:1')['cuda'], gpus.states[1])
    assert checkpoint.rng_state('cpu')['cuda'] is None


@pytest.mark.parametrize('device', ['cuda:0', 'cpu'])
def test_a_two_gpu_rng_list_restores_on_one_gpu_or_the_cpu(monkeypatch, device):
    """A checkpoint holding the generators of 2 GPUs (as a run on a 2-GPU box saved them) resumes on a
    1-GPU or CPU machine: the CPU streams come back, and GPU 0 gets GPU 0's state where there is one."""
    state = checkpoint.rng_state('cpu')
    expected = torch.rand(3)
    two_gpus = [torch.tensor([7], dtype=torch.uint8), torch.tensor([8], dtype=torch.uint8)]
    gpus = OneGPU(monkeypatch, n=1)
    checkpoint.set_rng_state({**state, 'cuda': two_gpus}, device)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(gpus.states[0], two_gpus[0] if device == 'cuda:0' else torch.tensor([0], dtype=torch.uint8))


def test_a_gpu_state_restores_onto_the_resuming_process_gpu(monkeypatch):
    """Saved by the process on cuda:1, restored by a process on cuda:0: the state follows the process."""
    gpus = OneGPU(monkeypatch, n=1)
    saved = torch.tensor([9], dtype=torch.uint8)
    checkpoint.set_rng_state({**checkpoint.rng_state('cpu'), 'cuda': saved}, 'cuda:0')
    assert torch.equal(gpus.states[0], saved)


@pytest.mark.cuda
def test_gpu_generator_round_trip_on_cuda():
    """A real GPU: the state saved for cuda:0 (and a 2-GPU list's first entry) brings its stream back."""
    state = checkpoint.rng_state('cuda:0')
    expected = torch.rand(4, device='cuda:0')
    checkpoint.set_rng_state(state, 'cuda:0')
    assert torch.equal(torch.rand(4, device='cuda:0'), expected)
    checkpoint.set_rng_state({**state, 'cuda': [state['cuda'], torch.zeros_like(state['cuda'])]}, 'cuda:0')
    assert torch.equal(torch.rand(4, device='cuda:0'), expected)
