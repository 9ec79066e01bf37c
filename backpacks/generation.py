"""
Translation by autoregressive generation with a trained language model.

The prompt is `<EN> source <FR>` (or `<FR> source <EN>`), the same layout as the training
sequences, and the translation is everything the model writes until it opens the next segment
(a language tag) or ends the text. Sentences are sorted by length and decoded in batches,
LEFT-padded so every row ends at its last real token; the running attention mask makes the
padding invisible (model.step counts positions over real tokens only). Greedy and beam search
feed the model through one Decoder, with or without its KV cache.
"""
import time

import torch
from tqdm import tqdm

from backpacks.cli import fail
from model import sample_next

DIRECTIONS = ('en-fr', 'fr-en')


def direction_tags(tokenizer, direction):
    """(source tag id, target tag id) of a translation direction."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction == 'en-fr':
        return tokenizer.en_id, tokenizer.fr_id
    return tokenizer.fr_id, tokenizer.en_id


def stop_ids(tokenizer):
    """A translation ends where the model opens a new segment or ends the text."""
    return {tokenizer.en_id, tokenizer.fr_id, tokenizer.eot_id}


def new_token_cap(block_size):
    """The most tokens one translation may take: half the context window, so the prompt always keeps
    the other half (the scripts refuse a --max_new_tokens above it rather than lower it unsaid)."""
    return max(1, block_size // 2)


def check_max_new_tokens(max_new_tokens, block_size):
    """Refuse a --max_new_tokens that translation would lower to its cap (half the context)."""
    cap = new_token_cap(block_size)
    if max_new_tokens is not None and max_new_tokens > cap:
        fail(f"--max_new_tokens {max_new_tokens} is more than a translation may take with this model: at most "
             f"{cap}, half its {block_size}-token context (the prompt keeps the other half)")


def new_token_budget(n_source, block_size, max_new_tokens=None):
    """How many tokens one translation may take: by default twice the source plus some slack,
    at most new_token_cap."""
    wanted = 2 * n_source + 10 if max_new_tokens is None else max_new_tokens
    return max(1, min(wanted, new_token_cap(block_size)))


def build_prompt(source_ids, src_tag, tgt_tag, budget, block_size):
    """`<src> source <tgt>`; a source too long for prompt + budget to fit the context loses its
    first tokens (the end of the source is next to the translation, so it matters most).
    Returns (prompt ids, number of source tokens dropped)."""
    room = block_size - budget - 2
    dropped = max(0, len(source_ids) - room)
    return [src_tag] + source_ids[dropped:] + [tgt_tag], dropped


def prepare_prompts(tokenizer, sources, direction, block_size, max_new_tokens=None):
    """Prompts and token budgets for all sources; also how many sources had to be truncated."""
    src_tag, tgt_tag = direction_tags(tokenizer, direction)
    prompts, budgets, n_truncated = [], [], 0
    for ids in tokenizer.encode_batch(list(sources)):
        budget = new_token_budget(len(ids), block_size, max_new_tokens)
        prompt, dropped = build_prompt(ids, src_tag, tgt_tag, budget, block_size)
        prompts.append(prompt)
        budgets.append(budget)
        n_truncated += dropped > 0
    return prompts, budgets, n_truncated


def left_pad(prompts, pad_id, device):
    """Stack prompts of different lengths, padded on the left so all rows end together.
    Returns (idx (B,T) long, attention mask (B,T) bool, True on real tokens)."""
    T = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.bool)
    for i, p in enumerate(prompts):
        idx[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p):] = True
    return idx.to(device), mask.to(device)


def append_tokens(seqs, mask, index, tokens):
    """Keep the rows `index` of the batch (finished rows dropped, beams reordered) and append one
    real token to each."""
    seqs = torch.cat([seqs[index], tokens[:, None]], dim=1)
    mask = torch.cat([mask[index], torch.ones_like(tokens[:, None], dtype=torch.bool)], dim=1)
    return seqs, mask


class Decoder:
    """Next-token logits for a batch of growing sequences. With the KV cache only the newest
    token is fed at each step; without it the whole prefix is recomputed every step (the
    plain loop, kept as the baseline for the cache's speed-up and as its correctness check)."""

    def __init__(self, model, use_cache=True):
        self.model, self.use_cache, self.cache = model, use_cache, None

    def next_logits(self, seqs, mask):
        if self.cache is not None:
            logits, self.cache = self.model.step(seqs[:, -1:], self.cache, mask)
        else:
            logits, cache = self.model.step(seqs, None, mask)
            self.cache = cache if self.use_cache else None
        return logits[:, -1].float()

    def select_rows(self, index):
        """The batch now continues with these rows of the previous one."""
        if self.cache is not None:
            self.cache = self.cache.reorder(index)


def batch_steps(model, seqs, budgets):
    """Decoding steps for a batch: its largest budget, unless the padded rows would outgrow the
    context first (padding occupies cache positions too)."""
    return min(max(budgets), model.config.block_size - seqs.size(1) + 1)


@torch.no_grad()
def greedy_batch(model, prompts, budgets, stops, pad_id, use_cache=True, decoder=None):
    """Greedy continuation of each prompt until a stop token or the end of its budget.
    Finished rows leave the batch. Returns the generated ids per prompt, stop token excluded.
    decoder: one to use instead of Decoder(model, use_cache) (experiments/bench_translation checks the cache so)."""
    device = next(model.parameters()).device
    seqs, mask = left_pad(prompts, pad_id, device)
    n_steps = batch_steps(model, seqs, budgets)
    rows = torch.arange(len(prompts), device=device)  # which prompt each batch row holds
    budgets = torch.tensor(budgets, device=device)
    stop_t = torch.tensor(sorted(stops), device=device)
    outputs = [[] for _ in prompts]
    decoder = Decoder(model, use_cache) if decoder is None else decoder
    for step in range(n_steps):
        tokens = decoder.next_logits(seqs, mask).argmax(dim=-1)
        stopped = torch.isin(tokens, stop_t)
        for r, t, s in zip(rows.tolist(), tokens.tolist(), stopped.tolist()):
            if not s:
                outputs[r].append(t)
        done = stopped | (budgets[rows] <= step + 1)
        if done.all():
            break
        keep = (~done).nonzero().squeeze(1)
        seqs, mask = append_tokens(seqs, mask, keep, tokens[keep])
        rows = rows[keep]
        if done.any():
            decoder.select_rows(keep)
    return outputs


def could_not_improve(finished, best_live_score):
    """Stopping rule of beam search (the usual early-stopping test, on length-normalised scores):
    a prompt is done once a finished hypothesis scores at least as well as the best live one does
    at its current length."""
    return bool(finished) and max(score for score, _ in finished) >= best_live_score


@torch.no_grad()
def beam_batch(model, prompts, budgets, stops, pad_id, beam, use_cache=True):
    """Beam search: each prompt keeps `beam` live hypotheses, flattened into the batch dimension
    (row i*beam + j is hypothesis j of prompt i). Hypotheses are ranked by their log-probability
    divided by their length (stop token included). A prompt is done when its best finished
    hypothesis scores at least as well as the best live one does now, or when its budget is spent
    (live hypotheses then compete as they are). Returns the generated ids per prompt, stop token
    excluded."""
    device = next(model.parameters()).device
    K = beam
    seqs, mask = left_pad(prompts, pad_id, device)
    seqs, mask = seqs.repeat_interleave(K, dim=0), mask.repeat_interleave(K, dim=0)
    prompt_len = seqs.size(1)
    n_steps = batch_steps(model, seqs, budgets)
    scores = torch.full((len(prompts), K), float('-inf'), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0  # the K copies of a prompt are identical: expand only the first
    finished = [[] for _ in prompts]  # (normalised score, token ids) per prompt
    rows = list(range(len(prompts)))  # prompts still in the batch
    decoder = Decoder(model, use_cache)
    for step in range(n_steps):
        logp = torch.log_softmax(decoder.next_logits(seqs, mask), dim=-1)
        V = logp.size(-1)
        # float64 sums: float32 would merge near-tied candidates once the scores grow large
        candidates = (scores.view(-1, 1) + logp.double()).view(len(rows), K * V)
        # enough candidates that K of them continue even if every beam's best ones are stop tokens
        n_top = min((len(stops) + 1) * K, K * V)
        top_scores, top_idx = candidates.topk(n_top, dim=-1)
        kept_rows, index, tokens, new_scores = [], [], [], []
        for i, r in enumerate(rows):
            live = []
            for s, j in zip(top_scores[i].tolist(), top_idx[i].tolist()):
                if s == float('-inf') or len(live) == K:
                    break
                source_row, token = i * K + j // V, j % V
                if token in stops:
                    finished[r].append((s / (step + 1), seqs[source_row, prompt_len:].tolist()))
                else:
                    live.append((s, source_row, token))
            out_of_steps = step + 1 >= min(budgets[r], n_steps)
            if out_of_steps:  # live hypotheses compete as they are
                for s, source_row, token in live:
                    finished[r].append((s / (step + 1), seqs[source_row, prompt_len:].tolist() + [token]))
            if out_of_steps or not live or could_not_improve(finished[r], live[0][0] / (step + 1)):
                continue
            live += [(float('-inf'), *live[0][1:])] * (K - len(live))  # tiny vocabularies
            kept_rows.append(r)
            for s, source_row, token in live:
                new_scores.append(s)
                index.append(source_row)
                tokens.append(token)
        if not kept_rows:
            break
        index = torch.tensor(index, device=device)
        seqs, mask = append_tokens(seqs, mask, index, torch.tensor(tokens, device=device))
        decoder.select_rows(index)
        scores = torch.tensor(new_scores, dtype=torch.float64, device=device).view(len(kept_rows), K)
        rows = kept_rows
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]


def sorted_batches(prompts, batch_size):
    """Index batches of prompts of similar length (longest first), so little padding is needed."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def timed_translate(model, tokenizer, sources, direction, beam=1, batch_size=32,
                    max_new_tokens=None, use_cache=True, progress=True):
    """Translate `sources` (list of str) in `direction` ('en-fr' | 'fr-en').
    Returns {'hypotheses': list[str] in input order, 'seconds': wall time,
    'truncated': number of sources cut from the left to fit the context}."""
    if beam < 1 or batch_size < 1:
        raise ValueError(f"beam and batch_size must be >= 1, got {beam} and {batch_size}")
    t0 = time.perf_counter()
    prompts, budgets, n_truncated = prepare_prompts(
        tokenizer, sources, direction, model.config.block_size, max_new_tokens)
    stops = stop_ids(tokenizer)
    was_training = model.training
    model.eval()
    outputs = [None] * len(prompts)
    try:
        with tqdm(total=len(prompts), desc=f"translate {direction}", unit="sent", disable=not progress) as bar:
            for batch in sorted_batches(prompts, batch_size):
                args = ([prompts[i] for i in batch], [budgets[i] for i in batch], stops, tokenizer.eot_id)
                if beam == 1:
                    generated = greedy_batch(model, *args, use_cache=use_cache)
                else:
                    generated = beam_batch(model, *args, beam=beam, use_cache=use_cache)
                for i, ids in zip(batch, generated):
                    outputs[i] = tokenizer.decode(ids).strip()
                bar.update(len(batch))
    finally:
        model.train(was_training)
    if n_truncated and progress:
        tqdm.write(f"note: {n_truncated} of {len(prompts)} sources were cut from the left to fit the context")
    return {'hypotheses': outputs, 'seconds': time.perf_counter() - t0, 'truncated': n_truncated}


def translate(model, tokenizer, sources, direction, beam=1, batch_size=32,
              max_new_tokens=None, use_cache=True, progress=True):
    """Translations of `sources` (list of str), in input order. See timed_translate."""
    return timed_translate(model, tokenizer, sources, direction, beam, batch_size,
                           max_new_tokens, use_cache, progress)['hypotheses']


# ----------------------------------------------------------------------------- sampling with an intervention

@torch.no_grad()
def sample_edited(model, idx, max_new_tokens, edit=None, logits_fn=None, temperature=1.0, top_k=None,
                  on_logits=None, use_cache=True):
    """Sample like model.generate, through the hooks edit(idx) returns for the sequence so far (a dict
    of forward's senses_fn / alpha_fn / embeddings_fn). logits_fn edits the next-token logits (the
    Transformer's logit-bonus baseline); on_logits(logits) sees each step's final next-token logits.

    With the KV cache only the new token is fed: the backbone never sees a sense, so its cached keys
    and values hold under any sense edit, and the Backpack's cache keeps the senses unedited, so
    edit(idx) is applied afresh at every step to the senses of the whole sequence (topic annealing
    reads every token so far). An embeddings_fn sees the new tokens only: a position-dependent one
    must index idx from the right. use_cache=False recomputes the whole sequence at every step (the
    reference for the cached path)."""
    hooks = edit if edit is not None else (lambda _: {})
    logits, cache = None, None
    for _ in range(max_new_tokens):
        window = idx[:, -model.config.block_size:]
        if not use_cache or cache is None or cache.length >= model.config.block_size:
            logits, cache = model.step(window, None, **hooks(window))  # (re)encode the window
        else:
            logits, cache = model.step(window[:, -1:], cache, **hooks(window))
        logits = logits[:, -1].float()
        logits = logits_fn(logits) if logits_fn else logits
        if on_logits is not None:
            on_logits(logits)
        idx = torch.cat([idx, sample_next(logits, temperature, top_k)], dim=1)
    return idx
