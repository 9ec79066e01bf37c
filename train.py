"""
Train a Backpack or a Transformer language model on English-French data (nanoGPT style).

  python train.py config/train_sample_tiny.py
  python train.py --config train_europarl_scratch --out_dir out-europarl-scratch --data_dir europarl_en_fr
  python train.py config/train_sample_tiny.py --max_iters=500 --batch_size 16 --compile
  python train.py --init_from=resume --out_dir=out-europarl-scratch      # continue a preempted run
  torchrun --standalone --nproc_per_node=4 train.py config/train_europarl_scratch.py

Settings come from the defaults listed by --help, then config files in the order given
(a path, or --config NAME for config/NAME.py), then --key=value or --key value overrides,
parsed with ast.literal_eval and checked against the default's type; a bare boolean key
(--compile) means True. With --init_from=resume the run's saved settings replace the
defaults, so `--init_from=resume --out_dir=X` alone continues exactly the same run.
The model size is a --preset (see model.PRESETS) or n_layer/n_head/n_embd/n_senses.

Writes out_dir/ckpt.pt (latest: every checkpoint_interval, at the end and on SIGTERM or
SIGINT), out_dir/best.pt (lowest val loss; under SENSIA the lowest French loss on the val pairs) and
out_dir/training_log.json (one entry per eval). out_dir is locked for the run, and a new run refuses
one holding an earlier run's files (backpacks/rundir.py);
a non-finite loss or weights stop the run without saving.
"""
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from backpacks import metrics, objectives, sensia
from backpacks.atomic import atomic_write_text
from backpacks.checkpoint import (CheckpointError, load_checkpoint, model_from_checkpoint, rng_state, save_checkpoint,
                                  set_rng_state)
from backpacks.dataset import BatchSampler, DataError, check_same_dataset, load_meta, resolve_data_dir, unigram_entropy
from backpacks.cli import fail, parse_settings
from backpacks.devices import (DTYPES, DeviceError, check_device_name, describe_machine, device_type_of, peak_flops,
                               process_device, resolve_device, resolve_dtype, torchrun_environment,
                                use_tensor_cores_for_float32)
from backpacks.wandb_log import open_live_log, require_wandb
from backpacks.rundir import no_checkpoint_to_resume, run_directory
from backpacks.init_from import model_from_run, pretrained_backpack
from model import MODEL_CLASSES, PRESETS, ModelConfig, build_model, check_model, preset_config

_names_before_defaults = set(globals())
# ----------------------------------------------------------------------------- defaults
# I/O
out_dir = 'out'
eval_interval = 500          # iterations between evaluations (one training_log.json entry each)
eval_iters = 200             # batches per split and evaluation, per process
log_interval = 10            # iterations between progress lines
checkpoint_interval = 500    # iterations between ckpt.pt saves (also saved at the end and on SIGTERM)
early_stop_evals = 0         # stop once val loss has not improved for this many evaluations; 0 never stops early
init_from = 'scratch'        # 'scratch', 'resume' (out_dir/ckpt.pt), 'backpack-small' (pretrained Backpack)
                             # or a run directory of this repository (its best.pt, else ckpt.pt)
pretrained_path = ''         # backpack-small: local directory or hub id; '' means stanfordnlp/backpack-gpt2
# data
data_dir = 'europarl_en_fr'  # a dataset name under data/ (as written by data/europarl/prepare.py) or a path
batch_size = 32              # sequences per micro-step and process
block_size = 512
gradient_accumulation_steps = 1  # micro-steps per iteration, in total over all processes
# model
model_type = 'backpack'      # 'backpack' or 'transformer'
preset = ''                  # a size from model.PRESETS, e.g. 'backpack-micro'; explicit sizes override it
n_layer = 6
n_head = 6
n_embd = 384
n_senses = 16                # Backpack only
dropout = 0.0
bias = True
# AdamW and the learning-rate schedule
learning_rate = 3e-4         # peak, reached after warmup
max_iters = 50000
weight_decay = 0.1           # on tensors of 2 or more dims only
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0              # max gradient norm; 0 disables clipping
decay_lr = True              # cosine decay after the linear warmup; False keeps learning_rate
warmup_iters = 2000
lr_decay_iters = 0           # iteration at which the cosine reaches its floor; 0 means max_iters
min_lr_ratio = 0.1           # the floor, as a fraction of learning_rate
# objective: 'lm' (next-token loss on train.bin) or 'sensia' (sense adaptation on the pairs, see sensia.py)
objective = 'lm'
sensia_losses = 'sense,context,lm'  # terms kept; the others get weight 0 (ablations; 'lm' is the LM-only control)
sensia_align_end = 0.2       # a: end of the alignment phase, as a fraction of max_iters (0: no alignment phase)
sensia_polish_start = 0.5    # z: start of the polish phase (= a: no joint phase; 1: no polish phase)
sensia_freeze = True         # freeze the sense and sense-weight networks from the polish phase on
sensia_freeze_sense_input = False  # also feed the senses a frozen copy of E: sense vectors fixed (see sensia.py)
sensia_context = 'output'    # z_ctx: 'output' o or 'hidden' backbone state at the last token; 'hidden_mean' (MCL)
sensia_symmetric = True      # symmetric InfoNCE (the paper); False: English -> French only (the authors' code)
sensia_tags = False          # put the language tag before each sentence (the paper uses none)
sensia_eval_pairs = 500      # val pairs for recall@1, entropy and French perplexity at each eval
tau_pool = 0.7               # softmax temperature of the sense pooling
tau_sense = 0.05             # InfoNCE temperatures (start values when the *_end values are > 0)
tau_context = 0.07
tau_sense_end = 0.0          # > 0: ramped to over the alignment phase, as the authors do
tau_context_end = 0.0
label_smoothing = 0.05       # of the French LM loss (the logged loss is unsmoothed)
# system
device = 'auto'              # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'               # 'auto' (what the hardware multiplies natively: see docs/training.md), 'float32', 'bfloat16', 'float16'
compile = False              # torch.compile the model
seed = 1337
deterministic = False        # deterministic kernels only: bitwise-reproducible runs (slower on GPU)
# live logging to Weights & Biases (nanoGPT's settings; needs `pip install wandb`), rank 0 only
wandb_log = False            # send each evaluation's training_log.json entry as it is written
wandb_project = 'multilingual-backpack'
wandb_run_name = ''          # '' names the run after out_dir
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if k not in _names_before_defaults and not k.startswith('_')}

INIT_CHOICES = ('scratch', 'resume', 'backpack-small')
RESUME_KEYS = ('model', 'model_type', 'model_args', 'config', 'meta', 'data_dir', 'iter_num', 'best_val_loss',
               'optimizer', 'scaler', 'rng', 'sampler', 'training_log')
ARCH_KEYS = ('n_layer', 'n_head', 'n_embd', 'n_senses', 'block_size', 'dropout', 'bias')
ARCH_SIZES = ('n_layer', 'n_head', 'n_embd', 'n_senses')
EVAL_SEED_OFFSET = 1_000_003  # eval batches come from their own stream, so evaluating never shifts training's


def parse_args(argv):
    """{key: value} of every setting given explicitly (config files first, then overrides)."""
    return parse_settings(argv, DEFAULTS, __doc__)


def validate(cfg):
    choices = {'model_type': tuple(MODEL_CLASSES), 'dtype': ('auto', *DTYPES), 'objective': ('lm', 'sensia'),
               'sensia_context': sensia.CONTEXT_STATES}
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            fail(f"{key} must be one of {', '.join(allowed)}, got {cfg[key]!r}")
    if cfg['init_from'] not in INIT_CHOICES and not Path(cfg['init_from']).is_dir():
        fail(f"init_from must be one of {', '.join(INIT_CHOICES)} or a run directory, got {cfg['init_from']!r}")
    if cfg['init_from'] not in INIT_CHOICES and not any((Path(cfg['init_from']) / n).is_file() for n in ('best.pt', 'ckpt.pt')):
        fail(f"init_from={cfg['init_from']!r} has no best.pt or ckpt.pt to start from")
    if cfg['pretrained_path'] and cfg['init_from'] != 'backpack-small':
        fail(f"pretrained_path is only read with --init_from=backpack-small (init_from is {cfg['init_from']!r})")
    sensia.validate_settings(cfg)
    if cfg['preset'] and cfg['preset'] not in PRESETS:
        fail(f"unknown preset {cfg['preset']!r}; choose from {', '.join(PRESETS)}")
    for key in ('eval_interval', 'eval_iters', 'log_interval', 'checkpoint_interval', 'batch_size',
                'block_size', 'gradient_accumulation_steps', *ARCH_SIZES):
        if cfg[key] < 1:
            fail(f"{key} must be at least 1, got {cfg[key]}")
    if cfg['early_stop_evals'] < 0:
        fail(f"early_stop_evals must be >= 0 (0 disables early stopping), got {cfg['early_stop_evals']}")
    if cfg['max_iters'] < 0 or cfg['warmup_iters'] < 0 or not 0.0 <= cfg['dropout'] < 1.0:
        fail("max_iters and warmup_iters must be >= 0 and dropout in [0, 1)")
    for key in ('learning_rate', 'weight_decay', 'grad_clip', 'lr_decay_iters'):
        if not cfg[key] >= 0:  # also refuses nan
            fail(f"{key} must be >= 0, got {cfg[key]}")
    if 0 < cfg['lr_decay_iters'] < cfg['warmup_iters']:
        fail(f"lr_decay_iters ({cfg['lr_decay_iters']}) ends the decay before warmup_iters ({cfg['warmup_iters']}) "
             "ends the warmup: use 0 (decay until max_iters) or a value >= warmup_iters")
    if not (0 <= cfg['min_lr_ratio'] <= 1 and 0 <= cfg['beta1'] < 1 and 0 <= cfg['beta2'] < 1):
        fail("min_lr_ratio must be in [0, 1] and beta1, beta2 in [0, 1)")
    check_device_name(cfg['device'])
    if not cfg['out_dir'].strip():
        fail("--out_dir is empty: name the directory for the checkpoints (e.g. --out_dir=out/my_run)")


def resolve_model_type(cfg, explicit):
    """A preset implies its model_type; an explicit model_type that contradicts it is an error."""
    if cfg['preset']:
        preset_type = PRESETS[cfg['preset']][0]
        if 'model_type' in explicit and explicit['model_type'] != preset_type:
            fail(f"preset {cfg['preset']!r} is a {preset_type} but model_type is {explicit['model_type']!r}")
        cfg['model_type'] = preset_type


# ----------------------------------------------------------------------------- devices and processes

def setup_processes(requested_device):
    """(ddp, rank, world_size, device) from torchrun's environment (one process otherwise)."""
    ddp, rank, local_rank, world_size = torchrun_environment()
    device = process_device(resolve_device(requested_device), local_rank if ddp else None,
                            int(os.environ.get('LOCAL_WORLD_SIZE', world_size)))
    if device.startswith('cuda'):
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    return ddp, rank, world_size, device


# ----------------------------------------------------------------------------- model

def fresh_model_config(cfg, explicit, vocab_size):
    """(model_type, ModelConfig) of a fresh model from a preset (explicit sizes override it) or from
    n_layer/n_head/...; one line if no model can have those sizes."""
    try:
        if cfg['preset']:
            preset_dims = PRESETS[cfg['preset']][1]
            sizes = {k: cfg[k] for k in ARCH_KEYS if k in explicit or k not in preset_dims}
            model_type, config = preset_config(cfg['preset'], vocab_size=vocab_size, **sizes)
        else:
            model_type = cfg['model_type']
            config = ModelConfig(vocab_size=vocab_size, **{k: cfg[k] for k in ARCH_KEYS})
        check_model(model_type, config)
    except ValueError as e:
        fail(f"invalid model size: {e}")
    return model_type, config


def model_from_settings(cfg, explicit, vocab_size):
    return build_model(*fresh_model_config(cfg, explicit, vocab_size))


def check_resume(ckpt, explicit, meta, data_path, ckpt_path):
    """Refuse to continue a run on another dataset or with another architecture (DataError or SystemExit)."""
    if 'model_type' in explicit and explicit['model_type'] != ckpt['model_type']:
        fail(f"{ckpt_path} is a {ckpt['model_type']} run but model_type is {explicit['model_type']!r}; "
             "use another --out_dir to train a new model")
    old_meta = ckpt['meta']
    if (old_meta['vocab_size'], old_meta['tokenizer']['kind']) != (meta['vocab_size'], meta['tokenizer']['kind']):
        fail(f"{ckpt_path} was trained on a vocabulary of {old_meta['vocab_size']} ({old_meta['tokenizer']['kind']}) "
             f"tokens but {data_path} has {meta['vocab_size']} ({meta['tokenizer']['kind']}); "
             "resume on the run's own dataset or use another --out_dir")
    check_same_dataset(old_meta, meta, ckpt_path, data_path)
    for key in ARCH_KEYS:
        if key in explicit and explicit[key] != ckpt['model_args'][key]:
            fail(f"{ckpt_path} has {key}={ckpt['model_args'][key]!r} but {explicit[key]!r} was given; "
                 "a resumed run keeps its architecture")


# ----------------------------------------------------------------------------- the run

@dataclasses.dataclass
class Run:
    """A training run's state: what the loop reads and changes, and what save() writes."""
    cfg: dict
    meta: dict
    data_path: Path
    device: str
    ddp: bool
    rank: int
    world_size: int
    raw_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dtype: str                           # what --dtype resolved to on this machine (cfg keeps the request)
    scaler: torch.amp.GradScaler
    autocast: object
    objective: object
    eval_sampler: BatchSampler
    eval_start: dict = None              # eval_sampler's state at the start: every evaluation sees the same batches
    fast_model: torch.nn.Module = None   # raw_model, compiled with --compile
    train_model: torch.nn.Module = None  # fast_model, wrapped in DDP under torchrun
    iter_num: int = 0
    best_val_loss: float = math.inf      # the lowest objective.selection_key so far (best.pt's)
    training_log: list = dataclasses.field(default_factory=list)
    saved: dict = dataclasses.field(default_factory=dict)  # {file name: iteration} of the checkpoints holding a good state
    elapsed_before: float = 0.0          # seconds spent before a resume
    t_start: float = 0.0
    window_time: float = 0.0             # seconds of training steps since the last evaluation (tokens/s, MFU),
    window_positions: dict = dataclasses.field(default_factory=dict)  # and {sequence length: positions computed}
    mfu_peak: float = None
    mfu_yardstick: str = None
    log: object = print
    live_log: object = None              # backpacks.wandb_log.LiveLog with wandb_log (rank 0)

    @property
    def master(self):
        return self.rank == 0

    @property
    def out_path(self):
        return Path(self.cfg['out_dir'])

    @property
    def micro_steps(self):
        return self.cfg['gradient_accumulation_steps'] // self.world_size

    def wrap(self):
        """train_model for the parameters that train from here on (DDP must be rebuilt when they change). The
        one buffer, BackpackLM.sense_input, is copied from E alike on every process: never broadcast."""
        self.train_model = (DDP(self.fast_model, device_ids=[torch.device(self.device).index]
                                if self.device.startswith('cuda') else None, broadcast_buffers=False)
                            if self.ddp else self.fast_model)


def gathered(obj, ddp, world_size):
    """obj of every process, in rank order (each process draws its own batches and dropout)."""
    if not ddp:
        return [obj]
    objs = [None] * world_size
    dist.all_gather_object(objs, obj)
    return objs


def write_json(path, obj):
    try:
        atomic_write_text(path, json.dumps(obj, indent=1))
    except OSError as e:
        unwritable(path, e)


def unwritable(path, error):
    fail(f"could not write {path}: {error}; any previous {path.name} is intact")


def learning_rate_at(it, cfg):
    """Linear warmup to learning_rate, then cosine decay to min_lr_ratio * learning_rate."""
    peak = cfg['learning_rate']
    if not cfg['decay_lr']:
        return peak
    if it < cfg['warmup_iters']:
        return peak * (it + 1) / (cfg['warmup_iters'] + 1)
    decay_iters = cfg['lr_decay_iters'] or cfg['max_iters']
    floor = peak * cfg['min_lr_ratio']
    if it >= decay_iters:
        return floor
    progress = (it - cfg['warmup_iters']) / max(1, decay_iters - cfg['warmup_iters'])
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


@torch.no_grad()
def estimate_losses(model, sampler, cfg, autocast, device, ddp):
    """Mean per-token loss on eval_iters batches of train and of val, and the val loss on English-target
    and French-target tokens (None when there are none), averaged over all processes. The sums stay on
    the device: one host sync per evaluation (float64 where the device has it; MPS has not)."""
    model.eval()
    dtype = torch.float32 if torch.device(device).type == 'mps' else torch.float64
    sums = {split: torch.zeros(len(metrics.LOSS_PARTS), 2, dtype=dtype, device=device) for split in ('train', 'val')}
    for split in ('train', 'val'):
        for _ in range(cfg['eval_iters']):
            x, y, *lang = sampler.get_batch(split, cfg['batch_size'], cfg['block_size'], device,
                                            with_language=split == 'val')
            with autocast:
                logits, _ = model(x)
            sums[split] += metrics.language_loss_sums(logits, y, *lang)
    totals = torch.cat([sums['train'][:1], sums['val']])  # train all; val all, en, fr
    if ddp:
        dist.all_reduce(totals)
    model.train()
    names = ('train_loss', 'val_loss', 'val_loss_en', 'val_loss_fr')
    return {name: total / count if count else None for name, (total, count) in zip(names, totals.tolist())}


def diverged(problem, out_path, saved):
    """fail() for a non-finite loss or weights, naming exactly the files that hold the last good state
    (saved: {file name: iteration} of the checkpoints that exist and are finite)."""
    kept = [f"{out_path / name} (iteration {it})" for name, it in sorted(saved.items())]
    where = ("the last good state is in " + " and ".join(kept)) if kept else \
        "no checkpoint had been written, so none holds a good state"
    fail(f"{problem}; stopped without saving: {where}. Lower learning_rate or check the data")


def selection_label(key):
    """How log lines name the loss that selects best.pt: 'val loss', or the objective's own key."""
    return 'val loss' if key == 'val_loss' else key


def evaluations_since_best(training_log, key='val_loss'):
    """How many evaluations have passed since the lowest value of key, the loss that selects best.pt
    (the first one, if tied). Derived from the checkpointed log, so a resumed run stops early exactly
    where the straight run does."""
    losses = [entry[key] for entry in training_log]
    return len(losses) - 1 - losses.index(min(losses)) if losses else 0


def install_stop_handlers():
    """SIGTERM/SIGINT (preemption, Ctrl-C) only set a flag: the current step ends, ckpt.pt is saved.
    A second Ctrl-C kills at once. Returns the flag and the previous handlers."""
    stop = {'signal': None}

    def request_stop(signum, frame):
        stop['signal'] = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    return stop, previous


# ----------------------------------------------------------------------------- setting up

def main(argv=None):
    explicit = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = {**DEFAULTS, **explicit}
    validate(cfg)
    rank = torchrun_environment()[1]
    require_wandb(cfg)
    ckpt_path = Path(cfg['out_dir']) / 'ckpt.pt'
    if cfg['init_from'] == 'resume' and not ckpt_path.is_file():
        fail(no_checkpoint_to_resume(Path(cfg['out_dir'])))
    with run_directory(cfg['out_dir'], new_run=cfg['init_from'] != 'resume', is_master=rank == 0):
        start(cfg, explicit, ckpt_path)


def start(cfg, explicit, ckpt_path):
    """Check the run to resume and the dataset, then set up the processes and train (out_dir is locked)."""
    resume = None
    if cfg['init_from'] == 'resume':
        try:
            resume = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            fail(str(e))
        missing = [key for key in RESUME_KEYS if key not in resume]
        if missing:
            fail(f"{ckpt_path} lacks {', '.join(missing)}: not a checkpoint train.py can resume")
        saved = {k: v for k, v in resume['config'].items() if k in DEFAULTS}
        cfg = {**DEFAULTS, **saved, 'data_dir': resume['data_dir'], **explicit}
        validate(cfg)
        require_wandb(cfg)
    resolve_model_type(cfg, explicit)
    try:
        data_path = resolve_data_dir(cfg['data_dir']).resolve()
        meta = load_meta(data_path)
        if resume is None and cfg['init_from'] == 'scratch':
            fresh_model_config(cfg, explicit, meta['vocab_size'])  # impossible sizes: one line now
        objectives.check_data(cfg, meta, data_path)
        if resume is not None:
            check_resume(resume, explicit, meta, data_path, ckpt_path)
    except DataError as e:
        fail(str(e))

    ddp, rank, world_size, device = setup_processes(cfg['device'])
    try:
        train(setup_run(cfg, explicit, meta, data_path, resume, ddp, rank, world_size, device))
    except DataError as e:  # e.g. a split shorter than block_size
        fail(str(e))
    finally:
        if ddp:
            dist.destroy_process_group()


def configure_torch(cfg, device, rank, world_size):
    """Seed, precision and determinism settings; the run's first line names the machine, its threads,
    and the dtype chosen and why. Returns that dtype: cfg keeps the request ('auto' stays 'auto'), so a
    run resumed on another GPU (a Colab reconnect from an A100 to a T4) resolves it there again."""
    device_type = device_type_of(device)
    try:
        dtype, dtype_reason = resolve_dtype(cfg['dtype'], device_type)
    except DeviceError as e:
        fail(str(e))
    if cfg['gradient_accumulation_steps'] % world_size:
        fail(f"gradient_accumulation_steps ({cfg['gradient_accumulation_steps']}) must be a multiple "
             f"of the number of processes ({world_size})")
    if cfg['deterministic']:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if device_type == 'cuda':
        use_tensor_cores_for_float32()
    torch.manual_seed(cfg['seed'] + rank)
    if rank == 0:
        print(f"machine: {describe_machine(device)}; dtype {dtype} ({dtype_reason})")
    return dtype


def starting_model(cfg, explicit, meta, data_path, resume):
    """The model the run starts from: the checkpoint it resumes, backpack-gpt2, another run, or a fresh one."""
    if resume is not None:
        return model_from_checkpoint(resume)
    if cfg['init_from'] == 'backpack-small':
        if cfg['model_type'] != 'backpack':
            fail("--init_from=backpack-small trains a backpack; remove --model_type=transformer")
        return pretrained_backpack(cfg, explicit, meta, data_path)
    if cfg['init_from'] != 'scratch':
        return model_from_run(cfg['init_from'], cfg, meta, data_path)
    return model_from_settings(cfg, explicit, meta['vocab_size'])


def setup_run(cfg, explicit, meta, data_path, resume, ddp, rank, world_size, device):
    # decided before any work (and before the objective is built, so that it is built once)
    reseed = resume is not None and needs_reseed(resume, world_size, cfg)
    device_type = device_type_of(device)
    dtype = configure_torch(cfg, device, rank, world_size)
    if resume is not None:
        check_resumed_dtype(resume, dtype, cfg, rank)
    model = starting_model(cfg, explicit, meta, data_path, resume)
    cfg.update(model_type=model.model_type, **{k: getattr(model.config, k) for k in ARCH_KEYS})
    raw_model = model.to(device)
    optimizer = raw_model.configure_optimizers(cfg['weight_decay'], cfg['learning_rate'],
                                               (cfg['beta1'], cfg['beta2']), device_type)
    stream_seed = cfg['seed'] + rank + (1000 * resume['iter_num'] if reseed else 0)
    run = Run(cfg=cfg, meta=meta, data_path=data_path, device=device, ddp=ddp, rank=rank, world_size=world_size,
              raw_model=raw_model, optimizer=optimizer, dtype=dtype,
              scaler=torch.amp.GradScaler(device_type, enabled=dtype == 'float16'),
              autocast=(contextlib.nullcontext() if dtype == 'float32'
                        else torch.autocast(device_type=device_type, dtype=DTYPES[dtype])),
              objective=objectives.make_objective(cfg, raw_model, data_path, meta, device, stream_seed),
              eval_sampler=BatchSampler(data_path, seed=cfg['seed'] + EVAL_SEED_OFFSET + rank))
    run.eval_start = run.eval_sampler.state_dict()
    if resume is not None:
        restore(run, resume, reseed_to=stream_seed if reseed else None)
    run.fast_model = torch.compile(raw_model) if cfg['compile'] else raw_model
    run.objective.prepare(raw_model, run.iter_num)  # DDP is built for the parameters that train from here on
    run.wrap()
    if run.master:
        run.mfu_peak, run.mfu_yardstick = peak_flops(device, dtype)
        describe(run)
        run.live_log = open_live_log(cfg)
    return run


def check_resumed_dtype(resume, dtype, cfg, rank):
    """A run resumed in another dtype than it trained in (dtype=auto on another GPU) continues, but not
    bitwise: said in one line, and refused with deterministic=True, which promises a bitwise continuation."""
    saved = resume.get('dtype', resume['config']['dtype'])
    if saved == dtype:
        return
    if cfg['deterministic']:
        fail(f"{Path(cfg['out_dir']) / 'ckpt.pt'} trained in {saved} and this machine resolves dtype="
             f"{cfg['dtype']} to {dtype}: deterministic=True cannot continue it bitwise; resume with "
             f"--dtype={saved} where the device runs it, or with --deterministic=False")
    if rank == 0:
        print(f"warning: the run trained in {saved} and continues in {dtype} here: not a bitwise continuation")


def needs_reseed(resume, world_size, cfg):
    """Whether a resume runs on another number of processes (GPUs) than saved the run, so that its random
    streams must be reseeded; with deterministic=True, which promises a bitwise continuation, that is an
    error instead."""
    saved = len(resume['rng'])
    if saved != world_size and cfg['deterministic']:
        fail(f"{Path(cfg['out_dir']) / 'ckpt.pt'} was saved by {saved} process(es) and {world_size} would resume it: "
             f"deterministic=True cannot continue it bitwise; resume with {saved} process(es) "
             "(torchrun --nproc_per_node), or with --deterministic=False for reseeded data and dropout streams")
    return saved != world_size


def restore(run, resume, reseed_to=None):
    """Continue where the checkpoint left off: optimizer, scaler, counters, log, and the random streams
    unless reseed_to gives the seed of fresh ones."""
    run.optimizer.load_state_dict(resume['optimizer'])
    if resume['scaler']:
        run.scaler.load_state_dict(resume['scaler'])
    run.iter_num, run.best_val_loss = resume['iter_num'], resume['best_val_loss']
    run.training_log, run.elapsed_before = resume['training_log'], resume.get('elapsed_s', 0.0)
    run.saved = {'ckpt.pt': run.iter_num}
    if (run.out_path / 'best.pt').exists():  # its iteration is in the log, under the key that selected it
        key = run.objective.selection_key
        run.saved['best.pt'] = next((e['iter'] for e in run.training_log if e[key] == run.best_val_loss), '?')
    if reseed_to is None:
        set_rng_state(resume['rng'][run.rank], run.device)
        run.objective.load_state_dict(resume['sampler'][run.rank])
    else:  # the run continues, but not bitwise
        if run.master:
            print(f"warning: {len(resume['rng'])} processes saved this run, {run.world_size} resume it: "
                  "data order and dropout streams are reseeded")
        torch.manual_seed(reseed_to)
    resume.clear()  # frees the loaded tensors now that they are copied into the model


def batch_text(cfg):
    """What one iteration trains on: block_size windows, or SENSIA's translation pairs (of varying length)."""
    sequences = cfg['gradient_accumulation_steps'] * cfg['batch_size']
    if cfg['objective'] == 'sensia':
        return f"{sequences} translation pairs"
    return f"{sequences * cfg['block_size']:,} tokens"


def describe(run):
    """The run's first lines: model size, data, batch, yardstick and the unigram baseline."""
    cfg, counts = run.cfg, run.raw_model.param_counts()
    print(f"{run.raw_model.model_type}: {counts['total'] / 1e6:.2f}M parameters ({counts['embedding'] / 1e6:.2f}M "
          f"embedding, {counts['non_embedding'] / 1e6:.2f}M non-embedding), vocab {run.meta['vocab_size']}, "
          f"block {cfg['block_size']}; {run.world_size} process(es) on {run.device}, {run.dtype}; "
          f"{batch_text(cfg)} per iteration; iterations {run.iter_num} -> {cfg['max_iters']}")
    print(f"MFU yardstick: {run.mfu_yardstick}")
    print(f"data {run.data_path}: unigram entropy of train.bin {unigram_entropy(run.data_path, run.meta):.4f} "
          f"nats/token (the loss of a model that ignores context)")


# ----------------------------------------------------------------------------- training

def save(run, name):
    """Write out_dir/name (ckpt.pt or best.pt) atomically, if the weights are finite."""
    if not torch.stack([torch.isfinite(p).all() for p in run.raw_model.parameters()]).all():
        diverged(f"weights are not finite at iteration {run.iter_num}", run.out_path, run.saved)
    rngs = gathered(rng_state(run.device), run.ddp, run.world_size)
    samplers = gathered(run.objective.state_dict(), run.ddp, run.world_size)
    if not run.master:
        return
    path = run.out_path / name
    try:
        save_checkpoint({
            'model': run.raw_model.state_dict(), 'model_type': run.raw_model.model_type,
            'model_args': dataclasses.asdict(run.raw_model.config), 'config': run.cfg, 'dtype': run.dtype,
            'meta': run.meta,
            'data_dir': str(run.data_path), 'iter_num': run.iter_num, 'best_val_loss': run.best_val_loss,
            'selection_key': run.objective.selection_key,
            'optimizer': run.optimizer.state_dict(), 'scaler': run.scaler.state_dict(), 'rng': rngs,
            'sampler': samplers, 'training_log': run.training_log,
            'elapsed_s': run.elapsed_before + time.time() - run.t_start}, path)
    except OSError as e:
        unwritable(path, e)
    run.saved[name] = run.iter_num


def throughput(run):
    """(tokens/s over all processes, this process's MFU) of the training steps since the last evaluation,
    from the positions they computed (SENSIA's padded pairs are shorter than block_size); None before any."""
    positions = sum(run.window_positions.values())
    if not positions:
        return None, None
    flops = sum(run.raw_model.flops_per_token(length) * n for length, n in run.window_positions.items())
    mfu = flops / run.window_time / run.mfu_peak if run.master else None  # the yardstick is measured on rank 0
    return positions * run.world_size / run.window_time, mfu


def broadcast_from_master(obj, ddp):
    """Rank 0's obj on every process (obj itself without DDP)."""
    if not ddp:
        return obj
    objs = [obj]
    dist.broadcast_object_list(objs, src=0)
    return objs[0]


def evaluate_and_log(run, lr, first):
    """Losses on the fixed evaluation batches, one training_log.json entry, best.pt if it improved."""
    cfg = run.cfg
    if first:  # the first evaluation can take a while: say so
        run.log(f"evaluating at iter {run.iter_num}: {2 * cfg['eval_iters']} batches of {cfg['batch_size']} "
                f"(eval_iters={cfg['eval_iters']} on train and on val) ...")
    run.eval_sampler.load_state_dict(run.eval_start)
    losses = estimate_losses(run.fast_model, run.eval_sampler, cfg, run.autocast, run.device, run.ddp)
    if not all(math.isfinite(losses[k]) for k in ('train_loss', 'val_loss')):
        diverged(f"loss is not finite at iteration {run.iter_num} (train {losses['train_loss']}, "
                 f"val {losses['val_loss']})", run.out_path, run.saved)
    with run.autocast:  # the objective's own measures, in the dtype the model trains in
        measures = run.objective.evaluate(run.fast_model, run.iter_num)
    tokens_per_s, mfu = throughput(run)
    entry = {'iter': run.iter_num, **losses, **measures, 'lr': lr, 'tokens_per_s': tokens_per_s, 'mfu': mfu,
             'mfu_yardstick': run.mfu_yardstick, 'elapsed_s': run.elapsed_before + time.time() - run.t_start}
    # every process decides on best.pt, a collective save, from the same numbers: rank 0's
    run.training_log.append(broadcast_from_master(entry, run.ddp))
    run.window_time, run.window_positions = 0.0, {}
    by_language = ', '.join(f"{lang} {losses[f'val_loss_{lang}']:.4f}" for lang in ('en', 'fr')
                            if losses[f'val_loss_{lang}'] is not None)
    key = run.objective.selection_key
    selection = '' if key == 'val_loss' else f", {key} {run.training_log[-1][key]:.4f}"
    run.log(f"iter {run.iter_num}: train loss {losses['train_loss']:.4f}, val loss {losses['val_loss']:.4f} "
            f"({by_language}){selection}, lr {lr:.2e}" + (f", {tokens_per_s:,.0f} tokens/s" if tokens_per_s else ""))
    if run.master:
        write_json(run.out_path / 'training_log.json', run.training_log)
    if run.live_log:
        run.live_log.log(run.training_log[-1])
    if run.training_log[-1][key] < run.best_val_loss:
        run.best_val_loss = run.training_log[-1][key]
        save(run, 'best.pt')


def training_step(run, stop):
    """One optimizer step over gradient_accumulation_steps micro-batches; (mean loss, scalars to log,
    whether a process was asked to stop)."""
    if run.objective.prepare(run.raw_model, run.iter_num):  # e.g. SENSIA's polish phase froze the senses
        run.wrap()
    loss_sum = torch.zeros((), device=run.device)
    for micro_step in range(run.micro_steps):
        batch = run.objective.batch()
        rows, length = batch[0].shape
        run.window_positions[length] = run.window_positions.get(length, 0) + rows * length
        # gradients are all-reduced once per iteration, on the last micro-step
        last_micro_step = micro_step == run.micro_steps - 1
        with run.train_model.no_sync() if run.ddp and not last_micro_step else contextlib.nullcontext():
            with run.autocast:
                loss, scalars = run.objective.loss(run.train_model, batch, run.iter_num)
            run.scaler.scale(loss / run.micro_steps).backward()
        loss_sum += loss.detach().float()
    flags = torch.stack([torch.tensor(float(stop['signal'] is not None), device=run.device),
                         (~torch.isfinite(loss_sum)).float()])
    if run.ddp:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop_requested, non_finite = flags.tolist()
    if non_finite:
        diverged(f"loss is not finite at iteration {run.iter_num} (local loss {loss_sum.item() / run.micro_steps})",
                 run.out_path, run.saved)
    if run.cfg['grad_clip'] > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), run.cfg['grad_clip'])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum.item() / run.micro_steps, scalars, bool(stop_requested)


def train(run):
    cfg, key = run.cfg, run.objective.selection_key
    stop, previous_handlers = install_stop_handlers()
    bar = tqdm(total=cfg['max_iters'], initial=run.iter_num, dynamic_ncols=True) \
        if run.master and sys.stderr.isatty() else None
    run.log = (bar.write if bar else lambda msg: print(msg, flush=True)) if run.master else (lambda msg: None)
    run.t_start, start_iter = time.time(), run.iter_num
    try:
        while True:
            lr = learning_rate_at(run.iter_num, cfg)
            for group in run.optimizer.param_groups:
                group['lr'] = lr
            last = run.iter_num >= cfg['max_iters']
            logged = bool(run.training_log) and run.training_log[-1]['iter'] == run.iter_num
            if (run.iter_num % cfg['eval_interval'] == 0 or last) and not logged:
                evaluate_and_log(run, lr, first=not run.training_log or run.iter_num == start_iter)
            stalled = cfg['early_stop_evals'] and evaluations_since_best(run.training_log, key) >= cfg['early_stop_evals']
            if last or stalled or (run.iter_num % cfg['checkpoint_interval'] == 0 and run.iter_num > start_iter):
                save(run, 'ckpt.pt')
            if stalled:
                run.log(f"early stop at iteration {run.iter_num}: {selection_label(key)} has not improved for "
                        f"{cfg['early_stop_evals']} evaluations")
            if last or stalled:
                break
            t0 = time.time()
            loss, scalars, stop_requested = training_step(run, stop)
            run.iter_num += 1
            dt = time.time() - t0
            run.window_time += dt
            if bar:
                bar.update(1)
            if run.iter_num % cfg['log_interval'] == 0:
                if bar:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                else:
                    run.log(f"iter {run.iter_num}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.0f} ms"
                            + ''.join(f", {k} {v:.4f}" for k, v in scalars.items()))
            if stop_requested:
                save(run, 'ckpt.pt')
                run.log(f"stopped by {stop['signal'] or 'another process'} at iteration {run.iter_num}: saved "
                        f"{run.out_path / 'ckpt.pt'}; continue with --init_from=resume --out_dir={cfg['out_dir']}")
                return
    finally:
        if bar:
            bar.close()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    run.log(f"done: {run.iter_num} iterations, best {selection_label(key)} {run.best_val_loss:.4f}; "
            f"checkpoints in {run.out_path}")


if __name__ == '__main__':
    main()
