"""Sense interventions: neutral settings change nothing, the formulas equal hand computations, attribution
sums to the logit, debiasing mechanics on a loaded backpack-gpt2-format model, and one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from backpacks import interventions as iv
from backpacks.hf_format import load_backpack_gpt2
import sample
from tiny import tiny_model

V, K = 64, 4  # the vocabulary and the number of senses: the tests below name ids and senses in them


@pytest.fixture(scope='module')
def backpack():
    return tiny_model(vocab_size=V, n_senses=K).requires_grad_(False)


@pytest.fixture(scope='module')
def idx():
    return torch.randint(3, V, (2, 12), generator=torch.Generator().manual_seed(1))


def neutral_edits(model):
    """edit(idx, at) of every intervention at its neutral setting."""
    scores = iv.topic_scores(model, (torch.arange(V) % 7 == 0).float())
    delta = iv.topic_weights(scores, 0)
    return {
        'topic strength 0': iv.topic_edit_of(model, delta),
        'debias p=1': iv.backpack_debias_edit(2)(1.0),
        'knowledge r=a': iv.knowledge_edit(model, 11, 11),
        'steering scale 1': lambda idx, at: {'senses_fn': iv.scale_senses_fn(None, [0, 3], 1.0)},
    }


def test_neutral_interventions_leave_logits_bit_identical(backpack, idx):
    at = torch.zeros_like(idx, dtype=torch.bool)
    at[:, 3] = True  # the edited word is there
    reference, _ = backpack(idx)
    for name, edit in neutral_edits(backpack).items():
        logits, _ = backpack(idx, **edit(idx, at))
        assert torch.equal(logits, reference), name


def test_neutral_transformer_baselines_leave_logits_bit_identical(idx):
    model = tiny_model('transformer', vocab_size=V, n_senses=K).requires_grad_(False)
    at = torch.zeros_like(idx, dtype=torch.bool)
    at[:, 3] = True
    reference, _ = model(idx)
    direction = model.token_embeddings[7] - model.token_embeddings[8]
    for name, edit in {'projection p=1': iv.transformer_debias_edit(direction)(1.0)(idx, at),
                       'random directions scale 1': {'embeddings_fn': iv.scale_directions_fn(iv.random_directions(32, 2), 1.0)}}.items():
        assert torch.equal(model(idx, **edit)[0], reference), name
    removed = model(idx, **iv.transformer_debias_edit(direction)(0.0)(idx, at))[0]
    assert torch.equal(removed[:, :3], reference[:, :3]) and not torch.equal(removed, reference)  # acts from position 3 on


def test_topic_scores_and_weights_equal_a_hand_computation(backpack):
    bag = torch.zeros(V)
    bag[[4, 10, 33]] = 1
    scores = iv.topic_scores(backpack, bag, chunk=5)  # chunks that do not divide V
    E = backpack.token_embeddings.detach()
    hand = torch.zeros(V, K)
    for x in range(V):
        C = backpack.sense_vectors(torch.tensor([x]))[0].detach()
        for sense in range(K):
            s = E @ C[sense]
            hand[x, sense] = (s / s.max()) @ bag
    torch.testing.assert_close(scores, hand, rtol=1e-5, atol=1e-5)
    q95, q80, q60 = np.quantile(scores.numpy().ravel(), [0.95, 0.80, 0.60])  # of the same float32 scores
    for strength, w in iv.TOPIC_STRENGTHS.items():
        delta = iv.topic_weights(scores, strength)
        for x in range(V):
            for sense in range(K):
                s = float(scores[x, sense])
                expected = w[0] if s > q95 else w[1] if q80 < s < q95 else w[2] if q60 < s < q80 else w[3] if s < q60 else 1.0
                assert delta[x, sense] == pytest.approx(expected), (strength, x, sense)
    strongest = iv.topic_weights(scores, 3)  # top 20% of (token, sense) pairs at 3.3, the next 20% at 3.0
    assert (strongest == 3.3).float().mean() == pytest.approx(0.20, abs=1.5 / (V * K))
    assert (strongest == 3.0).float().mean() == pytest.approx(0.20, abs=1.5 / (V * K))


@pytest.mark.parametrize('settings', [iv.Annealing(), iv.Annealing(offset=2.0, divisor=3.0, position_scale=50.0),
                                      iv.Annealing(on=False)])
def test_annealing_and_topic_edit_equal_a_hand_computation(backpack, idx, settings):
    delta = iv.topic_weights(iv.topic_scores(backpack, (torch.arange(V) % 5 == 0).float()), 3)
    seen = {}
    backpack(idx, senses_fn=lambda C: seen.setdefault('C', C))
    edited = {}
    backpack(idx, senses_fn=lambda C: edited.setdefault('C', iv.topic_senses_fn(backpack, idx, delta, settings)(C)))
    C, E, f = seen['C'], backpack.token_embeddings.detach(), 3.3 / settings.divisor
    B, T = idx.shape
    for b in range(B):
        for sense in range(K):
            for j in range(T):
                a = sum(max(float(E[idx[b, i]] @ C[b, sense, j]), 0.0) for i in range(T))
                anneal = torch.sigmoid(torch.tensor(-f * a + settings.offset)).item() * (1 + j / settings.position_scale)
                anneal = anneal if settings.on else 1.0
                weight = float(delta[idx[b, j], sense]) * anneal + (1 - anneal)
                torch.testing.assert_close(edited['C'][b, sense, j], weight * C[b, sense, j], rtol=1e-5, atol=1e-6)


def test_knowledge_edit_formula_on_a_toy_vector():
    C = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    e_r, e_a = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
    # c = C . e_r / |e_r|^2 = (1, 3); C~ = C - c e_r + c (|e_r|^2 / |e_a|^2) e_a, |e_r|^2 / |e_a|^2 = 1/4
    expected = torch.tensor([[0.0, 2.5, 0.0], [0.0, 1.5, 1.0]])
    torch.testing.assert_close(iv.edited_senses(C, e_r, e_a), expected)
    assert torch.equal(iv.edited_senses(C, e_r, e_r), C)


def test_edits_apply_only_at_the_given_positions(backpack, idx):
    at = torch.zeros_like(idx, dtype=torch.bool)
    at[0, 4] = True  # row 1 has no word
    seen = {}
    backpack(idx, senses_fn=lambda C: seen.setdefault('C', C))
    for edit in (iv.knowledge_edit(backpack, 11, 12), iv.backpack_debias_edit(1)(0.0)):
        changed = (edit(idx, at)['senses_fn'](seen['C']) != seen['C']).any(-1)  # (B, k, T)
        assert changed[0, :, 4].any() and changed.sum() == changed[0, :, 4].sum()


def test_debias_p0_equals_zeroing_that_sense(backpack, idx):
    at = torch.zeros_like(idx, dtype=torch.bool)
    at[:, [2, 7]] = True

    def zero_sense(C):
        C = C.clone()
        C[:, 1, :][at] = 0
        return C
    edited, _ = backpack(idx, **iv.backpack_debias_edit(1)(0.0)(idx, at))
    torch.testing.assert_close(edited, backpack(idx, senses_fn=zero_sense)[0], rtol=0, atol=0)


def test_attribution_sums_to_the_logit(backpack, idx):
    targets = torch.roll(idx, -1, dims=1)
    contributions, logits = iv.sense_contributions(backpack, idx, targets)
    assert contributions.shape == (2, 12, K, 12)
    future = torch.arange(12)[:, None] < torch.arange(12)  # [i, j]: j after i
    assert (contributions.permute(0, 2, 1, 3)[:, :, future] == 0).all()  # causal: no future token contributes
    target_logits = logits.gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(contributions.sum((2, 3)), target_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(logits, backpack(idx)[0], rtol=0, atol=1e-4)  # the hooks' path is the model's


def test_language_sense_scores_and_steering(backpack, idx):
    masks = {'en': np.arange(V) < 30, 'fr': np.arange(V) >= 30}
    scores = iv.language_sense_scores(backpack, masks, chunk=7)
    E = backpack.token_embeddings.detach()
    logits = torch.stack([backpack.sense_vectors(torch.tensor([x]))[0] @ E.t() for x in range(V)]).detach()  # (V,k,V)
    hand = (logits[..., 30:].mean(-1) - logits[..., :30].mean(-1)).mean(0)
    torch.testing.assert_close(scores, hand, rtol=1e-4, atol=1e-5)
    chosen = iv.language_senses(scores, 1)
    assert chosen['fr'] == [int(hand.argmax())] and chosen['en'] == [int(hand.argmin())]
    assert iv.language_shares(torch.tensor([[1, 2, 40]]), masks) == pytest.approx((2 / 3, 1 / 3))
    U = iv.random_directions(32, 3)
    torch.testing.assert_close(U @ U.t(), torch.eye(3), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- constructed models: known effects

class TableSenses(torch.nn.Module):
    """A sense network that is a lookup table (V, k, d): with one-hot token embeddings, C(x) = table[x]."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, embeddings):
        return torch.einsum('...v,vkd->...kd', embeddings[..., :self.table.shape[0]], self.table)


def constructed(table):
    """A Backpack with one-hot token embeddings (so the logit of y from a sense is its coordinate y),
    the senses `table` and sense queries and keys of zero, so alpha[l, i, j] = 1 / (i + 1) for j <= i."""
    n_vocab, n_senses, dim = table.shape
    model = tiny_model(vocab_size=n_vocab, n_embd=dim, n_senses=n_senses).requires_grad_(False)  # the table's sizes
    model.token_embeddings.copy_(torch.eye(n_vocab, dim))
    model.sense_weight_net.c_attn.weight.zero_()
    model.sense_weight_net.c_attn.bias.zero_()
    model.sense_network = TableSenses(table)
    return model


def random_table(seed=0, n_vocab=16, n_senses=4, dim=32):
    return 0.3 * torch.randn(n_vocab, n_senses, dim, generator=torch.Generator().manual_seed(seed))


def prompt_with_word(ids, word_positions):
    return iv.Prompt(list(ids), '', list(word_positions))


def test_topic_control_raises_the_bag_mass_with_strength_when_annealing_is_off():
    """Sense 0 of token 3 puts logit on the bag word 7, no other sense touches it: every strength
    upweights that sense more (1, 1.5, 2.2, 3.3), so the bag's next-token mass must rise with it."""
    from backpacks.generation import sample_edited
    table = random_table()
    table[:, :, 7] = 0
    table[3, 0] = 0
    table[3, 0, 7] = 2.0
    model = constructed(table)
    bag = torch.zeros(16)
    bag[7] = 1
    scores = iv.topic_scores(model, bag)
    assert scores[3, 0] == scores.max() == 1
    masses = []
    for strength in iv.TOPIC_STRENGTHS:
        seen = []
        edit = iv.topic_edit_of(model, iv.topic_weights(scores, strength), iv.Annealing(on=False))
        sample_edited(model, torch.tensor([[3, 5]]), 6, edit, temperature=0,
                      on_logits=lambda logits: seen.append(iv.bag_mass(logits, bag)))
        masses.append(float(torch.cat(seen).mean()))
    assert all(later > earlier for earlier, later in zip(masses, masses[1:])), masses


@pytest.mark.parametrize('sign', [1.0, -1.0])
def test_knowledge_edit_moves_the_margin_as_the_projection_on_e_r_says(sign):
    """x = 3 with senses projecting sign * c_l on e_r (r = 10, a = 11; one-hot embeddings, so
    |e_r| = |e_a| = 1, e_a . e_r = 0): the margin logit[a] - logit[r] after the prompt changes by
    sum_l alpha c_l (2 |e_r|^2 - (1 + s) e_a . e_r) = 2 sum_l c_l / (i + 1), of the sign of the projection."""
    c = sign * torch.tensor([1.0, 0.5, 2.0, 0.3])
    table = random_table(1)
    table[3, :, 10] = c
    model = constructed(table)
    prompts = [prompt_with_word([5, 3, 9], [1]), prompt_with_word([3, 6, 8, 9, 12], [0])]
    edit = iv.knowledge_edit(model, 10, 11)
    change = iv.token_margin(model, prompts, 10, 11, pad_id=0, edit=edit) - iv.token_margin(model, prompts, 10, 11, pad_id=0)
    by_hand = torch.tensor([2 * float(c.sum()) / len(p.ids) for p in prompts])
    torch.testing.assert_close(change, by_hand, rtol=1e-5, atol=1e-6)
    assert (torch.sign(change) == sign).all()
    closed_form = iv.knowledge_projection(model, prompts, 10, 11, pad_id=0)
    torch.testing.assert_close(closed_form['predicted'], by_hand, rtol=1e-5, atol=1e-6)
    whole, per_piece = (after - before for after, before in zip(
        iv.answer_margins(model, prompts, [[11]] * 2, [[10]] * 2, 0, edit), iv.answer_margins(model, prompts, [[11]] * 2, [[10]] * 2, 0)))
    torch.testing.assert_close(whole, by_hand, rtol=1e-5, atol=1e-6)  # single-token answers: the same margin


def test_removing_a_planted_gender_sense_removes_the_bias():
    """Sense 2 of the profession's pieces (4, 6) is 1.5 (e_he - e_she), he = 12, she = 13, and nothing
    else touches he or she: the bias is > 1, the gender sense found is 2, and p = 0 makes it exactly 1."""
    table = random_table(2)
    table[:, :, 12:14] = 0
    table[[4, 6], 2, 12], table[[4, 6], 2, 13] = 1.5, -1.5
    model = constructed(table)
    prompts = [prompt_with_word([5, 4, 6, 9], [1, 2]), prompt_with_word([4, 6, 8], [0, 1]),
               prompt_with_word([7, 7, 4, 6, 10, 11], [2, 3])]
    he, she = [[12]] * 3, [[13]] * 3
    assert iv.profession_bias(model, prompts, he, she, 0) > 1.5
    sense, helped, _ = iv.gender_sense(model, {'job': (prompts, he, she)}, 0)
    assert sense == 2 and helped[2] == 1
    assert iv.profession_bias(model, prompts, he, she, 0, iv.backpack_debias_edit(2)(0.0)) == pytest.approx(1.0, abs=1e-6)
    assert iv.profession_bias(model, prompts, he, she, 0, iv.backpack_debias_edit(1)(0.0)) > 1.5


# ----------------------------------------------------------------------------- where a word is

@pytest.fixture(scope='module')
def small_bpe(repo_root):
    """A 512-piece BPE of the sample corpus, as the main job's: it splits most words into small pieces."""
    from backpacks.tokenizer import train_bpe
    corpus = repo_root / 'data' / 'europarl' / 'sample'
    lines = [line for lang in ('en', 'fr') for line in (corpus / f'parliament.{lang}').read_text(encoding='utf-8').splitlines()]
    return train_bpe(lines, 512)


@pytest.fixture(scope='module')
def gpt2_tokenizer(enfr_data_root):
    from backpacks.tokenizer import open_tokenizer
    return open_tokenizer('gpt2', str(enfr_data_root / 'tokenizers' / 'gpt2'))


def spelled(tok, prompt):
    return tok.decode([prompt.ids[i] for i in prompt.positions])


@pytest.mark.parametrize('template, word, text', [
    ("The capital of {} is", "Italy", "Italy"), ("La capitale de l'{} est", "Allemagne", "Allemagne"),
    ("La plus grande ville d'{} est", "Espagne", "Espagne"), ("I really liked my {}. What I liked", "baker", " baker"),
    ("J'ai beaucoup apprécié notre {}. Ce que j'ai aimé, c'est qu'", "médecin", " médecin")])
def test_a_word_is_placed_on_its_own_pieces(small_bpe, template, word, text):
    prompt = iv.place_word(small_bpe, small_bpe.en_id, template, word)
    assert spelled(small_bpe, prompt).strip() == text.strip() and prompt.ids[0] == small_bpe.en_id
    assert prompt.positions == list(range(prompt.positions[0], prompt.positions[-1] + 1))


def test_pieces_of_the_word_inside_other_words_are_not_edited(small_bpe):
    """'Italy' shares pieces with 'capital' in the small BPE; only the word's own positions change,
    under the knowledge edit and under debiasing, and nothing before the word does."""
    prompt = iv.place_word(small_bpe, small_bpe.en_id, "The capital of {} is", "Italy")
    elsewhere = [i for i in range(len(prompt.ids)) if i not in prompt.positions]
    shared = {prompt.ids[i] for i in prompt.positions} & {prompt.ids[i] for i in elsewhere}
    assert shared  # the situation under test: a piece of the word also occurs outside it
    model = tiny_model(vocab_size=small_bpe.vocab_size, n_senses=K).requires_grad_(False)
    rows = torch.tensor([prompt.ids])
    at = iv.position_mask(rows.shape, [prompt])
    seen = {}
    reference = model(rows, senses_fn=lambda C: seen.setdefault('C', C))[0]
    for edit in (iv.knowledge_edit(model, 20, 30), iv.backpack_debias_edit(1)(0.0)):
        changed = (edit(rows, at)['senses_fn'](seen['C']) != seen['C']).any(-1).any(1)[0]  # (T,)
        assert changed.nonzero().flatten().tolist() == prompt.positions
        logits = model(rows, **edit(rows, at))[0]
        assert torch.equal(logits[0, :prompt.positions[0]], reference[0, :prompt.positions[0]])


def test_answers_are_written_as_the_text_would_have_them(small_bpe):
    after_que = iv.answer_pieces(small_bpe, "Notre médecin a dit qu'", "il")
    after_verb = iv.answer_pieces(small_bpe, "Notre médecin a dit", "il")
    assert small_bpe.decode(after_que) == "il" and small_bpe.decode(after_verb) == " il"
    assert iv.written_after("l'", "Italie") == "Italie" and iv.written_after("de", "Italie") == " Italie"


def test_placement_with_gpt2s_tokenizer(gpt2_tokenizer):
    tok = gpt2_tokenizer
    prompt = iv.place_word(tok, tok.fr_id, "La capitale de l'{} est", "Allemagne")
    assert spelled(tok, prompt) == "Allemagne"  # not ' Allemagne': after l' the word has no space
    assert spelled(tok, iv.place_word(tok, tok.en_id, "The capital of {} is", "Italy")) == " Italy"
    assert [tok.decode([i]) for i in iv.answer_pieces(tok, "My baker said that", "she")] == [" she"]
    assert [tok.decode([i]) for i in iv.answer_pieces(tok, "Notre médecin a dit qu'", "elle")] == ["elle"]


@pytest.mark.parametrize('text, word, message', [
    ("The capital of {} is", "", "empty word"),
    ("The {}s came", "baker", "no token of its own"),
])
def test_a_word_that_cannot_be_placed_is_one_clear_error(small_bpe, text, word, message):
    with pytest.raises(iv.InterventionError, match=message):
        iv.place_word(small_bpe, small_bpe.en_id, text, word)
    assert iv.find_word(small_bpe, small_bpe.en_id, "The capital of Italy is", "al").positions == []


def test_word_arithmetic_parsing():
    assert iv.parse_word_arithmetic('+king-man+woman') == [(1, 'king'), (-1, 'man'), (1, 'woman')]
    assert iv.parse_word_arithmetic(' roi ') == [(1, 'roi')]
    with pytest.raises(iv.InterventionError):
        iv.parse_word_arithmetic('+-')


def test_debiasing_on_a_loaded_backpack_gpt2_format_model(reference_tiny_dir):
    """Mechanics on the reference backpack-gpt2-format checkpoint (vocab 96): the gender sense can be
    found or named (backpack-gpt2's is 10; this one has 4 senses, so 3), p = 0 removes it at the
    profession's positions, and Nelder-Mead never ends worse than p = 1 on its own objective."""
    model = load_backpack_gpt2(reference_tiny_dir).eval().requires_grad_(False)
    rows_ids = [[5, 40, 41, 7], [8, 9, 40, 41, 3], [40, 41, 12], [6, 40, 41], [2, 3, 4, 40, 41, 5]]
    prompts = [iv.Prompt(ids, '', [ids.index(40), ids.index(41)]) for ids in rows_ids]
    he, she = [[20]] * 5, [[21]] * 5
    found, helped, reduction = iv.gender_sense(model, {'job': (prompts, he, she)}, pad_id=95)
    assert 0 <= found < model.config.n_senses and len(helped) == len(reduction) == model.config.n_senses
    named = 3
    bias = lambda p: iv.profession_bias(model, prompts, he, she, 95, iv.backpack_debias_edit(named)(p))
    rows = iv.right_pad(rows_ids, 95)

    def zeroed(C):
        C = C.clone()
        C[:, named][iv.position_mask(rows.shape, prompts)] = 0
        return C
    logp = model(rows, senses_fn=zeroed)[0].log_softmax(-1)
    last = torch.tensor([len(p) - 1 for p in rows_ids])
    by_hand = (logp[torch.arange(5), last, 20] - logp[torch.arange(5), last, 21]).abs().exp().mean()
    assert bias(0.0) == pytest.approx(float(by_hand), rel=1e-5)
    p = iv.optimise_scale(bias)
    assert bias(p) + abs(1 - p) <= bias(1.0) + 1e-9


def test_topic_words_from_text_and_missing_file(tmp_path):
    assert iv.read_topic_words('fish, sea boats') == ['fish', 'sea', 'boats']
    bag = tmp_path / 'bag.txt'
    bag.write_text('fish\nsea\n', encoding='utf-8')
    assert iv.read_topic_words(str(bag)) == ['fish', 'sea']
    with pytest.raises(iv.InterventionError, match='not found'):
        iv.read_topic_words(str(tmp_path / 'missing.txt'))


# ----------------------------------------------------------------------------- command lines

@pytest.fixture(scope='module')
def runs(sample_dataset, tmp_path_factory, make_checkpoint):
    root = tmp_path_factory.mktemp('runs')
    return {kind: make_checkpoint(root / kind, sample_dataset, model_type=kind) for kind in ('backpack', 'transformer')}


def test_sample_senses_explain_and_topic(runs, capsys):
    sample.main(['--out_dir', str(runs['backpack']), '--senses', '+vote-the', '--top', '3'])
    out = capsys.readouterr().out
    assert out.count('\n') == 2 * K and all(f'sense {sense:2d}' in out for sense in range(K))
    sample.main(['--out_dir', str(runs['backpack']), '--senses', 'vote', '--senses_language', 'fr', '--top', '2'])
    assert capsys.readouterr().out.count('\n') == 2 * K
    sample.main(['--out_dir', str(runs['backpack']), '--start', '<EN> The', '--explain', '--num_samples', '1',
                 '--max_new_tokens', '3', '--temperature', '0'])
    assert capsys.readouterr().out.count(' logit ') == 3
    sample.main(['--out_dir', str(runs['backpack']), '--topic', 'vote,Parliament', '--strength', '3',
                 '--num_samples', '1', '--max_new_tokens', '4'])
    assert capsys.readouterr().out.startswith('topic bag: 2 words')


@pytest.mark.parametrize('argv, message', [
    (['--senses', '+-'], 'no word'),
    (['--topic', '{tmp}/missing.txt'], 'topic file'),
    (['--senses', 'vote', '--transformer'], 'needs a Backpack checkpoint'),
    (['--explain', '--transformer'], 'needs a Backpack checkpoint'),
])
def test_bad_input_gives_one_clear_line(runs, tmp_path, argv, message):
    run = runs['transformer'] if '--transformer' in argv else runs['backpack']
    argv = ['--out_dir', str(run)] + [a.format(tmp=tmp_path) for a in argv if a != '--transformer']
    with pytest.raises(SystemExit) as exit_info:
        sample.main(argv)
    assert str(exit_info.value).startswith('error: ') and message in str(exit_info.value)
    assert '\n' not in str(exit_info.value)


@pytest.mark.slow
def test_experiment_refuses_a_transformer_in_one_line(runs, repo_root):
    result = subprocess.run([sys.executable, '-m', 'experiments.run_interventions', '--out_dir', str(runs['transformer'])],
                            cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and 'needs a Backpack checkpoint' in result.stderr
    assert result.stderr.strip().count('\n') == 0


def broken_data(tmp_path, name, change):
    """A copy of data/interventions with change(json of `name`) applied."""
    import shutil
    from experiments.run_interventions import DATA
    directory = tmp_path / 'data'
    shutil.copytree(DATA, directory)
    content = json.loads((directory / f'{name}.json').read_text(encoding='utf-8'))
    change(content)
    (directory / f'{name}.json').write_text(json.dumps(content), encoding='utf-8')
    return directory


@pytest.mark.parametrize('name, change, message', [
    ('topics', lambda d: d['en'].update(fisheries=[]), 'topics.json en:fisheries must be a non-empty list'),
    ('gender', lambda d: d['professions'][0].update(fr=' '), 'professions (fr) must be a non-empty list of non-empty'),
    ('knowledge', lambda d: d['edits'][0].update(x=''), 'edit 0 (x, r, a)'),
    ('gender', lambda d: d['evaluation_prompts']['en'].append('No slot here'), 'needs a {} for the word'),
    ('knowledge', lambda d: d['edits'][0].update(prompts=['The {}s are']), "'France' has no token of its own"),
])
def test_experiment_bad_data_is_one_clear_line(runs, tmp_path, name, change, message):
    from experiments import run_interventions
    directory = broken_data(tmp_path, name, change)
    with pytest.raises(SystemExit) as exit_info:
        run_interventions.main(['--out_dir', str(runs['backpack']), '--intervention_data', str(directory)])
    assert str(exit_info.value).startswith('error: ') and message in str(exit_info.value)
    assert '\n' not in str(exit_info.value)


@pytest.mark.slow
def test_experiment_end_to_end_writes_json_and_markdown(runs, repo_root):
    result = subprocess.run([sys.executable, '-m', 'experiments.run_interventions', '--out_dir', str(runs['backpack']),
                             '--baseline_dir', str(runs['transformer']), '--topics', '1', '--samples', '2',
                             '--max_new_tokens', '3', '--professions', '2'],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    results = json.loads((runs['backpack'] / 'interventions' / 'interventions.json').read_text())
    assert set(results['topic']['summary']) == {'en', 'fr'} and len(results['debias']['fr']['professions']) == 2
    assert results['debias']['en']['summary']['all']['transformer']['unmodified']['n'] == 2
    assert len(results['knowledge']['edits']) == 10 and results['steering']['transformer']
    for edit in results['knowledge']['edits']:  # the subject's own pieces only, never in collateral prompts
        assert min(edit['edited_positions']) >= 1 and set(edit['collateral_edited_positions']) == {0}
        assert edit['token_margin_change'] == pytest.approx(edit['predicted_token_margin_change'], abs=1e-5)
    english = results['topic']['summary']['en']['backpack']
    assert set(english) == {'on', 'off'} and all(0 <= english[a][s]['mass']['mean'] <= 1 for a in english for s in english[a])
    assert results['topic']['logit_scale']['sense_logit_max_median'] > 0 and results['debias']['fr']['pronoun_forms']['il']
    markdown = (runs['backpack'] / 'interventions' / 'interventions.md').read_text()
    assert '## Topic control' in markdown and '## Language steering' in markdown


def test_comparison_report_links_interventions_when_present(tmp_path):
    from compare_models import interventions_links
    (tmp_path / 'bp' / 'interventions').mkdir(parents=True)
    (tmp_path / 'bp' / 'interventions' / 'interventions.md').write_text('# Sense interventions\n')
    links = interventions_links([tmp_path / 'bp', tmp_path / 'tf'], tmp_path / 'comparison')
    assert links.count('Sense interventions of') == 1 and '(../bp/interventions/interventions.md)' in links
