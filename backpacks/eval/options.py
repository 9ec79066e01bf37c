"""evaluate.py's options (shared with compare_models.py, which takes every one but --out_dir), and their
checks: every value, path and environment variable is checked before any model loads, with one line
naming the value and what to do."""
import argparse
import re
from pathlib import Path

import torch

from backpacks import cli
from backpacks.checkpoint import CHECKPOINT_FILES
from backpacks.cli import fail
from backpacks.dataset import resolve_dataset
from backpacks.devices import resolve_device
from backpacks.eval import lexical, multiple_choice, resources, sense_geometry
from backpacks.eval.context import DEFAULT_DATA_ROOT, DEFAULT_DICTIONARY, split_list
from backpacks.eval.tasks import DEFAULT_TASKS, TASKS
from backpacks.textfile import TextFileError, read_utf8


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
    g.add_argument("--loss_batches", type=int, default=20, help="score up to this many batches of disjoint test windows, spaced evenly over the test stream")
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
    args.settings = eval_settings(args)  # what results.json records with each task
    return args


def check_run_dir(out_dir, which, results="eval"):
    """out_dir holds the checkpoint to read, and its results directory (if any) can be written."""
    checkpoint = Path(out_dir) / CHECKPOINT_FILES[which]
    if not checkpoint.is_file():
        fail(f"no checkpoint at {checkpoint}" + ("" if Path(out_dir).is_dir() else f" ({out_dir} is not a directory)"))
    if results:
        cli.check_writable(Path(out_dir) / results, "the results directory")


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
    """--data_root must be a directory; without it $ENFR_DATA (checked with the environment), else
    ../shared/data/en-fr beside the repository where it exists (resources then come from the cache)."""
    if data_root is not None:
        cli.check_directory(data_root, "--data_root")
        return data_root
    return DEFAULT_DATA_ROOT


def eval_settings(args):
    """Every evaluation option as used: compare_models.py --reuse takes results only for equal settings."""
    parser = argparse.ArgumentParser(add_help=False)
    add_eval_arguments(parser)
    return {action.dest: getattr(args, action.dest) for action in parser._actions}
