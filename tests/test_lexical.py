"""lexical.py: resource readers (malformed lines), word vectors, similarity, BLI, sense analysis."""
import json
import math
import types

import numpy as np
import pytest
import torch

from backpacks.eval import lexical
from model import build_model
from tiny import tiny_model
from backpacks.tokenizer import train_bpe

TEXTS = ["the house is red and the car is blue", "la maison est rouge et la voiture est bleue",
         "the parliament votes on the report today", "le parlement vote sur le rapport aujourd'hui",
         "a red house , a blue car , a small report"] * 20


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- readers

def test_plain_pairs_with_comments_and_malformed_lines(tmp_path):
    path = write(tmp_path / "sim.txt", "# a comment\n# Word 1\tWord 2\tHuman (mean)\n"
                 "old\tnew\t1.58\nsmart\tintelligent\tnine\nonly_two\tfields\n\nhard\tdifficult\t8.77\n\tx\t3\n")
    parsed = lexical.read_word_pairs(path)
    assert parsed.rows == [("old", "new", 1.58), ("hard", "difficult", 8.77)]
    assert [n for n, _ in parsed.malformed] == [4, 5, 8]
    assert "not a number" in parsed.malformed[0][1]
    summary = parsed.summary()
    assert summary["malformed"] == 3 and summary["malformed_lines"][0] == {"line": 4, "reason": parsed.malformed[0][1]}
    assert "3 malformed line(s)" in parsed.warning() and "line 4" in parsed.warning()


def test_header_layouts(tmp_path):
    csv_file = write(tmp_path / "s.csv", ",word1,word2,similarity\n0,old,new,0.0\n1,smart,intelligent,9.7\n")
    assert lexical.read_word_pairs(csv_file).rows == [("old", "new", 0.0), ("smart", "intelligent", 9.7)]
    msl = write(tmp_path / "msl.tsv", "id\tword1\tword2\tPOS\tscore_0_6\tfrench_erratum\n"
                "1\tbras\tmuscle\tnouns\t2.6\t0\n2\ttoit\tplafond\tnouns\tbad\t0\n")
    parsed = lexical.read_word_pairs(msl)
    assert parsed.rows == [("bras", "muscle", 2.6)] and parsed.malformed[0][0] == 3
    cross = write(tmp_path / "x.tsv", "id\tword_en\tword_fr\tscore_mean_en_fr\n1a\tarm\tbras\t5.0\n")
    assert lexical.read_word_pairs(cross).rows == [("arm", "bras", 5.0)]


def test_reader_errors(tmp_path):
    with pytest.raises(lexical.ResourceError, match="not found"):
        lexical.read_word_pairs(tmp_path / "missing.tsv")
    with pytest.raises(lexical.ResourceError, match="no usable line"):
        lexical.read_word_pairs(write(tmp_path / "bad.tsv", "1\t2\tx\nc\td\n"))
    with pytest.raises(lexical.ResourceError, match="score column"):
        lexical.read_word_pairs(write(tmp_path / "h.tsv", "first\tsecond\tthird\na\tb\tc\n"))


def test_multisimlex_official_layout(tmp_path):
    translation = write(tmp_path / "translation.csv", "ID,ENG 1,ENG 2,FRA 1,FRA 2\n1,arm,muscle,bras,muscle\n"
                        "2,roof,ceiling,toit,plafond\n3,cat,,chat,chien\n4,dog,cat,chien,chat\n")
    scores = write(tmp_path / "scores.csv", "ID,ENG,FRA\n1,0.69,2.6\n2,3.69,4.4\n3,1,1\n")
    en = lexical.read_multisimlex_official(translation, scores, "en")
    assert en.rows == [("arm", "muscle", 0.69), ("roof", "ceiling", 3.69)]
    assert [n for n, _ in en.malformed] == [4, 5]  # empty word; id 4 has no score
    cross = lexical.read_multisimlex_official(translation, scores, "en", "fr")
    assert cross.rows[:2] == [("arm", "muscle", pytest.approx(1.645)), ("bras", "muscle", pytest.approx(1.645))]
    with pytest.raises(lexical.ResourceError, match="no column"):
        lexical.read_multisimlex_official(translation, scores, "de")


def test_dictionary_reader(tmp_path):
    path = write(tmp_path / "dict.txt", "the\tle\nthe la\nbad line here\n\nhouse\tmaison\n")
    parsed = lexical.read_dictionary(path)
    assert parsed.rows == [("the", "le"), ("the", "la"), ("house", "maison")]
    assert parsed.malformed == [(3, "expected 2 fields, got 3")]
    assert lexical.gold_translations(parsed.rows) == {"the": {"le", "la"}, "house": {"maison"}}
    assert lexical.gold_translations(parsed.rows, reverse=True)["le"] == {"the"}


def test_lines_that_are_not_utf8_are_reported_and_the_rest_is_read(tmp_path):
    pairs = tmp_path / "latin1.tsv"
    pairs.write_bytes("chat\tchien\t3.5\ncaf\u00e9\tth\u00e9\t4\nmaison\thouse\t1\n".encode("utf-8")
                      .replace("caf\u00e9".encode(), "caf\u00e9".encode("latin-1")))
    parsed = lexical.read_word_pairs(pairs)
    assert parsed.rows == [("chat", "chien", 3.5), ("maison", "house", 1.0)]
    assert parsed.malformed == [(2, "not UTF-8 (byte 0xe9 at column 4)")] and "line 2" in parsed.warning()
    dictionary = tmp_path / "dict.txt"
    dictionary.write_bytes(b"the\tle\n\xff\xfe\tx\nhouse\tmaison\n")
    parsed = lexical.read_dictionary(dictionary)
    assert parsed.rows == [("the", "le"), ("house", "maison")] and parsed.malformed[0][0] == 2
    counts = tmp_path / "word_counts.json"
    counts.write_bytes(b'{"en": {"caf\xe9": 1}, "fr": {}}')
    with pytest.raises(lexical.ResourceError, match="not a UTF-8 JSON file"):
        lexical.read_word_counts(tmp_path)


def test_shared_resources_read_cleanly(enfr_data_root):
    msl = lexical.read_word_pairs(enfr_data_root / "wordsim/multisimlex/msl_fr.tsv")
    assert len(msl.rows) == 1888 and not msl.malformed
    assert len(lexical.read_word_pairs(enfr_data_root / "wordsim/simlex999.txt").rows) == 999
    muse = lexical.read_dictionary(enfr_data_root / "lexicon/muse-en-fr.0-5000.tsv")
    assert len(muse.rows) == 10872 and not muse.malformed


# ----------------------------------------------------------------------------- model-based

@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def backpack(tokenizer):
    return tiny_model(vocab_size=tokenizer.vocab_size)  # the tokenizer's vocabulary


def test_word_pieces_use_the_mid_sentence_form(tokenizer):
    pieces = lexical.word_pieces(tokenizer, ["house", "parliamentary"])
    assert pieces[0] == tokenizer.encode(" house")
    assert len(pieces[1]) > 1 and tokenizer.decode(pieces[1]).strip() == "parliamentary"


def test_word_vectors_average_pieces_and_senses(backpack, tokenizer):
    vectors = lexical.WordVectors(backpack, tokenizer, ["the", "parliamentary", "the"])
    assert vectors.words == ["the", "parliamentary"]
    ids = torch.tensor(vectors.pieces["parliamentary"])
    with torch.no_grad():
        expected_senses = backpack.sense_vectors(ids).mean(0)
        expected_embedding = backpack.token_embeddings[ids].mean(0)
    row = vectors.row["parliamentary"]
    np.testing.assert_allclose(vectors.senses[row], expected_senses.numpy(), atol=1e-5)
    np.testing.assert_allclose(vectors.embedding[row], expected_embedding.numpy(), atol=1e-6)
    np.testing.assert_allclose(vectors.vectors("mean", [row])[0], expected_senses.mean(0).numpy(), atol=1e-5)
    assert vectors.piece_stats(["the", "parliamentary"]) == {"words": 2, "single_piece": 1, "unencodable": 0}
    rows1, rows2 = vectors.rows(["the"]), vectors.rows(["parliamentary"])
    per_sense = [vectors.pair_similarity(f"sense:{i}", rows1, rows2)[0] for i in range(4)]
    assert vectors.pair_similarity("minpair", rows1, rows2)[0] == pytest.approx(min(per_sense), abs=1e-6)
    assert vectors.pair_similarity("maxpair", rows1, rows2)[0] == pytest.approx(max(per_sense), abs=1e-6)
    first_draw = lexical.random_token_table(*backpack.token_embeddings.shape)[ids].mean(0).numpy()
    d = len(first_draw)
    np.testing.assert_allclose(vectors.vectors("random_pieces", [row])[0][:d],
                               first_draw / np.linalg.norm(first_draw) / np.sqrt(lexical.CONTROL_DRAWS), atol=1e-6)
    lean = lexical.WordVectors(backpack, tokenizer, ["the"], full_senses=False)
    np.testing.assert_allclose(lean.vectors("mean", [0]), vectors.vectors("mean", rows1), atol=1e-5)
    with pytest.raises(ValueError):
        lean.vectors("sense:0", [0])


def test_the_control_cosine_is_the_mean_of_its_draws_cosines():
    pieces = [[3, 4], [4, 5], [6]]
    control = lexical.control_vectors(pieces, 10, 16, draws=5)
    first = lexical.control_vectors(pieces, 10, 16, draws=1)  # draw 0 alone
    tables = [lexical.random_token_table(10, 16, seed) for seed in range(5)]
    words = [[t[p].mean(0).numpy() for p in pieces] for t in tables]
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    for a, b in ((0, 1), (0, 2), (1, 2)):
        expected = np.mean([cos(w[a], w[b]) for w in words])
        assert control[a] @ control[b] == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(np.linalg.norm(control, axis=1), 1.0, atol=1e-6)
    assert first[0] @ first[1] == pytest.approx(cos(words[0][0], words[0][1]), abs=1e-6)
    # words sharing a piece are more alike than words sharing none
    assert control[0] @ control[1] > control[0] @ control[2]


def test_representations_per_model(backpack, tokenizer):
    assert lexical.representations(backpack)[:4] == ["embedding", "mean", "minpair", "maxpair"]
    transformer = build_model("transformer", backpack.config)
    assert lexical.representations(transformer) == ["embedding", "random_pieces"]
    with pytest.raises(ValueError, match="not available"):
        lexical.check_representations(transformer, ["mean"])


def test_word_similarity_counts_and_identity(backpack, tokenizer):
    vectors = lexical.WordVectors(backpack, tokenizer, ["red", "blue", "house", "car", "report"])
    pairs = [("red", "red", 10.0), ("red", "blue", 5.0), ("house", "car", 4.0), ("car", "report", 1.0)]
    result = lexical.word_similarity(vectors, pairs, ["embedding", "minpair"], corpus_words={"red", "blue", "car"})
    assert result["pairs_used"] == 4 and result["coverage"] == 1.0 and result["pairs_in_corpus"] == 2
    assert set(result["spearman"]) == {"embedding", "minpair"}
    assert "in_corpus" not in result["spearman"]["embedding"]  # fewer than 3 in-corpus pairs
    assert lexical.word_similarity(vectors, pairs[:2], ["embedding"])["skipped"].startswith("only 2")


def with_embeddings(vectors, table):
    """vectors with its 'embedding' rows replaced by constructed ones (row order: vectors.row)."""
    vectors.embedding = np.asarray([table[w] for w in sorted(vectors.row, key=vectors.row.get)], dtype=np.float32)
    return vectors


def test_word_similarity_rho_on_constructed_vectors(backpack, tokenizer):
    """Unit vectors at angles 0, 20, 40, 60, 80 degrees from 'red': cosines fall in that order, and
    human scores that swap the last two give Spearman rho = 1 - 6 * 2 / (5 * 24) = 0.9."""
    words = ["red", "blue", "house", "car", "report", "maison"]
    angles = dict(zip(words, np.radians([0, 0, 20, 40, 60, 80])))
    vectors = with_embeddings(lexical.WordVectors(backpack, tokenizer, words),
                              {w: [np.cos(a), np.sin(a)] for w, a in angles.items()})
    pairs = [("red", w, score) for w, score in zip(words[1:], [5.0, 4.0, 3.0, 1.0, 2.0])]
    result = lexical.word_similarity(vectors, pairs, ["embedding"])
    assert result["spearman"]["embedding"]["rho"] == pytest.approx(0.9)
    low, high = result["spearman"]["embedding"]["rho_ci95"]
    assert -1 <= low <= 0.9 <= high <= 1


def test_lexicon_induction_known_precision(backpack, tokenizer):
    """English words on the unit circle, French candidates at the same angles except 'voiture',
    which is nearest to 'rouge': cosine P@1 is 2/3 and only 'car' misses."""
    vectors = with_embeddings(
        lexical.WordVectors(backpack, tokenizer, ["red", "house", "car", "rouge", "maison", "voiture"]),
        {"red": [1, 0], "house": [0, 1], "car": [-1, 0.1],
         "rouge": [1, 0.05], "maison": [0.05, 1], "voiture": [0.9, -0.3]})
    gold = {"red": {"rouge"}, "house": {"maison"}, "car": {"voiture"}}
    result = lexical.lexicon_induction(vectors, gold, ["red", "house", "car"], ["rouge", "maison", "voiture"],
                                       ["embedding"], k=1)
    assert result["queries"] == 3 and result["identical_queries"] == 0
    assert result["embedding"]["cosine"]["p@1"] == pytest.approx(2 / 3)
    assert result["embedding"]["cosine_excluding_identical"]["p@1"] == pytest.approx(2 / 3)
    low, high = result["embedding"]["cosine"]["ci95"]["p@1"]
    assert 0 <= low < 2 / 3 < high <= 1


def test_lexicon_induction_identity_dictionary(backpack, tokenizer):
    """Each word's own vector is its nearest neighbour: an identity dictionary gives P@1 = 1."""
    words = ["red", "blue", "house", "car", "report", "maison", "voiture", "rouge"]
    vectors = lexical.WordVectors(backpack, tokenizer, words)
    gold = {w: {w} for w in words[:5]}
    gold["absent"] = {"red"}
    result = lexical.lexicon_induction(vectors, gold, words, words, ["embedding", "mean", "sense:1"], k=3)
    assert result["queries"] == 5 and result["coverage"] == pytest.approx(5 / 6)
    assert result["identical_queries"] == 5
    for rep in ("embedding", "mean", "sense:1"):
        assert result[rep]["cosine"]["p@1"] == 1.0 and result[rep]["csls"]["p@5"] == 1.0
        assert "cosine_excluding_identical" not in result[rep]  # every query is identical here
    swapped = lexical.lexicon_induction(vectors, {"red": {"red"}, "blue": {"maison"}}, words, words, ["embedding"])
    assert swapped["identical_queries"] == 1
    assert swapped["embedding"]["cosine_excluding_identical"]["p@1"] in (0.0, 1.0)  # the one query 'blue'
    nothing = lexical.lexicon_induction(vectors, {"red": {"absent"}}, words, words, ["embedding"])
    assert "skipped" in nothing


def test_token_language_counts_and_masks(tmp_path):
    tokens = np.array([1, 2, 3, 4, 4, 1, 5, 6], dtype=np.uint16)  # pair 0: en [1,2] fr [3,4]; pair 1: en [4,1] fr [5,6]
    tokens.tofile(tmp_path / "pairs_train.bin")
    np.save(tmp_path / "pairs_train_index.npy", np.array([[0, 2, 2, 4], [4, 6, 6, 8]], dtype=np.int64))
    counts = lexical.token_language_counts(tmp_path, {"dtype": "uint16", "vocab_size": 8})
    assert counts["en"].tolist() == [0, 2, 1, 0, 1, 0, 0, 0]
    assert counts["fr"].tolist() == [0, 0, 0, 1, 1, 1, 1, 0]
    masks = lexical.token_language_masks(counts)
    assert np.flatnonzero(masks["en"]).tolist() == [1, 2, 4]  # token 4: a tie belongs to both
    assert np.flatnonzero(masks["fr"]).tolist() == [3, 4, 5, 6]
    with pytest.raises(lexical.ResourceError):
        lexical.token_language_counts(tmp_path / "nowhere", {"dtype": "uint16", "vocab_size": 8})


def test_sense_top_tokens_respects_the_mask(backpack, tokenizer):
    mask = np.zeros(tokenizer.vocab_size, dtype=bool)
    allowed = tokenizer.encode(" maison rouge voiture")
    mask[allowed] = True
    table = lexical.sense_top_tokens(backpack, tokenizer, ["house", ""], top_k=2, mask=mask)
    assert len(table[0]["senses"]) == 4
    allowed_strings = {tokenizer.token_str(i) for i in allowed}
    assert all(len(row) == 2 and set(row) <= allowed_strings for row in table[0]["senses"])
    assert table[1]["skipped"]


def test_alpha_entropy_bounds(backpack, tokenizer):
    sequences = [tokenizer.encode(t)[:20] for t in TEXTS[:5]]
    result = lexical.alpha_entropy(backpack, sequences, batch_size=2)
    assert result["positions"] == sum(len(s) - 1 for s in sequences)
    assert len(result["per_sense"]) == 4
    assert all(0 <= h <= 1 + 1e-5 for h in result["per_sense_normalised"])


class FixedAlpha:
    """A stand-in model whose contextualization is a given function of the sequence length."""

    def __init__(self, alpha_fn, n_senses=2):
        self.config = types.SimpleNamespace(n_senses=n_senses)
        self.alpha_fn = alpha_fn

    def contextualization(self, idx):
        B, T = idx.shape
        return self.alpha_fn(T).expand(B, self.config.n_senses, T, T)


def test_alpha_entropy_is_one_for_uniform_and_zero_for_one_hot_weights():
    sequences = [[1, 2, 3, 4, 5], [1, 2, 3]]
    uniform = FixedAlpha(lambda T: torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None])
    result = lexical.alpha_entropy(uniform, sequences)
    assert result["mean_normalised"] == pytest.approx(1.0, abs=1e-6)
    assert result["positions"] == 4 + 2
    expected = (sum(math.log(i + 1) for i in range(1, 5)) + sum(math.log(i + 1) for i in range(1, 3))) / 6
    assert result["mean"] == pytest.approx(expected, abs=1e-6)
    one_hot = FixedAlpha(lambda T: torch.eye(T))  # each position keeps only its own senses
    result = lexical.alpha_entropy(one_hot, sequences)
    assert result["mean"] == pytest.approx(0.0, abs=1e-6) and result["mean_normalised"] == pytest.approx(0.0, abs=1e-6)


def test_translation_pair_cosines_and_frequent_pairs(backpack, tokenizer):
    counts = {"en": {"the": 50, "house": 5, "car": 3, "report": 2}, "fr": {"la": 40, "le": 30, "maison": 5, "voiture": 2}}
    pairs = [("the", "le"), ("the", "la"), ("house", "maison"), ("car", "voiture"), ("unseen", "la")]
    ordered = lexical.frequent_dictionary_pairs(pairs, counts)
    assert ordered == [("the", "la"), ("house", "maison"), ("car", "voiture")]
    assert lexical.frequent_dictionary_pairs(pairs, counts, n=1) == [("the", "la")]
    vectors = lexical.WordVectors(backpack, tokenizer, [w for p in ordered for w in p])
    result = lexical.translation_pair_sense_cosines(vectors, ordered)
    assert result["pairs"] == 3 and len(result["per_sense_pair_cosine"]) == 4
    with pytest.raises(lexical.ResourceError):
        lexical.translation_pair_sense_cosines(vectors, ordered[:1])


def test_read_word_counts(tmp_path):
    with pytest.raises(lexical.ResourceError):
        lexical.read_word_counts(tmp_path)
    write(tmp_path / "word_counts.json", json.dumps({"en": {"a": 1, "the": 5}, "fr": {"le": 2}}))
    assert list(lexical.read_word_counts(tmp_path)["en"]) == ["the", "a"]
