"""Sense interventions: neutral settings change nothing, the formulas equal hand computations, attribution
sums to the logit, debiasing mechanics on a loaded backpack-gpt2-format model, and one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from backpacks import interventions as iv
import sample
from model import BackpackLM, ModelConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")
V, K = 64, 4


def tiny(model_type='backpack', seed=0):
    torch.manual_seed(seed)
    model = build_model(model_type, ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32, n_senses=K))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope='module')
def backpack():
    return tiny()


@pytest.fixture(scope='module')
def idx():
    return torch.randint(3, V, (2, 12), generator=torch.Generator().manual_seed(1))


def neutral_edits(model):
    """edits_for(idx) of every intervention at its neutral setting."""
    scores = iv.topic_scores(model, (torch.arange(V) % 7 == 0).float())
    delta = iv.topic_weights(scores, 0)
    return {
        'topic strength 0': lambda idx: {'senses_fn': iv.topic_senses_fn(model, idx, delta)},
        'debias p=1': iv.backpack_debias_edit({5, 9}, 2)(1.0),
        'knowledge r=a': lambda idx: {'senses_fn': iv.knowledge_edit_fn(model, idx, {5, 9}, 11, 11)},
        'steering scale 1': lambda idx: {'senses_fn': iv.scale_senses_fn(idx, None, [0, 3], 1.0)},
    }


def test_neutral_interventions_leave_logits_bit_identical(backpack, idx):
    idx = idx.clone()
    idx[:, 3] = 5  # the edited words occur
    reference, _ = backpack(idx)
    for name, edits_for in neutral_edits(backpack).items():
        logits, _ = backpack(idx, **edits_for(idx))
        assert torch.equal(logits, reference), name


def test_neutral_transformer_baselines_leave_logits_bit_identical(idx):
    model = tiny('transformer')
    idx = idx.clone()
    idx[:, 3] = 5
    reference, _ = model(idx)
    direction = model.token_embeddings[7] - model.token_embeddings[8]
    for name, edit in {'projection p=1': iv.transformer_debias_edit({5}, direction)(1.0)(idx),
                       'random directions scale 1': {'embeddings_fn': iv.scale_directions_fn(iv.random_directions(32, 2), 1.0)}}.items():
        assert torch.equal(model(idx, **edit)[0], reference), name
    removed = model(idx, **iv.transformer_debias_edit({5}, direction)(0.0)(idx))[0]
    assert not torch.equal(removed, reference)  # p = 0 does act on the profession's positions


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


def test_annealing_and_topic_edit_equal_a_hand_computation(backpack, idx):
    delta = iv.topic_weights(iv.topic_scores(backpack, (torch.arange(V) % 5 == 0).float()), 3)
    seen = {}
    backpack(idx, senses_fn=lambda C: seen.setdefault('C', C))
    edited = {}
    backpack(idx, senses_fn=lambda C: edited.setdefault('C', iv.topic_senses_fn(backpack, idx, delta)(C)))
    C, E, f = seen['C'], backpack.token_embeddings.detach(), 3.3 / 7.5
    B, T = idx.shape
    for b in range(B):
        for sense in range(K):
            for j in range(T):
                a = sum(max(float(E[idx[b, i]] @ C[b, sense, j]), 0.0) for i in range(T))
                anneal = torch.sigmoid(torch.tensor(-f * a + 6)).item() * (1 + j / 100)
                weight = float(delta[idx[b, j], sense]) * anneal + (1 - anneal)
                torch.testing.assert_close(edited['C'][b, sense, j], weight * C[b, sense, j], rtol=1e-5, atol=1e-6)


def test_knowledge_edit_formula_on_a_toy_vector():
    C = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    e_r, e_a = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
    # c = C . e_r / |e_r|^2 = (1, 3); C~ = C - c e_r + c (|e_r|^2 / |e_a|^2) e_a, |e_r|^2 / |e_a|^2 = 1/4
    expected = torch.tensor([[0.0, 2.5, 0.0], [0.0, 1.5, 1.0]])
    torch.testing.assert_close(iv.edited_senses(C, e_r, e_a), expected)
    assert torch.equal(iv.edited_senses(C, e_r, e_r), C)


def test_knowledge_edit_applies_only_where_the_word_occurs(backpack, idx):
    idx = idx.clone()
    idx[0, 4] = 5
    idx[1][idx[1] == 5] = 6  # row 1 never mentions the word
    seen, edited = {}, {}
    backpack(idx, senses_fn=lambda C: seen.setdefault('C', C))
    backpack(idx, senses_fn=lambda C: edited.setdefault('C', iv.knowledge_edit_fn(backpack, idx, {5}, 11, 12)(C)))
    changed = (edited['C'] != seen['C']).any(-1)  # (B, k, T)
    assert changed[0, :, 4].all() and changed.sum() == K


def test_debias_p0_equals_zeroing_that_sense(backpack, idx):
    idx = idx.clone()
    idx[:, [2, 7]] = 9

    def zero_sense(C):
        C = C.clone()
        C[:, 1, :][idx == 9] = 0
        return C
    edited, _ = backpack(idx, **iv.backpack_debias_edit({9}, 1)(0.0)(idx))
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


def test_generate_edited_matches_generate_when_neutral(backpack):
    prompt = torch.tensor([[1, 5, 9]])
    out = iv.generate_edited(backpack, prompt, 6, temperature=0)
    assert torch.equal(out, backpack.generate(prompt, 6, temperature=0))


def test_word_arithmetic_parsing():
    assert iv.parse_word_arithmetic('+king-man+woman') == [(1, 'king'), (-1, 'man'), (1, 'woman')]
    assert iv.parse_word_arithmetic(' roi ') == [(1, 'roi')]
    with pytest.raises(iv.InterventionError):
        iv.parse_word_arithmetic('+-')


def test_debiasing_on_a_loaded_backpack_gpt2_format_model(reference_tiny_dir):
    """Mechanics on the reference backpack-gpt2-format checkpoint (vocab 96): the gender sense can be
    found or named (backpack-gpt2's is 10; this one has 4 senses, so 3), p = 0 removes it, and
    Nelder-Mead never ends worse than p = 1 on its own objective."""
    model = BackpackLM.from_pretrained(reference_tiny_dir).eval().requires_grad_(False)
    he, she, profession = [20], [21], {40, 41}
    prompts = [[5, 40, 41, 7], [8, 9, 40, 41, 3], [40, 41, 12], [6, 40, 41], [2, 3, 4, 40, 41, 5]]
    found, helped, reduction = iv.gender_sense(model, {'job': (prompts, profession)}, he, she, pad_id=95)
    assert 0 <= found < model.config.n_senses and len(helped) == len(reduction) == model.config.n_senses
    named = 3
    bias = lambda p: iv.profession_bias(model, prompts, he, she, 95, iv.backpack_debias_edit(profession, named)(p))
    rows = iv.right_pad(prompts, 95)

    def zeroed(C):
        C = C.clone()
        C[:, named][iv.token_mask(rows, profession)] = 0
        return C
    logp = model(rows, senses_fn=zeroed)[0].log_softmax(-1)
    last = torch.tensor([len(p) - 1 for p in prompts])
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
    markdown = (runs['backpack'] / 'interventions' / 'interventions.md').read_text()
    assert '## Topic control' in markdown and '## Language steering' in markdown


def test_comparison_report_links_interventions_when_present(tmp_path):
    from compare_models import interventions_links
    (tmp_path / 'bp' / 'interventions').mkdir(parents=True)
    (tmp_path / 'bp' / 'interventions' / 'interventions.md').write_text('# Sense interventions\n')
    links = interventions_links([tmp_path / 'bp', tmp_path / 'tf'], tmp_path / 'comparison')
    assert links.count('Sense interventions of') == 1 and '(../bp/interventions/interventions.md)' in links
