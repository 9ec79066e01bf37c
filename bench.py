"""
Training-step throughput of the Backpack and its matched Transformer on the same backbone.

Times forward + backward + AdamW step after warm-up and prints one JSON line per model
(tokens/s, achieved FLOP/s from the model's own FLOP count, its fraction of the yardstick, peak
memory), one naming the yardstick (the device's measured 2048x2048 matmul rate in the dtype under
test: float32 runs are divided by a float32 rate, bfloat16 runs by a bfloat16 rate; on a GPU of
hardware.CUDA_PEAKS also the datasheet peak), and one with the Backpack/Transformer ratios.

    python bench.py                              # d=384 L=6 H=6 k=16 T=256 V=16384 B=8, --dtype=auto
    python bench.py --dtype=float32 --compile
    python bench.py --batch_size=16 --device=cuda
    python bench.py --n_layer=4 --n_head=4 --n_embd=128 --n_senses=4 --block_size=128 --vocab_size=512 \
        --batch_size=16 --dropout=0.2                # the main job's tiny configs
    python bench.py --profile --top=25           # where a step's time goes, operator by operator

With --profile, torch.profiler records --steps steps of each model (after the warm-up) and prints
the operators with the largest share of self CPU time instead of the throughput lines.
"""
import argparse
import json
import multiprocessing
import resource
import time
from contextlib import nullcontext

import torch
from torch.profiler import ProfilerActivity, profile

from backpacks.devices import resolve_device
from backpacks.cli import fail
from backpacks.devices import (DTYPES, DeviceError, cuda_datasheet_peak, describe_machine, device_type_of,
                                matmul_flops, resolve_dtype, synchronize, use_tensor_cores_for_float32)
from model import ModelConfig, build_model


def add_shape_arguments(p):
    """The model and batch shape of the benchmark (defaults: the preset backpack-micro's backbone)."""
    p.add_argument('--n_layer', type=int, default=6)
    p.add_argument('--n_head', type=int, default=6)
    p.add_argument('--n_embd', type=int, default=384)
    p.add_argument('--n_senses', type=int, default=16)
    p.add_argument('--block_size', type=int, default=256)
    p.add_argument('--vocab_size', type=int, default=16384)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--dropout', type=float, default=0.0, help='as the configs set it (random masks cost time on a CPU)')


def training_step(model_type, args, device='cpu'):
    """(model, step): a fresh model of args' shape and a function running one forward + backward +
    AdamW step on a fixed random batch under args.dtype's autocast."""
    config = ModelConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                         n_head=args.n_head, n_embd=args.n_embd, n_senses=args.n_senses, dropout=args.dropout)
    model = build_model(model_type, config).to(device)
    device_type = device_type_of(device)
    optimizer = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), device_type)
    fast_model = torch.compile(model) if getattr(args, 'compile', False) else model
    autocast = (nullcontext() if args.dtype == 'float32' else
                torch.autocast(device_type, dtype=getattr(torch, args.dtype)))
    x = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size), device=device)
    y = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size), device=device)

    def step():
        with autocast:
            _, loss = fast_model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, step


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    add_shape_arguments(p)
    p.add_argument('--warmup', type=int, default=3, help='untimed steps first')
    p.add_argument('--steps', type=int, default=10, help='timed steps')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dtype', default='auto', choices=['auto', *DTYPES],
                   help='auto: bfloat16 where the hardware multiplies it natively, float16 on pre-Ampere '
                        'GPUs, float32 elsewhere')
    p.add_argument('--compile', action='store_true', help='torch.compile the model first')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--profile', action='store_true', help='list the operators that take the time instead')
    p.add_argument('--top', type=int, default=15, help='with --profile: operators to list')
    args = p.parse_args()
    args.device = resolve_device(args.device)
    if args.device.startswith('cuda'):
        use_tensor_cores_for_float32()  # as train.py: the float32 rates are TF32 ones
    try:
        args.dtype, args.dtype_reason = resolve_dtype(args.dtype, device_type_of(args.device))
    except DeviceError as e:
        fail(str(e))
    return args


def bench_model(model_type, args):
    torch.manual_seed(args.seed)
    model, train_step = training_step(model_type, args, args.device)
    flops_per_token = model.flops_per_token()

    for _ in range(args.warmup):
        train_step()
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    synchronize(args.device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    synchronize(args.device)
    seconds = (time.perf_counter() - t0) / args.steps
    tokens = args.batch_size * args.block_size
    result = {'model': model_type, 'params_M': round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
              'step_ms': round(1000 * seconds, 1), 'tokens_per_s': round(tokens / seconds),
              'flops_per_token_G': round(flops_per_token / 1e9, 6),
              'achieved_GFLOPs': round(flops_per_token * tokens / seconds / 1e9, 3)}
    if args.device.startswith('cuda'):
        result['peak_memory_MB'] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    else:  # whole-process peak resident memory; each model runs in its own process so this is its own
        result['peak_rss_MB'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def profile_model(model_type, args):
    """Print the operators with the largest share of a training step's self CPU time."""
    torch.manual_seed(args.seed)
    _, train_step = training_step(model_type, args, args.device)
    for _ in range(args.warmup):
        train_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            train_step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{model_type} {args.dtype}: {total / args.steps / 1e3:,.1f} ms self CPU time per step "
          f"(summed over threads, profiler overhead included)")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"{e.key[:60]:60s} {100 * e.self_cpu_time_total / total:5.1f}%  "
              f"{e.self_cpu_time_total / args.steps / 1e3:9.1f} ms/step  {e.count // args.steps:5d} calls/step")


def run_in_child(model_type, args):
    """A fresh process per model so that peak memory and allocator state are not shared."""
    with multiprocessing.get_context('spawn').Pool(1) as pool:
        return pool.apply(bench_model, (model_type, args))


def main():
    args = parse_args()
    if args.profile:
        for model_type in ('transformer', 'backpack'):
            profile_model(model_type, args)
        return
    matmul = matmul_flops(args.device, args.dtype, n=2048, seconds=2.0)
    yardstick = {'machine': describe_machine(args.device), 'device': args.device,
                 'threads': torch.get_num_threads(), 'dtype': args.dtype, 'dtype_reason': args.dtype_reason,
                 f'matmul_2048_{args.dtype}_GFLOPs': round(matmul / 1e9, 1)}
    datasheet = (cuda_datasheet_peak(torch.cuda.get_device_name(args.device), args.dtype)
                 if args.device.startswith('cuda') else None)
    if datasheet:
        yardstick['datasheet_peak_TFLOPs'] = datasheet / 1e12
    print(json.dumps(yardstick))
    results = {}
    for model_type in ('transformer', 'backpack'):
        results[model_type] = r = run_in_child(model_type, args)
        r[f'fraction_of_{args.dtype}_matmul'] = round(r['achieved_GFLOPs'] * 1e9 / matmul, 3)
        if datasheet:
            r['fraction_of_datasheet_peak'] = round(r['achieved_GFLOPs'] * 1e9 / datasheet, 3)
        print(json.dumps(r))
    b, t = results['backpack'], results['transformer']
    print(json.dumps({'backpack_over_transformer': {
        'tokens_per_s': round(b['tokens_per_s'] / t['tokens_per_s'], 3),
        'achieved_flops': round(b['achieved_GFLOPs'] / t['achieved_GFLOPs'], 3),
        'flops_per_token': round(b['flops_per_token_G'] / t['flops_per_token_G'], 3)}}))


if __name__ == '__main__':
    main()
