"""Tokenizers of the English-French datasets behind one small interface.

Three kinds, chosen at preparation time and recorded in meta.json:
  bpe   joint byte-level BPE trained on the train split (tokenizers library), tokenizer.json in the data dir
  gpt2  GPT-2 BPE (tiktoken 'gpt2' or a local Hugging Face tokenizer dir); the tags are appended as new ids
  xlmr  transformers AutoTokenizer (xlm-roberta-base or a local path) with the tags added as special tokens
Each kind has a fingerprint (meta.json's tokenizer_sha256): bpe the sha256 of tokenizer.json; gpt2
and xlmr the sha256 of their id -> token bytes table (vocabulary_sha256), the same for GPT-2 read
through tiktoken or through a Hugging Face directory.
In every kind <EN> and <FR> are single ids that plain text can never produce: encode() treats
its input as plain text, and the tags are inserted by id (see data/europarl/prepare.py).
"""
import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

EN_TAG, FR_TAG, EOT_TEXT = "<EN>", "<FR>", "<|endoftext|>"
GPT2_BASE_VOCAB = 50257  # ids 0..50256, eot = 50256; the tags get 50257 and 50258
TIKTOKEN_GPT2 = "tiktoken:gpt2"


class DataError(ValueError):
    """A prepared dataset or its tokenizer is missing or inconsistent (re-exported by dataset.py)."""


class Tokenizer:
    """Common part: tag ids, batched encoding, decoding that drops tags and end-of-text."""
    kind = None

    def __init__(self, vocab_size, en_id, fr_id, eot_id, extra_special=()):
        self.vocab_size, self.en_id, self.fr_id, self.eot_id = vocab_size, en_id, fr_id, eot_id
        self.special_ids = {en_id, fr_id, eot_id, *extra_special}

    def encode(self, text):
        return self.encode_batch([text])[0]

    def encode_batch(self, texts):
        raise NotImplementedError

    def decode(self, ids):
        return self._decode([int(i) for i in ids if int(i) not in self.special_ids])

    def _decode(self, ids):
        raise NotImplementedError

    def token_str(self, i):
        i = int(i)
        names = {self.en_id: EN_TAG, self.fr_id: FR_TAG, self.eot_id: EOT_TEXT}
        return names[i] if i in names else self._token_str(i)

    def _token_str(self, i):
        return self._decode([i])

    def fingerprint(self):
        """sha256 (hex) identifying the id -> token mapping: two tokenizers with the same fingerprint
        turn every text into the same ids. Recorded in meta.json as tokenizer_sha256."""
        raise NotImplementedError

    def meta(self):
        """The tokenizer-related keys of meta.json."""
        return {"vocab_size": self.vocab_size, "tokenizer_sha256": self.fingerprint(),
                "tokenizer": {"kind": self.kind, "path": self.path, "base_vocab_size": self.base_vocab_size},
                "special_tokens": {"en": self.en_id, "fr": self.fr_id, "eot": self.eot_id}}


class BPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, backend, path="tokenizer.json"):
        self.backend, self.path = backend, path
        ids = [backend.token_to_id(t) for t in (EN_TAG, FR_TAG, EOT_TEXT)]
        if None in ids:
            raise DataError(f"BPE tokenizer {path} lacks one of the special tokens {EN_TAG}, {FR_TAG}, {EOT_TEXT}")
        self.base_vocab_size = backend.get_vocab_size()
        backend.encode_special_tokens = True  # "<EN>" typed in a text is text, never the tag id
        super().__init__(self.base_vocab_size, *ids)

    def encode_batch(self, texts):
        # the batch runs in parallel in Rust; the _fast variant (tokenizers>=0.20) skips offsets
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def _decode(self, ids):
        return self.backend.decode(ids, skip_special_tokens=False)

    def save(self, data_dir):
        """tokenizer.json, the bytes backend.save writes, written by Python: a full disk is an OSError (the
        Rust library raises its own exception type)."""
        (Path(data_dir) / self.path).write_bytes(self.backend.to_str(pretty=True).encode("utf-8"))

    def fingerprint(self):
        """The sha256 of tokenizer.json as save() writes it (`sha256sum tokenizer.json` shows it)."""
        return hashlib.sha256(self.backend.to_str(pretty=True).encode("utf-8")).hexdigest()


def train_bpe(texts, vocab_size, length=None):
    """Joint byte-level BPE over an iterable of English and French texts (the train split only)."""
    from tokenizers import Tokenizer as Backend, decoders, models, normalizers, pre_tokenizers, trainers
    backend = Backend(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT, EN_TAG, FR_TAG],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True)
    backend.train_from_iterator(texts, trainer, length=length)  # its progress bar shows on a terminal only
    return BPETokenizer(backend)


class TiktokenGPT2(Tokenizer):
    """GPT-2 through tiktoken (honours TIKTOKEN_CACHE_DIR for offline use), tags as extra specials."""
    kind, path, base_vocab_size = "gpt2", TIKTOKEN_GPT2, GPT2_BASE_VOCAB

    def __init__(self):
        import tiktoken
        try:
            base = tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline without a cache: requests/HTTP errors of many kinds
            raise DataError(f"cannot load tiktoken 'gpt2' ({type(e).__name__}): set TIKTOKEN_CACHE_DIR to a "
                            "cache that holds it, or pass a local Hugging Face GPT-2 directory") from e
        self.enc = tiktoken.Encoding(
            name="gpt2_enfr", pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks,
            special_tokens={**base._special_tokens, EN_TAG: GPT2_BASE_VOCAB, FR_TAG: GPT2_BASE_VOCAB + 1})
        super().__init__(GPT2_BASE_VOCAB + 2, GPT2_BASE_VOCAB, GPT2_BASE_VOCAB + 1, base.eot_token)

    def encode_batch(self, texts):
        return self.enc.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)

    def _decode(self, ids):
        return self.enc.decode(ids)

    def _token_str(self, i):
        return self.enc.decode_single_token_bytes(i).decode("utf-8", errors="replace")

    def fingerprint(self):
        return vocabulary_sha256(self.enc.decode_single_token_bytes(i) for i in range(self.vocab_size))


class HFTokenizer(Tokenizer):
    """A transformers fast tokenizer with <EN>, <FR> added as special tokens (gpt2 dir or xlmr)."""

    def __init__(self, kind, name_or_path):
        from transformers import AutoTokenizer
        local = Path(name_or_path).expanduser()
        # a local directory is recorded as an absolute path so the dataset loads from anywhere
        self.kind, self.path = kind, str(local.resolve()) if local.is_dir() else str(name_or_path)
        if not local.is_dir():  # a hub name
            offline_unless_hub_reachable()
        try:
            self.hf = AutoTokenizer.from_pretrained(self.path)
        except OSError as e:  # not a local dir and the hub cannot be reached (or no such model)
            raise DataError(f"cannot load the {kind} tokenizer {self.path!r}: {str(e).splitlines()[0]} "
                            "(offline: pass a local tokenizer directory)") from e
        self.base_vocab_size = len(self.hf)
        self.hf.add_special_tokens({"additional_special_tokens": [EN_TAG, FR_TAG]})
        en_id, fr_id = self.hf.convert_tokens_to_ids([EN_TAG, FR_TAG])
        if kind == "gpt2" and (self.base_vocab_size, en_id) != (GPT2_BASE_VOCAB, GPT2_BASE_VOCAB):
            raise DataError(f"{self.path} is not a GPT-2 tokenizer ({self.base_vocab_size} base ids, expected {GPT2_BASE_VOCAB})")
        eot_id = self.hf.eos_token_id
        if eot_id is None:
            raise DataError(f"tokenizer {self.path} has no eos token to use as end-of-text")
        super().__init__(len(self.hf), en_id, fr_id, eot_id, extra_special=self.hf.all_special_ids)

    def encode_batch(self, texts):
        # split_special_tokens: "<EN>" typed in a text is text, never the tag id
        return self.hf(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _decode(self, ids):
        return self.hf.decode(ids, skip_special_tokens=True)

    def _token_str(self, i):
        return self.hf.decode([i])

    def fingerprint(self):
        tokens = self.hf.convert_ids_to_tokens(list(range(self.vocab_size)))
        added = set(self.hf.all_special_tokens)
        if self.kind == "gpt2":  # byte-level strings back to their bytes: the same fingerprint as tiktoken's
            from transformers.convert_slow_tokenizer import bytes_to_unicode
            byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
            return vocabulary_sha256(t.encode() if t in added else bytes(byte_of[c] for c in t) for t in tokens)
        return vocabulary_sha256(t.encode() for t in tokens)


def vocabulary_sha256(token_bytes):
    """sha256 of a vocabulary given as the bytes of each id in id order, each preceded by its
    length (4 bytes, little-endian) so that no two vocabularies serialise alike."""
    digest = hashlib.sha256()
    for token in token_bytes:
        digest.update(len(token).to_bytes(4, "little") + token)
    return digest.hexdigest()


def offline_unless_hub_reachable(timeout=5.0):
    """Probe the Hugging Face hub once; when it cannot be reached switch the hub clients to their
    cache-only mode, since otherwise they retry with back-off for about a minute before failing."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
        return True
    except urllib.error.HTTPError:  # the server answered: reachable
        return True
    except (urllib.error.URLError, OSError):
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ[var] = "1"
        # the libraries read these variables at import: update the copies of those already imported
        for module, names in (("huggingface_hub.constants", ["HF_HUB_OFFLINE"]),
                              ("datasets.config", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])):
            for name in names:
                if module in sys.modules and hasattr(sys.modules[module], name):
                    setattr(sys.modules[module], name, True)
        return False


def open_tokenizer(kind, path=None):
    """A pretrained tokenizer for preparation or loading: gpt2 (tiktoken when no path) or xlmr."""
    if kind == "gpt2":
        return TiktokenGPT2() if path in (None, TIKTOKEN_GPT2) else HFTokenizer("gpt2", path)
    if kind == "xlmr":
        return HFTokenizer("xlmr", path or "xlm-roberta-base")
    raise DataError(f"unknown pretrained tokenizer kind {kind!r} (expected gpt2 or xlmr)")


def load_tokenizer(meta, data_dir):
    """The tokenizer a prepared dataset was built with, from its meta.json dict."""
    spec = meta["tokenizer"]
    special = meta["special_tokens"]
    expected = (special["en"], special["fr"], special["eot"])
    if spec["kind"] == "bpe":
        from tokenizers import Tokenizer as Backend
        path = Path(data_dir) / spec["path"]
        if not path.is_file():
            raise DataError(f"{path} is missing: prepare the dataset again with python -m data.europarl.prepare")
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:  # the Rust library raises a bare Exception for unreadable files
            raise DataError(f"cannot read {path}: {e}; prepare the dataset again") from None
        tok = BPETokenizer(backend, spec["path"])
    else:
        tok = open_tokenizer(spec["kind"], spec["path"])
    if (tok.en_id, tok.fr_id, tok.eot_id) != expected or tok.vocab_size != meta["vocab_size"]:
        raise DataError(f"tokenizer {spec['path']} does not match {data_dir}/meta.json "
                        f"(ids {(tok.en_id, tok.fr_id, tok.eot_id)} vs {expected}, "
                        f"vocab {tok.vocab_size} vs {meta['vocab_size']})")
    check_fingerprint(tok, meta, Path(data_dir) / spec["path"] if spec["kind"] == "bpe" else spec["path"])
    return tok


def check_vocabulary(meta, data_dir):
    """DataError if meta.json's vocabulary or tags disagree with the dataset's tokenizer, where that is
    cheap to know before training: a bpe dataset's tokenizer.json is read (load_tokenizer checks it).
    gpt2 and xlmr would need tiktoken or transformers, and maybe the hub: they are checked by the
    readers that load them (evaluate.py, sample.py); every reader refuses token ids beyond the vocabulary."""
    if meta["tokenizer"]["kind"] == "bpe":
        load_tokenizer(meta, data_dir)


def check_fingerprint(tok, meta, where):
    """DataError unless the tokenizer as read has the fingerprint meta records (when it records one):
    a same-sized tokenizer with other merges turns every text into other ids without an error."""
    recorded, found = meta.get("tokenizer_sha256"), tok.fingerprint()
    if recorded is not None and found != recorded:
        raise DataError(f"{where} is not the tokenizer that was recorded (its fingerprint is sha256 {found[:12]}, "
                        f"the record says {recorded[:12]})")
