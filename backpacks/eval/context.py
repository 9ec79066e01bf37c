"""What every evaluation task needs: the run's model, checkpoint, tokenizer and dataset loaded for
evaluation (load_for_eval), resources found under the data root, then in the resources cache, then
fetched (Context.locate), the test pairs, and SkipTask, how a task says it cannot run. The tasks
themselves are in backpacks/eval/tasks.py; evaluate.py runs them."""
import json
import os
import sys
from pathlib import Path

from backpacks.eval import lexical, resources
from backpacks.checkpoint import CHECKPOINT_FILES, CheckpointError, load_trained_model
from backpacks.dataset import DataError, check_same_dataset, load_meta, verify_token_file
from backpacks.textfile import TextFileError, read_utf8
from backpacks.tokenizer import load_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_ROOT = os.environ.get("ENFR_DATA", str(REPO_ROOT.parent / "shared" / "data" / "en-fr"))
# word-similarity sets of the ../shared/data/en-fr layout: name -> path under --data_root
DEFAULT_WORDSIM = {
    "multisimlex-en": "wordsim/multisimlex/msl_en.tsv",
    "multisimlex-fr": "wordsim/multisimlex/msl_fr.tsv",
    "multisimlex-en-fr": "wordsim/multisimlex/msl_en-fr_crossling_reconstructed.tsv",
    "simlex999": "wordsim/simlex999.txt",
    "wordsim353": "wordsim/wordsim353.tsv",
    "wordsim353-sim": "wordsim/more/wordsim353-sim.csv",
    "wordsim353-rel": "wordsim/more/wordsim353-rel.csv",
    "simverb3500": "wordsim/simverb3500.txt",
}
DEFAULT_MULTISIMLEX_OFFICIAL = "wordsim/multisimlex"  # holds translation.csv + scores.csv if downloaded
DEFAULT_DICTIONARY = "lexicon/muse-en-fr.0-5000.tsv"


class SkipTask(Exception):
    """A task cannot run (missing resource, unsuitable model); the message is the reason."""


def split_list(text):
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


class Context:
    """What every task needs: model, tokenizer, checkpoint, dataset directory, options."""

    def __init__(self, args, model, ckpt, tokenizer, data_dir):
        self.args, self.model, self.ckpt, self.tok, self.data_dir = args, model, ckpt, tokenizer, Path(data_dir)
        self.device = args.device
        self.block_size = model.config.block_size
        self.data_root = Path(args.data_root)
        self._cache = {}
        self._recorded_by = {}  # cache key -> the resource keys its build recorded
        self.used = {}  # resource key -> {'path', 'bytes', 'sha256'} of each file a metric read
        self.task_used = set()  # the resource keys the task running now read (also through the cache)

    def record(self, key, files):
        """Record the files a metric read (file_record of each) under key."""
        self.used[key] = files
        self.task_used.add(key)

    def locate(self, key, relpath):
        """A file of the resource layout (data root, cache or fetched), recorded as used under key."""
        path = resources.locate(relpath, self.data_root, self.args.fetch)
        self.record(key, resources.file_record(path))
        return path

    def cached(self, key, build):
        """build(), computed once; a later task that takes it from the cache read its resources too."""
        if key not in self._cache:
            before = set(self.used)
            self._cache[key] = build()
            self._recorded_by[key] = set(self.used) - before
        self.task_used |= self._recorded_by[key]
        return self._cache[key]

    def test_pairs(self):
        """(English, French) test sentences and where they come from."""
        return self.cached("test_pairs", self._read_test_pairs)

    def _read_test_pairs(self):
        try:
            return self._read_standard_or_local_test_pairs()
        except lexical.ResourceError as e:  # a task that reads test pairs only in part skips that part
            raise SkipTask(str(e)) from None

    def _read_standard_or_local_test_pairs(self):
        args = self.args
        if args.test_set == "flores200":
            self.locate("test_set_fr", "parallel/flores200-devtest.fr")
            prefix = str(self.locate("test_set_en", "parallel/flores200-devtest.en"))[:-len(".en")]
            return read_test_pairs(prefix, None)
        if args.test_set:
            pairs, record = resources.sacrebleu_pairs(args.test_set, args.fetch)
            self.record("test_set", record)
            return pairs, f"sacrebleu:{args.test_set} en-fr"
        pairs, source = read_test_pairs(args.test_corpus, self.data_dir)
        files = {f"test_set_{lang}": f"{args.test_corpus}.{lang}" for lang in ("en", "fr")} if args.test_corpus \
            else {"test_set": source}
        for key, path in files.items():
            self.record(key, resources.file_record(path))
        return pairs, source

    def word_counts(self):
        return self.cached("word_counts", lambda: lexical.read_word_counts(self.data_dir))

    def dictionary(self):
        def read():
            if not self.args.dictionary:
                return warn(lexical.read_dictionary(self.locate("dictionary", DEFAULT_DICTIONARY)))
            parsed = warn(lexical.read_dictionary(self.args.dictionary))
            self.record("dictionary", resources.file_record(self.args.dictionary))
            return parsed
        return self.cached("dictionary", read)

    def frequent_dictionary_pairs(self, n, single_tokens=False):
        """lexical.frequent_dictionary_pairs of the dataset's word counts and the dictionary, read in
        that order: a dataset without word counts skips before any dictionary is located or fetched."""
        counts = self.word_counts()
        return lexical.frequent_dictionary_pairs(self.dictionary().rows, counts,
                                                 self.tok if single_tokens else None, n=n)


def warn(parsed):
    """Print a parsed resource's malformed-line warning (to stderr) and return it."""
    if parsed.warning():
        print(parsed.warning(), file=sys.stderr)
    return parsed


def read_test_pairs(test_corpus, data_dir):
    """[(en, fr)] from PREFIX.en / PREFIX.fr or from the dataset's test.jsonl, and the source path."""
    if test_corpus:
        en_path, fr_path = Path(f"{test_corpus}.en"), Path(f"{test_corpus}.fr")
        for path in (en_path, fr_path):
            if not path.is_file():
                raise SkipTask(f"test corpus file {path} not found")
        try:
            en, fr = (read_utf8(p, "test corpus file").splitlines() for p in (en_path, fr_path))
        except TextFileError as e:
            raise SkipTask(str(e)) from None
        if len(en) != len(fr):
            raise SkipTask(f"{en_path} has {len(en)} lines but {fr_path} has {len(fr)}")
        pairs, source = list(zip(en, fr)), f"{test_corpus}.{{en,fr}}"
    else:
        path = Path(data_dir) / "test.jsonl"
        if not path.is_file():
            raise SkipTask(f"{path} not found (use --test_corpus PREFIX)")
        pairs = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                        pairs.append((row["en"], row["fr"]))
                    except (ValueError, KeyError, TypeError):
                        raise SkipTask(f"{path}:{number}: not a {{\"en\": ..., \"fr\": ...}} JSON line") from None
        source = str(path)
    pairs = [(e.strip(), f.strip()) for e, f in pairs if e.strip() and f.strip()]
    if not pairs:
        raise SkipTask(f"no non-empty test pair in {source}")
    return pairs, source


def load_for_eval(out_dir, which, device, data_dir=None, same_data=True):
    """(model, checkpoint, tokenizer, dataset dir), or SystemExit with one clear line. The dataset
    must have the checkpoint's tokenizer and, with same_data, its token data (fingerprints in meta)."""
    try:
        model, ckpt = load_trained_model(out_dir, which, device)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    for key in ("meta", "data_dir", "model_type"):
        if key not in ckpt:
            raise SystemExit(f"error: checkpoint in {out_dir} has no {key!r} entry (not written by train.py?)")
    data_dir = Path(data_dir or ckpt["data_dir"])
    try:
        if (data_dir / "meta.json").is_file():
            meta = load_meta(data_dir)
            check_same_dataset(ckpt["meta"], meta, Path(out_dir) / CHECKPOINT_FILES[which], data_dir, check_data=same_data)
            if same_data and (data_dir / "test.bin").is_file():  # a replaced test stream is refused, not skipped
                verify_token_file(data_dir / "test.bin", meta)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        tokenizer = load_tokenizer(ckpt["meta"], data_dir)
    except DataError as e:
        raise SystemExit(f"error: cannot load the tokenizer of {data_dir} "
                         f"(meta tokenizer {ckpt['meta'].get('tokenizer')}): {e}") from None
    return model, ckpt, tokenizer, data_dir
