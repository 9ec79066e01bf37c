"""
Sense interventions on a Backpack (Hewitt et al., ACL 2023, sections 6-7) and their Transformer baselines.

A Backpack's logits are E o with o_i = sum_j sum_l alpha[l,i,j] C(x_j)_l and no LayerNorm after the
sum (model.py BackpackLM._states), so each sense can be read as its vocabulary projection E C(x)_l,
each prediction splits exactly into (past token, sense) contributions, and editing C(x)_l changes
behaviour predictably. Every edit here goes through the model's own hooks,
forward(idx, senses_fn=..., alpha_fn=...) (and embeddings_fn for the Transformer baselines), so
there is one forward pass. One function per idea:

  reading       read_senses: top +/- vocabulary items of E C(x)_l, word arithmetic, language masks
  attribution   sense_contributions: alpha[l,i,j] * (E C(x_j)_l)[y], summing to the logit of y
  placement     find_word / place_word: the positions of a word's own pieces as a whole word (never
                a piece of it inside another word; after l', d', qu' too); answer_pieces: a word as
                the tokenizer writes it after a prompt, spaced or glued after an apostrophe
  scoring       word_logprobs: a word's log-probability in context, summed over its pieces and per piece
  topic control topic_scores, topic_weights, annealing (settings: Annealing), topic_senses_fn
                (authors' rank_vocab.py and intervened_models.py); bag_mass, the next-token mass on
                the bag; Transformer baseline: a logit bonus on the bag
  debiasing     gender_sense, pronoun_log_ratios, optimise_scale (scipy Nelder-Mead, as the authors);
                Transformer baseline: the he-she direction projected out of the profession embedding
  knowledge     knowledge_edit: C~_l = C_l - c e_r + c (|e_r|^2/|e_a|^2) e_a, c = C_l.e_r/|e_r|^2;
                knowledge_projection, the closed form of the margin change it causes
  language      language_senses, scale_senses_fn; Transformer control: random embedding directions

An edit is a function edit(idx, at) -> forward's hooks, `at` (B,T) marking the intervened word's
positions (position-free edits ignore it). Generation with an edit uses the KV cache
(generation.sample_edited).
"""
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from backpacks.eval.lexical import WordVectors, has_senses, word_pieces
from backpacks.metrics import words as split_words
from backpacks.textfile import TextFileError, read_utf8


class InterventionError(ValueError):
    """Bad input to an intervention: shown to the user as one line."""


def require_backpack(model, what):
    if not has_senses(model):
        raise InterventionError(f"{what} needs a Backpack checkpoint; this one is a {model.model_type} "
                                "(it has no sense vectors)")


def first_pieces(tokenizer, words):
    """{word: its first token id} for the words that have one. As in the authors' code, a word
    stands for the first piece of ' ' + word; a bare-space piece (small BPE vocabularies split
    ' he' into ' ' + 'he') is skipped, since it is shared by every word."""
    return {w: p[0] for w, p in zip(words, word_pieces(tokenizer, words)) if p}


# ----------------------------------------------------------------------------- reading senses

def parse_word_arithmetic(expression):
    """'king' or '+king-man+woman' -> [(1, 'king'), (-1, 'man'), (1, 'woman')]."""
    terms = re.findall(r'([+-]?)\s*([^+\-\s][^+\-]*)', expression.strip())
    parsed = [(-1 if sign == '-' else 1, word.strip()) for sign, word in terms if word.strip()]
    if not parsed:
        raise InterventionError(f"no word in {expression!r}; give a word or +a-b+c")
    return parsed


@torch.no_grad()
def word_senses(model, tokenizer, expression):
    """(k, d) signed sum of the words' sense matrices (each the mean over the word's pieces)."""
    require_backpack(model, "reading senses")
    terms = parse_word_arithmetic(expression)
    vectors = WordVectors(model, tokenizer, [w for _, w in terms])
    missing = [w for _, w in terms if w not in vectors]
    if missing:
        raise InterventionError(f"{', '.join(map(repr, missing))} encodes to no tokens")
    return sum(sign * torch.from_numpy(vectors.senses[vectors.row[w]]) for sign, w in terms)


@torch.no_grad()
def read_senses(model, tokenizer, expression, top_k=8, mask=None):
    """Per sense l, the top_k tokens with the largest and the smallest logit in E C_l (raw logits).
    mask: optional (V,) bool, e.g. a language's tokens (lexical.token_language_masks)."""
    senses = word_senses(model, tokenizer, expression)
    logits = senses @ model.token_embeddings.detach().float().cpu().t()  # (k, V)
    allowed = torch.ones(logits.shape[1], dtype=torch.bool) if mask is None else torch.as_tensor(mask)
    n = min(top_k, int(allowed.sum()))
    rows = []
    for sense, row in enumerate(logits):
        top = row.masked_fill(~allowed, float('-inf')).topk(n)
        bottom = (-row).masked_fill(~allowed, float('-inf')).topk(n)
        rows.append({'sense': sense,
                     'positive': [(tokenizer.token_str(i), v) for i, v in zip(top.indices.tolist(), top.values.tolist())],
                     'negative': [(tokenizer.token_str(i), -v) for i, v in zip(bottom.indices.tolist(), bottom.values.tolist())]})
    return rows


# ----------------------------------------------------------------------------- attribution

@torch.no_grad()
def sense_contributions(model, idx, targets):
    """contributions (B,T,k,T): [b,i,l,j] = alpha[l,i,j] * (E C(x_j)_l)[targets[b,i]], and the model's
    logits (B,T,V). Summed over (l, j) they give logits[b, i, targets[b, i]]: o has no LayerNorm
    before the tied head. alpha and C are captured from the forward pass itself through its hooks."""
    require_backpack(model, "attribution")
    seen = {}
    keep = lambda name: lambda t: seen.setdefault(name, t)
    logits, _ = model(idx, senses_fn=keep('senses'), alpha_fn=keep('alpha'))
    target_rows = model.token_embeddings[targets]  # (B,T,d)
    projection = torch.einsum('bljd,bid->bilj', seen['senses'], target_rows)  # (E C(x_j)_l)[y_i]
    return seen['alpha'].permute(0, 2, 1, 3) * projection, logits


# ----------------------------------------------------------------------------- where a word is

@dataclass
class Prompt:
    """Token ids of a prompt (language tag first), its text without the tag, and the positions of
    the intervened word's pieces in it (empty when the word does not occur)."""
    ids: list
    text: str
    positions: list


def word_spans(text, word):
    """Character spans of the whole-word occurrences of word in text: not inside a longer word, and
    an apostrophe ends the word before it, so "Allemagne" is found in "l'Allemagne"."""
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text)]


def split_point(tokenizer, text, ids, char):
    """How many tokens of ids (= encode(text)) spell text[:char]; an InterventionError when no prefix
    of the tokens does (the tokenizer merged across that point)."""
    head = tokenizer.encode(text[:char]) if char else []
    if ids[:len(head)] != head:
        raise InterventionError(f"the tokenizer does not split {text!r} at character {char} "
                                f"({text[max(0, char - 10):char]!r}|{text[char:char + 10]!r}), so the word there "
                                "cannot be placed on whole tokens")
    return len(head)


def span_positions(tokenizer, text, ids, start, end):
    """Positions in ids (= encode(text)) of the pieces spelling text[start:end]. A space before it is
    part of its first piece in both byte-level BPE and SentencePiece; a piece that is only blank
    (small vocabularies split ' he' into ' ' + 'he') is shared by every word and left out."""
    if start > 0 and text[start - 1] == ' ':
        start -= 1
    first, last = split_point(tokenizer, text, ids, start), split_point(tokenizer, text, ids, end)
    return [i for i in range(first, last) if tokenizer.decode([ids[i]]).strip()]


def find_word(tokenizer, tag_id, text, word):
    """Prompt of [tag] + text with the positions of every whole-word occurrence of word."""
    if not word.strip():
        raise InterventionError(f"an empty word cannot be placed in {text!r}")
    ids = tokenizer.encode(text)
    positions = [1 + i for start, end in word_spans(text, word)
                 for i in span_positions(tokenizer, text, ids, start, end)]
    return Prompt([tag_id] + ids, text, positions)


def place_word(tokenizer, tag_id, template, word):
    """Prompt of [tag] + template with word in place of {}; its positions are the word's pieces there
    (and wherever else the word occurs whole). An InterventionError when the word has no piece there."""
    prompt = find_word(tokenizer, tag_id, template.format(word), word)
    if not prompt.positions:
        raise InterventionError(f"{word!r} has no token of its own in {prompt.text!r}")
    return prompt


def place_words(tokenizer, tag_id, templates, word):
    return [place_word(tokenizer, tag_id, t, word) for t in templates]


def written_after(prompt_text, word):
    """The word as a text continues: glued after an apostrophe ("qu'il", "l'Italie"), spaced otherwise."""
    return word if prompt_text.endswith(("'", "’", " ")) else ' ' + word


def answer_pieces(tokenizer, prompt_text, word):
    """Token ids of word as the tokenizer writes it right after prompt_text (with its space or not)."""
    text = prompt_text + written_after(prompt_text, word)
    ids = tokenizer.encode(text)
    pieces = ids[split_point(tokenizer, text, ids, len(prompt_text)):]
    if not pieces:
        raise InterventionError(f"{word!r} encodes to no tokens after {prompt_text!r}")
    return pieces


def first_informative(tokenizer, pieces):
    """The first piece that is not only blank (the one that carries the word)."""
    return next((i for i in pieces if tokenizer.decode([i]).strip()), pieces[0])


# ----------------------------------------------------------------------------- scoring

def right_pad(sequences, pad_id):
    """(N, T) batch of id lists padded on the right (causal models: padding never reaches earlier positions)."""
    T = max(len(s) for s in sequences)
    out = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    for r, s in enumerate(sequences):
        out[r, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def position_mask(shape, prompts):
    """(B, T) True at each prompt's word positions (row r holds prompts[r], right-padded)."""
    at = torch.zeros(shape, dtype=torch.bool)
    for r, prompt in enumerate(prompts):
        at[r, prompt.positions] = True
    return at


def hooks_for(edit, rows, prompts):
    """forward's hooks of an edit (None: none) for right-padded rows holding the prompts."""
    return {} if edit is None else edit(rows, position_mask(rows.shape, prompts).to(rows.device))


@torch.no_grad()
def word_logprobs(model, prompts, words, pad_id, edit=None):
    """(sum, per-piece mean), each (N,): log p(words[n] | prompts[n]) summed over the word's pieces
    (each given the prompt and the earlier pieces) and divided by their number, in one forward pass.
    words[n] are the word's pieces as written in that context (answer_pieces). With single-token
    words the sum is the next-token log-probability the paper uses; small vocabularies split even
    ' she', so the whole word is scored (deliberate difference), and the mean per piece is a measure
    that does not grow with the number of pieces."""
    rows = right_pad([p.ids + w for p, w in zip(prompts, words)], pad_id).to(model.token_embeddings.device)
    logp = model(rows, **hooks_for(edit, rows, prompts))[0].float().log_softmax(-1)
    per_piece = [logp[n, len(p.ids) - 1 + torch.arange(len(w)), w] for n, (p, w) in enumerate(zip(prompts, words))]
    return torch.stack([s.sum() for s in per_piece]).cpu(), torch.stack([s.mean() for s in per_piece]).cpu()


@torch.no_grad()
def continuation_nll(model, sequences, prompt_length):
    """Mean NLL (nats/token) of each sequence's tokens after prompt_length, under the unedited model."""
    logits, _ = model(sequences[:, :-1])
    nll = F.cross_entropy(logits.float().transpose(1, 2), sequences[:, 1:], reduction='none')
    return nll[:, prompt_length - 1:].mean(dim=1)


# ----------------------------------------------------------------------------- topic control

# (above q95, q80-q95, q60-q80, below q60) sense weights per strength: the authors' test_topic.py
TOPIC_STRENGTHS = {0: (1.0, 1.0, 1.0, 1.0), 1: (1.5, 1.5, 1.3, 1.0), 2: (2.2, 2.2, 1.5, 1.0), 3: (3.3, 3.3, 3.0, 1.0)}
TOPIC_QUANTILES = (0.95, 0.80, 0.60)


@dataclass(frozen=True)
class Annealing:
    """The authors' mask_annealing: b_jl = sigmoid(-f a_jl + offset) (1 + j / position_scale) with
    f = max(delta) / divisor. The defaults are theirs, set for backpack-gpt2, whose sense logits
    are GPT-2-sized; a model with other logit scales may need others (the report states the scale).
    on=False weights every sense by delta itself (their anneal=False)."""
    on: bool = True
    offset: float = 6.0
    divisor: float = 7.5
    position_scale: float = 100.0


def bag_vector(tokenizer, words, vocab_size):
    """(V,) 0/1 vector at the first piece of each bag word, and which words had a piece."""
    ids = first_pieces(tokenizer, words)
    bag = torch.zeros(vocab_size)
    bag[list(ids.values())] = 1.0
    return bag, ids


@torch.no_grad()
def sense_logit_max(model, chunk=256):
    """(V, k) max_v (E C(x)_l)[v] for every token x and sense l: the scale of each sense's logits.
    It does not depend on the topic, so it is computed once for all topics."""
    require_backpack(model, "topic control")
    E = model.token_embeddings
    return torch.cat([(model.sense_vectors(torch.arange(s, min(s + chunk, E.shape[0]), device=E.device)) @ E.t())
                      .max(dim=-1).values for s in range(0, E.shape[0], chunk)]).float()


@torch.no_grad()
def topic_scores(model, bag, row_max=None, chunk=256):
    """(V, k) score(x, l) = (s / max_v s_v) . bag with s = E C(x)_l, over every token x and sense l
    (authors' rank_vocab.non_contextual_localize), written C(x)_l . (E^T bag) / max_v s_v so that
    no (V, k, V) tensor exists and the maxima (sense_logit_max) serve every topic."""
    require_backpack(model, "topic control")
    E = model.token_embeddings
    row_max = sense_logit_max(model, chunk) if row_max is None else row_max
    target = bag.to(E.device, E.dtype) @ E  # (d,)
    dots = torch.cat([model.sense_vectors(torch.arange(s, min(s + chunk, E.shape[0]), device=E.device)) @ target
                      for s in range(0, E.shape[0], chunk)]).float()
    return dots / row_max.to(dots.device)


def topic_weights(scores, strength):
    """(V, k) delta: each (token, sense) weighted by where its score falls among the 0.95/0.80/0.60
    quantiles of all scores. As in the authors' weights_from_scores, comparisons are strict, so a
    score exactly at a quantile keeps weight 1."""
    if strength not in TOPIC_STRENGTHS:
        raise InterventionError(f"topic strength must be one of {sorted(TOPIC_STRENGTHS)}, got {strength}")
    w = TOPIC_STRENGTHS[strength]
    q95, q80, q60 = torch.quantile(scores.flatten(), torch.tensor(TOPIC_QUANTILES, device=scores.device))
    delta = torch.ones_like(scores)
    delta = torch.where(scores > q95, w[0], delta)
    delta = torch.where((scores > q80) & (scores < q95), w[1], delta)
    delta = torch.where((scores > q60) & (scores < q80), w[2], delta)
    return torch.where(scores < q60, w[3], delta)


def annealing_input(model, idx, senses):
    """a (B,k,T): a_jl = sum_i max(E_{x_i} . C(x_j)_l, 0) over every token i of the current sequence."""
    return torch.einsum('bljd,bid->blji', senses, model.token_embeddings[idx]).clamp(min=0).sum(-1)


def annealing(model, idx, senses, scale, settings=Annealing()):
    """b (B,k,T) of the authors' mask_annealing (see Annealing): senses already strongly predicting
    the text are pushed less, later positions a little more; all ones when annealing is off."""
    if not settings.on:
        return torch.ones(senses.shape[:3], device=senses.device, dtype=senses.dtype)
    position_bonus = 1 + torch.arange(idx.shape[1], device=idx.device) / settings.position_scale
    return torch.sigmoid(-scale * annealing_input(model, idx, senses) + settings.offset) * position_bonus


def topic_senses_fn(model, idx, delta, settings=Annealing()):
    """senses_fn scaling C(x_j)_l by the annealed weight delta b + (1 - b), written 1 + b (delta - 1)
    so that delta = 1 is exactly the identity."""
    scale = float(delta.max()) / settings.divisor
    token_delta = delta.to(idx.device)[idx].transpose(1, 2)  # (B,k,T)

    def edit(senses):
        b = annealing(model, idx, senses, scale, settings)
        return senses * (1 + b * (token_delta - 1)).unsqueeze(-1).to(senses.dtype)
    return edit


def topic_edit_of(model, delta, settings=Annealing()):
    """The edit (idx -> forward's hooks) of topic control with weights delta."""
    return lambda idx, at=None: {'senses_fn': topic_senses_fn(model, idx, delta, settings)}


@torch.no_grad()
def upweighted_annealing(model, idx, delta, settings=Annealing()):
    """(median b, median a) over the (position, sense) pairs that delta upweights, on sequences idx:
    how much of the push annealing lets through at the end of them, and the logit sums it reads."""
    senses = model.senses(idx)
    up = delta.to(idx.device)[idx].transpose(1, 2) > 1
    if not up.any():
        return None, None
    a = annealing_input(model, idx, senses)
    b = annealing(model, idx, senses, float(delta.max()) / settings.divisor, settings)
    return float(b[up].median()), float(a[up].median())


def bag_mass(logits, bag):
    """(B,) next-token probability on the bag's tokens: the target topic control pushes."""
    return logits.float().softmax(-1) @ bag.to(logits.device)


def logit_bonus_fn(bag, bonus):
    """Transformer baseline: add `bonus` to the logits of the bag's tokens."""
    return lambda logits: logits + bonus * bag.to(logits.device, logits.dtype)


def topic_rate(texts, bag_words):
    """Share of the texts' words that are in the bag, pooled over texts (the authors' count_coverage;
    words here are sacreBLEU 13a tokens, lowercased, where the authors used stanza)."""
    bag = {w.lower() for w in bag_words}
    tokens = [w.lower() for t in texts for w in split_words(t)]
    return sum(w in bag for w in tokens) / max(len(tokens), 1)


# ----------------------------------------------------------------------------- gender debiasing

def scale_senses_fn(at, senses, scale):
    """senses_fn multiplying senses `senses` at the positions `at` ((B,T) bool; None: everywhere) by
    `scale`. The authors scale alpha[:, sense, :, j] at the word's positions; alpha @ C makes the two
    identical."""
    def edit(C):
        pick = torch.zeros(C.shape[1], dtype=torch.bool, device=C.device)
        pick[list(senses)] = True
        where = torch.ones(C.shape[0], C.shape[2], dtype=torch.bool, device=C.device) if at is None else at
        hit = pick[None, :, None, None] & where[:, None, :, None]
        return torch.where(hit, C * scale, C)
    return edit


def projection_embeddings_fn(at, direction, p):
    """Transformer baseline (authors' modulate_baseline): at the profession's positions, the input
    embedding loses (1 - p) of its component along the he-she direction; the tied output head is
    unchanged. `at` is aligned from the right, so the new tokens of an incremental step find theirs."""
    unit = direction / direction.norm()

    def edit(x):
        where = at[:, -x.shape[1]:, None]
        return torch.where(where, x - (1 - p) * (x @ unit)[..., None] * unit, x)
    return edit


def backpack_debias_edit(sense):
    """p -> the edit scaling the gender sense at the profession's positions by p."""
    return lambda p: lambda idx, at: {'senses_fn': scale_senses_fn(at, [sense], p)}


def transformer_debias_edit(direction):
    return lambda p: lambda idx, at: {'embeddings_fn': projection_embeddings_fn(at, direction, p)}


def pronoun_log_ratios(model, prompts, he, she, pad_id, edit=None):
    """(whole word, per piece), each (N,): log p(he) - log p(she) after each prompt; he[n] and she[n]
    are the pronouns' pieces as written after prompt n."""
    total, mean = word_logprobs(model, prompts + prompts, list(he) + list(she), pad_id, edit)
    n = len(prompts)
    return total[:n] - total[n:], mean[:n] - mean[n:]


def bias_of(log_ratios):
    """Mean over prompts of max(p(he)/p(she), p(she)/p(he)) = exp|log p(he) - log p(she)|; 1 is unbiased."""
    return float(log_ratios.abs().exp().mean())


def profession_bias(model, prompts, he, she, pad_id, edit=None):
    """The bias of the whole pronouns (the authors' measure; with single-token pronouns their next-token one)."""
    return bias_of(pronoun_log_ratios(model, prompts, he, she, pad_id, edit)[0])


def optimise_scale(bias_at, max_evaluations=30):
    """argmin_p bias(p) + |1 - p| by Nelder-Mead from p = 1 (authors' estimate_weight). The authors
    passed 'max_iter', which scipy ignores; we cap the evaluations to bound the CPU time."""
    result = minimize(lambda p: bias_at(float(p[0])) + abs(1 - float(p[0])), x0=[1.0], method='Nelder-Mead',
                      options={'maxfev': max_evaluations, 'xatol': 1e-3, 'fatol': 1e-4})
    return float(result.x[0])


def gender_sense(model, professions, pad_id):
    """The sense whose removal from the professions' positions lowers the bias for the most professions
    (ties: the largest mean reduction), on estimation prompts. professions: {name: (prompts, he, she)}
    with the pronouns' pieces per prompt. Returns (sense, per-sense share helped, per-sense mean reduction)."""
    require_backpack(model, "debiasing")
    k = model.config.n_senses
    reductions = np.zeros((len(professions), k))
    for r, (prompts, he, she) in enumerate(professions.values()):
        base = profession_bias(model, prompts, he, she, pad_id)
        for sense in range(k):
            reductions[r, sense] = base - profession_bias(model, prompts, he, she, pad_id,
                                                          backpack_debias_edit(sense)(0.0))
    helped, mean = (reductions > 0).mean(0), reductions.mean(0)
    return int(np.lexsort((mean, helped))[-1]), helped.tolist(), mean.tolist()


# ----------------------------------------------------------------------------- knowledge editing

def edited_senses(C, e_r, e_a):
    """The paper's edit of sense vectors C (..., d): c = C . e_r / |e_r|^2 and
    C~ = C - c e_r + c (|e_r|^2 / |e_a|^2) e_a, written C + c (s e_a - e_r) so that r = a is exactly C."""
    c = (C @ e_r) / (e_r @ e_r)
    return C + c[..., None] * ((e_r @ e_r) / (e_a @ e_a) * e_a - e_r)


def knowledge_edit(model, r_id, a_id):
    """The edit replacing the word's association with token r by token a, in every sense of the
    word's pieces at its positions `at` (the authors replace the senses of the word's single token)."""
    E = model.token_embeddings

    def hooks(idx, at):
        where = at[:, None, :, None]
        return {'senses_fn': lambda C: torch.where(where, edited_senses(C, E[r_id].to(C.dtype), E[a_id].to(C.dtype)), C)}
    return hooks


def answer_margins(model, prompts, a, r, pad_id, edit=None):
    """(whole word, per piece), each (N,): log p(a | prompt) - log p(r | prompt), a[n] and r[n] the
    answers' pieces as written after prompt n."""
    total, mean = word_logprobs(model, prompts + prompts, list(a) + list(r), pad_id, edit)
    n = len(prompts)
    return total[:n] - total[n:], mean[:n] - mean[n:]


@torch.no_grad()
def knowledge_projection(model, prompts, r_id, a_id, pad_id):
    """Why an edit moves the next-token margin logit[a] - logit[r] after each prompt the way it does.
    The edit adds c (s e_a - e_r) to each edited sense (c = C . e_r / |e_r|^2, s = |e_r|^2 / |e_a|^2)
    and leaves alpha alone (the backbone never sees a sense), so the margin changes by exactly
    P (2 |e_r|^2 - (1 + s) e_a . e_r), with P = sum over the word's positions j and senses l of
    alpha[l, i, j] c_jl at the last prompt position i: the projection of the word's senses on e_r
    as the prediction weighs them. Returns {'projection': P, 'mean_c': c averaged over the word's
    senses, 'predicted': the margin change}, each (N,)."""
    rows = right_pad([p.ids for p in prompts], pad_id).to(model.token_embeddings.device)
    seen = {}
    keep = lambda name: lambda t: seen.setdefault(name, t)
    model(rows, senses_fn=keep('senses'), alpha_fn=keep('alpha'))
    E = model.token_embeddings.float()
    e_r, e_a = E[r_id], E[a_id]
    c = (seen['senses'].float() @ e_r) / (e_r @ e_r)  # (B,k,T)
    at = position_mask(rows.shape, prompts).to(rows.device)
    last = torch.tensor([len(p.ids) - 1 for p in prompts], device=rows.device)
    alpha_last = seen['alpha'].float()[torch.arange(len(prompts)), :, last]  # (B,k,T)
    projection = (alpha_last * c * at[:, None]).sum((1, 2))
    mean_c = (c * at[:, None]).sum((1, 2)) / (at.sum(1) * c.shape[1]).clamp(min=1)
    s = (e_r @ e_r) / (e_a @ e_a)
    factor = 2 * (e_r @ e_r) - (1 + s) * (e_a @ e_r)
    return {'projection': projection.cpu(), 'mean_c': mean_c.cpu(), 'predicted': (projection * factor).cpu()}


@torch.no_grad()
def token_margin(model, prompts, r_id, a_id, pad_id, edit=None):
    """(N,) logit[a] - logit[r] = log p(a) - log p(r) of the next token after each prompt."""
    rows = right_pad([p.ids for p in prompts], pad_id).to(model.token_embeddings.device)
    logits = model(rows, **hooks_for(edit, rows, prompts))[0].float()
    last = logits[torch.arange(len(prompts)), [len(p.ids) - 1 for p in prompts]]
    return (last[:, a_id] - last[:, r_id]).cpu()


@torch.no_grad()
def next_token_kl(model, prompts, pad_id, edit):
    """Mean KL(unedited || edited) of the next-token distributions over every real position of the prompts."""
    rows = right_pad([p.ids for p in prompts], pad_id).to(model.token_embeddings.device)
    real = right_pad([[1] * len(p.ids) for p in prompts], 0).bool()
    before = model(rows)[0].float().log_softmax(-1)
    after = model(rows, **hooks_for(edit, rows, prompts))[0].float().log_softmax(-1)
    kl = (before.exp() * (before - after)).sum(-1)
    return float(kl[real.to(kl.device)].mean())


# ----------------------------------------------------------------------------- language steering

@torch.no_grad()
def language_sense_scores(model, masks, chunk=256):
    """(k,) mean over every token x of [mean French-token logit - mean English-token logit] of E C(x)_l:
    positive senses push their tokens' predictions towards French."""
    require_backpack(model, "language steering")
    E = model.token_embeddings
    fr = torch.as_tensor(masks['fr'], device=E.device).float()
    en = torch.as_tensor(masks['en'], device=E.device).float()
    direction = fr / fr.sum() - en / en.sum()
    total = torch.zeros(model.config.n_senses, device=E.device)
    for start in range(0, E.shape[0], chunk):
        senses = model.sense_vectors(torch.arange(start, min(start + chunk, E.shape[0]), device=E.device))
        total += ((senses @ E.t()) @ direction).sum(0)
    return (total / E.shape[0]).float().cpu()


def language_senses(scores, n):
    """The n most French-leaning and the n most English-leaning senses."""
    order = torch.argsort(scores)
    return {'fr': order[-n:].flip(0).tolist(), 'en': order[:n].tolist()}


def random_directions(dim, n, seed=0):
    """(n, d) orthonormal random directions (the Transformer control for steering)."""
    q, _ = torch.linalg.qr(torch.randn(dim, n, generator=torch.Generator().manual_seed(seed)))
    return q.t()


def scale_directions_fn(directions, scale):
    """embeddings_fn scaling the input embeddings' components along orthonormal directions by scale."""
    def edit(x):
        U = directions.to(x.device, x.dtype)
        return x + (scale - 1) * (x @ U.t()) @ U
    return edit


def language_shares(generated, masks):
    """(share of English tokens, share of French tokens) among generated tokens of either language."""
    ids = generated.flatten().cpu().numpy()
    en, fr = int(masks['en'][ids].sum()), int(masks['fr'][ids].sum())
    return en / max(en + fr, 1), fr / max(en + fr, 1)


# ----------------------------------------------------------------------------- command-line helpers

def read_topic_words(value):
    """Bag of words from 'w1,w2 w3' or from a file with one word (or several) per line."""
    path = Path(value)
    if path.is_file():
        try:
            text = read_utf8(path, 'topic file')
        except TextFileError as e:
            raise InterventionError(str(e)) from None
    elif '/' in value or path.suffix in ('.txt', '.json', '.tsv'):
        raise InterventionError(f"topic file {value} not found")
    else:
        text = value
    words = [w for w in re.split(r'[,\s]+', text) if w]
    if not words:
        raise InterventionError(f"topic {value!r} has no words")
    return words


def topic_bag(tokenizer, words, vocab_size):
    """bag_vector of a topic's words; an InterventionError when the bag is empty or no word has a piece."""
    if not words:
        raise InterventionError("the topic bag is empty")
    bag, ids = bag_vector(tokenizer, words, vocab_size)
    if not ids:
        raise InterventionError(f"no word of the topic encodes to a token: {' '.join(words[:5])}")
    return bag, ids


def topic_edit(model, tokenizer, words, strength, settings=Annealing()):
    """The edit (idx -> forward's hooks) of topic control with a bag of words at a strength, and the
    words that had a piece."""
    bag, ids = topic_bag(tokenizer, words, model.config.vocab_size)
    return topic_edit_of(model, topic_weights(topic_scores(model, bag), strength), settings), ids
