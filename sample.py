"""
Sample from a trained model (nanoGPT style), or translate with it.

$ python sample.py --out_dir out/backpack_tiny --start "<EN> The committee" --num_samples 3
$ python sample.py --out_dir out/backpack_tiny --translate "The house is red." --direction en-fr --beam 4
$ python sample.py --out_dir out/backpack_tiny --senses "+roi-homme+femme" --senses_language fr
$ python sample.py --out_dir out/backpack_tiny --start "<EN> The committee" --explain
$ python sample.py --out_dir out/backpack_tiny --topic fish,fishing,sea,boats --strength 3

Tag strings in --start (<EN>, <FR> and the end-of-text token, spelled as the tokenizer's
token_str shows them) stand for the tag ids, so a prompt can open a segment exactly as training
did. --start and --translate also take FILE:path to read the text from a file; --translate
translates each non-empty line. An option the chosen mode would ignore (--beam when sampling,
--temperature with --translate, ...) is refused, and a --start longer than the context is said to be
cropped to its last block_size tokens.
"""
import argparse
import math
import re
import sys

import torch

from backpacks.cli import ArgumentParser, check_at_least, check_seed, fail
from backpacks.dataset import resolve_dataset
from backpacks.devices import resolve_device
from backpacks.eval.context import load_for_eval
from backpacks.eval.lexical import token_language_counts, token_language_masks
from backpacks.generation import DIRECTIONS, check_max_new_tokens, sample_edited, timed_translate
from backpacks.interventions import (TOPIC_STRENGTHS, InterventionError, read_senses, read_topic_words,
                                     require_backpack, sense_contributions, topic_edit)
from backpacks.textfile import TextFileError, read_utf8


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument('--out_dir', required=True, help="training output directory holding best.pt / ckpt.pt")
    p.add_argument('--ckpt', choices=['best', 'latest'], default='best', help="best.pt or ckpt.pt")
    p.add_argument('--data_dir', default=None,
                   help="dataset with the tokenizer (a directory or a dataset name under data/, as train.py takes "
                        "it), if it moved since training (default: the checkpoint's)")
    p.add_argument('--start', default=None,
                   help="prompt text or FILE:path (default: the English tag, i.e. a fresh English segment)")
    p.add_argument('--num_samples', type=int, default=3)
    p.add_argument('--max_new_tokens', type=int, default=None,
                   help="tokens to generate (default: 100 when sampling; 2 x source + 10 when translating, "
                        "at most half the context)")
    p.add_argument('--temperature', type=float, default=0.8, help="0 means greedy")
    p.add_argument('--top_k', type=int, default=200, help="sample among the k likeliest tokens (0: all)")
    p.add_argument('--seed', type=int, default=1337)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--translate', default=None, help="text (or FILE:path, one sentence a line) to translate")
    p.add_argument('--direction', choices=DIRECTIONS, default='en-fr')
    p.add_argument('--beam', type=int, default=1, help="beam size (1: greedy)")
    p.add_argument('--senses', default=None,
                   help="Backpack: print each sense's top +/- vocabulary items of a word or of word arithmetic '+a-b+c'")
    p.add_argument('--senses_language', choices=['en', 'fr'], default=None,
                   help="with --senses: rank only the tokens of this language (from the training data's pairs)")
    p.add_argument('--top', type=int, default=8, help="items shown per sense (--senses) or per token (--explain)")
    p.add_argument('--explain', action='store_true',
                   help="Backpack: after each sample, the (past token, sense) contributions to each generated token's logit")
    p.add_argument('--topic', default=None, help="Backpack topic control: words 'a,b,c' or a file of words")
    p.add_argument('--strength', type=int, default=2, choices=sorted(TOPIC_STRENGTHS), help="topic strength")
    args = p.parse_args(argv)
    check_args(args, p)
    return args


# options one mode reads; the others would ignore them (--top is also read by --explain, --strength by --topic)
MODE_OPTIONS = {'sample': ('start', 'num_samples', 'max_new_tokens', 'temperature', 'top_k', 'explain', 'topic'),
                'translate': ('direction', 'beam', 'max_new_tokens'),
                'senses': ('senses_language', 'top')}


def mode(args):
    return 'senses' if args.senses is not None else 'translate' if args.translate is not None else 'sample'


def ignored_options(args, parser):
    """Options given a value other than their default that the chosen mode would not read."""
    used = set(MODE_OPTIONS[mode(args)]) | ({'top'} if args.explain else set()) | \
        ({'strength'} if args.topic is not None else set())
    options = {name for names in MODE_OPTIONS.values() for name in names} | {'strength'}
    return sorted(name for name in options - used if getattr(args, name) != parser.get_default(name))


def check_args(args, parser):
    """Every option checked before the model loads, each bad one a single line; an option the chosen
    mode would ignore is refused rather than dropped unsaid."""
    if args.senses is not None and args.translate is not None:
        fail("give --senses or --translate, not both")
    ignored = ignored_options(args, parser)
    if ignored:
        fail(f"{', '.join('--' + name for name in ignored)} would be ignored "
             + {'sample': "when sampling", 'translate': "with --translate", 'senses': "with --senses"}[mode(args)]
             + (" (--strength goes with --topic, --top with --senses or --explain)" if {'strength', 'top'} & set(ignored)
                else ""))
    check_at_least(args, 1, ('num_samples', 'max_new_tokens', 'beam', 'top'))
    if not (math.isfinite(args.temperature) and args.temperature >= 0) or args.top_k < 0:
        fail("--temperature must be a finite number >= 0 and --top_k >= 0")
    check_seed(args.seed)
    args.device = resolve_device(args.device)
    args.data_dir = resolve_dataset(args.data_dir)
    for option in ('start', 'translate'):  # a FILE: path that cannot be read fails before the model loads
        read_text_arg(getattr(args, option), f'--{option}')
    if args.topic is not None:
        try:
            read_topic_words(args.topic)
        except InterventionError as e:
            fail(str(e))


def read_text_arg(value, option):
    """The option's text, or the contents of the UTF-8 file named by FILE:path (as in nanoGPT)."""
    if value is None or not value.startswith('FILE:'):
        return value
    try:
        return read_utf8(value[len('FILE:'):], f'{option} file')
    except TextFileError as e:
        fail(str(e))


def tag_strings(tok):
    """{tag id: its printed form} for the language tags and end-of-text."""
    return {i: tok.token_str(i) for i in (tok.en_id, tok.fr_id, tok.eot_id)}


def encode_with_tags(tok, text):
    """Token ids of `text`, where the tags' printed forms stand for the tag ids; the text
    between tags is encoded on its own, as each side of a pair is in the training data."""
    ids_of = {s: i for i, s in tag_strings(tok).items()}
    ids = []
    for piece in re.split('(' + '|'.join(map(re.escape, ids_of)) + ')', text):
        if piece in ids_of:
            ids.append(ids_of[piece])
        elif piece.strip():
            ids.extend(tok.encode(piece.strip()))
    return ids


def decode_with_tags(tok, ids):
    """Text of `ids` with the tags shown (tok.decode alone drops them)."""
    tags = tag_strings(tok)
    parts, segment = [], []
    for i in ids + [tok.eot_id]:  # a trailing tag flushes the last segment; dropped below
        if i in tags:
            parts.append(tok.decode(segment).strip())
            parts.append(tags[i])
            segment = []
        else:
            segment.append(i)
    return ' '.join(p for p in parts[:-1] if p)


def sample(model, tok, args):
    """Free sampling from --start, printed nanoGPT style; with --topic through topic control, with
    --explain followed by each token's attribution."""
    text = read_text_arg(args.start, '--start')
    start_ids = encode_with_tags(tok, text) if text is not None else [tok.en_id]
    if not start_ids:
        fail("--start encodes to no tokens")
    block_size = model.config.block_size
    if args.explain and len(start_ids) + (args.max_new_tokens or 100) > block_size + 1:
        fail(f"--explain attributes each token to the whole sequence, which must fit the {block_size}-token context: "
             f"--start has {len(start_ids)} tokens, so --max_new_tokens may be at most {block_size + 1 - len(start_ids)}")
    if len(start_ids) > block_size:
        print(f"note: --start has {len(start_ids)} tokens, more than the {block_size}-token context: the model sees "
              f"only its last {block_size}", file=sys.stderr)
    idx = torch.tensor([start_ids], dtype=torch.long, device=args.device)
    edits_for = None
    if args.topic is not None:
        edits_for, ids = topic_edit(model, tok, read_topic_words(args.topic), args.strength)
        print(f"topic bag: {len(ids)} words, pieces {' '.join(sorted({tok.token_str(i) for i in ids.values()}))}")
    for _ in range(args.num_samples):
        if edits_for is not None:
            out = sample_edited(model, idx, args.max_new_tokens or 100, edits_for, temperature=args.temperature, top_k=args.top_k or None)
        else:
            out = model.generate(idx, args.max_new_tokens or 100, temperature=args.temperature, top_k=args.top_k or None)
        print(decode_with_tags(tok, out[0].tolist()))
        if args.explain:
            explain(model, tok, out, len(start_ids), args.top)
        print('---------------')


def explain(model, tok, out, prompt_length, top):
    """For each generated token y: its logit and the largest alpha[l,i,j] (E C(x_j)_l)[y] terms."""
    contributions, logits = sense_contributions(model, out[:, :-1], out[:, 1:])
    ids = out[0].tolist()
    for i in range(prompt_length - 1, len(ids) - 1):
        terms = contributions[0, i].flatten()  # (k * T): sense-major
        best = terms.abs().topk(min(top, int((terms != 0).sum()) or 1)).indices.tolist()
        T = contributions.shape[-1]
        parts = [f"{tok.token_str(ids[b % T])!r}@{b % T}.s{b // T} {terms[b]:+.2f}" for b in best]
        print(f"  {tok.token_str(ids[i + 1])!r} logit {logits[0, i, ids[i + 1]]:.2f} = sum of: {', '.join(parts)}")


def print_senses(model, tok, args, data_dir, meta):
    """Each sense's top positive and negative vocabulary items of --senses."""
    mask = None
    if args.senses_language is not None:
        try:
            mask = token_language_masks(token_language_counts(data_dir, meta))[args.senses_language]
        except Exception as e:
            raise SystemExit(f"error: --senses_language needs the dataset's pairs_train.bin: {e}")
    for row in read_senses(model, tok, args.senses, args.top, mask):
        show = lambda items: ' '.join(f"{t!r}({v:+.1f})" for t, v in items)
        print(f"sense {row['sense']:2d}  + {show(row['positive'])}")
        print(f"          - {show(row['negative'])}")


def translate_text(model, tok, args):
    """Translate each non-empty line of --translate and print the translations."""
    sources = [line.strip() for line in read_text_arg(args.translate, '--translate').splitlines() if line.strip()]
    if not sources:
        fail("--translate has no text")
    check_max_new_tokens(args.max_new_tokens, model.config.block_size)
    out = timed_translate(model, tok, sources, args.direction, beam=args.beam,
                          max_new_tokens=args.max_new_tokens, progress=False)
    if out['truncated']:
        print(f"note: {out['truncated']} of {len(sources)} source(s) lost their first tokens to fit the "
              f"{model.config.block_size}-token context", file=sys.stderr)
    for hypothesis in out['hypotheses']:
        print(hypothesis)


def main(argv=None):
    args = parse_args(argv)
    # sampling needs only the tokenizer: another dataset made with the same one is fine
    model, ckpt, tok, data_dir = load_for_eval(args.out_dir, args.ckpt, args.device, args.data_dir, same_data=False)
    if args.top_k > model.config.vocab_size:
        fail(f"--top_k {args.top_k} is more than the model's {model.config.vocab_size} tokens (0 samples among all)")
    torch.manual_seed(args.seed)
    try:
        if args.senses is not None or args.explain or args.topic is not None:
            require_backpack(model, '--senses, --explain and --topic')
        if args.senses is not None:
            print_senses(model, tok, args, data_dir, ckpt['meta'])
        elif args.translate is not None:
            translate_text(model, tok, args)
        else:
            sample(model, tok, args)
    except InterventionError as e:
        raise SystemExit(f"error: {e}")


if __name__ == '__main__':
    main()
