"""
Time batched greedy translation of a trained checkpoint with and without the KV cache.

    python -m experiments.bench_translation --out_dir out/tiny_sample_backpack \
        --test_corpus ../shared/data/en-fr/parallel/europarl-v7-head --samples 500

Prints one JSON line per setting (seconds, sentences/s, tokens generated), then one with the check of the
cache and one with the speed-up. The check decodes greedily again, untimed, with the cache, and runs the uncached forward on the
same prefixes at every step: the two next-token logits must agree within the tolerance of the model's dtype
(relative to the logits' scale). Bitwise equality is not asked: the cached step multiplies other shapes than
the full forward, which on a GPU round differently. So the two greedy choices may differ, but only at a
near-tie, where the two tokens' logits are within that tolerance of each other; anything else is an error.
"""
import argparse
import json
from pathlib import Path

import torch

from backpacks import cli
from backpacks.devices import resolve_device
from backpacks.eval.context import load_for_eval
from backpacks.eval.options import check_run_dir
from backpacks.textfile import TextFileError, read_utf8
from backpacks.generation import (DIRECTIONS, Decoder, greedy_batch, prepare_prompts, sorted_batches, stop_ids,
                                  timed_translate)

# The largest cached-versus-uncached logit difference accepted, as a fraction of the row's largest |logit|.
# Rounding alone (other shapes, other summation orders) stays within a few units of the dtype's precision
# accumulated over the layers; a wrong cache is off by far more.
LOGIT_RTOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def parse_args(argv=None):
    p = cli.ArgumentParser(prog="python -m experiments.bench_translation",
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
    args = p.parse_args(argv)
    cli.check_at_least(args, 1, ('samples', 'batch_size'))
    args.device = resolve_device(args.device)
    check_run_dir(args.out_dir, args.ckpt, results=None)
    if args.test_corpus:  # an unreadable one fails before the model loads
        read_sources(args, None)
    return args


def read_sources(args, data_dir):
    side = args.direction.split('-')[0]
    if args.test_corpus:
        try:
            lines = read_utf8(f'{args.test_corpus}.{side}', '--test_corpus file').splitlines()
        except TextFileError as e:
            cli.fail(str(e))
    else:
        lines = [json.loads(line)[side] for line in (Path(data_dir) / 'test.jsonl').open(encoding='utf-8')]
    return [line.strip() for line in lines if line.strip()][:args.samples]


class CacheCheck:
    """How far the cached decoder's next-token logits are from the uncached forward's on the same prefixes: the
    largest difference (absolute, and relative to the row's largest |logit|), and, at each prediction where the
    two argmaxes differ, the gap between the two tokens' logits (relative likewise). A divergence within the
    tolerance is a near-tie: greedy decoding may go either way there, cached or not."""

    def __init__(self, dtype):
        self.dtype, self.rtol = str(dtype).removeprefix('torch.'), LOGIT_RTOL[dtype]
        self.compared, self.max_abs, self.max_rel, self.gaps = 0, 0.0, 0.0, []

    def add(self, cached, uncached):
        """One decoding step: the (B,V) next-token logits of both."""
        scale = uncached.abs().amax(-1).clamp_min(torch.finfo(uncached.dtype).tiny)
        diff = (cached - uncached).abs().amax(-1)
        self.max_abs = max(self.max_abs, diff.max().item())
        self.max_rel = max(self.max_rel, (diff / scale).max().item())
        a, b = cached.argmax(-1), uncached.argmax(-1)
        rows = (a != b).nonzero().squeeze(1)
        a, b = a[rows], b[rows]
        gaps = torch.maximum(cached[rows, a] - cached[rows, b], uncached[rows, b] - uncached[rows, a])
        self.gaps += (gaps / scale[rows]).tolist()
        self.compared += len(cached)

    def error(self):
        """Why the cache is wrong, in one line, or None."""
        if self.max_rel > self.rtol:
            return (f"the KV cache changes the next-token logits: the largest difference, {self.max_abs:.3g}, is "
                    f"{self.max_rel:.2g} of the logits' scale, above the {self.dtype} tolerance {self.rtol:g}")
        wide = [gap for gap in self.gaps if gap > self.rtol]
        if wide:
            return (f"cached and uncached greedy decoding choose different tokens at {len(wide)} prediction(s) where "
                    f"the two tokens' logits are up to {max(wide):.2g} of the logits' scale apart: not a near-tie "
                    f"(the {self.dtype} tolerance is {self.rtol:g})")
        return None

    def summary(self):
        return {'cache_check': 'FAIL' if self.error() else 'ok', 'dtype': self.dtype,
                'tolerance': self.rtol, 'predictions_compared': self.compared,
                'max_logit_diff': float(f'{self.max_abs:.3g}'), 'max_relative_logit_diff': float(f'{self.max_rel:.3g}'),
                'divergences': len(self.gaps), 'near_tie_divergences': sum(gap <= self.rtol for gap in self.gaps)}


class CheckedDecoder(Decoder):
    """The cached decoder, which also runs the uncached forward on the same prefixes at every step and hands
    both next-token logits to a CacheCheck; decoding follows the cached ones, as the timed cached run does."""

    def __init__(self, model, check):
        super().__init__(model, use_cache=True)
        self.uncached, self.check = Decoder(model, use_cache=False), check

    def next_logits(self, seqs, mask):
        logits = super().next_logits(seqs, mask)
        self.check.add(logits, self.uncached.next_logits(seqs, mask))
        return logits


def check_cache(model, tokenizer, sources, direction, batch_size):
    """The CacheCheck of greedy decoding of sources, batched as timed_translate batches them."""
    check = CacheCheck(next(model.parameters()).dtype)
    prompts, budgets, _ = prepare_prompts(tokenizer, sources, direction, model.config.block_size)
    for batch in sorted_batches(prompts, batch_size):
        greedy_batch(model, [prompts[i] for i in batch], [budgets[i] for i in batch], stop_ids(tokenizer),
                     tokenizer.eot_id, decoder=CheckedDecoder(model, check))
    return check


def main(argv=None):
    args = parse_args(argv)
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
        check = check_cache(model, tokenizer, sources, args.direction, args.batch_size)
        identical = sum(a == b for a, b in zip(outputs[True]['hypotheses'], outputs[False]['hypotheses']))
        print(json.dumps({**check.summary(), 'identical_translations': identical}))
        if check.error():
            raise SystemExit(f"error: {check.error()}")
        print(json.dumps({'speedup_of_kv_cache': round(outputs[False]['seconds'] / outputs[True]['seconds'], 1)}))


if __name__ == '__main__':
    main()
