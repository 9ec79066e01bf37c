"""
The checks of experiments/gpu_check.sh, each printing one line: `ok   NAME: ...`, `WARN NAME: ...` or
`FAIL NAME: ...` (exit status 1). The shell script runs the training, benchmark and translation commands
and hands their outputs to these checks; `sdpa` runs its own.

    python -m experiments.gpu_check machine                 # the GPU (or its absence), torch and CUDA
    python -m experiments.gpu_check sdpa --device cuda      # the SDPA kernel the Backpack's mixing gets
    python -m experiments.gpu_check training RUN_DIR        # tokens/s and MFU of a run's last window
    python -m experiments.gpu_check memory BENCH_LOG        # bench.py's peak memory of both models
    python -m experiments.gpu_check translation BENCH_LOG   # bench_translation's sentences/s
    python -m experiments.gpu_check bitwise RUN_A RUN_B     # two runs' ckpt.pt bitwise equal
    python -m experiments.gpu_check torchrun LOG RUN_DIR    # a torchrun training finished on CUDA
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from backpacks.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from backpacks.devices import resolve_device
from backpacks.hardware import DTYPES, cuda_datasheet_peak, describe_machine, resolve_dtype
from model import _positions_and_mask, build_model, preset_config, product_mixing, sdpa_mixing

# SDPA's fused kernels, tried before MATH, the fallback that materialises the (B,k,T,T) weights
FUSED_BACKENDS = ('FLASH_ATTENTION', 'CUDNN_ATTENTION', 'EFFICIENT_ATTENTION')


def say(status, text, name):
    print(f"{status:<4} {name}: {text}", flush=True)
    if status == 'FAIL':
        raise SystemExit(1)


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

def mixing_inputs(device, dtype, batch_size, block_size):
    """The sense queries, keys and senses backpack-micro hands to sdpa_mixing, as its forward makes them
    (their layout and strides included, which the kernels' eligibility depends on)."""
    torch.manual_seed(0)
    model = build_model(*preset_config('backpack-micro', vocab_size=16384, block_size=block_size)).to(device)
    idx = torch.randint(0, 16384, (batch_size, block_size), device=device)
    positions, mask = _positions_and_mask(idx, 0, None)
    with torch.autocast(device.split(':')[0], dtype=DTYPES[dtype], enabled=dtype != 'float32'):
        return model._senses_and_weights(idx, positions, mask, None)


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


def dispatched_backend(q, k, senses):
    """The kernel PyTorch's dispatcher picks with every kernel allowed (its private _fused_sdp_choice), or
    None where this torch does not say."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            choice = torch._fused_sdp_choice(q, k, senses, None, 0.0, True)
    except (AttributeError, RuntimeError):
        return None
    return next((name for name, backend in SDPBackend.__members__.items() if int(backend.value) == choice), None)


def sdpa_report(device, dtype, batch_size, block_size):
    """(status, text): the kernel the Backpack's mixing gets (the dispatcher's pick, else the first that
    runs in the dispatcher's order), every kernel that can run it when restricted to it alone, and how far
    its output is from the reference product."""
    senses, q, k = mixing_inputs(device, dtype, batch_size, block_size)
    working = [b for b in (*FUSED_BACKENDS, 'MATH') if runs_under(b, q, k, senses)]
    shape = f"backpack-micro, batch {batch_size}, block {block_size}, {dtype} on {device}, forward + backward"
    if not working:
        return 'FAIL', f"no SDPA kernel runs the mixing ({shape})"
    with torch.no_grad():
        error = (sdpa_mixing(q, k, senses, None).float() - product_mixing(q.float(), k.float(), senses.float(), None)).abs().max()
    chosen = dispatched_backend(q, k, senses) or working[0]
    text = f"{chosen} ({shape}); kernels that run it: {', '.join(working)}; max |o - reference| {error:.1e}"
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
        return f"MFU unknown: no {dtype} datasheet peak for {gpu_name!r} in backpacks/hardware.py CUDA_PEAKS"
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
                  f"{model.config.block_size}, {cfg['dtype']}{compiled}: {last['tokens_per_s']:,.0f} tokens/s over the "
                  f"last {window} of {last['iter']} iterations, {mfu_text(flops, gpu_name, cfg['dtype'])}; "
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
    runs = {r['kv_cache']: r for r in json_lines(bench_log) if 'kv_cache' in r}
    if set(runs) != {True, False}:
        return 'FAIL', f"{bench_log} lacks the cached or the uncached run"
    cached, uncached = runs[True], runs[False]
    return 'ok', (f"{cached['model']}, {cached['sentences']} sentences greedy en-fr: {cached['sentences_per_s']} "
                  f"sentences/s with the KV cache, {uncached['sentences_per_s']} without "
                  f"({uncached['seconds'] / cached['seconds']:.1f}x), identical translations")


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
    what = f"{a['config']['dtype']} on {a['config']['device']}, iteration {a['iter_num']}"
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
    p = argparse.ArgumentParser(prog='python -m experiments.gpu_check', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='check', required=True)
    sub.add_parser('machine')
    sdpa = sub.add_parser('sdpa')
    sdpa.add_argument('--device', default='auto')
    sdpa.add_argument('--batch_size', type=int, default=None, help='default: 8 on CUDA, 2 on the CPU')
    sdpa.add_argument('--block_size', type=int, default=None, help='default: 512 on CUDA, 128 on the CPU')
    sub.add_parser('training').add_argument('run_dir')
    for name in ('memory', 'translation'):
        sub.add_parser(name).add_argument('log')
    bitwise = sub.add_parser('bitwise')
    bitwise.add_argument('straight_dir')
    bitwise.add_argument('resumed_dir')
    torchrun = sub.add_parser('torchrun')
    torchrun.add_argument('log')
    torchrun.add_argument('run_dir')
    return p.parse_args(argv)


def sdpa_check(args):
    """sdpa_report with the shape and dtype this device trains in (a smaller shape on the CPU)."""
    device = resolve_device(args.device)
    on_gpu = device.startswith('cuda')
    dtype = resolve_dtype('auto', 'cuda')[0] if on_gpu else 'float32'
    return sdpa_report(device, dtype, args.batch_size or (8 if on_gpu else 2), args.block_size or (512 if on_gpu else 128))


CHECKS = {  # check -> (the name its line gives, the report from the parsed arguments)
    'sdpa': ('sdpa mixing', sdpa_check),
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
    else:
        name, report = CHECKS[args.check]
        say(*report(args), name=name or f"train {Path(args.run_dir).name}")


if __name__ == '__main__':
    main()
