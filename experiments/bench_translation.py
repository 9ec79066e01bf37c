"""
Time batched greedy translation of a trained checkpoint with and without the KV cache.

    python -m experiments.bench_translation --out_dir out/tiny_sample_backpack \
        --test_corpus ../shared/data/en-fr/parallel/europarl-v7-head --samples 500

Prints one JSON line per setting (seconds, sentences/s, tokens generated) and the speed-up.
The two settings must produce the same translations; the script checks that they do.
"""
import argparse
import json
from pathlib import Path

import torch

from backpacks.devices import resolve_device
from backpacks.evaluation import load_for_eval
from backpacks.generation import DIRECTIONS, timed_translate


def parse_args():
    p = argparse.ArgumentParser(prog="python -m experiments.bench_translation",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument('--out_dir', required=True, help='training output directory with best.pt / ckpt.pt')
    p.add_argument('--ckpt', default='best', choices=['best', 'latest'])
    p.add_argument('--test_corpus', help='PREFIX of PREFIX.en / PREFIX.fr (default: the dataset test.jsonl)')
    p.add_argument('--samples', type=int, default=500)
    p.add_argument('--direction', default='en-fr', choices=DIRECTIONS)
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--skip_uncached', action='store_true', help='time the cached decoder only')
    p.add_argument('--device', default='cpu')
    args = p.parse_args()
    args.device = resolve_device(args.device)
    return args


def read_sources(args, data_dir):
    side = args.direction.split('-')[0]
    if args.test_corpus:
        lines = Path(f'{args.test_corpus}.{side}').read_text(encoding='utf-8').splitlines()
    else:
        lines = [json.loads(line)[side] for line in (Path(data_dir) / 'test.jsonl').open(encoding='utf-8')]
    return [line.strip() for line in lines if line.strip()][:args.samples]


def main():
    args = parse_args()
    model, _, tokenizer, data_dir = load_for_eval(args.out_dir, args.ckpt, args.device)
    sources = read_sources(args, data_dir)
    outputs = {}
    for use_cache in (True,) if args.skip_uncached else (True, False):
        run = timed_translate(model, tokenizer, sources, args.direction, batch_size=args.batch_size,
                              use_cache=use_cache, progress=False)
        outputs[use_cache] = run
        print(json.dumps({'model': model.model_type, 'kv_cache': use_cache, 'sentences': len(sources),
                          'threads': torch.get_num_threads(), 'seconds': round(run['seconds'], 2),
                          'sentences_per_s': round(len(sources) / run['seconds'], 1),
                          'tokens_generated': sum(len(tokenizer.encode(h)) for h in run['hypotheses'])}))
    if not args.skip_uncached:
        if outputs[True]['hypotheses'] != outputs[False]['hypotheses']:
            raise SystemExit('error: cached and uncached decoding disagree')
        print(json.dumps({'speedup_of_kv_cache': round(outputs[False]['seconds'] / outputs[True]['seconds'], 1)}))


if __name__ == '__main__':
    main()
