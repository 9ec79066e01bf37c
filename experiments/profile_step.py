"""
Where a training step's time goes: torch.profiler over forward + backward + AdamW steps of one model
at bench.py's shape, printing the operators with the largest share of self CPU time.

    python experiments/profile_step.py --model_type=backpack --dtype=bfloat16
    python experiments/profile_step.py --model_type=transformer --dtype=float32 --top=25
"""
import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hardware import DTYPES  # noqa: E402
from model import ModelConfig, build_model  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model_type', choices=['backpack', 'transformer'], default='backpack')
    p.add_argument('--dtype', choices=list(DTYPES), default='bfloat16')
    p.add_argument('--n_layer', type=int, default=6)
    p.add_argument('--n_head', type=int, default=6)
    p.add_argument('--n_embd', type=int, default=384)
    p.add_argument('--n_senses', type=int, default=16)
    p.add_argument('--block_size', type=int, default=256)
    p.add_argument('--vocab_size', type=int, default=16384)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--steps', type=int, default=3, help='profiled steps (after 2 untimed ones)')
    p.add_argument('--top', type=int, default=15, help='operators to list')
    return p.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                         n_head=args.n_head, n_embd=args.n_embd, n_senses=args.n_senses)
    model = build_model(args.model_type, config)
    optimizer = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), 'cpu')
    x, y = (torch.randint(0, args.vocab_size, (args.batch_size, args.block_size)) for _ in range(2))
    autocast = nullcontext() if args.dtype == 'float32' else torch.autocast('cpu', dtype=DTYPES[args.dtype])

    def train_step():
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        train_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            train_step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.model_type} {args.dtype}: {total / args.steps / 1e3:,.1f} ms self CPU time per step "
          f"(summed over threads, profiler overhead included)")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"{e.key[:60]:60s} {100 * e.self_cpu_time_total / total:5.1f}%  "
              f"{e.self_cpu_time_total / args.steps / 1e3:9.1f} ms/step  {e.count // args.steps:5d} calls/step")


if __name__ == '__main__':
    main()
