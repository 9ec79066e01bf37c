"""Translation decoding: batched left-padded greedy equals per-sentence greedy, the KV cache changes
nothing, beam search finds the best hypothesis on a model whose answer is known, stopping rules."""
import itertools
import math
import random

import pytest
import torch
import torch.nn as nn

from backpacks.generation import (beam_batch, build_prompt, greedy_batch, new_token_budget, prepare_prompts,
                        timed_translate, translate)
from model import ModelConfig
from tiny import tiny_translation_model

EN, FR, EOT = 0, 1, 2


class IdTokenizer:
    """Text is whitespace-separated token ids: tests see exactly what was generated."""
    en_id, fr_id, eot_id, vocab_size = EN, FR, EOT, 64

    def encode_batch(self, texts):
        return [[int(w) for w in t.split()] for t in texts]

    def decode(self, ids):
        return ' '.join(str(i) for i in ids if i not in (EN, FR, EOT))


def random_sources(n, max_len=40, seed=0):
    rng = random.Random(seed)
    return [' '.join(str(rng.randrange(3, 64)) for _ in range(rng.randrange(0, max_len))) for _ in range(n)]


def reference_greedy(model, prompt, budget):
    """One sentence, no padding, no cache: the full forward pass on the whole prefix each step."""
    idx, out = torch.tensor([prompt]), []
    with torch.no_grad():
        for _ in range(budget):
            token = model(idx)[0][0, -1].argmax().item()
            if token in (EN, FR, EOT):
                break
            out.append(token)
            idx = torch.cat([idx, torch.tensor([[token]])], dim=1)
    return out


@pytest.mark.parametrize('model_type', ['transformer', 'backpack'])
def test_batched_left_padded_greedy_equals_unpadded_reference(model_type):
    model, tok = tiny_translation_model(model_type), IdTokenizer()
    prompts, budgets, n_truncated = prepare_prompts(tok, random_sources(12), 'en-fr', model.config.block_size)
    assert n_truncated > 0  # some sources are longer than the room the budget leaves
    expected = [reference_greedy(model, p, b) for p, b in zip(prompts, budgets)]
    got = translate(model, tok, random_sources(12), 'en-fr', batch_size=5, progress=False)
    assert got == [tok.decode(e) for e in expected]
    assert len({len(e) for e in expected}) > 1  # rows stop at different steps, so rows leave the batch


@pytest.mark.parametrize('model_type', ['transformer', 'backpack'])
@pytest.mark.parametrize('beam', [1, 3])
def test_kv_cache_changes_nothing(model_type, beam):
    model, tok, sources = tiny_translation_model(model_type, seed=1), IdTokenizer(), random_sources(10, seed=1)
    cached = translate(model, tok, sources, 'fr-en', beam=beam, batch_size=4, progress=False)
    uncached = translate(model, tok, sources, 'fr-en', beam=beam, batch_size=4, use_cache=False, progress=False)
    assert cached == uncached


def test_beam_of_one_is_greedy():
    model, tok = tiny_translation_model('backpack', seed=2), IdTokenizer()
    prompts, budgets, _ = prepare_prompts(tok, random_sources(8, seed=2), 'en-fr', model.config.block_size)
    stops = {EN, FR, EOT}
    assert beam_batch(model, prompts, budgets, stops, EOT, beam=1) == greedy_batch(model, prompts, budgets, stops, EOT)


def test_beam_batching_changes_nothing():
    model, tok, sources = tiny_translation_model('transformer', seed=3), IdTokenizer(), random_sources(9, seed=3)
    together = translate(model, tok, sources, 'en-fr', beam=4, batch_size=9, progress=False)
    alone = translate(model, tok, sources, 'en-fr', beam=4, batch_size=1, progress=False)
    assert together == alone


# ----------------------------------------------------------------------------- a model with known answers

class BigramCache:
    def __init__(self, length):
        self.length = length

    def reorder(self, index):
        return self


class BigramModel(nn.Module):
    """The next token depends on the last one only, through a fixed probability table."""

    def __init__(self, probs, block_size=64):
        super().__init__()
        self.log_probs = nn.Parameter(torch.tensor(probs).log(), requires_grad=False)
        self.config = ModelConfig(vocab_size=len(probs), block_size=block_size)

    def step(self, idx, cache=None, attention_mask=None):
        past = 0 if cache is None else cache.length
        return self.log_probs[idx], BigramCache(past + idx.size(1))


def sequence_score(probs, last, tokens, stop):
    """Length-normalised log-probability of `tokens` after `last`, ended by `stop` (or None: cut by the budget)."""
    path = tokens + ([stop] if stop is not None else [])
    logp = sum(math.log(probs[a][b]) for a, b in zip([last] + path, path))
    return logp / len(path)


def best_score(probs, last, tokens, budget):
    """A hypothesis' score: its best ending stop token, or unended when it used the whole budget."""
    if len(tokens) == budget:
        return sequence_score(probs, last, tokens, None)
    return max(sequence_score(probs, last, tokens, s) for s in (EN, FR, EOT))


def brute_force_best(probs, last, budget, content=(3, 4)):
    candidates = [list(c) for n in range(budget + 1) for c in itertools.product(content, repeat=n)]
    return max(candidates, key=lambda c: best_score(probs, last, c, budget))


# after the FR tag: 3 is likelier than 4, but after 3 nothing is likely, while 4 is followed by eot
TRAP = [[0.2, 0.2, 0.2, 0.2, 0.2],                 # after EN (unused)
        [0.1 / 3, 0.1 / 3, 0.1 / 3, 0.5, 0.4],      # after FR
        [0.2, 0.2, 0.2, 0.2, 0.2],                 # after eot (unused)
        [0.1, 0.1, 0.1, 0.4, 0.3],                 # after 3
        [0.025, 0.025, 0.9, 0.025, 0.025]]         # after 4


def test_beam_search_finds_the_best_hypothesis_that_greedy_misses():
    model, budget = BigramModel(TRAP), 5
    prompt = [EN, 3, FR]
    best = brute_force_best(TRAP, FR, budget)
    assert best == [4]
    greedy = greedy_batch(model, [prompt], [budget], {EN, FR, EOT}, EOT)[0]
    beam = beam_batch(model, [prompt], [budget], {EN, FR, EOT}, EOT, beam=2)[0]
    assert greedy == [3] * budget
    assert beam == best


@pytest.mark.parametrize('seed', range(5))
def test_beam_scores_at_least_greedy_on_random_tables(seed):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(5, 5, generator=gen).softmax(-1).tolist()
    budget = 6
    greedy = greedy_batch(BigramModel(probs), [[EN, FR]], [budget], {EN, FR, EOT}, EOT)[0]
    beam = beam_batch(BigramModel(probs), [[EN, FR]], [budget], {EN, FR, EOT}, EOT, beam=4)[0]
    optimum = brute_force_best(probs, FR, budget)
    assert best_score(probs, FR, beam, budget) >= best_score(probs, FR, greedy, budget) - 1e-9
    assert best_score(probs, FR, beam, budget) <= best_score(probs, FR, optimum, budget) + 1e-9


@pytest.mark.parametrize('stop', [EN, FR, EOT])
def test_generation_stops_at_a_tag_or_end_of_text(stop):
    probs = [[0.01] * 5 for _ in range(5)]
    probs[FR][3] = probs[3][4] = probs[4][stop] = 0.96  # FR -> 3 -> 4 -> stop
    model = BigramModel(probs)
    for beam in (1, 2):
        assert translate(model, IdTokenizer(), ['3', '4 4'], 'en-fr', beam=beam, progress=False) == ['3 4', '3 4']


def test_budget_limits_length_and_context():
    probs = [[0.01, 0.01, 0.01, 0.96, 0.01] for _ in range(5)]  # never stops: always 3
    model, tok = BigramModel(probs, block_size=32), IdTokenizer()
    assert translate(model, tok, ['3 3'], 'en-fr', max_new_tokens=4, progress=False) == ['3 3 3 3']
    assert translate(model, tok, ['3'], 'en-fr', progress=False) == [' '.join(['3'] * 12)]  # 2 * 1 + 10
    run = timed_translate(model, tok, [' '.join(['4'] * 40), '3'], 'en-fr', beam=2, progress=False)
    assert run['truncated'] == 1 and run['seconds'] > 0
    assert [len(h.split()) for h in run['hypotheses']] == [16, 12]  # capped at half the context


def test_budget_and_prompt_rules():
    assert new_token_budget(5, 256) == 20
    assert new_token_budget(500, 256) == 128
    assert new_token_budget(5, 256, max_new_tokens=1000) == 128
    assert build_prompt([5, 6, 7, 8], EN, FR, budget=4, block_size=8) == ([EN, 7, 8, FR], 2)
    assert build_prompt([5, 6], FR, EN, budget=4, block_size=10) == ([FR, 5, 6, EN], 0)
    prompts, _, _ = prepare_prompts(IdTokenizer(), ['5 6'], 'fr-en', block_size=64)
    assert prompts == [[FR, 5, 6, EN]]
    with pytest.raises(ValueError, match='direction'):
        prepare_prompts(IdTokenizer(), ['5'], 'en-de', block_size=64)


def test_translate_keeps_the_models_mode():
    model = tiny_translation_model('transformer').train()
    translate(model, IdTokenizer(), ['5 6'], 'en-fr', progress=False)
    assert model.training


# ----------------------------------------------------------------------------- sampling with an intervention

def topic_edit(model):
    """Topic control at strength 3 with annealing on: an edit that reads the whole sequence."""
    from backpacks import interventions as iv
    delta = iv.topic_weights(iv.topic_scores(model, (torch.arange(64) % 5 == 0).float()), 3)
    return iv.topic_edit_of(model, delta)


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_sampling_with_an_edit_is_the_same_with_and_without_the_kv_cache(temperature):
    from backpacks.generation import sample_edited
    model = tiny_translation_model('backpack')
    prompt = torch.tensor([[EN, 5, 9, 11]] * 3)
    runs = {}
    for use_cache in (True, False):
        torch.manual_seed(0)
        seen = []
        runs[use_cache] = sample_edited(model, prompt, 12, topic_edit(model), temperature=temperature, top_k=10,
                                        on_logits=seen.append, use_cache=use_cache), torch.stack(seen)
    assert torch.equal(runs[True][0], runs[False][0])
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=0, atol=1e-4)
    if temperature == 0:  # the edit does act
        assert not torch.equal(runs[True][0], sample_edited(model, prompt, 12, temperature=0.0))


def test_sampling_with_edits_past_the_context_window_and_on_a_transformer():
    """Past block_size the window is re-encoded with its edit; the Transformer's embeddings_fn and a
    logit bonus take the same path."""
    from backpacks import interventions as iv
    from backpacks.generation import sample_edited
    backpack, transformer = tiny_translation_model('backpack'), tiny_translation_model('transformer')
    prompt = torch.randint(3, 64, (2, 60), generator=torch.Generator().manual_seed(0))
    cached, plain = (sample_edited(backpack, prompt, 8, topic_edit(backpack), temperature=0, use_cache=c)
                     for c in (True, False))
    assert torch.equal(cached, plain)
    steer = lambda idx, at=None: {'embeddings_fn': iv.scale_directions_fn(iv.random_directions(32, 2), 3.0)}
    bonus = iv.logit_bonus_fn((torch.arange(64) % 7 == 0).float(), 2.0)
    cached, plain = (sample_edited(transformer, prompt[:, :20], 10, steer, bonus, temperature=0, use_cache=c)
                     for c in (True, False))
    assert torch.equal(cached, plain)


def test_sampling_without_an_edit_is_model_generate():
    from backpacks.generation import sample_edited
    model = tiny_translation_model('backpack')
    prompt = torch.tensor([[EN, 5, 9]])
    assert torch.equal(sample_edited(model, prompt, 6, temperature=0), model.generate(prompt, 6, temperature=0))
