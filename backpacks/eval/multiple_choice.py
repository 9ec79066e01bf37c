"""
Zero-shot multiple-choice evaluation: XNLI and PAWS-X in English and French, answered by scoring
each answer option with the language model (no training, no prompt examples).

Scoring of an answer A after a context C (Holtzman et al. 2021 for the unconditional prior; the
interpolation and length term as in the SENSIA evaluation):
    LL(A|C)      sum of log-probabilities of A's tokens after C; |A| their number
    LL(A|empty)  the same answer after <eot> [tag] + the template's answer prefix only
    s = (LL(A|C) - (1 - lambda) LL(A|empty)) / |A|^alpha     --mc_length exponent (default)
    s = LL(A|C) - (1 - lambda) LL(A|empty) + beta |A|         --mc_length additive
lambda = 1 is conditional scoring, lambda = 0 is PMI. The options of an example differ only in
the option word (" Yes, " / " No, " ...) before the shared second sentence. The prior is a separate
sequence without the first sentence, as in Holtzman et al.'s domain-conditional PMI, and lambda weighs
the two terms as written above; the SENSIA authors' code re-scores the answer inside the full sequence
and has the exponent length term alone, the paper an additive one: --mc_length additive, here a
per-token bonus beta |A| (see docs/sensia.md, differences from the authors' code).

Tuning without leakage: each labelled dev set is split by a seeded shuffle of its line numbers
into a tuning half and a reporting half; (lambda, alpha or beta) is chosen on the tuning half and the
accuracy, with a 95% Wilson interval, is reported on the reporting half only. The English and
French dev sets are line-parallel, so both languages get the same halves by line number and the
cross-lingual line (tuned on the English tuning half, reported on the French reporting half)
never reports a translation of a tuning example.

    results = evaluate_task(model, tokenizer, meta, "xnli", lambda rel: Path(data_root) / rel, device="cpu")
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from backpacks import metrics
from backpacks.eval.lexical import ParsedFile, ResourceError, _open_lines

LANGUAGES = ("en", "fr")
SPLIT_SEED = 1105  # fixed: the tuning / reporting halves are the same in every run, whatever --seed
LAMBDAS = np.round(np.linspace(0.0, 1.0, 11), 1)
ALPHAS = np.array([0.0, 0.5, 1.0])
BETAS = np.array([0.0, 0.5, 1.0, 2.0, 4.0])  # nats per answer token


@dataclass(frozen=True)
class LengthTerm:
    """How s accounts for the answer's length |A|: a parameter tuned with lambda on its own grid."""
    parameter: str
    grid: np.ndarray
    scoring: str
    apply: object  # (s without the length term, |A|, parameter) -> s


LENGTH_TERMS = {
    "exponent": LengthTerm("alpha", ALPHAS, "s = (LL(A|C) - (1 - lambda) LL(A|empty)) / |A|^alpha",
                           lambda s, length, alpha: s / length ** alpha),
    "additive": LengthTerm("beta", BETAS, "s = LL(A|C) - (1 - lambda) LL(A|empty) + beta |A|",
                           lambda s, length, beta: s + beta * length),
}
MAX_LABEL_DISAGREEMENT = 0.01  # share of lines whose English and French labels may differ in parallel files


@dataclass(frozen=True)
class TaskSpec:
    """A classification set in XTREME layout (first<TAB>second<TAB>label) and its prompt templates."""
    name: str
    labels: tuple   # label strings of the file, in option order
    prefix: dict    # language -> the template's answer prefix, appended to the first sentence
    options: dict   # language -> one option word per label, each followed by the second sentence

    def describe(self, lang):
        opts = " / ".join(repr(o + "{second}") for o in self.options[lang])
        return f"context: {{first}}{self.prefix[lang]!r}; options ({', '.join(self.labels)}): {opts}"


TASK_SPECS = {
    "xnli": TaskSpec("xnli", ("entailment", "neutral", "contradiction"),
                     {"en": ", right?", "fr": ", correct ?"},
                     {"en": (" Yes, ", " Also, ", " No, "), "fr": (" Oui, ", " Aussi, ", " Non, ")}),
    "pawsx": TaskSpec("pawsx", ("1", "0"),  # 1: paraphrase
                      {"en": ", right?", "fr": ", n'est-ce pas ?"},
                      {"en": (" Yes, ", " No, "), "fr": (" Oui, ", " Non, ")}),
}


@dataclass(frozen=True)
class Example:
    line: int     # 1-based line number in the file (the split is made on line numbers)
    first: str
    second: str
    label: int    # index into TaskSpec.labels


# -----------------------------------------------------------------------------
# data

def dev_relpath(task, lang):
    """The labelled dev set's path in the XTREME layout (under a data root or the resource cache)."""
    return f"xling/{task}/dev-{lang}.tsv"


def dev_path(data_root, task, lang):
    return Path(data_root) / dev_relpath(task, lang)


def read_examples(path, spec):
    """(ParsedFile of Examples, number of lines in the file); malformed lines are recorded by line
    number and skipped. ResourceError when the file is missing or has no usable line."""
    parsed = ParsedFile(str(path))
    lines = _open_lines(path, parsed)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 3:
            parsed.bad(number, f"{len(fields)} tab-separated fields, expected 3")
        elif not fields[0] or not fields[1]:
            parsed.bad(number, "empty sentence")
        elif fields[2] not in spec.labels:
            parsed.bad(number, f"label {fields[2]!r} is not one of {', '.join(spec.labels)}")
        else:
            parsed.rows.append(Example(number, fields[0], fields[1], spec.labels.index(fields[2])))
    return parsed.require_rows(), len(lines)


def tuning_half(line_numbers, total_lines, seed=SPLIT_SEED):
    """Boolean mask over examples: True for the tuning half, False for the reporting half. The
    halves are a seeded shuffle of the file's line numbers, so parallel files split alike."""
    order = np.random.default_rng(seed).permutation(total_lines)
    in_tuning = np.zeros(total_lines + 1, dtype=bool)
    in_tuning[order[:total_lines // 2] + 1] = True
    return in_tuning[np.asarray(line_numbers)]


def language_tag(tok, meta, lang):
    """The language tag id to put before a text, or None when the dataset has no tags.
    Every dataset of data/europarl/prepare.py writes `<EN> english <FR> french <eot>`."""
    tagged = meta.get("special_tokens", {}).get(lang) is not None
    return {"en": tok.en_id, "fr": tok.fr_id}[lang] if tagged else None


# -----------------------------------------------------------------------------
# scoring

def fit_to_block(context, answer, block_size):
    """(context, answer, context_cut, answer_cut) such that the model's input, context + answer
    without its last token, fits block_size: the context is cut from the left and keeps at least
    one token; an answer too long even then keeps its first block_size tokens."""
    answer_cut = len(answer) > block_size
    answer = answer[:block_size]
    keep = block_size + 1 - len(answer)
    return context[-keep:], answer, len(context) > keep, answer_cut


def passes(groups, rows_per_pass):
    """Lists of group indices, each one forward pass: groups sorted by length (little padding),
    a group (all options of one example) never split, about rows_per_pass rows per pass."""
    order = sorted(range(len(groups)), key=lambda g: -max(len(c) + len(a) for c, a in groups[g]))
    batch, rows = [], 0
    for g in order:
        if batch and rows + len(groups[g]) > rows_per_pass:
            yield batch
            batch, rows = [], 0
        batch.append(g)
        rows += len(groups[g])
    if batch:
        yield batch


@torch.inference_mode()
def answer_log_likelihoods(model, groups, device, rows_per_pass=64, desc="scoring"):
    """LL(A|C) of every (context ids, answer ids) pair of every group, as a list of float64
    arrays (one per group), with the counts of contexts and answers cut to the block.

    Rows are right-padded: causal attention never lets a real position see the padding, and
    positions start at 0 in every row, so each row scores as it would alone."""
    block_size = model.config.block_size
    fitted = [[fit_to_block(c, a, block_size) for c, a in group] for group in groups]
    cut = {"contexts_cut": sum(f[2] for g in fitted for f in g), "answers_cut": sum(f[3] for g in fitted for f in g)}
    scores = [None] * len(groups)
    batches = list(passes([[f[:2] for f in g] for g in fitted], rows_per_pass))
    for batch in tqdm(batches, desc=desc, leave=False):
        rows = [f for g in batch for f in fitted[g]]
        width = max(len(c) + len(a) - 1 for c, a, _, _ in rows)
        idx = torch.zeros(len(rows), width, dtype=torch.long)  # padding id is irrelevant (never attended)
        targets = torch.full((len(rows), width), -1, dtype=torch.long)
        for r, (c, a, _, _) in enumerate(rows):
            sequence = torch.tensor(c + a)
            idx[r, :len(sequence) - 1] = sequence[:-1]
            targets[r, len(c) - 1:len(sequence) - 1] = sequence[len(c):]
        logits, _ = model(idx.to(device))
        scored = targets != -1
        picked = logits[scored.to(logits.device)].float()  # only answer positions go through log_softmax
        token_ll = F.log_softmax(picked, dim=-1).gather(1, targets[scored].to(picked.device)[:, None])[:, 0]
        row_ll = torch.zeros(len(rows), dtype=torch.float64).index_add_(
            0, scored.nonzero()[:, 0], token_ll.double().cpu())
        start = 0
        for g in batch:
            scores[g] = row_ll[start:start + len(fitted[g])].numpy()
            start += len(fitted[g])
    return scores, cut


def score_components(model, tok, spec, lang, examples, tag, device, rows_per_pass=64):
    """(N, options) arrays LL(A|C), LL(A|empty) and |A| for every example, and the cut counts.
    The unconditional prior is computed once per distinct answer (they share one context)."""
    start = [tok.eot_id] + ([tag] if tag is not None else [])
    options = spec.options[lang]
    contexts = tok.encode_batch([ex.first + spec.prefix[lang] for ex in examples])
    answers = tok.encode_batch([option + ex.second for ex in examples for option in options])
    n = len(options)
    groups = [[(start + context, answers[i * n + j]) for j in range(n)] for i, context in enumerate(contexts)]
    conditional, cut = answer_log_likelihoods(model, groups, device, rows_per_pass, f"{spec.name} {lang} LL(A|C)")
    prior_context = start + tok.encode(spec.prefix[lang])
    distinct = list(dict.fromkeys(tuple(a) for a in answers))
    prior, _ = answer_log_likelihoods(model, [[(prior_context, list(a))] for a in distinct], device,
                                      rows_per_pass, f"{spec.name} {lang} LL(A|empty)")
    prior_of = {a: float(p[0]) for a, p in zip(distinct, prior)}
    block_size = model.config.block_size
    return {"conditional": np.stack(conditional),
            "prior": np.array([prior_of[tuple(a)] for a in answers]).reshape(-1, n),
            "length": np.array([min(len(a), block_size) for a in answers], dtype=np.float64).reshape(-1, n),
            "labels": np.array([ex.label for ex in examples]),
            "cut": {**cut, "distinct_prior_answers": len(distinct)}}


def option_scores(c, lam, x, length_term="exponent"):
    """s for every example and option, x the length term's parameter (alpha or beta); lam and x
    broadcast (e.g. the whole grid at once). Both forms are plain LL(A|C) at lam = 1, x = 0."""
    return LENGTH_TERMS[length_term].apply(c["conditional"] - (1.0 - lam) * c["prior"], c["length"], x)


def grid_accuracies(c, mask, length_term="exponent"):
    """(len(LAMBDAS), len(grid)) accuracy of every scoring on the examples selected by mask."""
    scores = option_scores({k: c[k][mask] for k in ("conditional", "prior", "length")}, LAMBDAS[:, None, None, None],
                           LENGTH_TERMS[length_term].grid[None, :, None, None], length_term)
    return (scores.argmax(-1) == c["labels"][mask]).mean(-1)


def tune(c, mask, length_term="exponent"):
    """(lambda, alpha or beta) of the best accuracy on the masked examples; ties go to the larger lambda,
    then the smaller length parameter (the simpler scoring)."""
    term = LENGTH_TERMS[length_term]
    acc = grid_accuracies(c, mask, length_term)
    preference = acc[::-1]  # lambda descending
    i, j = np.unravel_index(np.argmax(preference), preference.shape)
    return {"lambda": float(LAMBDAS[::-1][i]), term.parameter: float(term.grid[j]), "length_term": length_term,
            "tuning_accuracy": float(preference[i, j]), "tuning_examples": int(mask.sum()),
            "grid_tuning_accuracy": {f"lambda={l:.1f}": {f"{term.parameter}={x:.1f}": float(acc[li, xi])
                                                         for xi, x in enumerate(term.grid)}
                                     for li, l in enumerate(LAMBDAS)}}


def accuracy_with_interval(c, mask, lam, x, length_term="exponent"):
    """Accuracy with its Wilson interval, and the 0/1 hit of each example (for paired tests between models
    scored on the same examples)."""
    hits = option_scores(c, lam, x, length_term)[mask].argmax(-1) == c["labels"][mask]
    return {**metrics.accuracy_interval(int(hits.sum()), int(mask.sum())), "hits": hits.astype(int).tolist()}


def report_half(c, mask, tuned, spec):
    """Accuracy of the tuned scoring on the masked (reporting) examples next to its controls."""
    counts = np.bincount(c["labels"][mask], minlength=len(spec.labels))
    parameter = LENGTH_TERMS[tuned["length_term"]].parameter
    return {"tuned": {k: tuned[k] for k in ("lambda", parameter, "length_term", "tuning_accuracy", "tuning_examples")},
            "accuracy": accuracy_with_interval(c, mask, tuned["lambda"], tuned[parameter], tuned["length_term"]),
            "conditional": accuracy_with_interval(c, mask, 1.0, 0.0),
            "chance": 1.0 / len(spec.labels),
            "majority": {"label": spec.labels[int(counts.argmax())], "accuracy": float(counts.max() / mask.sum())}}


# -----------------------------------------------------------------------------
# the task

def evaluate_task(model, tok, meta, task, find, device="cpu", rows_per_pass=64, limit=None, length_term="exponent"):
    """Results of one task in both languages and the cross-lingual line (dict for results.json).
    find(relpath) gives a dev file's path (evaluate.py: data root, then cache, then download) or
    raises ResourceError.
    limit: score only the first examples of each file (the halves stay those of the whole file).
    length_term: a key of LENGTH_TERMS.
    A language whose dev file is missing is skipped with the reason; ResourceError if both are."""
    spec, term = TASK_SPECS[task], LENGTH_TERMS[length_term]
    result = {"scoring": term.scoring, "length_term": length_term,
              "grid": {"lambda": LAMBDAS.tolist(), term.parameter: term.grid.tolist()},
              "split": {"seed": SPLIT_SEED, "method": "seeded shuffle of line numbers; first half tunes, "
                        "second half reports"},
              "interval": "95% Wilson", "dtype": "float32"}
    components, halves, files = {}, {}, {}
    for lang in LANGUAGES:
        try:
            parsed, total_lines = read_examples(find(dev_relpath(task, lang)), spec)
        except ResourceError as e:
            result[lang] = {"skipped": str(e)}
            continue
        files[lang] = (total_lines, {ex.line: ex.label for ex in parsed.rows})
        if parsed.warning():
            print(parsed.warning(), file=sys.stderr)
        t0 = time.perf_counter()
        examples = parsed.rows[:limit]
        tag = language_tag(tok, meta, lang)
        c = score_components(model, tok, spec, lang, examples, tag, device, rows_per_pass)
        components[lang] = c
        halves[lang] = tuning_half([ex.line for ex in examples], total_lines)
        if halves[lang].all() or not halves[lang].any():
            del components[lang]
            result[lang] = {"skipped": f"all {len(examples)} scored examples fall in one half; score more examples"}
            continue
        tuned = tune(c, halves[lang], length_term)
        result[lang] = {"data": parsed.summary(), "template": spec.describe(lang),
                        "language_tag": tok.token_str(tag) if tag is not None else None,
                        "examples": len(examples), **c["cut"], **report_half(c, ~halves[lang], tuned, spec),
                        "grid_tuning_accuracy": tuned["grid_tuning_accuracy"], "seconds": time.perf_counter() - t0}
    if not components:
        raise ResourceError(f"{task}: " + "; ".join(result[lang]["skipped"] for lang in LANGUAGES))
    result["en->fr"] = cross_lingual(components, halves, files, spec, length_term)
    return result


def cross_lingual(components, halves, files, spec, length_term):
    """The en->fr line: tuned on the English tuning half, reported on the French reporting half; or
    skipped with the reason, when a language is missing or the two files are not line-parallel."""
    if len(components) < len(LANGUAGES):
        return {"skipped": "needs both languages"}
    check = parallel_check(files["en"], files["fr"])
    if "skipped" in check:
        return check
    return {"note": "tuned on the English tuning half, reported on the French reporting half", "parallel_check": check,
            **report_half(components["fr"], ~halves["fr"], tune(components["en"], halves["en"], length_term), spec)}


def parallel_check(english, french):
    """Whether two dev files, each (line count, {line number: label}), are line-parallel: the same
    number of lines and, since the XTREME layout has no example ids, the same label on (nearly)
    every line. A reordered file disagrees on about half its lines, a parallel one on almost none
    (PAWS-X dev: 3 of 2,000). {"skipped": reason} when they are not."""
    (en_lines, en_labels), (fr_lines, fr_labels) = english, french
    if en_lines != fr_lines:
        return {"skipped": f"the English dev file has {en_lines} lines and the French {fr_lines}: they are not "
                           "line-parallel, so a French line is not the translation of the English one"}
    common = en_labels.keys() & fr_labels.keys()
    disagreements = sum(en_labels[n] != fr_labels[n] for n in common)
    if disagreements > MAX_LABEL_DISAGREEMENT * len(common):
        return {"skipped": f"{disagreements} of {len(common)} lines have another label in the English dev file than in "
                           "the French: the files are not line-parallel (lines in another order?)"}
    return {"lines": en_lines, "labelled_lines_compared": len(common), "label_disagreements": disagreements}
