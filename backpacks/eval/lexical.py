"""
Word-level evaluation of a trained model: resource readers (word similarity sets, MUSE
dictionaries), word vectors from the model, word similarity, bilingual lexicon induction
(BLI) and Backpack sense analysis.

How a word becomes a vector: the word is tokenized as it appears inside a sentence, i.e. the
tokenizer encodes " " + word (byte-level BPE gives the 'Ġword' pieces that running text uses;
SentencePiece maps the leading space to its usual word-start marker, and a piece that is only
whitespace is dropped). A word of several pieces averages its pieces' vectors (per sense for
the Backpack). Representations:
  embedding   the input embedding (both models; tied to the LM head)
  mean        Backpack: the average of the k sense vectors
  sense:i     Backpack: sense vector i
  minpair / maxpair   Backpack: similarity = min / max over i of cos(sense_i(w1), sense_i(w2))
              (Hewitt et al. 2023, lexical similarity evaluation)
  random_pieces   control, not the model: a fixed random Gaussian vector per token, averaged over
              the same pieces. Words that share subword pieces (cognates such as 'parliament' /
              'parlement') get similar vectors with no training at all; this shows how much of a
              score the shared tokenization alone explains. Averaged over CONTROL_DRAWS draws of
              the random table: each draw's word vector is unit-normalised and the draws are
              concatenated (/ sqrt(draws)), so a cosine is the mean of the draws' cosines and one
              lucky draw does not decide. It depends on the tokenizer and the width only: one
              control per width, the same for every model of that width.
"""
import codecs
import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backpacks import metrics


class ResourceError(Exception):
    """A resource file is missing or has no usable line."""


# -----------------------------------------------------------------------------
# readers

MAX_REPORTED_LINES = 20  # malformed lines listed by number in results; all are counted


@dataclass
class ParsedFile:
    """Rows read from a resource file and the lines that could not be used."""
    path: str
    rows: list = field(default_factory=list)
    malformed: list = field(default_factory=list)  # (line number, reason)

    def bad(self, line_number, reason):
        self.malformed.append((line_number, reason))

    def summary(self):
        return {"path": self.path, "rows": len(self.rows), "malformed": len(self.malformed),
                "malformed_lines": [{"line": n, "reason": r} for n, r in self.malformed[:MAX_REPORTED_LINES]]}

    def warning(self):
        """One line naming the malformed lines, or None."""
        if not self.malformed:
            return None
        shown = ", ".join(f"{n} ({r})" for n, r in self.malformed[:5])
        more = f" and {len(self.malformed) - 5} more" if len(self.malformed) > 5 else ""
        return f"warning: {self.path}: {len(self.malformed)} malformed line(s) skipped: line {shown}{more}"

    def require_rows(self):
        if not self.rows:
            raise ResourceError(f"{self.path}: no usable line ({len(self.malformed)} malformed)")
        return self


def _open_lines(path, parsed):
    """Lines of a UTF-8 text file. A line that is not UTF-8 is recorded in `parsed` as malformed
    (with its number and the offending byte) and read as an empty line, so the rest is used."""
    path = Path(path)
    if not path.is_file():
        raise ResourceError(f"{path}: file not found")
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        pass
    lines = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            parsed.bad(number, f"not UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})")
            lines.append("")
    return lines


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _split_fields(line):
    """Fields of a data line: tab-separated, else comma-separated, else whitespace-separated."""
    if "\t" in line:
        return [f.strip() for f in line.split("\t")]
    if "," in line:
        return next(csv.reader([line]))
    return line.split()


def _header_columns(header, path):
    """(word1, word2, score) column indices from a header line's names."""
    names = [h.strip().lower() for h in header]
    word_cols = [i for i, n in enumerate(names) if n.startswith("word")]
    score_cols = [i for i, n in enumerate(names)
                  if i not in word_cols and any(s in n for s in ("score", "sim", "mean", "rating", "relatedness"))]
    if len(word_cols) < 2 or not score_cols:
        raise ResourceError(f"{path}: cannot find two word columns and a score column in header {header}")
    return word_cols[0], word_cols[1], score_cols[0]


def read_word_pairs(path):
    """Word pairs with a human score from a plain word-similarity file.

    Layouts: `word1 word2 score` (tab, comma or space separated, no header, extra columns
    ignored: SimLex-999 / WordSim-353 style, '#' comment lines skipped) or a file with a header
    naming the columns (Multi-SimLex TSV `id word1 word2 POS score`, CSV `,word1,word2,similarity`,
    cross-lingual `id word_en word_fr score_mean_en_fr`). Rows: (word1, word2, score).
    """
    parsed = ParsedFile(str(path))
    columns = None
    for number, line in enumerate(_open_lines(path, parsed), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _split_fields(line)
        if columns is None:
            if not any(_is_number(f) for f in fields):  # the first data line is a header
                columns = _header_columns(fields, path)
                continue
            columns = (0, 1, 2)
        if len(fields) <= max(columns):
            parsed.bad(number, f"expected at least {max(columns) + 1} fields, got {len(fields)}")
            continue
        w1, w2, score = (fields[c].strip() for c in columns)
        if not w1 or not w2:
            parsed.bad(number, "empty word")
        elif not _is_number(score) or not np.isfinite(float(score)):
            parsed.bad(number, f"score {score!r} is not a number")
        else:
            parsed.rows.append((w1, w2, float(score)))
    return parsed.require_rows()


LANGUAGE_CODES = {"en": ("eng", "en", "english"), "fr": ("fra", "fr", "fre", "french")}


def _language_column(names, lang, suffix=""):
    """Index of the column named like 'ENG 1' / 'FRA' for a language code 'en' / 'fr' (or None)."""
    wanted = {re.sub(r"[\s_]", "", f"{code}{suffix}") for code in LANGUAGE_CODES.get(lang, (lang,))}
    for i, name in enumerate(names):
        if re.sub(r"[\s_]", "", name.lower()) in wanted:
            return i
    return None


def _read_csv_table(path, parsed):
    """(header, rows) of a CSV file; an empty row stands for a blank (or undecodable) line."""
    rows = list(csv.reader(_open_lines(path, parsed)))
    if not rows:
        raise ResourceError(f"{path}: empty file")
    return rows[0], rows[1:]


def read_multisimlex_official(translation_csv, scores_csv, lang1, lang2=None):
    """Multi-SimLex in its official two-file layout (multisimlex.com).

    translation.csv has an ID column and two word columns per language ('ENG 1', 'ENG 2',
    'FRA 1', ...); scores.csv the ID and one mean score column per language ('ENG', 'FRA', ...).
    Monolingual (lang2 None or == lang1): (w1, w2, score). Cross-lingual: both mixed pairs
    (lang1 word 1, lang2 word 2) and (lang2 word 1, lang1 word 2), scored with the mean of the two
    languages' scores -- the construction of the cross-lingual sets, without the official step
    that drops pairs whose two scores differ by more than 1.2 (an approximation).
    """
    lang2 = lang2 or lang1
    parsed = ParsedFile(f"{translation_csv}+{scores_csv}")
    header, table = _read_csv_table(translation_csv, parsed)
    score_header, score_table = _read_csv_table(scores_csv, parsed)
    names, score_names = [h.strip() for h in header], [h.strip() for h in score_header]
    id_col = next((i for i, n in enumerate(names) if n.lower() == "id"), 0)
    score_id_col = next((i for i, n in enumerate(score_names) if n.lower() == "id"), 0)
    word_cols = {(lang, j): _language_column(names, lang, str(j)) for lang in {lang1, lang2} for j in (1, 2)}
    score_cols = {lang: _language_column(score_names, lang) for lang in {lang1, lang2}}
    missing = [f"{lang} {j}" for (lang, j), c in word_cols.items() if c is None]
    missing += [f"{lang} score" for lang, c in score_cols.items() if c is None]
    if missing:
        raise ResourceError(f"{translation_csv} / {scores_csv}: no column for {', '.join(missing)}")

    scores = {}
    for number, row in enumerate(score_table, start=2):
        if not row:
            continue
        try:
            scores[row[score_id_col].strip()] = {lang: float(row[c]) for lang, c in score_cols.items()}
        except (IndexError, ValueError):
            parsed.bad(number, f"scores.csv: unreadable score row {row}")
    for number, row in enumerate(table, start=2):
        if not row:
            continue
        if len(row) <= max(c for c in word_cols.values()):
            parsed.bad(number, f"translation.csv: expected more fields, got {len(row)}")
            continue
        pair_id = row[id_col].strip()
        if pair_id not in scores:
            parsed.bad(number, f"translation.csv: id {pair_id!r} has no score")
            continue
        word = {key: row[c].strip() for key, c in word_cols.items()}
        if not all(word.values()):
            parsed.bad(number, "translation.csv: empty word")
            continue
        score = np.mean([scores[pair_id][lang1], scores[pair_id][lang2]])
        parsed.rows.append((word[lang1, 1], word[lang2, 2], float(score)))
        if lang2 != lang1:
            parsed.rows.append((word[lang2, 1], word[lang1, 2], float(score)))
    return parsed.require_rows()


def read_dictionary(path):
    """A MUSE-format bilingual dictionary: `source target` per line (tab or space separated),
    several lines per source word for several gold translations. Rows: (source, target)."""
    parsed = ParsedFile(str(path))
    for number, line in enumerate(_open_lines(path, parsed), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        if len(fields) != 2 or not all(fields):
            parsed.bad(number, f"expected 2 fields, got {len([f for f in fields if f])}")
            continue
        parsed.rows.append((fields[0], fields[1]))
    return parsed.require_rows()


def dictionary_split(path):
    """Which MUSE split a dictionary file is, by MUSE's file names: 0-5000 is its training dictionary,
    5000-6500 its standard test split; anything else is named as such."""
    name = Path(path).name
    if "0-5000" in name and "5000-6500" not in name:
        return "MUSE 0-5000: MUSE's training dictionary (the standard test split is 5000-6500)"
    if "5000-6500" in name:
        return "MUSE 5000-6500: the standard BLI test split"
    return "not a MUSE split (a dictionary of its own)"


def read_word_counts(data_dir):
    """word_counts.json of a dataset: {'en': {word: count}, 'fr': {...}}, most frequent first."""
    path = Path(data_dir) / "word_counts.json"
    if not path.is_file():
        raise ResourceError(f"{path}: file not found (made by python -m data.europarl.prepare)")
    try:
        counts = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # also UnicodeDecodeError
        raise ResourceError(f"{path}: not a UTF-8 JSON file ({e})") from None
    for lang in ("en", "fr"):
        if not isinstance(counts, dict) or lang not in counts:
            raise ResourceError(f"{path}: no {lang!r} counts")
        counts[lang] = dict(sorted(counts[lang].items(), key=lambda kv: -kv[1]))
    return counts


# -----------------------------------------------------------------------------
# word vectors

def word_pieces(tokenizer, words):
    """Token ids of each word as it appears mid-sentence (encoded with a leading space)."""
    pieces = tokenizer.encode_batch([" " + w for w in words])
    return [[i for i in ids if tokenizer.decode([i]).strip()] if ids else [] for ids in pieces]


def _average_pieces(pieces, lookup, chunk=8192):
    """(W, ...) average over each word's pieces of lookup(ids) (a batched table lookup)."""
    if not pieces:  # keep the trailing shape
        return lookup(torch.zeros(1, dtype=torch.long)).float().cpu()[:0]
    counts = torch.tensor([len(p) for p in pieces])
    flat = torch.tensor([i for p in pieces for i in p], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(pieces)), counts)
    starts = tqdm(range(0, len(flat), chunk), desc=f"vectors of {len(pieces):,} words", unit="chunk", leave=False,
                  disable=len(flat) <= 4 * chunk)  # shown for large candidate lists only
    parts = [lookup(flat[s:s + chunk]).float().cpu() for s in starts]
    vectors = torch.cat(parts)
    total = torch.zeros(len(pieces), *vectors.shape[1:]).index_add_(0, owner, vectors)
    return total / counts.clamp(min=1).view(-1, *[1] * (vectors.dim() - 1))


def has_senses(model):
    return getattr(model, "model_type", None) == "backpack"


CONTROL = "random_pieces"
SENSE_REPRESENTATIONS = ["mean", "minpair", "maxpair"]  # and sense:i, one per sense
REPRESENTATION_NAMES = ["embedding", *SENSE_REPRESENTATIONS, CONTROL]


def representations(model):
    """Names of the word representations a model has, then the tokenization-only control."""
    if not has_senses(model):
        return ["embedding", CONTROL]
    return ["embedding", *SENSE_REPRESENTATIONS] + [f"sense:{i}" for i in range(model.config.n_senses)] + [CONTROL]


CONTROL_DRAWS = 8


def random_token_table(vocab_size, dim, seed=0):
    """(V, d) fixed Gaussian vectors, one per token id (the random_pieces control)."""
    return torch.randn(vocab_size, dim, generator=torch.Generator().manual_seed(seed))


def control_vectors(pieces, vocab_size, dim, draws=CONTROL_DRAWS):
    """(W, draws x dim) random_pieces vectors of words given as token-id pieces: per draw, the average of
    the pieces' random vectors, unit-normalised; the draws concatenated and scaled by 1/sqrt(draws), so the
    cosine of two words is the mean over draws of their cosines in each draw."""
    per_draw = [metrics.normalize_rows(_average_pieces(pieces, lambda ids: table[ids]).numpy())
                for table in (random_token_table(vocab_size, dim, seed) for seed in range(draws))]
    return np.concatenate(per_draw, axis=1) / np.sqrt(draws)


class WordVectors:
    """Vectors of a fixed word list under every representation of a model, computed in one batch.

    full_senses=False keeps only the mean of the senses (enough for 'embedding' and 'mean'),
    which saves k times the memory on large candidate lists.
    """

    @torch.no_grad()
    def __init__(self, model, tokenizer, words, full_senses=True):
        self.words = list(dict.fromkeys(words))
        self.pieces = dict(zip(self.words, word_pieces(tokenizer, self.words)))
        encodable = [w for w in self.words if self.pieces[w]]
        self.row = {w: r for r, w in enumerate(encodable)}
        device = model.token_embeddings.device
        pieces = [self.pieces[w] for w in encodable]
        self.embedding = _average_pieces(pieces, lambda ids: model.token_embeddings[ids.to(device)]).numpy()
        self.control = control_vectors(pieces, *model.token_embeddings.shape)
        self.senses = self.sense_mean = None
        if has_senses(model) and full_senses:  # (W, k, d)
            self.senses = _average_pieces(pieces, lambda ids: model.sense_vectors(ids.to(device))).numpy()
            self.sense_mean = self.senses.mean(axis=1)
        elif has_senses(model):
            self.sense_mean = _average_pieces(pieces, lambda ids: model.sense_vectors(ids.to(device)).mean(1)).numpy()

    def __contains__(self, word):
        return word in self.row

    def rows(self, words):
        return np.array([self.row[w] for w in words], dtype=np.int64)

    def piece_stats(self, words):
        """How many of the (distinct) words are one token, and how many have no token at all."""
        words = list(dict.fromkeys(words))
        return {"words": len(words), "single_piece": sum(len(self.pieces[w]) == 1 for w in words),
                "unencodable": sum(not self.pieces[w] for w in words)}

    def vectors(self, rep, rows):
        """(len(rows), d) vectors of representation `rep` ('embedding', 'mean' or 'sense:i')."""
        if rep == "embedding":
            return self.embedding[rows]
        if rep == CONTROL:
            return self.control[rows]
        if rep == "mean" and self.sense_mean is not None:
            return self.sense_mean[rows]
        if rep.startswith("sense:") and self.senses is not None:
            return self.senses[rows, int(rep.split(":", 1)[1])]
        raise ValueError(f"representation {rep!r} is not available as one vector per word here")

    def pair_similarity(self, rep, rows1, rows2):
        """Similarity of word pairs under `rep` (cosine, or min/max of per-sense cosines)."""
        if rep in ("minpair", "maxpair"):
            per_sense = per_sense_cosine(self.senses[rows1], self.senses[rows2])
            return per_sense.min(axis=1) if rep == "minpair" else per_sense.max(axis=1)
        return metrics.paired_cosine(self.vectors(rep, rows1), self.vectors(rep, rows2))


def per_sense_cosine(a, b):
    """(P, k) cosine of sense l of a[p] with sense l of b[p], for (P, k, d) arrays."""
    flat = lambda x: x.reshape(-1, x.shape[-1])
    return metrics.paired_cosine(flat(a), flat(b)).reshape(a.shape[:2])


def check_representations(model, reps):
    """The requested representations, or ValueError naming those the model lacks."""
    available = representations(model)
    unknown = [r for r in reps if r not in available]
    if unknown:
        raise ValueError(f"representation(s) {unknown} not available for a {model.model_type}; "
                         f"choose from {available}")
    return list(reps)


# -----------------------------------------------------------------------------
# word similarity

def word_similarity(vectors, pairs, reps, corpus_words=None):
    """Spearman rho of model similarity against human scores, per representation.

    pairs: (w1, w2, score). Pairs with an unencodable word are not used (counted in coverage).
    corpus_words: optional set of words of the training text; the rho over the pairs whose two
    words both occur there is reported as well, since the rest only have subword averages.
    """
    used = [(a, b, s) for a, b, s in pairs if a in vectors and b in vectors]
    result = {"pairs": len(pairs), "pairs_used": len(used), "coverage": len(used) / len(pairs),
              "words": vectors.piece_stats([w for a, b, _ in pairs for w in (a, b)])}
    if len(used) < 3:
        result["skipped"] = f"only {len(used)} usable pairs"
        return result
    rows1, rows2 = vectors.rows([a for a, _, _ in used]), vectors.rows([b for _, b, _ in used])
    gold = np.array([s for _, _, s in used])
    in_corpus = None
    if corpus_words is not None:
        in_corpus = np.array([a.lower() in corpus_words and b.lower() in corpus_words for a, b, _ in used])
        result["pairs_in_corpus"] = int(in_corpus.sum())
    result["spearman"] = {}
    result["gold"] = gold.tolist()  # with each representation's similarities: paired tests between models
    for rep in reps:
        predicted = vectors.pair_similarity(rep, rows1, rows2)
        entry = {**metrics.spearman(predicted, gold), "similarities": np.round(predicted, 5).tolist()}
        if in_corpus is not None and in_corpus.sum() >= 3:
            entry["in_corpus"] = metrics.spearman(predicted[in_corpus], gold[in_corpus])
        result["spearman"][rep] = entry
    return result


# -----------------------------------------------------------------------------
# bilingual lexicon induction

def gold_translations(pairs, reverse=False):
    """{source word: set of gold target words} from dictionary rows (source, target)."""
    gold = {}
    for src, tgt in pairs:
        if reverse:
            src, tgt = tgt, src
        gold.setdefault(src, set()).add(tgt)
    return gold


def lexicon_induction(vectors, gold, source_vocab, target_vocab, reps, k=10, ks=(1, 5)):
    """BLI: rank target_vocab words for each dictionary source word by cosine and by CSLS.

    Queries: dictionary source words that are in source_vocab (encodable) and have at least one
    gold translation in target_vocab; coverage = queries / dictionary source words. The CSLS
    source-side radius uses all of source_vocab (as MUSE uses the whole source vocabulary).
    Both languages share one vocabulary here, so a query whose gold set holds the query word
    itself ('parlement' -> 'parlement') is found trivially by its own vector: P@k is reported
    over all queries ('cosine', 'csls') and over the queries without such an identical
    translation ('cosine_excluding_identical', 'csls_excluding_identical').
    """
    source_vocab = [w for w in source_vocab if w in vectors]
    target_vocab = [w for w in target_vocab if w in vectors]
    in_source, target_index = set(source_vocab), {w: i for i, w in enumerate(target_vocab)}
    queries = [w for w in gold if w in in_source and any(t in target_index for t in gold[w])]
    identical = np.array([w in gold[w] and w in target_index for w in queries], dtype=bool)
    result = {"dictionary_sources": len(gold), "queries": len(queries),
              "coverage": len(queries) / max(1, len(gold)), "candidates": len(target_vocab),
              "identical_queries": int(identical.sum())}
    if not queries:
        result["skipped"] = "no dictionary source word with a gold translation among the candidates"
        return result
    gold_columns = [[target_index[t] for t in gold[w] if t in target_index] for w in queries]
    subsets = {"": np.ones(len(queries), dtype=bool), "_excluding_identical": ~identical}
    query_rows, source_rows, target_rows = vectors.rows(queries), vectors.rows(source_vocab), vectors.rows(target_vocab)
    for rep in tqdm(reps, desc=f"BLI: {len(queries):,} queries x {len(target_vocab):,} candidates", leave=False):
        q, s, t = (vectors.vectors(rep, rows) for rows in (query_rows, source_rows, target_rows))
        scores = {"cosine": metrics.cosine_matrix(q, t), "csls": metrics.csls_matrix(q, t, k, query_space=s)}
        result[rep] = {method + suffix: metrics.precision_at_k(
                           m[mask], [g for g, keep in zip(gold_columns, mask) if keep], ks)
                       for method, m in scores.items() for suffix, mask in subsets.items() if mask.any()}
    return result


# -----------------------------------------------------------------------------
# sense analysis (Backpack)

def token_language_counts(data_dir, meta, split="train"):
    """Per-token occurrence counts in the English and in the French side of pairs_<split>.bin."""
    data_dir = Path(data_dir)
    stream_path, index_path = data_dir / f"pairs_{split}.bin", data_dir / f"pairs_{split}_index.npy"
    for path in (stream_path, index_path):
        if not path.is_file():
            raise ResourceError(f"{path}: file not found (made by python -m data.europarl.prepare)")
    tokens = np.memmap(stream_path, dtype=np.dtype(meta["dtype"]), mode="r")
    index = np.load(index_path)
    counts = {}
    for lang, (start, end) in (("en", (0, 1)), ("fr", (2, 3))):
        marks = np.zeros(len(tokens) + 1, dtype=np.int64)  # +1 at span starts, -1 at span ends
        np.add.at(marks, index[:, start], 1)
        np.add.at(marks, index[:, end], -1)
        inside = np.cumsum(marks[:-1]) > 0
        counts[lang] = np.bincount(tokens[inside], minlength=meta["vocab_size"])[:meta["vocab_size"]]
    return counts


def token_language_masks(counts, min_count=1):
    """Boolean (V,) mask per language: tokens seen at least min_count times in that language's side
    of the corpus and at least as often there as in the other language's side (majority)."""
    en, fr = counts["en"], counts["fr"]
    return {"en": (en >= min_count) & (en >= fr), "fr": (fr >= min_count) & (fr >= en)}


@torch.no_grad()
def sense_top_tokens(model, tokenizer, words, top_k=10, mask=None):
    """For each word, the top_k tokens of each sense's logit projection E C_l(word).

    mask: optional boolean (V,) array; only tokens where it is True are ranked.
    """
    vectors = WordVectors(model, tokenizer, words)
    E = model.token_embeddings.detach().float().cpu()
    allowed = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    table = []
    for word in words:
        if word not in vectors:
            table.append({"word": word, "skipped": "no token pieces"})
            continue
        senses = torch.from_numpy(vectors.senses[vectors.row[word]])  # (k, d)
        logits = senses @ E.t()  # (k, V)
        if allowed is not None:
            logits[:, ~allowed] = float("-inf")
        top = logits.topk(min(top_k, int(allowed.sum()) if allowed is not None else logits.shape[1]), dim=1).indices
        table.append({"word": word, "pieces": [tokenizer.token_str(i) for i in vectors.pieces[word]],
                      "senses": [[tokenizer.token_str(i) for i in row] for row in top.tolist()]})
    return table


@torch.no_grad()
def alpha_entropy(model, sequences, batch_size=8, device="cpu"):
    """Entropy (nats) of the contextualization weights alpha[l, i, :] over the positions j <= i,
    averaged over positions i >= 1 of the given token sequences, per sense; also normalised by
    the maximum log(i + 1). Sequences are right-padded: causal weights never see the padding."""
    k = model.config.n_senses
    total, total_normalised, count = torch.zeros(k), torch.zeros(k), 0
    for start in tqdm(range(0, len(sequences), batch_size), desc="alpha entropy", leave=False):
        batch = sequences[start:start + batch_size]
        T = max(len(s) for s in batch)
        idx = torch.zeros(len(batch), T, dtype=torch.long)
        valid = torch.zeros(len(batch), T, dtype=torch.bool)
        for row, seq in enumerate(batch):
            idx[row, :len(seq)] = torch.tensor(seq)
            valid[row, 1:len(seq)] = True
        alpha = model.contextualization(idx.to(device)).float().cpu()  # (B, k, T, T)
        entropy = -(alpha * alpha.clamp(min=1e-30).log()).sum(dim=-1)  # (B, k, T)
        max_entropy = torch.log(torch.arange(T, dtype=torch.float) + 1).clamp(min=1e-30)
        mask = valid[:, None, :].float()
        total += (entropy * mask).sum(dim=(0, 2))
        total_normalised += (entropy / max_entropy * mask).sum(dim=(0, 2))
        count += int(valid.sum())
    per_sense = (total / count).tolist()
    per_sense_normalised = (total_normalised / count).tolist()
    return {"positions": count, "sequences": len(sequences),
            "mean": float(np.mean(per_sense)), "mean_normalised": float(np.mean(per_sense_normalised)),
            "per_sense": per_sense, "per_sense_normalised": per_sense_normalised}


def translation_pair_sense_cosines(vectors, pairs, seed=0):
    """Per sense l: mean cos(C_l(en word), C_l(fr word)) over dictionary pairs, against the same
    with the French words of a random derangement of the pairs (the chance level)."""
    pairs = [(a, b) for a, b in pairs if a in vectors and b in vectors]
    if len(pairs) < 2:
        raise ResourceError(f"only {len(pairs)} dictionary pairs have token pieces")
    en, fr = vectors.rows([a for a, _ in pairs]), vectors.rows([b for _, b in pairs])
    fr_random = fr[metrics.random_derangement(len(pairs), np.random.default_rng(seed))]
    true_cos = per_sense_cosine(vectors.senses[en], vectors.senses[fr]).mean(axis=0)
    random_cos = per_sense_cosine(vectors.senses[en], vectors.senses[fr_random]).mean(axis=0)
    return {"pairs": len(pairs),
            "per_sense_pair_cosine": true_cos.tolist(),
            "per_sense_derangement_cosine": random_cos.tolist(),
            "most_aligned_sense": int(np.argmax(true_cos - random_cos))}


def frequent_dictionary_pairs(pairs, word_counts, tokenizer=None, n=None):
    """Dictionary pairs whose two words occur in the training text, the English word's most frequent
    first, one pair per English word (its most frequent French translation).
    With a tokenizer: only pairs whose two words are single tokens of the vocabulary."""
    en_counts, fr_counts = word_counts["en"], word_counts["fr"]
    pairs = [(en, fr) for en, fr in pairs if en in en_counts and fr in fr_counts]
    if tokenizer is not None:
        words = list(dict.fromkeys(w for pair in pairs for w in pair))
        single = {w for w, p in zip(words, word_pieces(tokenizer, words)) if len(p) == 1}
        pairs = [(en, fr) for en, fr in pairs if en in single and fr in single]
    best = {}
    for en, fr in pairs:
        if en not in best or fr_counts[fr] > fr_counts[best[en]]:
            best[en] = fr
    ordered = sorted(best.items(), key=lambda kv: -en_counts[kv[0]])
    return ordered[:n] if n is not None else ordered
