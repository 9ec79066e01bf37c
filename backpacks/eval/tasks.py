"""The evaluation tasks (loss, translation, word similarity, lexicon induction, sentence retrieval,
senses, SENSIA geometry, XNLI, PAWS-X), their registry (TASKS), and evaluate_out_dir, which runs the
requested tasks on a run's checkpoint and writes eval/results.json and eval/report.md (the options
are in options.py). Each task is a function of an evaluation.Context that
returns its results or raises SkipTask with the reason."""
import functools
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from backpacks import metrics, sensia
from backpacks.atomic import file_digest
from backpacks.checkpoint import CHECKPOINT_FILES
from backpacks.dataset import BatchSampler, DataError
from backpacks.eval import lexical, multiple_choice, resources, sense_geometry
from backpacks.eval.context import (DEFAULT_MULTISIMLEX_OFFICIAL, DEFAULT_WORDSIM, Context, SkipTask, load_for_eval,
                                    split_list, warn)
from backpacks.eval.results import task_record, write_merged
from backpacks.generation import check_max_new_tokens, new_token_cap, timed_translate


# ----------------------------------------------------------------------------- tasks

@torch.no_grad()
def task_loss(ctx):
    """Test loss and perplexity over disjoint windows (no target token scored twice) spread evenly over the
    test stream, overall and per target language. Not val: val chose best.pt, so its loss is biased low
    (it stays in training_log.json)."""
    args = ctx.args
    if not (ctx.data_dir / "test.bin").is_file():
        raise SkipTask(f"{ctx.data_dir / 'test.bin'} not found: the dataset was prepared before prepare.py wrote "
                       "a test stream; prepare it again for a held-out loss (the val loss is in training_log.json)")
    try:
        sampler = BatchSampler(ctx.data_dir)
        starts = sampler.disjoint_starts("test", args.loss_batches * args.batch_size, ctx.block_size)
    except DataError as e:
        raise SkipTask(str(e))
    windows = {"all": ([], []), "en": ([], []), "fr": ([], [])}  # per window: summed loss, scored tokens
    for first in tqdm(range(0, len(starts), args.batch_size), desc="test loss", leave=False):
        x, y, lang = sampler.windows("test", starts[first:first + args.batch_size], ctx.block_size, ctx.device,
                                     with_language=True)
        logits, _ = ctx.model(x)
        for name, (sums, counts) in metrics.window_language_losses(logits, y, lang).items():
            windows[name][0].extend(sums)
            windows[name][1].extend(counts)
    result = {"split": "test", "windows_scored": len(starts), "batch_size": args.batch_size,
              "block_size": ctx.block_size,
              "note": "disjoint windows spaced evenly over the test stream (the same for every model of the dataset "
                      "and block size); per-language = target token inside an English / French segment; ci95: "
                      "bootstrap over the windows"}
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
        records[task] = task_record(checkpoint, checkpoint_sha256, ckpt.get("iter_num"), args.settings,
                                                 {key: ctx.used[key] for key in sorted(ctx.task_used)})
    results["run"] = {
        "out_dir": str(out_dir), "checkpoint": str(checkpoint),
        "which": args.ckpt, "iter_num": ckpt.get("iter_num"), "best": best_selection(ckpt),
        "checkpoint_sha256": checkpoint_sha256,
        "tokenizer_sha256": tokenizer.fingerprint(), "data_sha256": ckpt["meta"].get("data_sha256"),
        "settings": args.settings,
        "model_type": ckpt["model_type"], "model_args": ckpt.get("model_args"),
        "params": model.param_counts(), "data_dir": str(data_dir),
        "tokenizer": ckpt["meta"].get("tokenizer"), "data_root": str(args.data_root), "device": args.device,
        "tasks": args.task_list, "seed": args.seed, "command": " ".join(sys.argv),
        "seconds": time.perf_counter() - t0,
        "resources": ctx.used, "fetch": args.fetch, "cache": str(resources.cache_dir()),
    }
    return write_merged(Path(out_dir) / "eval", results, records, list(TASKS), checkpoint_sha256)

