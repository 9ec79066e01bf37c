"""tokenizer.py: the three tokenizer kinds, single-id tags, round trips, prepared with each kind."""
import importlib.util
import json

import numpy as np
import pytest

from backpacks.dataset import BatchSampler, DataError, load_meta
from backpacks.tokenizer import EN_TAG, FR_TAG, TIKTOKEN_GPT2, load_tokenizer, open_tokenizer

SAMPLE = "data/europarl/sample/parliament"
TEXTS = ["The Commission takes note of the concerns expressed by the Members.",
         "Les consommateurs doivent être protégés contre la publicité trompeuse.",
         "L'anguille est menacée d'extinction : « vœux » <EN> n'est pas une balise."]


@pytest.fixture(scope="module")
def prep(repo_root):
    spec = importlib.util.spec_from_file_location("prepare", repo_root / "data" / "europarl" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpt2_dir(enfr_data_root):
    return enfr_data_root / "tokenizers" / "gpt2"


@pytest.fixture
def tiktoken_cache(enfr_data_root, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(enfr_data_root / "tokenizers" / "tiktoken_cache"))


def local_hf_tokenizer(path, repo_root, filler=0):
    """A tiny Hugging Face tokenizer directory in the XLM-R layout (<s> <pad> </s> <unk>) over the
    words of the sample corpus: no xlm-roberta files are available offline. filler > 0 pads the
    vocabulary with unused entries, to get a vocabulary beyond uint16."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    pre_tokenizer = pre_tokenizers.Whitespace()
    text = " ".join((repo_root / f"{SAMPLE}.{lang}").read_text(encoding="utf-8") for lang in ("en", "fr"))
    words = sorted({w for w, _ in pre_tokenizer.pre_tokenize_str(text)})
    vocab = ["<s>", "<pad>", "</s>", "<unk>", *words, *(f"[unused{i}]" for i in range(filler))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizer
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>", pad_token="<pad>")
    hf.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory, repo_root):
    return local_hf_tokenizer(tmp_path_factory.mktemp("xlmr-tiny"), repo_root)


def prepared(prep, out_root, name, *options):
    prep.main(["--source", "local", "--corpus", SAMPLE, "--name", name, "--out_root", str(out_root), *options])
    return out_root / name


def check_tags_are_single_ids(tok):
    special = (tok.en_id, tok.fr_id, tok.eot_id)
    assert len(set(special)) == 3 and all(0 <= i < tok.vocab_size for i in special)
    assert [tok.token_str(i) for i in special] == [EN_TAG, FR_TAG, "<|endoftext|>"]
    for text in TEXTS:  # plain text never produces the tags, even when it spells them
        ids = tok.encode(text)
        assert not set(ids) & set(special)
        assert tok.decode([tok.en_id, *ids, tok.fr_id, tok.eot_id]) == tok.decode(ids)
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]


def check_prepared_dataset(data_dir):
    meta = load_meta(data_dir)
    tok = load_tokenizer(meta, data_dir)
    check_tags_are_single_ids(tok)
    assert np.dtype(meta["dtype"]) == (np.uint16 if tok.vocab_size <= 65536 else np.uint32)
    stream = np.fromfile(data_dir / "val.bin", dtype=meta["dtype"])
    assert (stream == tok.en_id).sum() == (stream == tok.fr_id).sum() == (stream == tok.eot_id).sum() \
        == meta["splits"]["val"]["sequences"]
    assert stream.max() < tok.vocab_size
    pairs = [json.loads(line) for line in (data_dir / "val.jsonl").open(encoding="utf-8")]
    tokens = np.fromfile(data_dir / "pairs_val.bin", dtype=meta["dtype"])
    en_start, en_end, fr_start, fr_end = np.load(data_dir / "pairs_val_index.npy")[0]
    assert tokens[en_start:en_end].tolist() == tok.encode(pairs[0]["en"])
    assert tokens[fr_start:fr_end].tolist() == tok.encode(pairs[0]["fr"])
    return meta, tok, pairs


# ----------------------------------------------------------------------------- bpe

def test_bpe_tags_single_ids_and_exact_round_trip(sample_dataset):
    meta = load_meta(sample_dataset)
    tok = load_tokenizer(meta, sample_dataset)
    assert tok.kind == "bpe" and tok.vocab_size == meta["vocab_size"] == 512
    check_tags_are_single_ids(tok)
    assert tok.backend.token_to_id(EN_TAG) == tok.en_id and tok.backend.token_to_id(FR_TAG) == tok.fr_id
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert "".join(tok.token_str(i) for i in tok.encode(TEXTS[1])) == TEXTS[1]
    check_prepared_dataset(sample_dataset)


def test_bpe_is_trained_on_the_train_split_only(prep, tmp_path):
    data_dir = prepared(prep, tmp_path, "s", "--vocab_size", "2000", "--val_frac", "0.2", "--test_frac", "0.2")
    tok = load_tokenizer(load_meta(data_dir), data_dir)
    heldout = [json.loads(line) for split in ("val", "test") for line in (data_dir / f"{split}.jsonl").open(encoding="utf-8")]
    train = [json.loads(line) for line in (data_dir / "train.jsonl").open(encoding="utf-8")]
    train_text = " ".join(p[lang] for p in train for lang in ("en", "fr"))
    # a word seen only in held-out pairs never became a single learned token
    unseen = {w for p in heldout for w in p["en"].split() if w.isalpha() and len(w) > 7 and w not in train_text}
    assert unseen
    assert all(len(tok.encode(" " + w)) > 1 for w in unseen)


def test_load_tokenizer_detects_a_mismatch(sample_dataset):
    meta = json.loads((sample_dataset / "meta.json").read_text())
    meta["special_tokens"]["en"] += 7
    with pytest.raises(DataError, match="does not match"):
        load_tokenizer(meta, sample_dataset)


# ----------------------------------------------------------------------------- gpt2

def test_gpt2_tags_appended_after_the_base_vocabulary(gpt2_dir, tiktoken_cache):
    hf_tok, tt_tok = open_tokenizer("gpt2", str(gpt2_dir)), open_tokenizer("gpt2")
    for tok in (hf_tok, tt_tok):
        assert (tok.eot_id, tok.en_id, tok.fr_id, tok.vocab_size, tok.base_vocab_size) == (50256, 50257, 50258, 50259, 50257)
        check_tags_are_single_ids(tok)
    assert tt_tok.path == TIKTOKEN_GPT2 and hf_tok.path == str(gpt2_dir.resolve())
    # the underlying tokenizers themselves read the tags as one id each
    assert hf_tok.hf.encode(EN_TAG + " Hello " + FR_TAG, add_special_tokens=False) == [50257, 18435, 220, 50258]
    assert tt_tok.enc.encode(EN_TAG + " Hello " + FR_TAG, allowed_special="all") == [50257, 18435, 220, 50258]
    assert hf_tok.encode_batch(TEXTS) == tt_tok.encode_batch(TEXTS)
    assert tt_tok.decode(tt_tok.encode(TEXTS[2])) == TEXTS[2]


def test_gpt2_prepared_through_local_dir_and_tiktoken_agree(prep, tmp_path, gpt2_dir, tiktoken_cache):
    hf_dir = prepared(prep, tmp_path, "hf", "--tokenizer", "gpt2", "--tokenizer_path", str(gpt2_dir))
    tt_dir = prepared(prep, tmp_path, "tt", "--tokenizer", "gpt2")
    hf_meta, _, _ = check_prepared_dataset(hf_dir)
    tt_meta, tok, pairs = check_prepared_dataset(tt_dir)
    assert hf_meta["tokenizer"] == {"kind": "gpt2", "path": str(gpt2_dir.resolve()), "base_vocab_size": 50257}
    assert tt_meta["tokenizer"] == {"kind": "gpt2", "path": TIKTOKEN_GPT2, "base_vocab_size": 50257}
    assert hf_meta["vocab_size"] == 50259 and hf_meta["dtype"] == "uint16"
    assert hf_meta["special_tokens"] == {"en": 50257, "fr": 50258, "eot": 50256}
    assert (hf_dir / "train.bin").read_bytes() == (tt_dir / "train.bin").read_bytes()
    assert not (hf_dir / "tokenizer.json").exists()


def test_gpt2_prepared_from_europarl_head(prep, tmp_path, enfr_data_root, gpt2_dir):
    prep.main(["--source", "local", "--corpus", str(enfr_data_root / "parallel" / "europarl-v7-head"),
               "--name", "head", "--out_root", str(tmp_path), "--tokenizer", "gpt2", "--tokenizer_path", str(gpt2_dir)])
    meta, tok, pairs = check_prepared_dataset(tmp_path / "head")
    assert tok.decode(tok.encode(pairs[3]["fr"])) == pairs[3]["fr"]


# ----------------------------------------------------------------------------- xlmr

def test_xlmr_local_directory(prep, tmp_path, xlmr_dir):
    tok = open_tokenizer("xlmr", str(xlmr_dir))
    check_tags_are_single_ids(tok)
    assert tok.eot_id == tok.hf.eos_token_id and tok.base_vocab_size + 2 == tok.vocab_size
    assert tok.hf.encode(EN_TAG, add_special_tokens=False) == [tok.en_id]
    data_dir = prepared(prep, tmp_path, "x", "--tokenizer", "xlmr", "--tokenizer_path", str(xlmr_dir))
    meta, tok, pairs = check_prepared_dataset(data_dir)
    assert meta["tokenizer"]["kind"] == "xlmr" and meta["special_tokens"]["eot"] == tok.hf.eos_token_id
    assert meta["dtype"] == "uint16"


def test_vocabulary_beyond_uint16_is_stored_as_uint32(prep, tmp_path, repo_root):
    big = local_hf_tokenizer(tmp_path / "tokenizer", repo_root, filler=66000)
    data_dir = prepared(prep, tmp_path, "big", "--tokenizer", "xlmr", "--tokenizer_path", str(big))
    meta, tok, _ = check_prepared_dataset(data_dir)
    assert meta["dtype"] == "uint32" and tok.en_id > 65535 and tok.fr_id > 65535
    x, y = BatchSampler(data_dir).get_batch("train", 4, 64, "cpu")
    assert int(x.max()) < tok.vocab_size


def test_unreachable_hub_name_fails_with_a_clear_error(monkeypatch):
    monkeypatch.setattr("backpacks.tokenizer.offline_unless_hub_reachable", lambda: False)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained",
                        lambda name: (_ for _ in ()).throw(OSError(f"We couldn't connect to load {name}")))
    with pytest.raises(DataError, match="xlm-roberta-base.*local tokenizer directory"):
        open_tokenizer("xlmr")
