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
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from backpacks import objectives
from backpacks.atomic import unwritable, write_json
from backpacks.checkpoint import (ARCH_KEYS, CheckpointError, check_resume, check_resumed_dtype, load_resumable,
                                  needs_reseed, restore, rng_state, save_checkpoint, training_checkpoint)
from backpacks.cli import fail, parse_settings
from backpacks.dataset import BatchSampler, DataError, load_meta, resolve_data_dir, unigram_entropy
from backpacks.devices import (DTYPES, broadcast_from_master, configure_torch, describe_machine, device_type_of,
                               gathered, peak_flops, setup_processes, torchrun_environment)
from backpacks.init_from import fresh_model_config, resolve_model_type, starting_model
from backpacks.rundir import diverged, no_checkpoint_to_resume, run_directory, stop_handlers
from backpacks.settings import validate
from backpacks.wandb_log import open_live_log, require_wandb

_names_before_defaults = set(globals())
# ----------------------------------------------------------------------------- defaults
# I/O
out_dir = 'out'
eval_interval = 500          # iterations between evaluations (one training_log.json entry each)
eval_iters = 200             # batches per split and evaluation, per process
log_interval = 10            # iterations between progress lines
checkpoint_interval = 500    # iterations between ckpt.pt saves (also saved at the end and on SIGTERM)
snapshot_interval = 0        # > 0: also keep the weights every this many iterations and at the end, each in
                             # out_dir/snapshots/iter_NNNNNN/ckpt.pt (no optimizer state) for learning curves
early_stop_evals = 0         # stop once val loss has not improved for this many evaluations; 0 never stops early
init_from = 'scratch'        # 'scratch', 'resume' (out_dir/ckpt.pt), 'backpack-gpt2' (the published Backpack)
                             # or a run directory of this repository (its best.pt, else ckpt.pt)
pretrained_path = ''         # backpack-gpt2: local directory or hub id; '' means stanfordnlp/backpack-gpt2
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

EVAL_SEED_OFFSET = 1_000_003  # eval batches come from their own stream, so evaluating never shifts training's


def parse_args(argv):
    """{key: value} of every setting given explicitly (config files first, then overrides)."""
    return parse_settings(argv, DEFAULTS, __doc__)


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
            resume = load_resumable(ckpt_path)
        except CheckpointError as e:
            fail(str(e))
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
        if ddp:
            dist.barrier()  # the ranks leave together: gloo aborts a process whose peer closed first
    except DataError as e:  # e.g. a split shorter than block_size
        fail(str(e))
    finally:
        if ddp:
            dist.destroy_process_group()


def setup_run(cfg, explicit, meta, data_path, resume, ddp, rank, world_size, device):
    # decided before any work (and before the objective is built, so that it is built once)
    reseed = resume is not None and needs_reseed(resume, world_size, cfg)
    device_type = device_type_of(device)
    # cfg keeps the dtype requested: a run resumed on another GPU (A100 -> T4 on Colab) resolves 'auto' there again
    dtype, dtype_reason = configure_torch(cfg['dtype'], device, cfg['seed'] + rank, cfg['deterministic'])
    if cfg['gradient_accumulation_steps'] % world_size:
        fail(f"gradient_accumulation_steps ({cfg['gradient_accumulation_steps']}) must be a multiple "
             f"of the number of processes ({world_size})")
    if rank == 0:
        print(f"machine: {describe_machine(device)}; dtype {dtype} ({dtype_reason})")
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


# ----------------------------------------------------------------------------- training

def snapshot_name(iter_num):
    return f'snapshots/iter_{iter_num:06d}/ckpt.pt'


def save(run, name, optimizer=True):
    """Write out_dir/name (ckpt.pt, best.pt or a snapshot) atomically, if the weights are finite; a snapshot
    (optimizer=False) leaves out the optimizer state, which only a resume reads."""
    if not torch.stack([torch.isfinite(p).all() for p in run.raw_model.parameters()]).all():
        diverged(f"weights are not finite at iteration {run.iter_num}", run.out_path, run.saved)
    rngs = gathered(rng_state(run.device), run.ddp, run.world_size)
    samplers = gathered(run.objective.state_dict(), run.ddp, run.world_size)
    if not run.master:
        return
    path = run.out_path / name
    if not optimizer and path.is_file():  # a resumed run passes its last snapshot again
        return
    ckpt = training_checkpoint(
        run.raw_model, run.optimizer, run.scaler, cfg=run.cfg, dtype=run.dtype, meta=run.meta, data_path=run.data_path,
        iter_num=run.iter_num, best_val_loss=run.best_val_loss, selection_key=run.objective.selection_key,
        rngs=rngs, samplers=samplers, training_log=run.training_log,
        elapsed_s=run.elapsed_before + time.time() - run.t_start)
    if not optimizer:
        ckpt['optimizer'] = ckpt['scaler'] = None
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_checkpoint(ckpt, path)
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


def evaluate_and_log(run, lr, first):
    """Losses on the fixed evaluation batches, one training_log.json entry, best.pt if it improved."""
    cfg = run.cfg
    if first:  # the first evaluation can take a while: say so
        run.log(f"evaluating at iter {run.iter_num}: {2 * cfg['eval_iters']} batches of {cfg['batch_size']} "
                f"(eval_iters={cfg['eval_iters']} on train and on val) ...")
    run.eval_sampler.load_state_dict(run.eval_start)
    losses = objectives.estimate_losses(run.fast_model, run.eval_sampler, cfg, run.autocast, run.device, run.ddp)
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
    bar = tqdm(total=cfg['max_iters'], initial=run.iter_num, dynamic_ncols=True) \
        if run.master and sys.stderr.isatty() else None
    run.log = (bar.write if bar else lambda msg: print(msg, flush=True)) if run.master else (lambda msg: None)
    run.t_start, start_iter = time.time(), run.iter_num
    with stop_handlers() as stop, contextlib.closing(bar) if bar else contextlib.nullcontext():
        while True:
            lr = learning_rate_at(run.iter_num, cfg)
            for group in run.optimizer.param_groups:
                group['lr'] = lr
            last = run.iter_num >= cfg['max_iters']
            logged = bool(run.training_log) and run.training_log[-1]['iter'] == run.iter_num
            if (run.iter_num % cfg['eval_interval'] == 0 or last) and not logged:
                evaluate_and_log(run, lr, first=not run.training_log or run.iter_num == start_iter)
            stalled = (cfg['early_stop_evals']
                       and objectives.evaluations_since_best(run.training_log, key) >= cfg['early_stop_evals'])
            if last or stalled or (run.iter_num % cfg['checkpoint_interval'] == 0 and run.iter_num > start_iter):
                save(run, 'ckpt.pt')
            if cfg['snapshot_interval'] and run.iter_num and (last or stalled or run.iter_num % cfg['snapshot_interval'] == 0):
                save(run, snapshot_name(run.iter_num), optimizer=False)
            if stalled:
                run.log(f"early stop at iteration {run.iter_num}: {objectives.selection_label(key)} has not improved "
                        f"for {cfg['early_stop_evals']} evaluations")
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
    run.log(f"done: {run.iter_num} iterations, best {objectives.selection_label(key)} {run.best_val_loss:.4f}; "
            f"checkpoints in {run.out_path}")


if __name__ == '__main__':
    main()
