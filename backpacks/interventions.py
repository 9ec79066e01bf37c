"""
Sense interventions on a Backpack (Hewitt et al., ACL 2023, sections 6-7) and their Transformer baselines.

A Backpack's logits are E o with o_i = sum_j sum_l alpha[l,i,j] C(x_j)_l and no LayerNorm after the
sum (model.py BackpackLM._logits), so each sense can be read as its vocabulary projection E C(x)_l,
each prediction splits exactly into (past token, sense) contributions, and editing C(x)_l changes
behaviour predictably. Every edit here goes through the model's own hooks,
forward(idx, senses_fn=..., alpha_fn=...) (and embeddings_fn for the Transformer baselines), so
there is one forward pass. One function per idea:

  reading       read_senses: top +/- vocabulary items of E C(x)_l, word arithmetic, language masks
  attribution   sense_contributions: alpha[l,i,j] * (E C(x_j)_l)[y], summing to the logit of y
  topic control topic_scores, topic_weights, annealing, topic_senses_fn (authors' rank_vocab.py and
                intervened_models.py); Transformer baseline: a logit bonus on the bag
  debiasing     gender_sense, profession_bias, optimise_scale (scipy Nelder-Mead, as the authors);
                Transformer baseline: the he-she direction projected out of the profession embedding
  knowledge     knowledge_edit_fn: C~_l = C_l - c e_r + c (|e_r|^2/|e_a|^2) e_a, c = C_l.e_r/|e_r|^2
  language      language_senses, scale_senses_fn; Transformer control: random embedding directions

Generation with an intervention (generate_edited) recomputes the whole sequence at every step
instead of using the KV cache: topic annealing depends on the whole current sequence, and the
edits are cheap next to clarity at the sizes this runs at.
"""
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from backpacks.lexical import WordVectors, has_senses, word_pieces
from backpacks.metrics import words as split_words
from backpacks.textfile import TextFileError, read_utf8
from model import _sample


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


# ----------------------------------------------------------------------------- generation with edits

@torch.no_grad()
def generate_edited(model, idx, max_new_tokens, edits_for=None, logits_fn=None, temperature=1.0, top_k=None):
    """Sample like model.generate, but through forward(idx, **edits_for(idx)) on the whole sequence
    at each step (no KV cache: topic annealing depends on every token so far). logits_fn edits the
    next-token logits (the Transformer's logit-bonus baseline)."""
    for _ in range(max_new_tokens):
        window = idx[:, -model.config.block_size:]
        logits, _ = model(window, **(edits_for(window) if edits_for else {}))
        logits = logits[:, -1].float()
        idx = torch.cat([idx, _sample(logits_fn(logits) if logits_fn else logits, temperature, top_k)], dim=1)
    return idx


@torch.no_grad()
def continuation_nll(model, sequences, prompt_length):
    """Mean NLL (nats/token) of each sequence's tokens after prompt_length, under the unedited model."""
    logits, _ = model(sequences[:, :-1])
    nll = F.cross_entropy(logits.float().transpose(1, 2), sequences[:, 1:], reduction='none')
    return nll[:, prompt_length - 1:].mean(dim=1)


def right_pad(sequences, pad_id):
    """(N, T) batch of id lists padded on the right (causal models: padding never reaches earlier positions)."""
    T = max(len(s) for s in sequences)
    out = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    for r, s in enumerate(sequences):
        out[r, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


@torch.no_grad()
def word_logprob(model, prompts, words, pad_id, edits_for=None):
    """(N,) log p(words[n] | prompts[n]) for id lists: the sum of the log-probabilities of the word's
    pieces (all of ' ' + word), each given the prompt and the earlier pieces, in one forward pass.
    With a single-token word this is the next-token log-probability the paper uses; small BPE
    vocabularies split even ' she', so the whole word is scored (deliberate difference)."""
    rows = right_pad([p + w for p, w in zip(prompts, words)], pad_id)
    logits, _ = model(rows, **(edits_for(rows) if edits_for else {}))
    logp = logits.float().log_softmax(-1)
    return torch.stack([logp[n, len(p) - 1 + torch.arange(len(w)), w].sum()
                        for n, (p, w) in enumerate(zip(prompts, words))]).cpu()


# ----------------------------------------------------------------------------- topic control

# (above q95, q80-q95, q60-q80, below q60) sense weights per strength: the authors' test_topic.py
TOPIC_STRENGTHS = {0: (1.0, 1.0, 1.0, 1.0), 1: (1.5, 1.5, 1.3, 1.0), 2: (2.2, 2.2, 1.5, 1.0), 3: (3.3, 3.3, 3.0, 1.0)}
TOPIC_QUANTILES = (0.95, 0.80, 0.60)
ANNEALING_DIVISOR = 7.5  # f = max(delta) / 7.5 (authors' annealing_scale)


def bag_vector(tokenizer, words, vocab_size):
    """(V,) 0/1 vector at the first piece of each bag word, and which words had a piece."""
    ids = first_pieces(tokenizer, words)
    bag = torch.zeros(vocab_size)
    bag[list(ids.values())] = 1.0
    return bag, ids


@torch.no_grad()
def topic_scores(model, bag, chunk=256):
    """(V, k) score(x, l) = (s / max_v s_v) . bag with s = E C(x)_l, over every token x and sense l
    (authors' rank_vocab.non_contextual_localize). Chunked: a (V, k, V) tensor never exists."""
    require_backpack(model, "topic control")
    E = model.token_embeddings
    bag = bag.to(E.device, E.dtype)
    scores = []
    for start in range(0, E.shape[0], chunk):
        logits = model.sense_vectors(torch.arange(start, min(start + chunk, E.shape[0]), device=E.device)) @ E.t()
        scores.append((logits / logits.max(dim=-1, keepdim=True).values) @ bag)
    return torch.cat(scores).float()


def topic_weights(scores, strength):
    """(V, k) delta: each (token, sense) weighted by where its score falls among the 0.95/0.80/0.60
    quantiles of all scores. As in the authors' weights_from_scores, comparisons are strict, so a
    score exactly at a quantile keeps weight 1."""
    if strength not in TOPIC_STRENGTHS:
        raise InterventionError(f"topic strength must be one of {sorted(TOPIC_STRENGTHS)}, got {strength}")
    w = TOPIC_STRENGTHS[strength]
    q95, q80, q60 = torch.quantile(scores.flatten(), torch.tensor(TOPIC_QUANTILES))
    delta = torch.ones_like(scores)
    delta = torch.where(scores > q95, w[0], delta)
    delta = torch.where((scores > q80) & (scores < q95), w[1], delta)
    delta = torch.where((scores > q60) & (scores < q80), w[2], delta)
    return torch.where(scores < q60, w[3], delta)


def annealing(model, idx, senses, scale):
    """b (B,k,T): b_jl = sigmoid(-scale * a_jl + 6) (1 + j/100) with a_jl = sum_i max(E_{x_i} . C(x_j)_l, 0)
    over the whole current sequence (authors' mask_annealing): senses already strongly predicting the
    text are pushed less, and later positions a little more."""
    a = torch.einsum('bljd,bid->blji', senses, model.token_embeddings[idx]).clamp(min=0).sum(-1)
    position_bonus = 1 + torch.arange(idx.shape[1], device=idx.device) / 100
    return torch.sigmoid(-scale * a + 6) * position_bonus


def topic_senses_fn(model, idx, delta):
    """senses_fn scaling C(x_j)_l by the annealed weight delta b + (1 - b), written 1 + b (delta - 1)
    so that delta = 1 is exactly the identity."""
    scale = float(delta.max()) / ANNEALING_DIVISOR
    token_delta = delta.to(idx.device)[idx].transpose(1, 2)  # (B,k,T)

    def edit(senses):
        b = annealing(model, idx, senses, scale)
        return senses * (1 + b * (token_delta - 1)).unsqueeze(-1).to(senses.dtype)
    return edit


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

def token_mask(idx, ids):
    """(B,T) True where idx holds one of ids: edits apply wherever the word's tokens occur (the
    authors match token ids; a multi-piece word is edited at each of its pieces)."""
    return torch.isin(idx, torch.as_tensor(list(ids), device=idx.device))


def scale_senses_fn(idx, ids, senses, scale):
    """senses_fn multiplying senses `senses` of the tokens `ids` (all tokens when ids is None) by `scale`.
    The authors scale alpha[:, sense, :, j] at those positions; alpha @ C makes the two identical."""
    where = torch.ones_like(idx, dtype=torch.bool) if ids is None else token_mask(idx, ids)

    def edit(C):
        pick = torch.zeros(C.shape[1], dtype=torch.bool, device=C.device)
        pick[list(senses)] = True
        hit = pick[None, :, None, None] & where[:, None, :, None]
        return torch.where(hit, C * scale, C)
    return edit


def projection_embeddings_fn(idx, ids, direction, p):
    """Transformer baseline (authors' modulate_baseline): at the profession's tokens, the input embedding
    loses (1 - p) of its component along the he-she direction; the tied output head is unchanged."""
    unit = direction / direction.norm()
    where = token_mask(idx, ids)[..., None]

    def edit(x):
        return torch.where(where, x - (1 - p) * (x @ unit)[..., None] * unit, x)
    return edit


def fill_prompts(tokenizer, tag_id, templates, word):
    """Token ids of [language tag] + each template with the word in place of {}."""
    return [[tag_id] + tokenizer.encode(t.format(word)) for t in templates]


def profession_bias(model, prompts, he, she, pad_id, edits_for=None):
    """Mean over prompts of max(p(he)/p(she), p(she)/p(he)) = exp|log p(he) - log p(she)|; he and she
    are the pronouns' piece lists."""
    both = word_logprob(model, prompts + prompts, [he] * len(prompts) + [she] * len(prompts), pad_id, edits_for)
    log_ratio = both[:len(prompts)] - both[len(prompts):]
    return float(log_ratio.abs().exp().mean())


def backpack_debias_edit(profession_ids, sense):
    return lambda p: lambda idx: {'senses_fn': scale_senses_fn(idx, profession_ids, [sense], p)}


def transformer_debias_edit(profession_ids, direction):
    return lambda p: lambda idx: {'embeddings_fn': projection_embeddings_fn(idx, profession_ids, direction, p)}


def optimise_scale(bias_at, max_evaluations=30):
    """argmin_p bias(p) + |1 - p| by Nelder-Mead from p = 1 (authors' estimate_weight). The authors
    passed 'max_iter', which scipy ignores; we cap the evaluations to bound the CPU time."""
    result = minimize(lambda p: bias_at(float(p[0])) + abs(1 - float(p[0])), x0=[1.0], method='Nelder-Mead',
                      options={'maxfev': max_evaluations, 'xatol': 1e-3, 'fatol': 1e-4})
    return float(result.x[0])


def gender_sense(model, professions, he, she, pad_id):
    """The sense whose removal from the professions' tokens lowers the bias for the most professions
    (ties: the largest mean reduction), on estimation prompts. professions: {name: (prompts, token ids)}.
    Returns (sense, per-sense share of professions helped, per-sense mean bias reduction)."""
    require_backpack(model, "debiasing")
    k = model.config.n_senses
    reductions = np.zeros((len(professions), k))
    for r, (prompts, ids) in enumerate(professions.values()):
        base = profession_bias(model, prompts, he, she, pad_id)
        for sense in range(k):
            reductions[r, sense] = base - profession_bias(model, prompts, he, she, pad_id,
                                                          backpack_debias_edit(ids, sense)(0.0))
    helped, mean = (reductions > 0).mean(0), reductions.mean(0)
    return int(np.lexsort((mean, helped))[-1]), helped.tolist(), mean.tolist()


# ----------------------------------------------------------------------------- knowledge editing

def edited_senses(C, e_r, e_a):
    """The paper's edit of sense vectors C (..., d): c = C . e_r / |e_r|^2 and
    C~ = C - c e_r + c (|e_r|^2 / |e_a|^2) e_a, written C + c (s e_a - e_r) so that r = a is exactly C."""
    c = (C @ e_r) / (e_r @ e_r)
    return C + c[..., None] * ((e_r @ e_r) / (e_a @ e_a) * e_a - e_r)


def knowledge_edit_fn(model, idx, word_ids, r_id, a_id):
    """senses_fn replacing the association of the word (its token ids) with token r by token a, in
    every sense of the word wherever its tokens occur."""
    E = model.token_embeddings
    where = token_mask(idx, word_ids)[:, None, :, None]
    return lambda C: torch.where(where, edited_senses(C, E[r_id].to(C.dtype), E[a_id].to(C.dtype)), C)


def answer_margin(model, prompts, a, r, pad_id, edits_for=None):
    """(N,) log p(a | prompt) - log p(r | prompt) for the piece lists a and r, in one forward pass."""
    logp = word_logprob(model, prompts * 2, [a] * len(prompts) + [r] * len(prompts), pad_id, edits_for)
    return logp[:len(prompts)] - logp[len(prompts):]


@torch.no_grad()
def next_token_kl(model, prompts, pad_id, edits_for):
    """Mean KL(unedited || edited) of the next-token distributions over every real position of the prompts."""
    rows = right_pad(prompts, pad_id)
    real = right_pad([[1] * len(p) for p in prompts], 0).bool()
    before = model(rows)[0].float().log_softmax(-1)
    after = model(rows, **edits_for(rows))[0].float().log_softmax(-1)
    kl = (before.exp() * (before - after)).sum(-1)
    return float(kl[real].mean())


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


def topic_edit(model, tokenizer, words, strength):
    """edits_for(idx) of topic control with a bag of words at a strength, and the words that had a piece."""
    bag, ids = bag_vector(tokenizer, words, model.config.vocab_size)
    if not ids:
        raise InterventionError(f"no word of the topic encodes to a token: {' '.join(words[:5])}")
    delta = topic_weights(topic_scores(model, bag), strength)
    return (lambda idx: {'senses_fn': topic_senses_fn(model, idx, delta)}), ids
