"""Optional live logging of a training run to Weights & Biases, as nanoGPT does it: off by default
(wandb_log=False), wandb imported only when it is on, one process only (rank 0), and a missing wandb
package is one line before any work. Each evaluation's training_log.json entry is sent as it is written.

    require_wandb(cfg)                  # at start: SystemExit with one line if wandb_log but no wandb
    live_log = open_live_log(cfg)       # rank 0; None when off
    live_log.log(entry)                 # one training_log entry: its numbers, at step entry['iter']
"""
import importlib
from pathlib import Path

from backpacks.cli import fail


def import_wandb():
    try:
        return importlib.import_module('wandb')
    except ImportError:
        fail("wandb_log=True but the wandb package is not installed: pip install wandb (and wandb login), "
             "or train without --wandb_log")


def require_wandb(cfg):
    """Fail before any work when live logging is asked for and wandb is missing."""
    if cfg['wandb_log']:
        import_wandb()


class LiveLog:
    """A wandb run receiving the numbers of each training_log entry."""

    def __init__(self, wandb_run):
        self.wandb_run = wandb_run

    def log(self, entry):
        numbers = {k: v for k, v in entry.items() if k != 'iter' and isinstance(v, (int, float))}
        self.wandb_run.log(numbers, step=entry['iter'])


def open_live_log(cfg):
    """The wandb run of this training (project wandb_project, named wandb_run_name or after out_dir, with
    every setting as its config), or None when wandb_log is off. Call it on rank 0 only."""
    if not cfg['wandb_log']:
        return None
    wandb = import_wandb()
    name = cfg['wandb_run_name'] or Path(cfg['out_dir']).name
    return LiveLog(wandb.init(project=cfg['wandb_project'], name=name, config=dict(cfg)))
