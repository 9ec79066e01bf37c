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
    python bench.py --data_dir=/tmp/speed_data/sample   # batches of real text instead of random ids

Each model's line also gives split_ms, its step split into the forward's pieces (model.PIECES: backbone,
sense network, mixing, head and loss; each with its share of the backward pass), the optimizer, and other
(gradient accumulation, masks): the shares of one profiled step, times step_ms. Random ids are nearly all
distinct, so the Backpack's sense network runs at every position; real text repeats tokens (--data_dir),
and distinct_share, the distinct tokens' share of the batches, then counts in its FLOPs (sense_share: the
share of positions the sense network ran on; model.flops_per_token).

With --profile, torch.profiler records --steps steps of each model (after the warm-up) and prints
the operators with the largest share of self CPU time instead of the throughput lines.
"""
import argparse
import json
import statistics
import multiprocessing
import resource
import time
from contextlib import nullcontext

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from backpacks import cli
from backpacks.dataset import BatchSampler, DataError, load_meta, resolve_dataset
from backpacks.devices import resolve_device
from backpacks.cli import fail
from backpacks.devices import (DTYPES, DeviceError, cuda_datasheet_peak, describe_machine, device_type_of,
                                matmul_flops, resolve_dtype, synchronize, use_tensor_cores_for_float32)
from model import PIECES, ModelConfig, build_model, check_model


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


def batches(args, device):
    """A function returning the next (x, y): one fixed batch of random ids, or with args.data_dir
    windows of the dataset's train split (the same ones for both models)."""
    if getattr(args, 'data_dir', None):
        sampler = BatchSampler(args.data_dir, seed=args.seed)
        return lambda: sampler.get_batch('train', args.batch_size, args.block_size, device)
    generator = torch.Generator().manual_seed(args.seed)  # the same batch for both models
    x, y = torch.randint(0, args.vocab_size, (2, args.batch_size, args.block_size), generator=generator).to(device)
    return lambda: (x, y)


def model_config(args):
    return ModelConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, n_senses=args.n_senses, dropout=args.dropout)


def training_step(model_type, args, device='cpu'):
    """(model, step): a fresh model of args' shape and a function running one forward + backward +
    AdamW step on the next batch under args.dtype's autocast; it returns the batch's input ids."""
    model = build_model(model_type, model_config(args)).to(device)
    device_type = device_type_of(device)
    optimizer = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), device_type)
    fast_model = torch.compile(model) if getattr(args, 'compile', False) else model
    autocast = (nullcontext() if args.dtype == 'float32' else
                torch.autocast(device_type, dtype=getattr(torch, args.dtype)))
    next_batch = batches(args, device)

    def step():
        x, y = next_batch()
        with autocast:
            _, loss = fast_model(x, y)
        loss.backward()
        with record_function('optimizer'):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return x
    return model, step


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
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
    p.add_argument('--data_dir', help='draw batches from this prepared dataset (its vocabulary must fit in --vocab_size)')
    args = p.parse_args(argv)
    cli.check_at_least(args, 1, ('batch_size', 'steps', 'top'))
    cli.check_at_least(args, 0, ('warmup',))
    cli.check_seed(args.seed)
    try:  # both models are built with the shape: the Backpack's checks are the stricter
        check_model('backpack', model_config(args))
    except ValueError as e:
        fail(str(e))
    if args.data_dir:
        args.data_dir = resolve_dataset(args.data_dir)
        try:
            vocab_size = load_meta(args.data_dir)['vocab_size']
        except DataError as e:
            fail(str(e))
        if vocab_size > args.vocab_size:
            fail(f"{args.data_dir}'s vocabulary is larger than --vocab_size={args.vocab_size}")
    args.device = resolve_device(args.device)
    if args.device.startswith('cuda'):
        use_tensor_cores_for_float32()  # as train.py: the float32 rates are TF32 ones
    try:
        args.dtype, args.dtype_reason = resolve_dtype(args.dtype, device_type_of(args.device))
    except DeviceError as e:
        fail(str(e))
    return args


def piece_of(event):
    """The PIECES range or 'optimizer' range that encloses a profiled forward event, or None."""
    while event is not None and event.name not in (*PIECES, 'optimizer'):
        event = event.cpu_parent
    return event.name if event is not None else None


def step_split(events):
    """Milliseconds per piece of the profiled steps' top-level events: the ranges themselves, and each
    backward function counted to the piece whose forward op shares its autograd sequence number."""
    piece_of_sequence = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith('autograd::'):
            piece_of_sequence.setdefault(e.sequence_nr, piece_of(e))
    split = dict.fromkeys((*PIECES, 'optimizer', 'other'), 0.0)
    for e in events:
        if e.cpu_parent is None:
            piece = e.name if e.name in split else piece_of_sequence.get(e.sequence_nr) or 'other'
            split[piece] += e.cpu_time_total / 1e3
    return split


def profiled_split(train_step, step_ms, steps=2):
    """split_ms: each piece's share of `steps` profiled steps, times the timed step's milliseconds."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step()
    split = step_split(prof.events())
    total = sum(split.values())
    return {piece: round(step_ms * ms / total, 1) for piece, ms in split.items()}


def bench_model(model_type, args):
    torch.manual_seed(args.seed)
    model, train_step = training_step(model_type, args, args.device)

    for _ in range(args.warmup):
        train_step()
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    synchronize(args.device)
    t0 = time.perf_counter()
    seen = [train_step() for _ in range(args.steps)]
    synchronize(args.device)
    seconds = (time.perf_counter() - t0) / args.steps
    tokens = args.batch_size * args.block_size
    distinct_share = statistics.mean(x.unique().numel() / x.numel() for x in seen)
    sense_share = statistics.mean(model.sense_share(x) for x in seen) if model_type == 'backpack' else 1.0
    flops_per_token = model.flops_per_token(distinct_share=sense_share)
    result = {'model': model_type, 'params_M': round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
              'step_ms': round(1000 * seconds, 1), 'tokens_per_s': round(tokens / seconds),
              'flops_per_token_G': round(flops_per_token / 1e9, 6),
              'flops_per_token_every_position_G': round(model.flops_per_token() / 1e9, 6),
              'distinct_share': round(distinct_share, 3), 'sense_share': round(sense_share, 3),
              'achieved_GFLOPs': round(flops_per_token * tokens / seconds / 1e9, 3)}
    if args.device.startswith('cuda'):
        result['peak_memory_MB'] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    else:  # whole-process peak resident memory; each model runs in its own process so this is its own
        result['peak_rss_MB'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result['split_ms'] = profiled_split(train_step, result['step_ms'])
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


def main(argv=None):
    args = parse_args(argv)
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
