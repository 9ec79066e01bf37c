"""
The checks of experiments/gpu_check.sh, each printing one line: `ok   NAME: ...`, `WARN NAME: ...` or
`FAIL NAME: ...` (exit status 1). The shell script runs the training, benchmark and translation commands
and hands their outputs to these checks; `sdpa` runs its own.

    python -m experiments.gpu_check machine                 # the GPU (or its absence), torch and CUDA
    python -m experiments.gpu_check sdpa --device cuda      # the SDPA kernel the Backpack's mixing gets, per shape
    python -m experiments.gpu_check training RUN_DIR        # tokens/s and MFU of a run's last window
    python -m experiments.gpu_check memory BENCH_LOG        # bench.py's peak memory of both models
    python -m experiments.gpu_check translation BENCH_LOG   # bench_translation's sentences/s
    python -m experiments.gpu_check bitwise RUN_A RUN_B     # two runs' ckpt.pt bitwise equal
    python -m experiments.gpu_check torchrun LOG RUN_DIR    # a torchrun training finished on CUDA
"""
import argparse
import dataclasses
import json
import runpy
import sys
import warnings
from pathlib import Path
from unittest import mock

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from backpacks import cli
import model as model_module
from backpacks.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from backpacks.devices import resolve_device
from backpacks.devices import DTYPES, cuda_datasheet_peak, describe_machine, resolve_dtype
from model import ModelConfig, build_model, preset_config, product_mixing, sdpa_mixing

# SDPA's fused kernels, tried before MATH, the fallback that materialises the (B,k,T,T) weights
FUSED_BACKENDS = ('FLASH_ATTENTION', 'CUDNN_ATTENTION', 'EFFICIENT_ATTENTION')
# the autograd node each fused kernel leaves (ScaledDotProductFlashAttentionBackward0, ...); MATH leaves matmuls
GRAD_NODES = {'FlashAttention': 'FLASH_ATTENTION', 'CudnnAttention': 'CUDNN_ATTENTION',
              'EfficientAttention': 'EFFICIENT_ATTENTION'}
# the largest max |o - reference| accepted, relative to max |reference|: rounding, not a wrong kernel
MIXING_RTOL = {'float32': 1e-4, 'float16': 1e-2, 'bfloat16': 5e-2}
VOCAB = 16384  # the BPE of the main job's and the study's data (the mixing does not depend on it)


def say(status, text, name):
    print(f"{status:<4} {name}: {text}", flush=True)


# ----------------------------------------------------------------------------- the machine

def machine_line():
    """The GPU, its compute capability and what --dtype=auto picks, or that there is no CUDA GPU."""
    versions = f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else "")
    if not torch.cuda.is_available():
        return f"no CUDA GPU here ({versions}): only the checks that need no GPU run"
    dtype, why = resolve_dtype('auto', 'cuda')
    return (f"{describe_machine('cuda')} ({torch.cuda.device_count()} device(s)), {versions}; "
            f"--dtype=auto picks {dtype} ({why})")


# ----------------------------------------------------------------------------- SDPA kernel of the mixing

def mixing_shapes():
    """(name, ModelConfig, batch size) of the Backpacks whose mixing the sdpa check runs, as they train on a GPU:
    backpack-micro (experiments/gpu_check.sh), the study, the main job, and a sense head size (n_embd / n_senses)
    that is no multiple of 8, which the fused kernels take only padded."""
    shapes = [('backpack-micro', preset_config('backpack-micro', vocab_size=VOCAB, block_size=512)[1], 8)]
    for name in ('study', 'train_europarl_scratch'):
        settings = runpy.run_path(str(cli.config_file(name)))
        dims = {key: settings[key] for key in ('n_layer', 'n_head', 'n_embd', 'n_senses', 'block_size')}
        shapes.append((name, ModelConfig(vocab_size=VOCAB, **dims), settings['batch_size']))
    shapes.append(('head size 6', ModelConfig(vocab_size=VOCAB, block_size=512, n_layer=2, n_head=4, n_embd=96,
                                              n_senses=16), 8))
    return shapes


class MixingReached(Exception):
    """Stops the forward at the mixing, carrying its inputs (the LM head after it is not needed)."""


def mixing_inputs(config, batch_size, device, dtype):
    """The sense queries, keys and senses a Backpack of this config hands to its mixing (sdpa_mixing on CUDA,
    product_mixing on the CPU), taken at the call: their layout and strides included, which the kernels'
    eligibility depends on."""
    torch.manual_seed(0)
    backpack = build_model('backpack', config).to(device)
    idx = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)

    def reached(q, k, senses, attn_mask):
        raise MixingReached(q, k, senses)
    autocast = torch.autocast(device.split(':')[0], dtype=DTYPES[dtype], enabled=dtype != 'float32')
    with mock.patch.multiple(model_module, sdpa_mixing=reached, product_mixing=reached), torch.no_grad(), autocast:
        try:
            backpack(idx)
        except MixingReached as inputs:
            return inputs.args
    raise RuntimeError("the Backpack's forward called neither model.sdpa_mixing nor model.product_mixing")


def runs_under(backend, q, k, senses):
    """Whether sdpa_mixing runs forward and backward with SDPA restricted to backend."""
    leaves = [t.detach().requires_grad_() for t in (q, k, senses)]
    try:
        with warnings.catch_warnings(), sdpa_kernel(getattr(SDPBackend, backend)):
            warnings.simplefilter('ignore')  # each kernel that declines says why on stderr; the answer is enough
            sdpa_mixing(*leaves, None).float().sum().backward()
    except RuntimeError:
        return False
    return True


def kernel_of(o):
    """The SDPA kernel that computed o, after whatever padding sdpa_mixing did to its inputs: the fused kernel
    whose backward node o's autograd graph holds, else MATH."""
    nodes, seen = [o.grad_fn], set()
    while nodes:
        node = nodes.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kernel = next((kernel for key, kernel in GRAD_NODES.items() if key in node.name()), None)
        if kernel:
            return kernel
        nodes += [parent for parent, _ in node.next_functions]
    return 'MATH'


def sdpa_report(config, batch_size, device, dtype):
    """(status, text): the kernel the Backpack's mixing gets at this shape, whether each kernel runs it when
    restricted to it alone, and how far its output is from the reference product."""
    q, k, senses = mixing_inputs(config, batch_size, device, dtype)
    runs = {backend: runs_under(backend, q, k, senses) for backend in (*FUSED_BACKENDS, 'MATH')}
    shape = (f"n_embd {config.n_embd}, {config.n_senses} senses of {config.n_embd // config.n_senses}, batch "
             f"{batch_size}, block {config.block_size}, {dtype} on {device}, forward + backward")
    if not any(runs.values()):
        return 'FAIL', f"no SDPA kernel runs the mixing ({shape})"
    o = sdpa_mixing(*(t.detach().requires_grad_() for t in (q, k, senses)), None)  # every kernel allowed
    chosen = kernel_of(o)
    with torch.no_grad():
        reference = product_mixing(q.float(), k.float(), senses.float(), None)
        error = (o.detach().float() - reference).abs().max() / reference.abs().max()
    kernels = ', '.join(f"{backend} {'yes' if ok else 'no'}" for backend, ok in runs.items())
    text = f"{chosen} ({shape}); runs under {kernels}; max |o - reference| {error:.1e} of max |reference|"
    if error > MIXING_RTOL[dtype]:
        return 'FAIL', f"{text}, above the {dtype} tolerance {MIXING_RTOL[dtype]:g}"
    if chosen != 'MATH':
        return 'ok', text
    note = ("the math fallback, which materialises the (B,k,T,T) weights" if device.startswith('cuda')
            else "the CPU's only kernel for values wider than queries; the CPU trains with product_mixing instead")
    return ('WARN' if device.startswith('cuda') else 'ok'), f"{text} -- {note}"


# ----------------------------------------------------------------------------- training throughput and MFU

def mfu_text(flops_per_s, gpu_name, dtype):
    """MFU against the GPU's datasheet peak in dtype, or why it is unknown."""
    peak = cuda_datasheet_peak(gpu_name, dtype)
    if peak is None:
        return f"MFU unknown: no {dtype} datasheet peak for {gpu_name!r} in backpacks/devices.py CUDA_PEAKS"
    return f"MFU {flops_per_s / peak:.3f} of the {dtype} datasheet peak {peak / 1e12:,.0f} TFLOP/s"


def training_report(run_dir, gpu_name):
    """(status, text): the last evaluation window's tokens/s and MFU, and the losses, of a finished run."""
    try:
        ckpt = load_checkpoint(Path(run_dir) / 'ckpt.pt')
    except CheckpointError as e:
        return 'FAIL', str(e)
    last, cfg = ckpt['training_log'][-1], ckpt['config']
    if not last.get('tokens_per_s'):
        return 'FAIL', f"{run_dir}: no throughput was recorded (did it train past its first evaluation?)"
    model = model_from_checkpoint(ckpt)
    window = last['iter'] - (ckpt['training_log'][-2]['iter'] if len(ckpt['training_log']) > 1 else 0)
    flops = model.flops_per_token() * last['tokens_per_s']
    compiled = ', compiled' if cfg['compile'] else ''
    return 'ok', (f"{model.param_counts()['total'] / 1e6:.1f}M parameters, vocab {model.config.vocab_size}, block "
                  f"{model.config.block_size}, {ckpt['dtype']}{compiled}: {last['tokens_per_s']:,.0f} tokens/s over the "
                  f"last {window} of {last['iter']} iterations, {mfu_text(flops, gpu_name, ckpt['dtype'])}; "
                  f"val loss {last['val_loss']:.3f}")


# ----------------------------------------------------------------------------- benchmarks' outputs

def json_lines(log):
    """The JSON objects among a log's lines (the scripts' results; progress and warnings are skipped)."""
    objects = []
    for line in Path(log).read_text().splitlines():
        if line.startswith('{'):
            objects.append(json.loads(line))
    return objects


def memory_report(bench_log):
    results = {r['model']: r for r in json_lines(bench_log) if 'model' in r}
    if set(results) != {'backpack', 'transformer'} or not all('peak_memory_MB' in r for r in results.values()):
        return 'FAIL', f"{bench_log} has no CUDA peak memory of both models"
    b, t = results['backpack'], results['transformer']
    return 'ok', (f"peak memory of a training step: Backpack {b['peak_memory_MB']:,} MiB ({b['tokens_per_s']:,} "
                  f"tokens/s), Transformer {t['peak_memory_MB']:,} MiB ({t['tokens_per_s']:,} tokens/s)")


def translation_report(bench_log):
    lines = json_lines(bench_log)
    runs = {r['kv_cache']: r for r in lines if 'kv_cache' in r}
    check = next((r for r in lines if 'cache_check' in r), None)
    if set(runs) != {True, False} or check is None:
        return 'FAIL', f"{bench_log} lacks the cached or the uncached run, or the check of the cache"
    cached, uncached = runs[True], runs[False]
    ties = f", {check['near_tie_divergences']} of them at near-ties" if check['divergences'] else ""
    return ('ok' if check['cache_check'] == 'ok' else 'FAIL'), (
        f"{cached['model']}, {cached['sentences']} sentences greedy en-fr: {cached['sentences_per_s']} sentences/s "
        f"with the KV cache, {uncached['sentences_per_s']} without ({uncached['seconds'] / cached['seconds']:.1f}x); "
        f"next-token logits at most {check['max_relative_logit_diff']:.1e} of their scale apart ({check['dtype']} "
        f"tolerance {check['tolerance']:g}), {check['divergences']} greedy divergence(s){ties}, "
        f"{check['identical_translations']} of {cached['sentences']} translations identical")


# ----------------------------------------------------------------------------- resume and torchrun

def differences(a, b):
    """Names of what differs between two checkpoints' model, optimizer moments, scaler and counters."""
    names = [f"model.{n}" for n in a['model'] if not torch.equal(a['model'][n], b['model'][n])]
    for i, state in a['optimizer']['state'].items():
        names += [f"optimizer.{i}.{m}" for m in ('exp_avg', 'exp_avg_sq')
                  if not torch.equal(state[m], b['optimizer']['state'][i][m])]
    names += [key for key in ('scaler', 'iter_num') if a[key] != b[key]]
    return names


def bitwise_report(straight_dir, resumed_dir):
    a, b = (load_checkpoint(Path(d) / 'ckpt.pt') for d in (straight_dir, resumed_dir))
    differ = differences(a, b)
    what = f"{a['dtype']} on {a['config']['device']}, iteration {a['iter_num']}"
    if differ:
        return 'FAIL', f"the resumed run differs from the straight one ({what}): {', '.join(differ[:5])}"
    scaler = a['scaler']
    scale = f", GradScaler scale {scaler['scale']:g} after {scaler['_growth_tracker']} steps" if scaler else ""
    return 'ok', f"stopped, resumed and bitwise equal to the straight run ({what}{scale})"


def torchrun_report(log, run_dir):
    text = Path(log).read_text()
    if '1 process(es) on cuda' not in text:
        return 'FAIL', f"{log} does not show one process training on CUDA"
    ckpt = load_checkpoint(Path(run_dir) / 'ckpt.pt')
    return 'ok', (f"torchrun --standalone --nproc_per_node=1 (DDP on nccl): {ckpt['iter_num']} iterations, "
                  f"val loss {ckpt['training_log'][-1]['val_loss']:.3f}")


# ----------------------------------------------------------------------------- command line

def parse_args(argv):
    p = cli.ArgumentParser(prog='python -m experiments.gpu_check', description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='check', required=True)
    sub.add_parser('machine')
    sdpa = sub.add_parser('sdpa')
    sdpa.add_argument('--device', default='auto')
    sdpa.add_argument('--batch_size', type=int, default=None, help="for every shape (default: its own; 2 on the CPU)")
    sdpa.add_argument('--block_size', type=int, default=None, help="for every shape (default: its own; 128 on the CPU)")
    sub.add_parser('training').add_argument('run_dir')
    for name in ('memory', 'translation'):
        sub.add_parser(name).add_argument('log')
    bitwise = sub.add_parser('bitwise')
    bitwise.add_argument('straight_dir')
    bitwise.add_argument('resumed_dir')
    torchrun = sub.add_parser('torchrun')
    torchrun.add_argument('log')
    torchrun.add_argument('run_dir')
    return check_args(p.parse_args(argv))


def check_args(args):
    """The runs and logs to report on exist, and the sizes are positive, before any check runs."""
    if args.check == 'training' and not torch.cuda.is_available():
        cli.fail("gpu_check training reports a CUDA run's throughput and MFU: run it on the machine with the GPU")
    for name in ('run_dir', 'straight_dir', 'resumed_dir'):
        if hasattr(args, name):
            cli.check_directory(getattr(args, name), name.upper())
    if hasattr(args, 'log'):
        cli.check_file(args.log, 'LOG')
    if args.check == 'sdpa':
        cli.check_at_least(args, 1, ('batch_size', 'block_size'))
    return args


def sdpa_lines(args):
    """(name, status, text) of each shape's sdpa_report, in the dtype this device trains in (on the CPU, where
    only the math kernel runs the mixing, in a smaller batch and block)."""
    device = resolve_device(args.device)
    on_gpu = device.startswith('cuda')
    dtype = resolve_dtype('auto', 'cuda')[0] if on_gpu else 'float32'
    lines = []
    for name, config, batch_size in mixing_shapes():
        config = dataclasses.replace(config, block_size=args.block_size or (config.block_size if on_gpu else 128))
        batch_size = args.batch_size or (batch_size if on_gpu else 2)
        lines.append((f"sdpa mixing {name}", *sdpa_report(config, batch_size, device, dtype)))
    return lines


CHECKS = {  # check -> (the name its line gives, the report from the parsed arguments)
    'training': (None, lambda a: training_report(a.run_dir, torch.cuda.get_device_name())),
    'memory': ('peak memory at block 512', lambda a: memory_report(a.log)),
    'translation': ('KV-cache translation', lambda a: translation_report(a.log)),
    'bitwise': ('resume', lambda a: bitwise_report(a.straight_dir, a.resumed_dir)),
    'torchrun': ('torchrun', lambda a: torchrun_report(a.log, a.run_dir)),
}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.check == 'machine':
        print(machine_line())
        return
    if args.check == 'sdpa':
        lines = sdpa_lines(args)
    else:
        name, report = CHECKS[args.check]
        lines = [(name or f"train {Path(args.run_dir).name}", *report(args))]
    for name, status, text in lines:
        say(status, text, name)
    if any(status == 'FAIL' for _, status, _ in lines):
        raise SystemExit(1)


if __name__ == '__main__':
    main()
