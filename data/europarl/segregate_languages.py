"""Per-language text files of a prepared dataset's splits, with pair ids.

For each split (train, val, test) it writes <split>.en and <split>.fr, one line per pair,
"PAIR_ID<TAB>text", where PAIR_ID is <split>-<index in the split's .jsonl> and so identifies the same
pair in both files; --create_alignment also writes <split>.aligned.tsv, "PAIR_ID<TAB>english<TAB>french".

    python -m data.europarl.segregate_languages --data sample --create_alignment
"""
import argparse
import json
from pathlib import Path

from backpacks import cli
from backpacks.atomic import atomic_write_text
from backpacks.dataset import DataError, load_meta, resolve_data_dir

SPLITS = ("train", "val", "test")


def read_pairs(path):
    if not path.is_file():
        raise DataError(f"{path} is missing: prepare the dataset again with data/europarl/prepare.py")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_lines(path, lines):
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def segregate(data_dir, out_dir, splits=SPLITS, create_alignment=False):
    """Write the per-language files; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split in splits:
        pairs = read_pairs(data_dir / f"{split}.jsonl")
        ids = [f"{split}-{i}" for i in range(len(pairs))]
        for lang in ("en", "fr"):
            written.append(out_dir / f"{split}.{lang}")
            write_lines(written[-1], (f"{pid}\t{p[lang]}" for pid, p in zip(ids, pairs)))
        if create_alignment:
            written.append(out_dir / f"{split}.aligned.tsv")
            write_lines(written[-1], (f"{pid}\t{p['en']}\t{p['fr']}" for pid, p in zip(ids, pairs)))
    return written


def main(argv=None):
    p = cli.ArgumentParser(prog="python -m data.europarl.segregate_languages",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    p.add_argument("--data", required=True, help="prepared dataset: a name under data/ or a path")
    p.add_argument("--out_dir", type=Path, help="default: DATA_DIR/segregated")
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    p.add_argument("--create_alignment", action="store_true", help="also write <split>.aligned.tsv")
    args = p.parse_args(argv)
    try:
        data_dir = resolve_data_dir(args.data)
        load_meta(data_dir)  # a clear error when the directory is not a prepared dataset
    except DataError as e:
        cli.fail(str(e))
    out_dir = args.out_dir or data_dir / "segregated"
    cli.check_writable(out_dir, "--out_dir")
    try:
        written = segregate(data_dir, out_dir, args.splits, args.create_alignment)
    except DataError as e:
        cli.fail(str(e))
    print("wrote " + ", ".join(str(w) for w in written))


if __name__ == "__main__":
    main()
