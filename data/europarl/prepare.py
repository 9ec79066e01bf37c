"""Turn an English-French parallel corpus into memmapped training shards, held-out pairs and a tokenizer.

Sources: the Hugging Face hub (--source europarl, the default, or opus100) or local files
(--source local --corpus PATH ...; PATH is a NAME.en/NAME.fr pair prefix, optionally gzipped, or a
TSV file english<TAB>french). Pairs are cleaned, shuffled with --seed and split BY PAIR into
train/val/test, so no pair (or either of its directions) is in two splits; pairs that share an English
or a French side up to case, punctuation and whitespace (near-duplicates) are kept in one split. Each pair becomes the
sequence <EN> english <FR> french <eot> (and, with --bidirectional, <FR> french <EN> english <eot>).

    python -m data.europarl.prepare --source local --corpus data/europarl/sample/parliament --vocab_size 512

Outputs in OUT_ROOT/NAME/ (written to a temporary directory, renamed into place at the end):
{train,val,test}.bin, pairs_{train,val,test}.bin + pairs_{train,val,test}_index.npy, {train,val,test}.jsonl,
word_counts.json, tokenizer.json (bpe), meta.json. meta.json fingerprints the dataset for the runs
that use it: tokenizer_sha256 (see tokenizer.py) and data_sha256, the sha256 of the bytes of train.bin,
val.bin and test.bin in that order; token_files records the bytes, sha256 and largest id of every .bin
file, which readers check (backpacks/dataset.py). Temporary directories of a killed preparation are
removed by the next one. An existing dataset NAME is refused unless --overwrite; then the new dataset
replaces the old one as a whole (a crash leaves one or the other, never a mix), and anything else in the
directory (segregated/, the user's files) is kept.
"""
import argparse
import errno
import functools
import gzip
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from backpacks.atomic import file_digest, size_text, stale_temporaries, temporary_name, token_record
from backpacks import cli
from backpacks.tokenizer import DataError, offline_unless_hub_reachable, open_tokenizer, train_bpe
from backpacks.textfile import TextFileError, decode_utf8

REPO_ROOT = Path(__file__).resolve().parents[2]

HUB_SOURCES = {"europarl": ("Helsinki-NLP/europarl", "en-fr"), "opus100": ("Helsinki-NLP/opus-100", "en-fr")}
# not "europarl": data/europarl/ holds this script
DEFAULT_NAMES = {"europarl": "europarl_en_fr", "opus100": "opus100_en_fr"}
WORD_RE = re.compile(r"\w+(?:['’-]\w+)*")
# characters that would break the line-aligned outputs (tabs, line and paragraph separators)
BREAKS = str.maketrans({c: " " for c in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})
# larger BPE vocabularies are beyond any corpus this script prepares (GPT-2 has 50,257, XLM-R 250,002)
MAX_BPE_VOCAB = 1 << 20
ENCODE_CHUNK = 32768  # texts per batch-encoding call (progress granularity; each call runs in parallel)
SPLITS = ("train", "val", "test")
# every file a preparation writes into OUT_ROOT/NAME: --overwrite replaces these and nothing else
OUTPUT_NAMES = {name for split in SPLITS for name in (f"{split}.bin", f"pairs_{split}.bin", f"pairs_{split}_index.npy",
                                                      f"{split}.jsonl")} | {"tokenizer.json", "word_counts.json", "meta.json"}


class PrepareError(Exception):
    """Bad input or options: reported as one 'error: ...' line by the CLI."""


# ----------------------------------------------------------------------------- reading

def read_lines(path):
    """Lines of a UTF-8 text file (gzipped when it ends in .gz) and the sha256 of its bytes.
    Splits on '\\n' only: str.splitlines would also split on U+2028 and friends and break alignment."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError) as e:
        raise PrepareError(f"cannot read {path}: {e}") from e
    try:
        text = decode_utf8(data, str(path))
    except TextFileError as e:
        raise PrepareError(str(e)) from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines, hashlib.sha256(raw).hexdigest()


def corpus_files(spec):
    """('pair', en_path, fr_path) for a NAME.en/NAME.fr prefix (optionally .gz), else ('tsv', path)."""
    prefix = re.sub(r"\.(en|fr)(\.gz)?$", "", spec)
    for gz in ("", ".gz"):
        en, fr = Path(f"{prefix}.en{gz}"), Path(f"{prefix}.fr{gz}")
        if en.is_file() and fr.is_file():
            return "pair", en, fr
        if en.is_file() or fr.is_file():
            missing, present = (fr, en) if en.is_file() else (en, fr)
            raise PrepareError(f"missing file: {missing} (its pair {present} exists)")
    if Path(spec).is_file():
        return "tsv", Path(spec)
    raise PrepareError(f"missing file: neither {prefix}.en + {prefix}.fr (optionally .gz) nor a TSV file {spec}")


def read_local(specs):
    """English and French lines of all corpora, concatenated, and the source records for meta.json."""
    en, fr, sources = [], [], []
    for kind, *paths in tqdm([corpus_files(s) for s in specs], desc="reading", unit="corpus"):
        read = [read_lines(p) for p in paths]
        sources += [{"path": str(p.resolve()), "sha256": sha} for p, (_, sha) in zip(paths, read)]
        if kind == "pair":
            (en_lines, _), (fr_lines, _) = read
            if len(en_lines) != len(fr_lines):
                raise PrepareError(f"line counts differ: {paths[0]} has {len(en_lines)} lines, "
                                   f"{paths[1]} has {len(fr_lines)}")
        else:
            en_lines, fr_lines = split_tsv(paths[0], read[0][0])
        en += en_lines
        fr += fr_lines
    return en, fr, sources


def split_tsv(path, lines):
    en, fr = [], []
    for number, line in enumerate(lines, 1):
        fields = line.split("\t")
        if len(fields) == 1 and not line.strip():
            fields = ["", ""]  # a blank line: an empty pair, dropped by cleaning
        if len(fields) != 2:
            raise PrepareError(f"{path}: line {number} has {len(fields)} tab-separated fields, expected english<TAB>french")
        en.append(fields[0])
        fr.append(fields[1])
    return en, fr


def read_hub(source):
    """All pairs of a hub dataset (every split it has: the split by pair is redone here)."""
    repo, config = HUB_SOURCES[source]
    offline_unless_hub_reachable()
    import datasets
    try:
        splits = datasets.load_dataset(repo, config)
    except Exception as e:  # connection, offline-mode and missing-cache errors come in many types
        first_line = (str(e).splitlines() or [""])[0]
        raise PrepareError(f"cannot load {repo} ({config}) from the Hugging Face hub ({type(e).__name__}: "
                           f"{first_line}); offline, use --source local --corpus PATH") from e
    en, fr, sources = [], [], []
    for name in sorted(splits):
        table = splits[name].flatten().data
        en += table.column("translation.en").to_pylist()
        fr += table.column("translation.fr").to_pylist()
        sources.append({"path": f"hf://datasets/{repo}/{config}/{name}", "sha256": file_digest(
            *(c["filename"] for c in splits[name].cache_files))})
    return en, fr, sources


# ----------------------------------------------------------------------------- cleaning and splitting

def normalise(text):
    return unicodedata.normalize("NFC", (text or "").translate(BREAKS).strip())


def clean_pairs(en, fr, max_chars):
    """Normalised pairs that pass every rule, in input order, and the number dropped by each rule."""
    dropped = {"empty": 0, "too_long": 0, "length_ratio": 0, "duplicate": 0}
    seen, kept = set(), []
    for e, f in tqdm(zip(en, fr), total=len(en), desc="cleaning", unit="pair", leave=False):
        e, f = normalise(e), normalise(f)
        if not e or not f:
            rule = "empty"
        elif max(len(e), len(f)) > max_chars:
            rule = "too_long"
        elif not 1 / 3 <= len(e) / len(f) <= 3:
            rule = "length_ratio"
        elif (e, f) in seen:
            rule = "duplicate"
        else:
            seen.add((e, f))
            kept.append((e, f))
            continue
        dropped[rule] += 1
    return kept, dropped


def fold(text):
    """A side as near-duplicate detection sees it: case, punctuation and whitespace folded."""
    return fold_all([text])[0]


def fold_all(texts):
    """fold() of many single-line texts with one regular-expression pass over all of them."""
    joined = re.sub(r"[^\w\n]+|_+", " ", "\n".join(texts).casefold())
    return [" ".join(line.split()) for line in joined.split("\n")]


def duplicate_groups(pairs):
    """Group id of each pair: pairs that share a folded English side or a folded French side, directly
    or through a chain of such pairs, form one group. This is a union-find over both sides, computed
    as the connected components of the graph linking each pair to its two folded sides."""
    key_ids, rows, cols = {}, [], []
    folded = {side: fold_all([pair[column] for pair in pairs]) for column, side in enumerate(("en", "fr"))}
    for i in range(len(pairs)):
        for side in ("en", "fr"):
            key = folded[side][i]
            if key:  # a side of punctuation alone links nothing
                rows.append(i)
                cols.append(len(pairs) + key_ids.setdefault((side, key), len(key_ids)))
    size = len(pairs) + len(key_ids)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(size, size))
    return connected_components(graph, directed=False)[1][:len(pairs)]


def split_indices(groups, seed, val_frac, test_frac, max_pairs=None):
    """Pair indices cut into train/val/test by group (see duplicate_groups), so that no folded side
    is in two splits: the groups in a random order, then cut at the group boundaries nearest to the
    fractions (val and test get at least their share). An optional subsample keeps the first
    max_pairs pairs of that order."""
    rank = np.random.default_rng(seed).permutation(int(groups.max()) + 1)
    order = np.argsort(rank[groups], kind="stable")  # the pairs group by group
    if max_pairs:
        order = order[:max_pairs]  # a group cut here loses its tail to no split
    group_of = groups[order]
    starts = np.flatnonzero(np.r_[True, group_of[1:] != group_of[:-1]])  # where each group begins

    n = len(order)

    def boundary_at_or_before(position):
        return n if position >= n else int(starts[max(0, np.searchsorted(starts, position, side="right") - 1)])
    test_start = boundary_at_or_before(n - round(n * test_frac))
    val_start = boundary_at_or_before(test_start - round(n * val_frac))
    if val_start < 1 or val_start == test_start:
        raise PrepareError(f"{n} pairs after cleaning ({len(starts)} groups of near-duplicates) are too few for "
                           f"a train and a val split (val {val_frac}, test {test_frac})")
    return {"train": order[:val_start], "val": order[val_start:test_start], "test": order[test_start:]}


def group_stats(groups):
    """How many pairs share a folded side with another pair (they stay in one split)."""
    sizes = np.bincount(groups)
    return {"groups": int((sizes > 0).sum()), "groups_of_several_pairs": int((sizes > 1).sum()),
            "pairs_in_groups_of_several": int(sizes[sizes > 1].sum())}


# ----------------------------------------------------------------------------- token arrays

def token_dtype(vocab_size):
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def flatten(id_lists, dtype):
    """A list of id lists as one flat array and its (n+1) offsets."""
    lengths = np.fromiter(map(len, id_lists), np.int64, len(id_lists))
    offsets = np.zeros(len(id_lists) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(id_lists), dtype, int(offsets[-1]))
    return flat, offsets


def ranges(starts, lengths):
    """Concatenation of arange(s, s + l) for every (s, l): gathers many slices in one indexing."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)


def build_stream(flat, offsets, first, second, tags_first, tags_second, eot):
    """Sequences tag_a piece_a tag_b piece_b eot, where piece k is flat[offsets[k]:offsets[k+1]]."""
    len_a = offsets[first + 1] - offsets[first]
    len_b = offsets[second + 1] - offsets[second]
    seq_len = len_a + len_b + 3
    start = np.cumsum(seq_len) - seq_len
    stream = np.empty(int(seq_len.sum()), flat.dtype)
    stream[start] = tags_first
    stream[start + 1 + len_a] = tags_second
    stream[start + seq_len - 1] = eot
    stream[ranges(start + 1, len_a)] = flat[ranges(offsets[first], len_a)]
    stream[ranges(start + 2 + len_a, len_b)] = flat[ranges(offsets[second], len_b)]
    return stream


def split_stream(flat, offsets, en_pieces, fr_pieces, special, bidirectional, rng):
    """The training stream of one split; with both directions the sequence order is shuffled so
    that the two directions of a pair are not next to each other."""
    n = len(en_pieces)
    first, second = en_pieces, fr_pieces
    tag_a, tag_b = np.full(n, special["en"]), np.full(n, special["fr"])
    if bidirectional:
        first, second = np.concatenate([en_pieces, fr_pieces]), np.concatenate([fr_pieces, en_pieces])
        tag_a, tag_b = np.concatenate([tag_a, tag_b]), np.concatenate([tag_b, tag_a])
        order = rng.permutation(2 * n)
        first, second, tag_a, tag_b = first[order], second[order], tag_a[order], tag_b[order]
    return build_stream(flat, offsets, first, second, tag_a, tag_b, special["eot"])


def monolingual_stream(flat, offsets, pieces, eot):
    """Sequences piece eot, untagged (an English-only stream to pretrain the starting model of SENSIA,
    which feeds sentences without tags)."""
    lengths = offsets[pieces + 1] - offsets[pieces]
    seq_len = lengths + 1
    start = np.cumsum(seq_len) - seq_len
    stream = np.empty(int(seq_len.sum()), flat.dtype)
    stream[start + lengths] = eot
    stream[ranges(start, lengths)] = flat[ranges(offsets[pieces], lengths)]
    return stream


def pair_arrays(flat, offsets, en_pieces, fr_pieces):
    """Both sides of each pair tokenized separately: tokens and an int64 (n, 4) index
    en_start, en_end, fr_start, fr_end into them."""
    pieces = np.stack([en_pieces, fr_pieces], axis=1).ravel()
    lengths = offsets[pieces + 1] - offsets[pieces]
    start = np.cumsum(lengths) - lengths
    tokens = flat[ranges(offsets[pieces], lengths)]
    index = np.stack([start, start + lengths], axis=1).reshape(-1, 4).astype(np.int64)
    return tokens, index


def word_counts(texts):
    counts = Counter(WORD_RE.findall("\n".join(texts).lower()))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ----------------------------------------------------------------------------- writing

def write_jsonl(path, pairs):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"en": e, "fr": fr}, ensure_ascii=False) + "\n" for e, fr in pairs)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)


def check_target(target, overwrite):
    """Refuse a directory that is not a prepared dataset (e.g. data/europarl, the scripts), and an
    existing dataset unless overwrite: runs trained on it need it to resume and to be evaluated."""
    if target.exists() and not (target / "meta.json").is_file() and (not target.is_dir() or any(target.iterdir())):
        raise PrepareError(f"{target} exists and is not a prepared dataset (no meta.json): choose another --name")
    if (target / "meta.json").is_file() and not overwrite:
        raise PrepareError(f"{target} already holds a dataset ({dataset_identity(target)}); runs trained on it "
                           "record that fingerprint and need the dataset to resume or be evaluated: choose another "
                           "--name, or pass --overwrite to replace its files (files prepare.py did not write are kept)")


def dataset_identity(target):
    """The fingerprint and command of the dataset in target, as far as its meta.json says."""
    try:
        meta = json.loads((target / "meta.json").read_text(encoding="utf-8"))
        return f"data_sha256 {meta['data_sha256'][:12]}, made by `{meta['command']}`"
    except (OSError, ValueError, KeyError, TypeError):
        return "its meta.json records no fingerprint"


def publish(tmp_dir, target):
    """Move the finished dataset into place as a whole: readers see the old dataset or the new one, never a
    mix. Over an existing dataset, what prepare.py did not write (segregated/, the user's files) is linked
    into the new one first; then the old directory is renamed aside and the new one into place, and the
    old one is removed. A crash between the two renames leaves the old dataset aside, which the next
    preparation puts back (clean_leftovers). Returns the names of the files kept."""
    if not target.exists():
        os.replace(tmp_dir, target)
        return []
    kept = sorted(p.name for p in target.iterdir() if p.name not in OUTPUT_NAMES)
    for name in kept:
        link_tree(target / name, tmp_dir / name)
    aside = target.parent / temporary_name(target.name, "old")
    aside.mkdir()
    os.replace(target, aside / target.name)
    os.replace(tmp_dir, target)
    shutil.rmtree(aside)
    return kept


def link_tree(source, destination):
    """destination as a hard-linked copy of source (a file or a directory; symlinks copied as links): no
    extra space, nothing of source changed. Falls back to copying where links are refused."""
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
    elif source.is_dir():
        shutil.copytree(source, destination, symlinks=True, copy_function=link_or_copy)
    else:
        link_or_copy(source, destination)


def link_or_copy(source, destination):
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def clean_leftovers(out_root):
    """Remove the temporary dataset directories of killed preparations (their PID is dead); a previous
    dataset that a killed preparation of an earlier version (which moved it aside) had not yet
    replaced is moved back."""
    for path, name, kind in stale_temporaries(out_root):
        target = out_root / name
        if kind == "old" and not target.exists() and (path / name).is_dir():
            os.replace(path / name, target)
            print(f"restored {target}, which a killed preparation had moved aside")
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- main

def parse_args(argv):
    p = cli.ArgumentParser(prog="python -m data.europarl.prepare",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    p.add_argument("--source", choices=["europarl", "opus100", "local"], default="europarl")
    p.add_argument("--corpus", nargs="+", metavar="PATH",
                   help="with --source local: NAME (for NAME.en + NAME.fr, optionally .gz) or a TSV file; several are concatenated")
    p.add_argument("--name", help="dataset directory name (default: europarl_en_fr, opus100_en_fr, or the first corpus's name)")
    p.add_argument("--out_root", type=Path, default=REPO_ROOT / "data", help="output goes to OUT_ROOT/NAME (default: the repo's data/)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an existing dataset NAME (other files there, e.g. segregated/, are kept)")
    p.add_argument("--tokenizer", choices=["bpe", "gpt2", "xlmr"], default="bpe")
    p.add_argument("--tokenizer_path", help="gpt2: a local Hugging Face tokenizer dir (default: tiktoken 'gpt2'); "
                                            "xlmr: a name or local path (default: xlm-roberta-base)")
    p.add_argument("--vocab_size", type=int, default=16384, help="bpe vocabulary size, special tokens included")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True,
                   help="also add the French-to-English sequence of every pair")
    p.add_argument("--lm_languages", choices=["en,fr", "en", "fr"], default="en,fr",
                   help="train/val streams of both sides as pairs (default), or of one language only, untagged "
                        "(the tokenizer and the pairs files still cover both languages)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--val_frac", type=float, default=0.05)
    p.add_argument("--test_frac", type=float, default=0.05)
    p.add_argument("--max_pairs", type=int, help="keep a random subsample of this many pairs after cleaning")
    p.add_argument("--max_chars", type=int, default=1000, help="drop pairs with a side longer than this (characters)")
    args = p.parse_args(argv)
    if args.source == "local" and not args.corpus:
        p.error("--source local needs --corpus PATH [PATH ...]")
    if args.source != "local" and args.corpus:
        p.error("--corpus is only used with --source local")
    if not (0 <= args.val_frac < 1 and 0 <= args.test_frac < 1 and args.val_frac + args.test_frac < 1):
        p.error("--val_frac and --test_frac must be >= 0 with a sum below 1")
    if args.tokenizer == "bpe" and not 260 <= args.vocab_size <= MAX_BPE_VOCAB:
        p.error(f"--vocab_size must be between 260 (256 bytes and 3 special tokens) and {MAX_BPE_VOCAB:,}")
    if args.name is not None and (not args.name.strip() or args.name in (".", "..") or args.name.startswith(".")
                                  or any(sep in args.name for sep in ("/", os.sep, os.altsep) if sep)):
        p.error(f"--name must be a plain directory name (no path separator, not hidden), got {args.name!r}; "
                "use --out_root for the parent directory")
    if args.tokenizer == "bpe" and args.tokenizer_path:
        p.error("--tokenizer_path is for gpt2 and xlmr (bpe is trained here)")
    if args.max_pairs is not None and args.max_pairs < 2:
        p.error("--max_pairs must be at least 2")
    if args.seed < 0 or args.max_chars < 1:
        p.error(f"--seed must be >= 0 and --max_chars >= 1, got {args.seed} and {args.max_chars}")
    args.name = args.name or DEFAULT_NAMES.get(args.source) or re.sub(r"\.(en|fr|tsv)?(\.gz)?$", "", Path(args.corpus[0]).name)
    return args


def encode_all(tok, texts):
    ids = []
    for i in tqdm(range(0, len(texts), ENCODE_CHUNK), desc=f"encoding ({tok.kind})", unit="batch"):
        ids += tok.encode_batch(texts[i:i + ENCODE_CHUNK])
    return ids


def check_writable(out_root):
    """Create out_root and write a probe in it now, before the expensive work, and clean old leftovers."""
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        probe = out_root / temporary_name("write-probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PrepareError(f"cannot write into --out_root {out_root}: {e.strerror or e}") from e
    clean_leftovers(out_root)


def dataset_files(arrays, bounds, texts_en, texts_fr, n_train, tok, meta):
    """{file name: write(path)} of every file of the dataset, meta.json last: a directory with
    meta.json is complete."""
    files = {}
    for name, (stream, pair_tokens, pair_index) in arrays.items():
        files.update({f"{name}.bin": stream.tofile, f"pairs_{name}.bin": pair_tokens.tofile,
                      f"pairs_{name}_index.npy": functools.partial(np.save, arr=pair_index)})
    for name, (lo, hi) in bounds.items():
        files[f"{name}.jsonl"] = lambda path, lo=lo, hi=hi: write_jsonl(path, zip(texts_en[lo:hi], texts_fr[lo:hi]))
    if tok.kind == "bpe":
        files[tok.path] = lambda path: tok.save(path.parent)
    files["word_counts.json"] = lambda path: write_json(
        path, {"en": word_counts(texts_en[:n_train]), "fr": word_counts(texts_fr[:n_train])})
    files["meta.json"] = lambda path: write_json(path, meta)
    return files


def write_dataset(files, tmp_dir, target, needed):
    """Write every file into tmp_dir and move them into target. On any OSError one PrepareError line
    names the file (and, for a full disk, the space the dataset needs); target is then untouched."""
    free = shutil.disk_usage(tmp_dir).free
    if free < needed:
        raise PrepareError(f"not enough space for {target}: the dataset needs at least {size_text(needed)}, "
                           f"{size_text(free)} is free there; nothing was written")
    for name, write in tqdm(files.items(), desc="writing", unit="file"):
        try:
            write(tmp_dir / name)
        except OSError as e:
            reason = (f"no space left on device (the dataset needs at least {size_text(needed)}, "
                      f"{size_text(free)} was free before writing)" if e.errno == errno.ENOSPC else e.strerror or str(e))
            raise PrepareError(f"cannot write {target / name}: {reason}; nothing was changed in {target}") from e
    try:
        return publish(tmp_dir, target)
    except OSError as e:
        raise PrepareError(f"cannot move the new files into {target}: {e}") from e


def prepare(args, command):
    t0 = time.time()
    target = args.out_root / args.name
    check_target(target, args.overwrite)
    cli.check_writable(args.out_root, "cannot write into --out_root")  # before the corpus is read
    for spec in args.corpus or []:  # every corpus file exists before out_root is created
        corpus_files(spec)
    check_writable(args.out_root)
    pairs, groups, split, dropped, sources = read_and_split(args)
    order = np.concatenate([split["train"], split["val"], split["test"]])
    texts_en = [pairs[i][0] for i in order]
    texts_fr = [pairs[i][1] for i in order]
    n_train = len(split["train"])
    tok = make_tokenizer(args, texts_en[:n_train], texts_fr[:n_train])
    meta = tok.meta()
    dtype = token_dtype(tok.vocab_size)
    # piece k < n: English of the k-th pair in split order; piece n + k: its French
    flat, offsets = flatten(encode_all(tok, texts_en + texts_fr), dtype)
    n = len(order)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + len(split["val"])), "test": (n_train + len(split["val"]), n)}
    arrays, stats = split_arrays(args, flat, offsets, bounds, n, meta["special_tokens"])
    meta.update(dataset_record(args, arrays, stats, dtype, dropped, groups, sources, command))
    # a lower bound of the bytes written: the token arrays and the text of the jsonl files
    needed = sum(a.nbytes for triple in arrays.values() for a in triple) + sum(len(t.encode()) for t in texts_en + texts_fr)
    tmp_dir = args.out_root / temporary_name(args.name)
    tmp_dir.mkdir()  # not mkdtemp: the dataset directory keeps the usual (umask) permissions
    try:
        kept = write_dataset(dataset_files(arrays, bounds, texts_en, texts_fr, n_train, tok, meta), tmp_dir, target, needed)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    if kept:
        print(f"kept in {target} what prepare.py did not write: {', '.join(kept)} (made from the earlier data?)")
    print(f"wrote {target}: " + ", ".join(f"{s} {v['pairs']:,} pairs / {v['tokens']:,} tokens" for s, v in stats.items())
          + f"; vocab {tok.vocab_size} ({dtype}) in {time.time() - t0:.1f}s")
    return target


def read_and_split(args):
    """(pairs, near-duplicate groups, {split: pair indices}, dropped counts, sources) of the cleaned corpus."""
    en, fr, sources = read_hub(args.source) if args.source != "local" else read_local(args.corpus)
    pairs, dropped = clean_pairs(en, fr, args.max_chars)
    print(f"read {len(en):,} pairs; dropped {dropped}; kept {len(pairs):,}")
    if not pairs:
        raise PrepareError(f"corpus is empty after cleaning ({len(en)} pairs read, dropped {dropped})")
    groups = duplicate_groups(pairs)
    split = split_indices(groups, args.seed, args.val_frac, args.test_frac, args.max_pairs)
    return pairs, groups, split, dropped, sources


def make_tokenizer(args, train_en, train_fr):
    """A byte-level BPE trained on the train split only, or the named pretrained tokenizer."""
    if args.tokenizer != "bpe":
        try:
            return open_tokenizer(args.tokenizer, args.tokenizer_path)
        except DataError as e:
            raise PrepareError(str(e)) from e
    t = time.time()
    print(f"training byte-level BPE (vocabulary {args.vocab_size}) on {len(train_en):,} train pairs ...", flush=True)
    tok = train_bpe(itertools.chain(train_en, train_fr), args.vocab_size, 2 * len(train_en))
    print(f"trained byte-level BPE ({tok.vocab_size} ids) on {len(train_en):,} train pairs in {time.time() - t:.1f}s")
    return tok


def split_arrays(args, flat, offsets, bounds, n, special_tokens):
    """({split: (LM stream, pair tokens, pair index)}, {split: counts}) from the encoded pieces."""
    lengths = np.diff(offsets)
    rng = np.random.default_rng(args.seed + 1)
    directions = 2 if args.bidirectional else 1
    arrays, stats = {}, {}
    for name, (lo, hi) in bounds.items():
        en_pieces, fr_pieces = np.arange(lo, hi), np.arange(lo, hi) + n
        tokens_en, tokens_fr = int(lengths[lo:hi].sum()) * directions, int(lengths[n + lo:n + hi].sum()) * directions
        stats[name] = {"pairs": hi - lo, "sequences": (hi - lo) * directions,
                       "tokens": tokens_en + tokens_fr + 3 * (hi - lo) * directions,
                       "tokens_en": tokens_en, "tokens_fr": tokens_fr}
        # test.bin: the held-out loss (evaluate.py), on a split that selected no checkpoint
        if args.lm_languages == "en,fr":
            stream = split_stream(flat, offsets, en_pieces, fr_pieces, special_tokens, args.bidirectional, rng)
        else:
            side = en_pieces if args.lm_languages == "en" else fr_pieces
            stream = monolingual_stream(flat, offsets, rng.permutation(side), special_tokens["eot"])
            stats[name].update(lm_stream_tokens=len(stream))
        arrays[name] = (stream, *pair_arrays(flat, offsets, en_pieces, fr_pieces))
    return arrays, stats


def dataset_record(args, arrays, stats, dtype, dropped, groups, sources, command):
    """What meta.json records beside the tokenizer: the data fingerprint, every token file's size, hash
    and largest id, and how the data was made."""
    data_sha256 = hashlib.sha256()
    for stream, _, _ in arrays.values():  # the token streams as written: train.bin, val.bin, test.bin
        data_sha256.update(stream)
    token_files = {f"{prefix}{name}.bin": token_record(tokens) for name, (stream, pair_tokens, _) in arrays.items()
                   for prefix, tokens in (("", stream), ("pairs_", pair_tokens))}
    return dict(data_sha256=data_sha256.hexdigest(), token_files=token_files, dtype=dtype,
                lm_languages=args.lm_languages.split(","),
                bidirectional=args.bidirectional, seed=args.seed, splits=stats, cleaning=dropped,
                near_duplicates={"rule": "pairs sharing an English or French side (case, punctuation and "
                                         "whitespace folded) are in one split", **group_stats(groups)},
                sources=sources, command=command, source=args.source, max_chars=args.max_chars,
                val_frac=args.val_frac, test_frac=args.test_frac, max_pairs=args.max_pairs)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = "python -m data.europarl.prepare " + shlex.join(argv)
    try:
        return prepare(args, command)
    except (PrepareError, DataError) as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        raise SystemExit("interrupted: nothing was written (temporary files removed)") from None


if __name__ == "__main__":
    main()
