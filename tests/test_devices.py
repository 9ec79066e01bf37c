"""backpacks/devices.py: every script's --device is one clear line when unknown or absent here, and
torchrun with more processes than GPUs is one line before any process group is started."""
import sys

import pytest
import torch

import bench
import evaluate
import sample
import train
from backpacks.devices import cuda_index, process_device, resolve_device
from experiments import bench_translation, run_interventions

UNKNOWN = "error: unknown device 'tpu': use auto, cpu, cuda, cuda:N or mps"


def parse_of(script, monkeypatch):
    """parse_args(argv) of a script, whether it takes argv or reads sys.argv."""
    def parse(argv):
        monkeypatch.setattr(sys, 'argv', [script.__name__, *argv])
        return script.parse_args()
    return parse


@pytest.mark.parametrize('script, argv', [
    (sample, ['--out_dir', 'run']), (evaluate, ['--out_dir', 'run']), (bench, []),
    (bench_translation, ['--out_dir', 'run']), (run_interventions, ['--out_dir', 'run'])])
def test_unknown_device_is_one_line_in_every_script(script, argv, monkeypatch, sample_dataset, make_checkpoint, tmp_path):
    run = make_checkpoint(tmp_path / 'run', sample_dataset)  # scripts check the run before the device
    argv = [str(run) if a == 'run' else a for a in argv]
    parse = script.parse_args if script in (sample, evaluate, run_interventions) else parse_of(script, monkeypatch)
    with pytest.raises(SystemExit) as e:
        parse([*argv, '--device', 'tpu'])
    assert str(e.value) == UNKNOWN
    assert parse([*argv, '--device', 'auto']).device == resolve_device('auto')


def test_train_refuses_an_unknown_device_before_any_work():
    with pytest.raises(SystemExit) as e:
        train.main(['--device=tpu', '--data_dir=/nonexistent'])
    assert str(e.value) == UNKNOWN


def test_absent_devices_are_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit, match="^error: device 'cuda:1' requested but CUDA is not available; use --device=cpu$"):
        resolve_device('cuda:1')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    with pytest.raises(SystemExit, match="^error: device 'cuda:1' requested but there are 1 CUDA devices$"):
        resolve_device('cuda:1')
    assert resolve_device('cuda:0') == 'cuda:0' and resolve_device('cpu') == 'cpu'


def test_torchrun_with_more_processes_than_gpus_is_one_line(monkeypatch):
    """Two processes on a one-GPU machine: process 1 would ask for cuda:1, which does not exist."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    for name, value in {'RANK': '1', 'LOCAL_RANK': '1', 'WORLD_SIZE': '2', 'LOCAL_WORLD_SIZE': '2',
                        'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': '29500'}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as e:
        train.setup_processes('cuda')
    assert str(e.value) == ("error: 2 processes per node but this machine has 1 CUDA device(s): "
                            "use --nproc_per_node=1 or fewer")
    assert process_device('cuda', 0, 1) == 'cuda:0' and process_device('cpu', 1, 2) == 'cpu'


def test_cuda_index():
    assert cuda_index('cuda:3') == 3 and cuda_index('cpu') is None and cuda_index('mps') is None
