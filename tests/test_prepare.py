"""data/europarl/prepare.py and segregate_languages.py on the project sample and real Europarl lines."""
import errno
import gzip
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from backpacks.dataset import DataError, load_meta, resolve_data_dir
from backpacks.tokenizer import load_tokenizer

SAMPLE = "data/europarl/sample/parliament"


def load_script(repo_root, name):
    spec = importlib.util.spec_from_file_location(name, repo_root / "data" / "europarl" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prep(repo_root):
    return load_script(repo_root, "prepare")


@pytest.fixture(scope="module")
def europarl_head(prep, enfr_data_root, tmp_path_factory):
    out_root = tmp_path_factory.mktemp("europarl")
    prep.main(["--source", "local", "--corpus", str(enfr_data_root / "parallel" / "europarl-v7-head"),
               "--name", "head", "--out_root", str(out_root), "--vocab_size", "1024"])
    return out_root / "head"


@pytest.fixture(params=["sample", "europarl_head"])
def dataset_dir(request):
    return request.getfixturevalue("sample_dataset" if request.param == "sample" else "europarl_head")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def sequences(stream, eot):
    ends = np.flatnonzero(stream == eot)
    return np.split(stream[:ends[-1] + 1], ends[:-1] + 1)


def write_pair(prefix, en_lines, fr_lines):
    for lang, lines in (("en", en_lines), ("fr", fr_lines)):
        with open(f"{prefix}.{lang}", "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))


def parallel_lines(n):
    return ([f"This is English sentence number {i} about the budget." for i in range(n)],
            [f"Voici la phrase française numéro {i} sur le budget." for i in range(n)])


# ----------------------------------------------------------------------------- outputs

def test_outputs_and_meta(dataset_dir, repo_root):
    meta = load_meta(dataset_dir)
    for name in ["train.bin", "val.bin", "test.bin", "meta.json", "tokenizer.json", "train.jsonl", "val.jsonl", "test.jsonl",
                 "pairs_train.bin", "pairs_val.bin", "pairs_train_index.npy", "pairs_val_index.npy", "word_counts.json"]:
        assert (dataset_dir / name).is_file(), name
    assert not any(p.name.startswith(".") for p in dataset_dir.parent.iterdir()), "temporary directory left over"
    assert meta["tokenizer"] == {"kind": "bpe", "path": "tokenizer.json", "base_vocab_size": meta["vocab_size"]}
    assert meta["dtype"] == "uint16" and meta["bidirectional"] is True and meta["seed"] == 1337
    assert set(meta["cleaning"]) == {"empty", "too_long", "length_ratio", "duplicate"}
    assert meta["command"].startswith("python -m data.europarl.prepare --source local")  # runnable as recorded
    for source in meta["sources"]:
        with open(source["path"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == source["sha256"]
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in ("train", "val", "test"):
        stats = meta["splits"][split]
        assert stats["pairs"] == len(read_jsonl(dataset_dir / f"{split}.jsonl"))
        assert stats["sequences"] == 2 * stats["pairs"]
        assert stats["tokens"] == stats["tokens_en"] + stats["tokens_fr"] + 3 * stats["sequences"]
        assert (dataset_dir / f"{split}.bin").stat().st_size == stats["tokens"] * itemsize  # test.bin too
        index = np.load(dataset_dir / f"pairs_{split}_index.npy")
        assert index.shape == (stats["pairs"], 4) and index.dtype == np.int64
        assert 2 * (index[:, 1] - index[:, 0]).sum() == stats["tokens_en"]


def folded_sides(dataset_dir, prep):
    return {split: {(lang, prep.fold(p[lang])) for p in read_jsonl(dataset_dir / f"{split}.jsonl") for lang in ("en", "fr")}
            for split in ("train", "val", "test")}


def assert_no_folded_side_in_two_splits(dataset_dir, prep):
    sides = folded_sides(dataset_dir, prep)
    assert not sides["train"] & sides["val"] and not sides["train"] & sides["test"] and not sides["val"] & sides["test"]


def test_near_duplicates_stay_in_one_split(prep, tmp_path):
    """Pairs sharing an English or a French side up to case, punctuation and spaces (directly or through
    a chain of pairs) are one group; no folded side of any pair is in two splits."""
    en, fr = [], []
    for i in range(150):  # 150 chains of 3 pairs: (e, f1), (E!, f2), (e2, F2.) ...
        en += [f"Sentence number {i} is here.", f"SENTENCE number {i}  is here!", f"Another sentence {i}."]
        fr += [f"Phrase {i} ici.", f"Phrase numéro {i}.", f"phrase  numéro {i}"]
    write_pair(tmp_path / "dups", en, fr)
    prep.main(["--source", "local", "--corpus", str(tmp_path / "dups"), "--out_root", str(tmp_path / "out"),
               "--vocab_size", "300", "--val_frac", "0.1", "--test_frac", "0.1"])
    dataset = tmp_path / "out" / "dups"
    assert_no_folded_side_in_two_splits(dataset, prep)
    meta = load_meta(dataset)
    assert meta["near_duplicates"]["groups"] == 150 and meta["near_duplicates"]["pairs_in_groups_of_several"] == 450
    assert {s: meta["splits"][s]["pairs"] for s in ("train", "val", "test")} == {"train": 360, "val": 45, "test": 45}
    groups = prep.duplicate_groups([("A b", "x"), ("a, B!", "y"), ("c", "Y"), ("d", "z"), ("...", "w"), ("!", "v")])
    assert groups[0] == groups[1] == groups[2] and len({groups[0], groups[3], groups[4], groups[5]}) == 4


def test_splits_are_disjoint_by_pair(dataset_dir, prep):
    assert_no_folded_side_in_two_splits(dataset_dir, prep)
    pairs = {split: [(p["en"], p["fr"]) for p in read_jsonl(dataset_dir / f"{split}.jsonl")]
             for split in ("train", "val", "test")}
    sets = {split: set(p) for split, p in pairs.items()}
    assert all(len(sets[s]) == len(pairs[s]) for s in pairs)
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    meta = load_meta(dataset_dir)
    total = sum(meta["splits"][s]["pairs"] for s in pairs)
    assert meta["splits"]["val"]["pairs"] == meta["splits"]["test"]["pairs"] == round(0.05 * total)


def test_stream_is_tagged_sequences(dataset_dir):
    meta = load_meta(dataset_dir)
    en, fr, eot = (meta["special_tokens"][k] for k in ("en", "fr", "eot"))
    assert len({en, fr, eot}) == 3
    stream = np.memmap(dataset_dir / "val.bin", dtype=meta["dtype"], mode="r")
    assert stream[-1] == eot
    seqs = sequences(np.asarray(stream), eot)
    assert len(seqs) == meta["splits"]["val"]["sequences"]
    first_tags = []
    for seq in seqs:
        tags = np.flatnonzero((seq == en) | (seq == fr))
        assert len(tags) == 2 and tags[0] == 0 and seq[tags[0]] != seq[tags[1]] and (seq[:-1] != eot).all()
        first_tags.append(int(seq[0]))
    assert first_tags.count(en) == first_tags.count(fr) == meta["splits"]["val"]["pairs"]


def test_round_trip_decode_of_a_shard_window(dataset_dir):
    meta = load_meta(dataset_dir)
    tok = load_tokenizer(meta, dataset_dir)
    val_pairs = {(p["en"], p["fr"]) for p in read_jsonl(dataset_dir / "val.jsonl")}
    stream = np.asarray(np.memmap(dataset_dir / "val.bin", dtype=meta["dtype"], mode="r"))
    window = stream[len(stream) // 3: len(stream) // 3 + 400]
    ends = np.flatnonzero(window == tok.eot_id)
    seq = window[ends[0] + 1: ends[1]]  # the first complete sequence of the window
    second_tag = np.flatnonzero((seq == tok.en_id) | (seq == tok.fr_id))[1]
    first, second = tok.decode(seq[1:second_tag]), tok.decode(seq[second_tag + 1:])
    pair = (first, second) if seq[0] == tok.en_id else (second, first)
    assert pair in val_pairs
    assert tok.decode(seq) == first + second  # tags and end-of-text are dropped by decode


def test_pairs_files_hold_each_side_tokenized_separately(dataset_dir):
    meta = load_meta(dataset_dir)
    tok = load_tokenizer(meta, dataset_dir)
    for split in ("train", "val"):
        pairs = read_jsonl(dataset_dir / f"{split}.jsonl")
        tokens = np.memmap(dataset_dir / f"pairs_{split}.bin", dtype=meta["dtype"], mode="r")
        index = np.load(dataset_dir / f"pairs_{split}_index.npy")
        for i in range(0, len(pairs), max(1, len(pairs) // 20)):
            en_start, en_end, fr_start, fr_end = index[i]
            assert tokens[en_start:en_end].tolist() == tok.encode(pairs[i]["en"])
            assert tok.decode(tokens[fr_start:fr_end]) == pairs[i]["fr"]


def test_word_counts_from_train_split(sample_dataset):
    counts = json.loads((sample_dataset / "word_counts.json").read_text(encoding="utf-8"))
    train = read_jsonl(sample_dataset / "train.jsonl")
    for lang in ("en", "fr"):
        expected = Counter(w for p in train for w in re.findall(r"\w+(?:['’-]\w+)*", p[lang].lower()))
        assert counts[lang] == dict(expected)
        assert list(counts[lang].values()) == sorted(expected.values(), reverse=True)
    assert counts["fr"]["l'union"] > 0 and counts["fr"]["états"] > 0 and "Union" not in counts["en"]


# ----------------------------------------------------------------------------- options

def test_cleaning_rules_are_counted(prep, tmp_path):
    rows = [("Good morning.", "Bonjour."),
            ("  Good morning.  ", "Bonjour."),          # duplicate after stripping
            ("Caf\u00e9 time.", "L'heure du caf\u00e9."),
            ("Cafe\u0301 time.", "L'heure du cafe\u0301."),  # duplicate after NFC
            ("", "Vide."),                                  # empty
            ("Yes.", "Oui, absolument, sans aucun doute possible."),  # ratio < 1/3
            ("A" * 60, "B" * 60),                           # too long for --max_chars 50
            ("Thank you.", "Merci."), ("See you soon.", "À bientôt."), ("Good night.", "Bonne nuit.")]
    corpus = tmp_path / "rows.tsv"
    corpus.write_text("".join(f"{e}\t{f}\n" for e, f in rows) + "\n", encoding="utf-8")
    prep.main(["--source", "local", "--corpus", str(corpus), "--out_root", str(tmp_path / "out"),
               "--max_chars", "50", "--vocab_size", "300", "--val_frac", "0.25", "--test_frac", "0"])
    meta = load_meta(tmp_path / "out" / "rows")
    assert meta["cleaning"] == {"empty": 2, "too_long": 1, "length_ratio": 1, "duplicate": 2}
    assert meta["splits"]["train"]["pairs"] + meta["splits"]["val"]["pairs"] == 5


def test_same_seed_same_output_other_seed_other_split(prep, tmp_path):
    def run(name, seed):
        prep.main(["--source", "local", "--corpus", SAMPLE, "--name", name, "--out_root", str(tmp_path),
                   "--vocab_size", "300", "--seed", str(seed)])
        meta = load_meta(tmp_path / name)
        return ((tmp_path / name / "train.bin").read_bytes(), (tmp_path / name / "val.jsonl").read_text(),
                meta["tokenizer_sha256"], meta["data_sha256"])
    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    assert a == b and a[1] != c[1] and a[3] != c[3]  # preparing again with the same command restores a dataset


def test_unidirectional_and_max_pairs(prep, tmp_path):
    prep.main(["--source", "local", "--corpus", SAMPLE, "--out_root", str(tmp_path), "--vocab_size", "300",
               "--no-bidirectional", "--max_pairs", "100", "--val_frac", "0.1", "--test_frac", "0.1"])
    meta = load_meta(tmp_path / "parliament")
    assert meta["bidirectional"] is False
    assert {s: meta["splits"][s]["pairs"] for s in meta["splits"]} == {"train": 80, "val": 10, "test": 10}
    stream = np.fromfile(tmp_path / "parliament" / "train.bin", dtype=meta["dtype"])
    assert (stream == meta["special_tokens"]["en"]).sum() == meta["splits"]["train"]["sequences"] == 80
    assert (stream == meta["special_tokens"]["fr"]).sum() == 80


def test_english_only_lm_stream_keeps_bilingual_tokenizer_and_pairs(prep, sample_dataset, tmp_path):
    """--lm_languages en: train/val streams are the English sentences (untagged, each ended by eot), while the
    tokenizer and the pairs files are those of the bilingual dataset."""
    prep.main(["--source", "local", "--corpus", SAMPLE, "--out_root", str(tmp_path), "--vocab_size", "512",
               "--lm_languages", "en"])
    english, both = tmp_path / "parliament", sample_dataset
    meta = load_meta(english)
    assert meta["lm_languages"] == ["en"]
    assert (english / "tokenizer.json").read_bytes() == (both / "tokenizer.json").read_bytes()
    for split in ("train", "val"):
        for name in (f"pairs_{split}.bin", f"pairs_{split}_index.npy"):
            assert (english / name).read_bytes() == (both / name).read_bytes()
        stream = np.fromfile(english / f"{split}.bin", dtype=meta["dtype"])
        special = meta["special_tokens"]
        assert not np.isin(stream, [special["en"], special["fr"]]).any()
        tok = load_tokenizer(meta, english)
        texts = sorted(tok.decode(s[:-1].tolist()) for s in sequences(stream, special["eot"]))
        assert texts == sorted(p["en"] for p in read_jsonl(english / f"{split}.jsonl"))


def test_gzipped_pairs_tsv_and_several_corpora(prep, tmp_path):
    en, fr = parallel_lines(30)
    for lang, lines in (("en", en[:20]), ("fr", fr[:20])):
        with gzip.open(tmp_path / f"part.{lang}.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    (tmp_path / "more.tsv").write_text("".join(f"{e}\t{f}\n" for e, f in zip(en[20:], fr[20:])), encoding="utf-8")
    prep.main(["--source", "local", "--corpus", str(tmp_path / "part"), str(tmp_path / "more.tsv"),
               "--name", "mixed", "--out_root", str(tmp_path / "out"), "--vocab_size", "300"])
    meta = load_meta(tmp_path / "out" / "mixed")
    assert sum(s["pairs"] for s in meta["splits"].values()) == 30 and len(meta["sources"]) == 3


def test_dtype_choice(prep):
    assert prep.token_dtype(512) == "uint16" and prep.token_dtype(65536) == "uint16"
    assert prep.token_dtype(65537) == "uint32" and prep.token_dtype(250004) == "uint32"


# ----------------------------------------------------------------------------- bad input and atomic output

def bad_corpus(kind, tmp_path):
    """(corpus args, expected fragments of the error line) for each kind of bad input."""
    en, fr = parallel_lines(12)
    if kind == "missing":
        return [str(tmp_path / "nowhere")], ["missing file", "nowhere"]
    if kind == "missing_side":
        (tmp_path / "half.en").write_text("Hello.\n", encoding="utf-8")
        return [str(tmp_path / "half")], ["missing file", "half.fr"]
    if kind == "line_mismatch":
        write_pair(tmp_path / "odd", en, fr[:-2])
        return [str(tmp_path / "odd")], ["odd.en has 12 lines", "odd.fr has 10"]
    if kind == "empty_after_cleaning":
        write_pair(tmp_path / "blank", ["", "   ", "Yes."], ["", "Non.", "Oui, certainement, avec grand plaisir."])
        return [str(tmp_path / "blank")], ["empty after cleaning"]
    if kind == "invalid_utf8":
        write_pair(tmp_path / "latin", en, fr)
        data = (tmp_path / "latin.fr").read_bytes().split(b"\n")
        data[6] = "Très bien.".encode("latin-1")
        (tmp_path / "latin.fr").write_bytes(b"\n".join(data))
        return [str(tmp_path / "latin")], ["latin.fr", "invalid UTF-8", "line 7"]
    if kind == "tsv_fields":
        (tmp_path / "bad.tsv").write_text("Hello.\tBonjour.\nno tab here\n", encoding="utf-8")
        return [str(tmp_path / "bad.tsv")], ["bad.tsv", "line 2"]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing", "missing_side", "line_mismatch", "empty_after_cleaning",
                                  "invalid_utf8", "tsv_fields"])
def test_bad_input_fails_cleanly_and_writes_nothing(prep, tmp_path, kind):
    corpus, fragments = bad_corpus(kind, tmp_path)
    out_root = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        prep.main(["--source", "local", "--corpus", *corpus, "--name", "x", "--out_root", str(out_root), "--vocab_size", "300"])
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert not out_root.exists() or not any(out_root.iterdir())


@pytest.mark.slow
def test_cli_error_is_one_line_without_traceback(repo_root, tmp_path):
    run = subprocess.run([sys.executable, "-m", "data.europarl.prepare", "--source", "local", "--corpus",
                          str(tmp_path / "nothing"), "--out_root", str(tmp_path)],
                         cwd=repo_root, capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.strip().startswith("error: missing file") and len(run.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_hub_source_unreachable_fails_fast_naming_local(repo_root, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-m", "data.europarl.prepare", "--out_root", str(tmp_path)],
                         cwd=repo_root, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot load Helsinki-NLP/europarl") and "--source local" in lines[-1]
    assert "Traceback" not in run.stderr and not any(tmp_path.glob("europarl*"))


def test_hub_source_reads_every_split_of_the_dataset(prep, tmp_path, monkeypatch):
    import datasets
    en, fr = parallel_lines(40)
    rows = [{"en": e, "fr": f} for e, f in zip(en, fr)]
    hub = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"translation": rows[:30]}),
                                "validation": datasets.Dataset.from_dict({"translation": rows[30:]})})
    requested = []
    monkeypatch.setattr(prep, "offline_unless_hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: requested.append(args) or hub)
    prep.main(["--source", "opus100", "--out_root", str(tmp_path), "--vocab_size", "300"])
    assert requested == [("Helsinki-NLP/opus-100", "en-fr")]
    meta = load_meta(tmp_path / "opus100_en_fr")
    assert sum(s["pairs"] for s in meta["splits"].values()) == 40
    assert [s["path"] for s in meta["sources"]] == ["hf://datasets/Helsinki-NLP/opus-100/en-fr/train",
                                                    "hf://datasets/Helsinki-NLP/opus-100/en-fr/validation"]
    heldout = read_jsonl(tmp_path / "opus100_en_fr" / "val.jsonl")
    assert all({"en": p["en"], "fr": p["fr"]} in rows for p in heldout)


def test_failure_while_writing_leaves_no_dataset_and_keeps_the_old_one(prep, tmp_path, monkeypatch):
    args = ["--source", "local", "--corpus", SAMPLE, "--name", "s", "--out_root", str(tmp_path), "--vocab_size", "300"]

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "word_counts", interrupted)
    with pytest.raises(SystemExit, match="^interrupted: nothing was written"):  # Ctrl-C: one line
        prep.main(args)
    assert list(tmp_path.iterdir()) == []  # no dataset, no temporary directory
    monkeypatch.undo()
    prep.main(args)
    before = (tmp_path / "s" / "meta.json").read_text()
    monkeypatch.setattr(prep, "word_counts", interrupted)
    with pytest.raises(SystemExit, match="^interrupted"):
        prep.main(args[:-1] + ["400", "--overwrite"])
    assert [p.name for p in tmp_path.iterdir()] == ["s"] and (tmp_path / "s" / "meta.json").read_text() == before


def test_full_disk_names_the_file_and_the_space_and_changes_nothing(prep, tmp_path, monkeypatch):
    args = ["--source", "local", "--corpus", SAMPLE, "--name", "s", "--out_root", str(tmp_path), "--vocab_size", "300"]
    prep.main(args)
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}

    def disk_full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prep, "write_jsonl", disk_full)
    with pytest.raises(SystemExit) as e:
        prep.main(args[:-1] + ["400", "--overwrite"])
    assert re.fullmatch(rf"error: cannot write {re.escape(str(tmp_path / 's' / 'train.jsonl'))}: no space left on device "
                        r"\(the dataset needs at least [\d.]+ MB, [\d,.]+ MB was free before writing\); nothing was "
                        rf"changed in {re.escape(str(tmp_path / 's'))}", str(e.value))
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary directory left
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before
    monkeypatch.setattr(prep.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(SystemExit, match=r"^error: not enough space for .*needs at least [\d.]+ MB, 0.0 MB is free"):
        prep.main(args[:-1] + ["400", "--overwrite"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before


@pytest.mark.slow
def test_killed_run_leaves_nothing_that_looks_complete(repo_root, tmp_path):
    # SIGKILL just before meta.json would be written: nothing can clean up after it
    script = (
        "import importlib.util, os, signal, sys\n"
        "spec = importlib.util.spec_from_file_location('prepare', 'data/europarl/prepare.py')\n"
        "prep = importlib.util.module_from_spec(spec); spec.loader.exec_module(prep)\n"
        "write_json = prep.write_json\n"
        "def killing(path, obj):\n"
        "    if path.name == 'meta.json': os.kill(os.getpid(), signal.SIGKILL)\n"
        "    write_json(path, obj)\n"
        "prep.write_json = killing\n"
        f"prep.main(['--source', 'local', '--corpus', {SAMPLE!r}, '--name', 'k', '--out_root', {str(tmp_path)!r}, '--vocab_size', '300'])\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=repo_root, capture_output=True, text=True)
    assert run.returncode == -9
    assert not (tmp_path / "k").exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".k.tmp-") and not (leftovers[0] / "meta.json").exists()
    with pytest.raises(DataError):
        resolve_data_dir(tmp_path / "k")
    # the next preparation into the same place removes the dead run's temporary directory
    subprocess.run([sys.executable, "-m", "data.europarl.prepare", "--source", "local", "--corpus", SAMPLE, "--name", "k",
                    "--out_root", str(tmp_path), "--vocab_size", "300"], cwd=repo_root, check=True, capture_output=True)
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


@pytest.mark.slow
def test_a_killed_publish_is_undone_by_the_next_run(prep, tmp_path):
    """Killed between moving the old dataset aside and moving the new one in: the old one comes back."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".s.old-{int(dead.stdout)}-0123abcd"
    (aside / "s").mkdir(parents=True)
    (aside / "s" / "meta.json").write_text("{}")
    prep.check_writable(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["s"] and (tmp_path / "s" / "meta.json").read_text() == "{}"


@pytest.mark.parametrize("option, value, expected", [
    ("--name", "a/b", "plain directory name"), ("--name", "..", "plain directory name"),
    ("--name", ".hidden", "plain directory name"), ("--vocab_size", str(10 ** 12), "--vocab_size must be between"),
    ("--vocab_size", "-5", "--vocab_size must be between")])
@pytest.mark.slow
def test_bad_options_are_one_error_before_any_work(repo_root, tmp_path, option, value, expected):
    run = subprocess.run([sys.executable, "-m", "data.europarl.prepare", "--source", "local", "--corpus", SAMPLE,
                          "--out_root", str(tmp_path / "out"), option, value], cwd=repo_root, capture_output=True, text=True)
    assert run.returncode == 2 and expected in run.stderr.splitlines()[-1] and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_unwritable_out_root_is_one_line_before_reading(prep, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:  # root may write anywhere: the unwritable place is below a file
        prep.main(["--source", "local", "--corpus", str(tmp_path / "no_corpus_read_yet"), "--out_root",
                   str(tmp_path / "file" / "data")])
    assert str(e.value).startswith(f"error: cannot write into --out_root {tmp_path / 'file' / 'data'}")


def test_meta_fingerprints_the_tokenizer_and_the_data(sample_dataset):
    meta = load_meta(sample_dataset)
    assert meta["tokenizer_sha256"] == hashlib.sha256((sample_dataset / "tokenizer.json").read_bytes()).hexdigest()
    tokens = b"".join((sample_dataset / f"{split}.bin").read_bytes() for split in ("train", "val", "test"))
    assert meta["data_sha256"] == hashlib.sha256(tokens).hexdigest()
    assert load_tokenizer(meta, sample_dataset).fingerprint() == meta["tokenizer_sha256"]


def test_an_existing_dataset_is_refused_and_overwrite_keeps_other_files(prep, tmp_path):
    args = ["--source", "local", "--corpus", SAMPLE, "--name", "s", "--out_root", str(tmp_path), "--vocab_size", "300"]
    prep.main(args)
    meta = load_meta(tmp_path / "s")
    (tmp_path / "s" / "segregated").mkdir()
    (tmp_path / "s" / "segregated" / "train.en").write_text("made by segregate_languages.py\n")
    (tmp_path / "s" / "notes.txt").write_text("the user's own file\n")
    with pytest.raises(SystemExit) as e:
        prep.main(args[:-1] + ["400"])
    assert f"already holds a dataset (data_sha256 {meta['data_sha256'][:12]}, made by `" in str(e.value)
    assert "--overwrite" in str(e.value) and load_meta(tmp_path / "s") == meta
    prep.main(args[:-1] + ["400", "--overwrite"])
    assert load_meta(tmp_path / "s")["vocab_size"] == 400 and [p.name for p in tmp_path.iterdir()] == ["s"]
    assert (tmp_path / "s" / "notes.txt").read_text() == "the user's own file\n"
    assert (tmp_path / "s" / "segregated" / "train.en").read_text() == "made by segregate_languages.py\n"
    assert {p.name for p in (tmp_path / "s").iterdir()} == prep.OUTPUT_NAMES | {"notes.txt", "segregated"}


def test_refuses_to_replace_a_directory_that_is_not_a_dataset(prep, tmp_path):
    (tmp_path / "europarl").mkdir()
    (tmp_path / "europarl" / "prepare.py").write_text("# scripts live here\n")
    with pytest.raises(SystemExit, match="not a prepared dataset"):
        prep.main(["--source", "local", "--corpus", SAMPLE, "--name", "europarl", "--out_root", str(tmp_path)])
    assert [p.name for p in (tmp_path / "europarl").iterdir()] == ["prepare.py"]


# ----------------------------------------------------------------------------- segregate_languages.py

def test_segregate_languages_writes_id_aligned_files(repo_root, sample_dataset, tmp_path):
    segregate = load_script(repo_root, "segregate_languages")
    segregate.main(["--data", str(sample_dataset), "--out_dir", str(tmp_path), "--create_alignment"])
    for split in ("train", "val", "test"):
        pairs = read_jsonl(sample_dataset / f"{split}.jsonl")
        en = (tmp_path / f"{split}.en").read_text(encoding="utf-8").splitlines()
        fr = (tmp_path / f"{split}.fr").read_text(encoding="utf-8").splitlines()
        aligned = [line.split("\t") for line in (tmp_path / f"{split}.aligned.tsv").read_text(encoding="utf-8").splitlines()]
        assert len(en) == len(fr) == len(aligned) == len(pairs)
        for i in (0, len(pairs) - 1):
            assert en[i] == f"{split}-{i}\t{pairs[i]['en']}" and fr[i] == f"{split}-{i}\t{pairs[i]['fr']}"
            assert aligned[i] == [f"{split}-{i}", pairs[i]["en"], pairs[i]["fr"]]
    with pytest.raises(SystemExit, match="^error: .*meta.json"):
        segregate.main(["--data", str(tmp_path)])


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way up handles it."""


def whole_dataset(path):
    """The meta.json of path if every token file and the tokenizer match its records (a dataset not mixed
    from two preparations), else None."""
    meta = load_meta(path)
    for name, record in meta["token_files"].items():
        if hashlib.sha256((path / name).read_bytes()).hexdigest() != record["sha256"]:
            return None
    return meta if load_tokenizer(meta, path).fingerprint() == meta["tokenizer_sha256"] else None


@pytest.mark.parametrize("step", ["link_tree", "replace:1", "replace:2", "rmtree"])
def test_overwrite_killed_at_any_step_leaves_the_old_or_the_new_dataset(prep, tmp_path, monkeypatch, step):
    """--overwrite builds the new dataset beside the old and swaps it in: killed at any step, then cleaned up
    by the next preparation, the directory holds one whole dataset, old or new, and the user's files."""
    args = ["--source", "local", "--corpus", SAMPLE, "--name", "s", "--out_root", str(tmp_path), "--vocab_size", "300"]
    prep.main(args)
    old = load_meta(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").write_text("the user's own file\n")
    name, _, nth = step.partition(":")
    owner = {"link_tree": prep, "replace": prep.os, "rmtree": prep.shutil}[name]
    real, calls = getattr(owner, name), []

    def crashing(*a, **k):
        calls.append(a)
        if len(calls) == int(nth or 1):
            raise Crash(step)
        return real(*a, **k)
    monkeypatch.setattr(owner, name, crashing)
    with pytest.raises(Crash):
        prep.main(args[:-1] + ["400", "--overwrite"])
    monkeypatch.setattr(owner, name, real)
    monkeypatch.setattr(prep.os, "getpid", lambda: 1)  # the next preparation: this process's temporaries are a dead one's
    monkeypatch.setattr("backpacks.atomic.process_alive", lambda pid: False)
    prep.clean_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    meta = whole_dataset(tmp_path / "s")
    assert meta is not None and meta["vocab_size"] in (old["vocab_size"], 400)
    assert (meta == old) == (step in ("link_tree", "replace:1", "replace:2"))
    assert (tmp_path / "s" / "notes.txt").read_text() == "the user's own file\n"


def test_a_full_disk_while_saving_the_tokenizer_is_one_line(prep, tmp_path, monkeypatch):
    args = ["--source", "local", "--corpus", SAMPLE, "--name", "s", "--out_root", str(tmp_path), "--vocab_size", "300"]
    prep.main(args)
    old = load_meta(tmp_path / "s")
    real = Path.write_bytes

    def full(path, data):
        if path.name == "tokenizer.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(SystemExit) as e:
        prep.main(args[:-1] + ["400", "--overwrite"])
    assert str(e.value).startswith(f"error: cannot write {tmp_path / 's' / 'tokenizer.json'}: no space left on device")
    assert whole_dataset(tmp_path / "s") == old
