"""The evaluation tasks (loss, translation, word similarity, lexicon induction, sentence retrieval,
senses, SENSIA geometry, XNLI, PAWS-X), their command-line options (shared by evaluate.py and
compare_models.py), and evaluate_out_dir, which runs the requested tasks on a run's checkpoint and
writes eval/results.json and eval/report.md. Each task is a function of an evaluation.Context that
returns its results or raises SkipTask with the reason."""
import argparse
import functools
import math
import os
import re
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from backpacks import cli, metrics, sensia
from backpacks.atomic import file_digest
from backpacks.checkpoint import CHECKPOINT_FILES
from backpacks.cli import fail
from backpacks.dataset import BatchSampler, DataError, resolve_dataset
from backpacks.devices import resolve_device
from backpacks.eval import lexical, multiple_choice, resources, sense_geometry
from backpacks.eval.context import (DEFAULT_DATA_ROOT, DEFAULT_DICTIONARY, DEFAULT_MULTISIMLEX_OFFICIAL,
                                  DEFAULT_WORDSIM, Context, SkipTask, load_for_eval, split_list, warn)
from backpacks.eval.results import task_record, write_merged
from backpacks.generation import check_max_new_tokens, new_token_cap, timed_translate
from backpacks.textfile import TextFileError, read_utf8


# ----------------------------------------------------------------------------- command line

def add_eval_arguments(p):
    """Every evaluation option (shared with compare_models.py), except --out_dir."""
    p.add_argument("--ckpt", choices=["best", "latest"], default="best", help="best.pt or ckpt.pt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"comma-separated subset of {','.join(TASKS)} (default: all but xnli,pawsx)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--batch_size", type=int, default=16, help="sentences per forward pass")
    p.add_argument("--data_root", default=None,
                   help="English-French resources in the layout of resources.py (default: env ENFR_DATA, else "
                        "../shared/data/en-fr beside the repository, where they exist); "
                        "missing files are then looked up in, and fetched into, the cache (python -m backpacks.eval.resources list)")
    p.add_argument("--fetch", action=argparse.BooleanOptionalAction, default=resources.fetch_allowed_by_environment(),
                   help="download missing resources into the cache (default: on, off when one of "
                        f"{', '.join(resources.OFFLINE_VARIABLES)} is set)")
    p.add_argument("--data_dir", default=None,
                   help="the prepared dataset (a directory or a dataset name under data/, as train.py takes it), "
                        "if it moved since training (default: the checkpoint's data_dir)")
    g = p.add_argument_group("loss")
    g.add_argument("--loss_batches", type=int, default=20, help="random test windows are drawn in this many batches")
    g = p.add_argument_group("translation")
    g.add_argument("--translation_samples", type=int, default=500, help="test pairs translated in each direction")
    g.add_argument("--test_corpus", default=None,
                   help="PREFIX of an external test set PREFIX.en / PREFIX.fr (default: the dataset's test.jsonl)")
    g.add_argument("--test_set", default=None, metavar="NAME",
                   help="a standard test set instead: flores200 (devtest, through resources.py) or an en-fr set of "
                        "sacreBLEU, downloaded and checked by sacreBLEU (wmt08 ... wmt15, wmt14/full, ...)")
    g.add_argument("--beam", type=int, default=1, help="also decode with beam search of this width when > 1")
    g.add_argument("--max_new_tokens", type=int, default=None, help="cap on a translation's tokens (default: 2 x source + 10)")
    g.add_argument("--examples", type=int, default=5, help="translations kept for the report")
    g = p.add_argument_group("word similarity")
    g.add_argument("--wordsim", nargs="*", default=None, metavar="NAME=PATH",
                   help="word-similarity files (`word1 word2 score`, or with a header); default: the sets under --data_root")
    g.add_argument("--multisimlex_official", default=None, metavar="DIR",
                   help="directory with Multi-SimLex translation.csv and scores.csv (official layout)")
    g.add_argument("--word_reps", default=None,
                   help="comma-separated representations (default: all the model has: embedding, mean, minpair, maxpair, "
                        "sense:i, and the control random_pieces)")
    g = p.add_argument_group("bilingual lexicon induction")
    g.add_argument("--dictionary", default=None, help=f"MUSE en-fr dictionary (default: --data_root/{DEFAULT_DICTIONARY})")
    g.add_argument("--bli_candidates", type=int, default=5000, help="N most frequent training words of the target language")
    g.add_argument("--csls_k", type=int, default=10)
    g.add_argument("--bli_reps", default=None,
                   help="comma-separated representations (default: embedding, mean for a Backpack, and the control random_pieces)")
    g = p.add_argument_group("sentence level")
    g.add_argument("--sentence_pairs", type=int, default=500, help="test pairs for pair cosine and retrieval")
    g = p.add_argument_group("sense analysis (Backpack)")
    g.add_argument("--sense_words", default=None,
                   help="comma-separated words (default: the most frequent single-token MUSE pairs of the training text)")
    g.add_argument("--sense_num_pairs", type=int, default=4, help="default word set: this many English words + translations")
    g.add_argument("--sense_top_k", type=int, default=8)
    g.add_argument("--sense_vocab", choices=["all", "en", "fr"], default="all",
                   help="rank only tokens of this side of the training corpus (by per-language token counts)")
    g.add_argument("--sense_sentences", type=int, default=64, help="test sentences for the alpha entropy")
    g.add_argument("--sense_pairs", type=int, default=1000, help="dictionary pairs for per-sense translation cosines")
    g = p.add_argument_group("multiple choice (xnli, pawsx: --data_root/xling/TASK/dev-{en,fr}.tsv)")
    g.add_argument("--mc_rows", type=int, default=64, help="option sequences per forward pass")
    g.add_argument("--mc_examples", type=int, default=None,
                   help="score only the first N examples of each dev file (default: all)")
    g.add_argument("--mc_length", choices=tuple(multiple_choice.LENGTH_TERMS), default="exponent",
                   help="length term, tuned with lambda on the tuning half: s / |A|^alpha (exponent, as the authors' "
                        "run_eval.py) or s + beta |A| (additive, as the paper)")
    g = p.add_argument_group("SENSIA sense geometry (Backpack; see sense_geometry.py)")
    g.add_argument("--geometry_pairs", type=int, default=1000,
                   help="most frequent dictionary pairs of the training text for topology and Procrustes")
    g.add_argument("--geometry_sentences", type=int, default=500, help="test pairs for recall@1 and the mixture ablation")
    g.add_argument("--geometry_mixture", choices=sense_geometry.GEOMETRY_MIXTURES, default="norm",
                   help="Procrustes word vectors: senses weighted by softmax(norm / tau_pool) (the z_sns pooling), or "
                        "by the sense-weight network's alpha at the word's last piece (the paper's form)")


def check_args(args):
    """Validate every option and the environment up front: one clear error line before any model
    loads, instead of a failure deep inside a task (or after an hour of evaluation)."""
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        fail(f"unknown task(s) {unknown or args.tasks!r}; choose from {','.join(TASKS)}")
    args.task_list = tasks
    cli.check_at_least(args, 1, ("batch_size", "loss_batches", "translation_samples", "beam", "bli_candidates",
                                       "csls_k", "sentence_pairs", "sense_num_pairs", "sense_top_k", "sense_sentences",
                                       "sense_pairs", "mc_rows", "geometry_pairs", "geometry_sentences",
                                       "max_new_tokens"))
    cli.check_at_least(args, 0, ("examples",))
    if args.mc_examples is not None and args.mc_examples < 2:
        fail(f"--mc_examples must be >= 2 (a tuning and a reporting half), got {args.mc_examples}")
    if args.sentence_pairs < 2:
        fail("--sentence_pairs must be >= 2 (retrieval needs distractors)")
    cli.check_seed(args.seed)
    args.device = resolve_device(args.device)
    check_representation_names(args)
    check_test_set(args)
    check_input_paths(args)
    args.data_dir = resolve_dataset(args.data_dir)
    args.data_root = resolve_data_root(args.data_root)
    cli.check_directory_variable(resources.CACHE_VARIABLE)
    return args


def check_run_dir(out_dir, which):
    """out_dir holds the checkpoint to evaluate, and its eval/ directory can be written."""
    checkpoint = Path(out_dir) / CHECKPOINT_FILES[which]
    if not checkpoint.is_file():
        fail(f"no checkpoint at {checkpoint}" + ("" if Path(out_dir).is_dir() else f" ({out_dir} is not a directory)"))
    cli.check_writable(Path(out_dir) / "eval", "the results directory")


def check_representation_names(args):
    """--word_reps / --bli_reps name representations that exist for some model (whether this model
    has them is known once it is loaded: the task is then skipped with the reason)."""
    for option in ("word_reps", "bli_reps"):
        for name in split_list(getattr(args, option)) or []:
            if name not in lexical.REPRESENTATION_NAMES and not re.fullmatch(r"sense:\d+", name):
                fail(f"--{option}: unknown representation {name!r}; choose from "
                     f"{', '.join(lexical.REPRESENTATION_NAMES)} or sense:I")


def check_test_set(args):
    if args.test_set and args.test_corpus:
        fail("give --test_set or --test_corpus, not both")
    known = ["flores200"] + resources.sacrebleu_test_sets()
    if args.test_set and args.test_set not in known:
        fail(f"unknown --test_set {args.test_set!r}; choose from {', '.join(known)}")


def check_input_paths(args):
    """Files and directories the user named exist, and the test corpus is readable UTF-8 text."""
    for spec in args.wordsim or []:
        if "=" not in spec:
            fail(f"--wordsim entries are NAME=PATH, got {spec!r}")
        if not Path(spec.split("=", 1)[1]).is_file():
            fail(f"--wordsim {spec}: no such file")
    if args.dictionary and not Path(args.dictionary).is_file():
        fail(f"--dictionary {args.dictionary}: no such file")
    if args.multisimlex_official:
        cli.check_directory(args.multisimlex_official, "--multisimlex_official")
    for lang in ("en", "fr") if args.test_corpus else ():
        try:
            read_utf8(f"{args.test_corpus}.{lang}", "--test_corpus file")
        except TextFileError as e:
            fail(str(e))


def resolve_data_root(data_root):
    """--data_root must be a directory; without it $ENFR_DATA, else ../shared/data/en-fr beside the
    repository, each used only if it exists (resources then come from the cache)."""
    if data_root is not None:
        cli.check_directory(data_root, "--data_root")
        return data_root
    if os.environ.get("ENFR_DATA") and Path(os.environ["ENFR_DATA"]).is_file():
        fail(f"environment variable ENFR_DATA={os.environ['ENFR_DATA']} is a file, not a directory")
    return DEFAULT_DATA_ROOT


def eval_settings(args):
    """Every evaluation option as used: compare_models.py --reuse takes results only for equal settings."""
    parser = argparse.ArgumentParser(add_help=False)
    add_eval_arguments(parser)
    return {action.dest: getattr(args, action.dest) for action in parser._actions}


# ----------------------------------------------------------------------------- tasks

@torch.no_grad()
def task_loss(ctx):
    """Test loss and perplexity over random windows, overall and per target language. Not val: val
    chose best.pt, so its loss is biased low (it stays in training_log.json)."""
    args = ctx.args
    if not (ctx.data_dir / "test.bin").is_file():
        raise SkipTask(f"{ctx.data_dir / 'test.bin'} not found: the dataset was prepared before prepare.py wrote "
                       "a test stream; prepare it again for a held-out loss (the val loss is in training_log.json)")
    try:
        sampler = BatchSampler(ctx.data_dir, seed=args.seed)
    except DataError as e:
        raise SkipTask(str(e))
    windows = {"all": ([], []), "en": ([], []), "fr": ([], [])}  # per window: summed loss, scored tokens
    for _ in tqdm(range(args.loss_batches), desc="test loss", leave=False):
        x, y, lang = sampler.get_batch("test", args.batch_size, ctx.block_size, ctx.device, with_language=True)
        logits, _ = ctx.model(x)
        for name, (sums, counts) in metrics.window_language_losses(logits, y, lang).items():
            windows[name][0].extend(sums)
            windows[name][1].extend(counts)
    result = {"split": "test", "batches": args.loss_batches, "batch_size": args.batch_size,
              "block_size": ctx.block_size, "seed": args.seed,
              "note": "random windows (the same for every model of the dataset and seed); per-language = target "
                      "token inside an English / French segment; ci95: bootstrap over the windows"}
    for name, (sums, counts) in windows.items():
        total, count = sum(sums), sum(counts)
        loss = total / count if count else None
        result[name] = {"loss": loss, "perplexity": math.exp(loss) if loss is not None else None, "tokens": count,
                        "ci95": metrics.ratio_interval(sums, counts) if count else None}
    result["windows"] = {name: {"loss_sum": [round(v, 4) for v in sums], "tokens": counts}
                         for name, (sums, counts) in windows.items()}
    return result


def task_translation(ctx):
    """Greedy (and beam) translation both ways on test pairs; sacreBLEU and the rest."""
    args = ctx.args
    pairs, source = ctx.test_pairs()
    available, pairs = len(pairs), pairs[:args.translation_samples]
    result = {"test_set": source, "samples_asked": args.translation_samples, "samples_available": available,
              "samples_used": len(pairs),
              "stop": "next language tag or end-of-text", "max_new_tokens": args.max_new_tokens or
              f"2 x source tokens + 10, at most {new_token_cap(ctx.block_size)} (half the context)"}
    decodings = [("greedy", 1)] + ([(f"beam{args.beam}", args.beam)] if args.beam > 1 else [])
    result["references"] = {}  # kept with every hypothesis for compare_models.py's paired bootstrap
    for direction in ("en-fr", "fr-en"):
        sources, references = zip(*[(e, f) if direction == "en-fr" else (f, e) for e, f in pairs])
        result["references"][direction] = list(references)
        entry = {}
        for name, beam in decodings:
            out = timed_translate(ctx.model, ctx.tok, list(sources), direction, beam=beam,
                                  batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
            hypotheses = out["hypotheses"]
            entry[name] = {**metrics.translation_metrics(hypotheses, list(references)),
                           "seconds": out["seconds"], "sentences_per_second": len(pairs) / out["seconds"],
                           "sources_truncated": out["truncated"], "hypotheses": hypotheses,
                           "examples": [{"source": s, "reference": r, "hypothesis": h} for s, r, h in
                                        list(zip(sources, references, hypotheses))[:args.examples]]}
        result[direction] = entry
    return result


def read_wordsim_sets(ctx):
    """{name: ParsedFile or the reason it cannot be read}, plain files and official Multi-SimLex."""
    args, sets = ctx.args, {}
    named = dict(spec.split("=", 1) for spec in args.wordsim) if args.wordsim is not None else DEFAULT_WORDSIM
    for name, path in named.items():
        try:
            path = path if args.wordsim is not None else ctx.locate(f"wordsim:{name}", path)
            sets[name] = warn(lexical.read_word_pairs(path))
            if f"wordsim:{name}" not in ctx.used:  # located files are recorded already
                ctx.record(f"wordsim:{name}", resources.file_record(path))
        except lexical.ResourceError as e:
            sets[name] = str(e)
    official = Path(args.multisimlex_official or Path(args.data_root) / DEFAULT_MULTISIMLEX_OFFICIAL)
    if not args.multisimlex_official and not (official / "translation.csv").is_file():
        official = resources.cache_dir() / "data" / DEFAULT_MULTISIMLEX_OFFICIAL  # fetched with multisimlex
    translation_csv, scores_csv = official / "translation.csv", official / "scores.csv"
    if args.multisimlex_official or translation_csv.is_file():
        for lang1, lang2 in (("en", None), ("fr", None), ("en", "fr")):
            name = f"multisimlex-official-{lang1}" + (f"-{lang2}" if lang2 else "")
            try:
                sets[name] = warn(lexical.read_multisimlex_official(translation_csv, scores_csv, lang1, lang2))
                ctx.record(f"wordsim:{name}", [resources.file_record(p) for p in (translation_csv, scores_csv)])
            except lexical.ResourceError as e:
                sets[name] = str(e)
    return sets


def requested_reps(ctx, option, default):
    """Representations named by a comma-separated option (else the default) that the model has."""
    try:
        return lexical.check_representations(ctx.model, split_list(option) or default)
    except ValueError as e:
        raise SkipTask(str(e))


def task_wordsim(ctx):
    """Spearman rho between model similarities and human scores, per set and representation."""
    reps = requested_reps(ctx, ctx.args.word_reps, lexical.representations(ctx.model))
    sets = read_wordsim_sets(ctx)
    readable = {name: parsed for name, parsed in sets.items() if not isinstance(parsed, str)}
    if not readable:
        raise SkipTask("no readable word-similarity file: " + "; ".join(sets.values()))
    try:
        counts = ctx.word_counts()
        corpus_words = set(counts["en"]) | set(counts["fr"])
    except lexical.ResourceError:
        corpus_words = None
    words = [w for parsed in readable.values() for a, b, _ in parsed.rows for w in (a, b)]
    vectors = lexical.WordVectors(ctx.model, ctx.tok, words, full_senses=lexical.has_senses(ctx.model))
    result = {"representations": reps, "word_form": "encoded mid-sentence (' ' + word); pieces averaged",
              "corpus_words": "word_counts.json of the dataset" if corpus_words is not None else None, "sets": {}}
    for name, parsed in sets.items():
        if isinstance(parsed, str):
            result["sets"][name] = {"skipped": parsed}
            continue
        entry = lexical.word_similarity(vectors, parsed.rows, reps, corpus_words)
        result["sets"][name] = {"resource": parsed.summary(), **entry}
    return result


def task_bli(ctx):
    """Bilingual lexicon induction EN->FR and FR->EN with cosine and CSLS."""
    args = ctx.args
    reps = requested_reps(ctx, args.bli_reps, ["embedding"] + (["mean"] if lexical.has_senses(ctx.model) else [])
                          + [lexical.CONTROL])
    try:
        counts, dictionary = ctx.word_counts(), ctx.dictionary()  # dataset first: no download for nothing
    except lexical.ResourceError as e:
        raise SkipTask(str(e))
    vocab = {lang: list(counts[lang])[:args.bli_candidates] for lang in ("en", "fr")}
    needs_senses = any(r.startswith("sense:") for r in reps)
    vectors = lexical.WordVectors(ctx.model, ctx.tok, vocab["en"] + vocab["fr"], full_senses=needs_senses)
    result = {"dictionary": dictionary.summary(), "dictionary_split": lexical.dictionary_split(dictionary.path),
              "candidates_asked": args.bli_candidates, "csls_k": args.csls_k,
              "representations": reps, "candidate_source": "most frequent words of word_counts.json (train split)",
              "words": {lang: vectors.piece_stats(vocab[lang]) for lang in ("en", "fr")}}
    for direction, reverse, src, tgt in (("en-fr", False, "en", "fr"), ("fr-en", True, "fr", "en")):
        gold = lexical.gold_translations(dictionary.rows, reverse=reverse)
        result[direction] = lexical.lexicon_induction(vectors, gold, vocab[src], vocab[tgt], reps, k=args.csls_k)
    return result


def sentence_ids(ctx, text, tag):
    """`<tag> text` token ids, cut to the context window."""
    return ([tag] + ctx.tok.encode(text))[:ctx.block_size]


@torch.no_grad()
def pooled_states(ctx, sequences, state_fns):
    """{state name: {pooling: (N, d) array}} over the tokens after the tag of each sequence.
    Pooling: mean over those tokens, the first of them, the last of them."""
    pooled = {name: {"mean": [], "first": [], "last": []} for name in state_fns}
    bs = ctx.args.batch_size
    for start in tqdm(range(0, len(sequences), bs), desc="sentence states", leave=False):
        batch = sequences[start:start + bs]
        lengths = torch.tensor([len(s) for s in batch])
        idx = torch.full((len(batch), int(lengths.max())), ctx.tok.eot_id, dtype=torch.long)
        for row, seq in enumerate(batch):
            idx[row, :len(seq)] = torch.tensor(seq)  # right padding: causal states never see it
        positions = torch.arange(idx.shape[1])
        content = ((positions[None] >= 1) & (positions[None] < lengths[:, None])).float()[..., None]
        for name, fn in state_fns.items():
            states = fn(idx.to(ctx.device)).float().cpu()
            pooled[name]["mean"].append((states * content).sum(1) / content.sum(1))
            pooled[name]["first"].append(states[:, 1])
            pooled[name]["last"].append(states[torch.arange(len(batch)), lengths - 1])
    return {name: {p: torch.cat(v).numpy() for p, v in pools.items()} for name, pools in pooled.items()}


def task_sentence(ctx):
    """Cosine of translation pairs vs a derangement baseline, and retrieval recall@1 both ways."""
    args = ctx.args
    pairs, source = ctx.test_pairs()
    en = [sentence_ids(ctx, e, ctx.tok.en_id) for e, _ in pairs]
    fr = [sentence_ids(ctx, f, ctx.tok.fr_id) for _, f in pairs]
    keep = [i for i in range(len(pairs)) if len(en[i]) > 1 and len(fr[i]) > 1][:args.sentence_pairs]
    if len(keep) < 2:
        raise SkipTask(f"only {len(keep)} usable test pairs")
    state_fns = {"backbone": ctx.model.hidden_states}
    if lexical.has_senses(ctx.model):
        state_fns["backpack_output"] = ctx.model.output_states
    states_en = pooled_states(ctx, [en[i] for i in keep], state_fns)
    states_fr = pooled_states(ctx, [fr[i] for i in keep], state_fns)
    result = {"test_set": source, "pairs_asked": args.sentence_pairs, "pairs_used": len(keep),
              "input": "<EN> english / <FR> french, pooled over the tokens after the tag",
              "states": {"backbone": "final hidden states (after the final LayerNorm)",
                         **({"backpack_output": "Backpack output o (before the LM head)"} if len(state_fns) > 1 else {})}}
    for name in state_fns:
        result[name] = {pooling: metrics.sentence_retrieval(states_en[name][pooling], states_fr[name][pooling],
                                                            args.seed, ("en_to_fr", "fr_to_en"))
                        for pooling in ("mean", "first", "last")}
    return result


def default_sense_words(ctx):
    """The most frequent English dictionary words of the training text that are single tokens,
    each followed by its most frequent single-token translation."""
    pairs = ctx.frequent_dictionary_pairs(ctx.args.sense_num_pairs, single_tokens=True)
    if not pairs:
        raise SkipTask("no dictionary pair of single-token words occurs in the training text (use --sense_words)")
    return [w for pair in pairs for w in pair]


def task_senses(ctx):
    """Top tokens of each sense, alpha entropy on test sentences, per-sense translation cosines."""
    if not lexical.has_senses(ctx.model):
        raise SkipTask(f"a {ctx.model.model_type} has no sense vectors")
    args, result = ctx.args, {}
    try:
        words = split_list(args.sense_words) or default_sense_words(ctx)
        result["word_source"] = "--sense_words" if args.sense_words else \
            "most frequent single-token dictionary pairs of the training text"
        mask = None
        if args.sense_vocab != "all":
            masks = lexical.token_language_masks(lexical.token_language_counts(ctx.data_dir, ctx.ckpt["meta"]))
            mask = masks[args.sense_vocab]
        result["vocabulary"] = args.sense_vocab if mask is None else \
            f"{args.sense_vocab}: {int(mask.sum())} tokens seen mostly in the {args.sense_vocab} side of pairs_train.bin"
        result["top_tokens"] = lexical.sense_top_tokens(ctx.model, ctx.tok, words, args.sense_top_k, mask)
    except (lexical.ResourceError, SkipTask) as e:
        result["top_tokens"] = {"skipped": str(e)}
    try:
        pairs, source = ctx.test_pairs()
        sequences = [([ctx.tok.en_id] + ctx.tok.encode(e) + [ctx.tok.fr_id] + ctx.tok.encode(f)
                      + [ctx.tok.eot_id])[:ctx.block_size] for e, f in pairs[:args.sense_sentences]]
        result["alpha_entropy"] = {"test_set": source, "input": "<EN> en <FR> fr <eot>",
                                   **lexical.alpha_entropy(ctx.model, sequences, args.batch_size, ctx.device)}
    except SkipTask as e:
        result["alpha_entropy"] = {"skipped": str(e)}
    try:
        pairs = ctx.frequent_dictionary_pairs(args.sense_pairs)
        vectors = lexical.WordVectors(ctx.model, ctx.tok, [w for pair in pairs for w in pair])
        result["translation_pair_cosines"] = {
            "pairs_asked": args.sense_pairs, "selection": "most frequent dictionary pairs of the training text",
            **lexical.translation_pair_sense_cosines(vectors, pairs, seed=args.seed)}
    except lexical.ResourceError as e:
        result["translation_pair_cosines"] = {"skipped": str(e)}
    return result


def task_multiple_choice(ctx, task):
    """XNLI / PAWS-X accuracy with tuned conditional/PMI scoring (multiple_choice.py)."""
    return multiple_choice.evaluate_task(ctx.model, ctx.tok, ctx.ckpt["meta"], task,
                                         lambda relpath: ctx.locate(f"{task}:{relpath}", relpath), ctx.device,
                                         ctx.args.mc_rows, ctx.args.mc_examples, ctx.args.mc_length)


def task_sensia(ctx):
    """SENSIA's analyses: sense topology, Procrustes, sense-mixture ablation, test-pair recall@1 (untagged)."""
    if not lexical.has_senses(ctx.model):
        raise SkipTask(f"a {ctx.model.model_type} has no sense vectors")
    args = ctx.args
    word_pairs = ctx.frequent_dictionary_pairs(args.geometry_pairs)
    pairs, source = ctx.test_pairs()
    encoded = [(ctx.tok.encode(e)[:ctx.block_size], ctx.tok.encode(f)[:ctx.block_size]) for e, f in pairs]
    encoded = [(e, f) for e, f in encoded if e and f][:args.geometry_sentences]
    if len(encoded) < 2:
        raise SkipTask(f"only {len(encoded)} usable test pairs in {source}")
    tau_pool = ctx.ckpt.get("config", {}).get("tau_pool", 0.7)
    try:
        result = sense_geometry.analyse(ctx.model, ctx.tok, word_pairs, encoded, args.batch_size, ctx.device,
                                        tau_pool, args.seed, args.geometry_mixture)
    except ValueError as e:
        raise SkipTask(str(e))
    return {"test_set": source, "word_pair_selection": "most frequent dictionary pairs of the training text",
            "input": "sentences without language tags", **result}


TASKS = {"loss": task_loss, "translation": task_translation, "wordsim": task_wordsim, "bli": task_bli,
         "sentence": task_sentence, "senses": task_senses, "sensia": task_sensia,
         "xnli": functools.partial(task_multiple_choice, task="xnli"),
         "pawsx": functools.partial(task_multiple_choice, task="pawsx")}
# xnli and pawsx score 4,000-5,000 dev examples per language (minutes on a CPU): on request only
DEFAULT_TASKS = ("loss", "translation", "wordsim", "bli", "sentence", "senses", "sensia")


def best_selection(ckpt):
    """{'key', 'value'}: the training_log entry whose lowest value chose best.pt, and that value (the val
    loss for language modelling, the French loss on the val pairs for SENSIA)."""
    key = ckpt.get("selection_key")
    if key is None:  # checkpoints written before train.py saved the key
        key = sensia.SensiaObjective.selection_key if ckpt.get("config", {}).get("objective") == "sensia" else "val_loss"
    return {"key": key, "value": ckpt.get("best_val_loss")}


def evaluate_out_dir(out_dir, args):
    """Run the requested tasks on out_dir's checkpoint; merge them into eval/results.json (results.py)
    and return the merged results."""
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model, ckpt, tokenizer, data_dir = load_for_eval(out_dir, args.ckpt, args.device, args.data_dir)
    check_max_new_tokens(args.max_new_tokens, model.config.block_size)
    checkpoint = Path(out_dir) / CHECKPOINT_FILES[args.ckpt]
    checkpoint_sha256 = file_digest(checkpoint)  # what --reuse and the merge match
    ctx = Context(args, model, ckpt, tokenizer, data_dir)
    settings = eval_settings(args)
    results, records = {}, {}
    for task in args.task_list:
        start = time.perf_counter()
        print(f"[{task}] ...", file=sys.stderr)
        ctx.task_used = set()
        try:
            results[task] = TASKS[task](ctx)
            results[task]["seconds"] = time.perf_counter() - start
        except (SkipTask, lexical.ResourceError, DataError) as e:
            results[task] = {"skipped": str(e)}
            print(f"[{task}] skipped: {e}", file=sys.stderr)
        records[task] = task_record(checkpoint, checkpoint_sha256, ckpt.get("iter_num"), settings,
                                                 {key: ctx.used[key] for key in sorted(ctx.task_used)})
    results["run"] = {
        "out_dir": str(out_dir), "checkpoint": str(checkpoint),
        "which": args.ckpt, "iter_num": ckpt.get("iter_num"), "best": best_selection(ckpt),
        "checkpoint_sha256": checkpoint_sha256,
        "tokenizer_sha256": tokenizer.fingerprint(), "data_sha256": ckpt["meta"].get("data_sha256"),
        "settings": settings,
        "model_type": ckpt["model_type"], "model_args": ckpt.get("model_args"),
        "params": model.param_counts(), "data_dir": str(data_dir),
        "tokenizer": ckpt["meta"].get("tokenizer"), "data_root": str(args.data_root), "device": args.device,
        "tasks": args.task_list, "seed": args.seed, "command": " ".join(sys.argv),
        "seconds": time.perf_counter() - t0,
        "resources": ctx.used, "fetch": args.fetch, "cache": str(resources.cache_dir()),
    }
    return write_merged(Path(out_dir) / "eval", results, records, list(TASKS), checkpoint_sha256)

