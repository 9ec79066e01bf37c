"""
Where a training step's time goes: torch.profiler over forward + backward + AdamW steps of one model
at bench.py's shape, printing the operators with the largest share of self CPU time.

    python experiments/profile_step.py --model_type=backpack --dtype=bfloat16
    python experiments/profile_step.py --model_type=transformer --dtype=float32 --top=25
"""
import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import add_shape_arguments, training_step  # noqa: E402
from hardware import DTYPES  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model_type', choices=['backpack', 'transformer'], default='backpack')
    p.add_argument('--dtype', choices=list(DTYPES), default='bfloat16')
    add_shape_arguments(p)
    p.add_argument('--steps', type=int, default=3, help='profiled steps (after 2 untimed ones)')
    p.add_argument('--top', type=int, default=15, help='operators to list')
    return p.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(0)
    _, train_step = training_step(args.model_type, args)

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
