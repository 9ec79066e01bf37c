"""
Sense interventions of a trained Backpack against its matched Transformer (Hewitt et al., ACL 2023,
sections 6-7): topic control, gender debiasing, knowledge editing and language steering, in English
and in French. Writes RUN/interventions/interventions.json and interventions.md (atomically).

    python -m experiments.run_interventions --out_dir out/backpack_full --baseline_dir out/transformer_full

The data (topic bags, professions and prompts, edits, steering prompts) are data/interventions/*.json.
Every edit touches the intervened word's own pieces only (interventions.place_word), answers are
scored as the tokenizer writes them after each prompt, and docs/interventions.md says what each
number measures. Uncertainties are standard errors over topics, professions, edits or samples (the
unit is named in each table). Without --baseline_dir the Transformer columns are left out.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backpacks import cli, interventions as iv
from backpacks.atomic import atomic_write_text
from backpacks.dataset import resolve_dataset
from backpacks.devices import resolve_device
from backpacks.eval.context import load_for_eval
from backpacks.eval.options import check_run_dir
from backpacks.generation import sample_edited
from backpacks.eval.lexical import WordVectors, token_language_counts, token_language_masks, word_pieces
from backpacks.eval.report import json_safe, markdown_table

DATA = Path(__file__).resolve().parent.parent / 'data' / 'interventions'
LANGS = ('en', 'fr')
TRANSFORMER_BONUSES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)  # logit bonus grid searched for matched topic measures
STEERING_SCALES = (0.0, 0.5, 1.0, 1.5, 2.0)
ANNEALING = ('on', 'off')


def parse_args(argv=None):
    p = cli.ArgumentParser(prog="python -m experiments.run_interventions",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    p.add_argument('--out_dir', required=True, help="Backpack training output directory (best.pt / ckpt.pt)")
    p.add_argument('--baseline_dir', default=None, help="its matched Transformer's output directory")
    p.add_argument('--ckpt', choices=['best', 'latest'], default='best')
    p.add_argument('--data_dir', default=None, help="dataset directory if it moved since training")
    p.add_argument('--intervention_data', default=str(DATA), help="directory of topics/gender/knowledge/steering.json")
    p.add_argument('--samples', type=int, default=8, help="samples per topic, language and strength (and per steering prompt)")
    p.add_argument('--max_new_tokens', type=int, default=30)
    p.add_argument('--top_k', type=int, default=40, help="sampling among the k likeliest tokens")
    p.add_argument('--topics', type=int, default=None, help="use only the first N topics per language")
    p.add_argument('--professions', type=int, default=None, help="use only the first N professions per language")
    p.add_argument('--gender_sense', type=int, default=None,
                   help="the Backpack's gender sense (default: found on the estimation prompts; backpack-gpt2 uses 10)")
    p.add_argument('--steer_senses', type=int, default=1, help="senses (and random directions) scaled per language")
    defaults = iv.Annealing()
    p.add_argument('--annealing_offset', type=float, default=defaults.offset,
                   help="topic annealing b = sigmoid(-f a + OFFSET) (1 + j / POSITION_SCALE), f = max weight / DIVISOR "
                        "(the defaults are the authors', for backpack-gpt2)")
    p.add_argument('--annealing_divisor', type=float, default=defaults.divisor)
    p.add_argument('--annealing_position_scale', type=float, default=defaults.position_scale)
    p.add_argument('--seed', type=int, default=1337)
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    cli.check_at_least(args, 1, ('samples', 'max_new_tokens', 'top_k', 'steer_senses', 'topics', 'professions'))
    cli.check_at_least(args, 0, ('gender_sense',))
    if not (args.annealing_divisor > 0 and args.annealing_position_scale > 0 and math.isfinite(args.annealing_offset)):
        cli.fail("--annealing_divisor and --annealing_position_scale must be > 0, --annealing_offset finite")
    cli.check_seed(args.seed)
    args.device = resolve_device(args.device)
    check_run_dir(args.out_dir, args.ckpt, results='interventions')
    if args.baseline_dir is not None:
        check_run_dir(args.baseline_dir, args.ckpt, results=None)
    args.data_dir = resolve_dataset(args.data_dir)
    cli.check_directory(args.intervention_data, "--intervention_data")
    return args


def annealing_settings(args, on):
    return iv.Annealing(on=on, offset=args.annealing_offset, divisor=args.annealing_divisor,
                        position_scale=args.annealing_position_scale)


# ----------------------------------------------------------------------------- data

def read_data(directory):
    data = {}
    for name in ('topics', 'gender', 'knowledge', 'steering'):
        path = Path(directory) / f'{name}.json'
        try:
            data[name] = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: cannot read {path}: {e}")
    try:
        check_data(data)
    except (KeyError, TypeError, AttributeError) as e:
        raise SystemExit(f"error: {directory} is not laid out as data/interventions/README.md says ({type(e).__name__}: {e})")
    return data


def check_data(data):
    """One clear line for the mistakes a hand-edited data file can make: empty bags, empty words,
    a template without its {}."""
    def need(words, where):
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise SystemExit(f"error: {where} must be a non-empty list of non-empty words")

    def templates(texts, where):
        need(texts, where)
        if not all('{}' in t for t in texts):
            raise SystemExit(f"error: every prompt of {where} needs a {{}} for the word")
    for lang in LANGS:
        for name, words in data['topics'][lang].items():
            need(words, f"topics.json {lang}:{name}")
        need(data['gender']['pronouns'][lang], f"gender.json pronouns {lang}")
        need([p[lang] for p in data['gender']['professions']], f"gender.json professions ({lang})")
        for which in ('estimation_prompts', 'evaluation_prompts'):
            templates(data['gender'][which][lang], f"gender.json {which} {lang}")
        need(data['knowledge']['collateral_prompts'][lang], f"knowledge.json collateral_prompts {lang}")
        need(data['steering']['prompts'][lang], f"steering.json prompts {lang}")
    for n, edit in enumerate(data['knowledge']['edits']):
        need([edit['x'], edit['r'], edit['a']], f"knowledge.json edit {n} (x, r, a)")
        templates(edit['prompts'], f"knowledge.json edit {n} prompts")


def check_placement(tok, data):
    """Place every word of the data in its prompts and write every answer after them before anything
    runs, so that a word the tokenizer cannot place stops the run at once (InterventionError)."""
    gender = data['gender']
    for lang in LANGS:
        for profession in gender['professions']:
            for which in ('estimation_prompts', 'evaluation_prompts'):
                for prompt in iv.place_words(tok, tag(tok, lang), gender[which][lang], profession[lang]):
                    for pronoun in gender['pronouns'][lang]:
                        iv.answer_pieces(tok, prompt.text, pronoun)
    for edit in data['knowledge']['edits']:
        for prompt in iv.place_words(tok, tag(tok, edit['lang']), edit['prompts'], edit['x']):
            for answer in (edit['r'], edit['a']):
                iv.answer_pieces(tok, prompt.text, answer)


# ----------------------------------------------------------------------------- helpers

def mean_se(values):
    """{mean, se, median, n}: se is the standard error of the mean over the given units."""
    values = np.asarray(values, dtype=np.float64)
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return {'mean': float(values.mean()), 'se': se, 'median': float(np.median(values)), 'n': int(len(values))}


def pm(stat, median=False):
    text = f"{stat['mean']:.3g} ± {stat['se']:.2g}" if stat['se'] is not None else f"{stat['mean']:.3g}"
    return text + (f" (median {stat['median']:.3g})" if median else '')


def tag(tok, lang):
    return tok.en_id if lang == 'en' else tok.fr_id


def sample_from(model, tok, prompt, args, edit=None, logits_fn=None, bag=None):
    """args.samples continuations of one prompt (ids), seeded, their decoded new text, and the mean
    next-token probability mass on the bag over every sampling step (None without a bag)."""
    torch.manual_seed(args.seed)
    masses = []
    on_logits = (lambda logits: masses.append(iv.bag_mass(logits, bag))) if bag is not None else None
    idx = torch.tensor([prompt] * args.samples, dtype=torch.long, device=args.device)
    out = sample_edited(model, idx, args.max_new_tokens, edit, logits_fn, temperature=1.0, top_k=args.top_k,
                        on_logits=on_logits)
    mass = float(torch.stack(masses).mean()) if masses else None
    return out, [tok.decode(row[len(prompt):].tolist()) for row in out], mass


# ----------------------------------------------------------------------------- 3. topic control

def topic_control(model, baseline, tok, bags, args, bar):
    """Per language and topic: at strengths 0-3, with annealing on and off, the Backpack's bag mass
    (mean next-token probability on the bag's first pieces while sampling), topic rate (share of
    sampled words in the bag) and NLL; the Transformer's at each logit bonus. Samples start from the
    language tag (the authors start from <|endoftext|>), and fluency is the NLL under the unedited
    model that generated them (the authors score with GPT-2 large, which has no French)."""
    row_max = iv.sense_logit_max(model)
    per_topic = {}
    for lang in LANGS:
        prompt = [tag(tok, lang)]
        for name, words in list(bags[lang].items())[:args.topics]:
            bag, ids = iv.topic_bag(tok, words, model.config.vocab_size)
            pieces = word_pieces(tok, words)
            entry = {'words': len(words), 'with_a_piece': len(ids), 'single_piece': sum(len(p) == 1 for p in pieces),
                     'distinct_first_pieces': len(set(ids.values())), 'backpack': {}, 'transformer': {}}
            scores = iv.topic_scores(model, bag, row_max)
            for anneal in ANNEALING:
                entry['backpack'][anneal] = {}
                for strength in iv.TOPIC_STRENGTHS:
                    if strength == 0 and anneal == 'off':  # weights of 1 are the identity either way: same samples
                        entry['backpack'][anneal][0] = entry['backpack']['on'][0]
                        continue
                    settings = annealing_settings(args, anneal == 'on')
                    delta = iv.topic_weights(scores, strength)
                    out, texts, mass = sample_from(model, tok, prompt, args, iv.topic_edit_of(model, delta, settings), bag=bag)
                    b, a = iv.upweighted_annealing(model, out, delta, settings) if strength else (None, None)
                    entry['backpack'][anneal][strength] = {
                        'mass': mass, 'rate': iv.topic_rate(texts, words), 'nll': float(iv.continuation_nll(model, out, 1).mean()),
                        'annealing_weight_median': b, 'annealing_input_median': a}
                    bar.update()
            for bonus in TRANSFORMER_BONUSES if baseline is not None else ():
                out, texts, mass = sample_from(baseline, tok, prompt, args, logits_fn=iv.logit_bonus_fn(bag, bonus), bag=bag)
                entry['transformer'][bonus] = {'mass': mass, 'rate': iv.topic_rate(texts, words),
                                               'nll': float(iv.continuation_nll(baseline, out, 1).mean())}
                bar.update()
            per_topic[f'{lang}:{name}'] = entry
    logit_scale = {'sense_logit_max_median': float(row_max.median()),
                   'sense_logit_max_q95': float(torch.quantile(row_max.flatten(), 0.95))}
    return {'per_topic': per_topic, 'logit_scale': logit_scale, 'summary': summarise_topics(per_topic)}


def summarise_topics(per_topic):
    """Mean ± SE over topics; the Transformer bonus whose mean rate, and the one whose mean bag mass,
    is closest to each Backpack setting's."""
    summary = {}
    for lang in LANGS:
        topics = [e for k, e in per_topic.items() if k.startswith(lang + ':')]
        if not topics:
            continue
        rows = {'coverage': {'words': sum(e['words'] for e in topics), 'single_piece': sum(e['single_piece'] for e in topics),
                             'distinct_first_pieces_mean': float(np.mean([e['distinct_first_pieces'] for e in topics]))}}
        measures = ('mass', 'rate', 'nll')
        rows['backpack'] = {anneal: {s: {m: mean_se([e['backpack'][anneal][s][m] for e in topics]) for m in measures}
                                     for s in iv.TOPIC_STRENGTHS} for anneal in ANNEALING}
        for anneal in ANNEALING:
            for s in list(iv.TOPIC_STRENGTHS)[1:]:
                weights = [e['backpack'][anneal][s]['annealing_weight_median'] for e in topics]
                rows['backpack'][anneal][s]['annealing_weight_median'] = (
                    float(np.median(weights)) if None not in weights else None)
        if topics[0]['transformer']:
            bonuses = list(topics[0]['transformer'])
            rows['transformer'] = {b: {m: mean_se([e['transformer'][b][m] for e in topics]) for m in measures} for b in bonuses}
            closest = lambda m, target: min(bonuses, key=lambda b: abs(rows['transformer'][b][m]['mean'] - target))
            rows['matched'] = {anneal: {s: {m: closest(m, rows['backpack'][anneal][s][m]['mean']) for m in ('mass', 'rate')}
                                        for s in iv.TOPIC_STRENGTHS} for anneal in ANNEALING}
        summary[lang] = rows
    return summary


# ----------------------------------------------------------------------------- 4. gender debiasing

SETTINGS = ('unmodified', 'removed', 'optimised')


def pronoun_forms(tok, prompts, pronouns):
    """{pronoun: {form as written after the prompts: its token strings}}; a form is one token when
    its list has one entry (the measure of the paper needs single-token pronouns)."""
    forms = {}
    for word in pronouns:
        for prompt in prompts:
            pieces = iv.answer_pieces(tok, prompt.text, word)
            forms.setdefault(word, {})[iv.written_after(prompt.text, word)] = [tok.token_str(i) for i in pieces]
    return forms


def bias_row(model, prompts, he, she, pad_id, edit, p):
    """Bias of the whole pronouns and per piece, unmodified, with the sense (direction) removed, and at p."""
    row = {'p': p}
    for setting, scale in zip(SETTINGS, (None, 0.0, p)):
        whole, per_piece = iv.pronoun_log_ratios(model, prompts, he, she, pad_id, None if scale is None else edit(scale))
        row[setting] = iv.bias_of(whole)
        row[setting + '_per_piece'] = iv.bias_of(per_piece)
    return row


def debias_profession(model, tok, estimation, evaluation, pronouns, edit):
    """Fit p on the estimation prompts (the authors' whole-pronoun objective), report on the evaluation ones."""
    he, she = ([iv.answer_pieces(tok, p.text, w) for p in evaluation] for w in pronouns)
    e_he, e_she = ([iv.answer_pieces(tok, p.text, w) for p in estimation] for w in pronouns)
    p = iv.optimise_scale(lambda q: iv.profession_bias(model, estimation, e_he, e_she, tok.eot_id, edit(q)))
    return bias_row(model, evaluation, he, she, tok.eot_id, edit, p)


def debiasing(model, baseline, tok, gender, args, bar):
    results = {}
    for lang in LANGS:
        pronouns = gender['pronouns'][lang]
        professions = [(p[lang], p['gendered_form'] if lang == 'fr' else False)
                       for p in gender['professions'][:args.professions]]
        place = lambda which, word: iv.place_words(tok, tag(tok, lang), gender[which][lang], word)
        estimation = {w: place('estimation_prompts', w) for w, _ in professions}
        evaluation = {w: place('evaluation_prompts', w) for w, _ in professions}
        if args.gender_sense is None:
            sense, helped, reduction = iv.gender_sense(
                model, {w: (ps, *([iv.answer_pieces(tok, p.text, x) for p in ps] for x in pronouns))
                        for w, ps in estimation.items()}, tok.eot_id)
        else:
            sense, helped, reduction = args.gender_sense, None, None
        if baseline is not None:  # the he-she direction of the Transformer's input embeddings (pronouns' piece means)
            vectors = WordVectors(baseline, tok, pronouns)
            direction = torch.from_numpy(vectors.embedding[1] - vectors.embedding[0]).to(args.device)
        rows = {}
        for word, gendered in professions:
            rows[word] = {'gendered_form': gendered,
                          'edited_positions': [len(p.positions) for p in evaluation[word]],
                          'backpack': debias_profession(model, tok, estimation[word], evaluation[word], pronouns,
                                                        iv.backpack_debias_edit(sense))}
            if baseline is not None:
                rows[word]['transformer'] = debias_profession(baseline, tok, estimation[word], evaluation[word], pronouns,
                                                              iv.transformer_debias_edit(direction))
            bar.update()
        groups = {'all': list(rows)}
        if lang == 'fr':
            groups.update({'gendered_form': [w for w in rows if rows[w]['gendered_form']],
                           'epicene': [w for w in rows if not rows[w]['gendered_form']]})
        keys = [k for s in SETTINGS for k in (s, s + '_per_piece')] + ['p']
        summary = {g: {m: {k: mean_se([rows[w][m][k] for w in words]) for k in keys}
                       for m in ('backpack', 'transformer') if m in rows[words[0]]}
                   for g, words in groups.items() if words}
        results[lang] = {'gender_sense': sense, 'sense_share_helped': helped, 'sense_mean_reduction': reduction,
                         'pronoun_forms': pronoun_forms(tok, next(iter(evaluation.values())), pronouns),
                         'professions': rows, 'summary': summary}
    return results


# ----------------------------------------------------------------------------- 5. knowledge editing

def knowledge_row(model, tok, edit, collateral_texts):
    """One edit x: r -> a. The senses of x's pieces are edited where x stands whole; e_r and e_a are
    the first pieces of ' r' and ' a' (the authors' tokenizer(' Apple')[0]). Margins are whole-word
    and per-piece log p(a) - log p(r) of the answers as written after each prompt; the next-token
    margin logit[a] - logit[r] is also shown with the closed form that predicts its change."""
    prompt_tag = tag(tok, edit['lang'])
    prompts = iv.place_words(tok, prompt_tag, edit['prompts'], edit['x'])
    firsts = iv.first_pieces(tok, [edit['r'], edit['a']])
    if len(firsts) < 2:
        raise iv.InterventionError(f"{edit['r']!r} or {edit['a']!r} encodes to no token")
    r_id, a_id = firsts[edit['r']], firsts[edit['a']]
    a, r = ([iv.answer_pieces(tok, p.text, w) for p in prompts] for w in (edit['a'], edit['r']))
    hooks = iv.knowledge_edit(model, r_id, a_id)
    (before, before_piece), (after, after_piece) = (iv.answer_margins(model, prompts, a, r, tok.eot_id, e) for e in (None, hooks))
    token_before, token_after = (iv.token_margin(model, prompts, r_id, a_id, tok.eot_id, e) for e in (None, hooks))
    closed_form = iv.knowledge_projection(model, prompts, r_id, a_id, tok.eot_id)
    collateral = [iv.find_word(tok, prompt_tag, text, edit['x']) for text in collateral_texts]
    return {'lang': edit['lang'], 'x': edit['x'], 'r': edit['r'], 'a': edit['a'],
            'edit_pieces': [tok.token_str(r_id), tok.token_str(a_id)],
            'edited_positions': [len(p.positions) for p in prompts],
            'collateral_edited_positions': [len(p.positions) for p in collateral],
            'margin_before': float(before.mean()), 'margin_after': float(after.mean()),
            'margin_change': float((after - before).mean()),
            'margin_change_per_piece': float((after_piece - before_piece).mean()),
            'token_margin_change': float((token_after - token_before).mean()),
            'predicted_token_margin_change': float(closed_form['predicted'].mean()),
            'projection': float(closed_form['projection'].mean()),
            'projection_per_prompt': closed_form['projection'].tolist(),
            'mean_c': float(closed_form['mean_c'].mean()),
            'collateral_kl': iv.next_token_kl(model, collateral, tok.eot_id, hooks)}


def knowledge_editing(model, tok, knowledge, bar):
    rows = []
    for edit in knowledge['edits']:
        rows.append(knowledge_row(model, tok, edit, knowledge['collateral_prompts'][edit['lang']]))
        bar.update()
    keys = ('margin_change', 'margin_change_per_piece', 'token_margin_change', 'projection', 'collateral_kl')
    summary = {lang: {key: mean_se([r[key] for r in rows if r['lang'] == lang]) for key in keys}
               for lang in LANGS if any(r['lang'] == lang for r in rows)}
    return {'edits': rows, 'summary': summary}


# ----------------------------------------------------------------------------- 6. language steering

def language_steering(model, baseline, tok, masks, steering, args, bar):
    scores = iv.language_sense_scores(model, masks)
    senses = iv.language_senses(scores, args.steer_senses)
    directions = iv.random_directions(model.config.n_embd, args.steer_senses, seed=args.seed)
    prompts = {lang: [[tag(tok, lang)] + tok.encode(t) for t in steering['prompts'][lang]] for lang in LANGS}

    def shares(m, edit_of_scale, scale):
        by_prompt_lang = {}
        for lang in LANGS:
            rows = []
            for prompt in prompts[lang]:
                out, _, _ = sample_from(m, tok, prompt, args, edit_of_scale(scale))
                rows += [iv.language_shares(row[len(prompt):], masks)[1] for row in out]
            by_prompt_lang[lang] = mean_se(rows)  # French share, over samples of all prompts
            bar.update()
        return by_prompt_lang

    results = {'sense_language_scores': scores.tolist(), 'senses': senses, 'backpack': {}, 'transformer': {}}
    for target in LANGS:
        edit = lambda s: lambda idx, at=None: {'senses_fn': iv.scale_senses_fn(None, senses[target], s)}
        results['backpack'][target] = {s: shares(model, edit, s) for s in STEERING_SCALES}
    if baseline is not None:
        edit = lambda s: lambda idx, at=None: {'embeddings_fn': iv.scale_directions_fn(directions.to(args.device), s)}
        results['transformer'] = {s: shares(baseline, edit, s) for s in STEERING_SCALES}
    return results


# ----------------------------------------------------------------------------- report

def render_topic(topic):
    lines = ["## Topic control (unit: topics)\n\nBag mass: mean next-token probability of the bag words' first pieces "
             "(what the edit pushes), over every sampling step; rate: share of sampled words that are bag words; "
             "NLL: mean nats/token of the samples under the unedited model that made them; b: median annealing weight "
             "on the upweighted senses at the end of the samples (1 = the full push, 0 = none). Transformer: the logit "
             "bonus whose mean bag mass is closest.\n"]
    scale = topic['logit_scale']
    lines.append(f"Scale of this model's sense logits: median over (token, sense) of max_v (E C(x)_l)[v] = "
                 f"{scale['sense_logit_max_median']:.3g} (95th percentile {scale['sense_logit_max_q95']:.3g}); "
                 "annealing switches a sense off once the positive logits it gives the text's tokens sum past "
                 "about (offset + 4) / f.\n")
    header = ['lang', 'annealing', 'strength', 'bag mass', 'rate', 'NLL', 'b']
    with_baseline = any('matched' in s for s in topic['summary'].values())
    header += ['matched bonus', 'Transformer mass', 'Transformer rate', 'Transformer NLL'] if with_baseline else []
    rows = []
    for lang, s in topic['summary'].items():
        for anneal, strengths in s['backpack'].items():
            for strength, b in strengths.items():
                weight = b.get('annealing_weight_median')
                row = [lang, anneal, str(strength), pm(b['mass']), pm(b['rate']), pm(b['nll']),
                       f"{weight:.3g}" if weight is not None else '']
                if 'matched' in s:
                    bonus = s['matched'][anneal][strength]['mass']
                    t = s['transformer'][bonus]
                    row += [f"{bonus:g}", pm(t['mass']), pm(t['rate']), pm(t['nll'])]
                rows.append(row)
    lines += [markdown_table(header, rows), ""]
    lines.append("Coverage: " + "; ".join(f"{lang}: {s['coverage']['single_piece']} of {s['coverage']['words']} bag words "
                                           f"are one token" for lang, s in topic['summary'].items()) + ".\n")
    return lines


def render_debias(debias):
    lines = ["## Gender debiasing (unit: professions)\n\nBias: mean over the evaluation prompts of max(p(he)/p(she), "
             "p(she)/p(he)), 1 unbiased, with each pronoun scored as written after the prompt: whole word (summed over "
             "its pieces) and per piece (the mean log-probability of its pieces, which does not grow with their "
             "number). p is fitted per profession on the estimation prompts (whole word). The edit touches the "
             "profession's own pieces only.\n"]
    rows = []
    for lang, r in debias.items():
        for group, models in r['summary'].items():
            for m, stats in models.items():
                rows.append([lang, group, m] + [f"{pm(stats[s], median=True)} / {pm(stats[s + '_per_piece'], median=True)}"
                                                for s in SETTINGS] + [pm(stats['p'], median=True)])
    lines += [markdown_table(['lang', 'professions', 'model', 'unmodified (whole / per piece)', 'removed (p=0)',
                              'optimised p', 'fitted p'], rows), ""]
    lines.append("Gender sense used: " + ", ".join(f"{lang} {r['gender_sense']}" for lang, r in debias.items()) + ".\n")
    forms = [f"`{form}` = {pieces}" + (' (one token)' if len(pieces) == 1 else '')
             for r in debias.values() for pronoun in r['pronoun_forms'].values() for form, pieces in pronoun.items()]
    lines.append("Pronouns as written after the prompts: " + ", ".join(forms) + ".\n")
    return lines


def render_knowledge(knowledge):
    lines = ["## Knowledge editing (unit: edits)\n\nMargin: log p(a) - log p(r) of the answers as written after "
             "prompts mentioning x, whole word and per piece; token: the next-token margin logit[a] - logit[r] of the "
             "edit's pieces, with the closed form that predicts its change, P (2|e_r|^2 - (1+s) e_a.e_r), where P is "
             "the projection of x's senses on e_r weighted by alpha at the last prompt position: the sign of P decides "
             "the direction. Collateral: mean KL(unedited || edited) of next-token distributions on prompts without x.\n"]
    rows = [[e['lang'], e['x'], f"{e['r']} -> {e['a']}", ' / '.join(e['edit_pieces']),
             ','.join(map(str, e['edited_positions'])), ','.join(map(str, e['collateral_edited_positions'])),
             f"{e['projection']:.3g}", f"{e['predicted_token_margin_change']:.3g}", f"{e['token_margin_change']:.3g}",
             f"{e['margin_change']:.3g}", f"{e['margin_change_per_piece']:.3g}", f"{e['collateral_kl']:.2g}"]
            for e in knowledge['edits']]
    lines += [markdown_table(['lang', 'x', 'r -> a', 'edited pieces', 'positions edited per prompt',
                              'per collateral prompt', 'P', 'token change predicted', 'observed', 'margin change',
                              'per piece', 'collateral KL'], rows), ""]
    rows = [[lang, pm(s['projection']), pm(s['token_margin_change']), pm(s['margin_change']),
             pm(s['margin_change_per_piece']), pm(s['collateral_kl'])] for lang, s in knowledge['summary'].items()]
    lines += [markdown_table(['lang', 'P', 'token margin change', 'margin change', 'per piece', 'collateral KL'], rows), ""]
    return lines


def render_steering(steer):
    lines = [f"## Language steering (unit: samples)\n\nShare of French among the generated English or French "
             f"tokens. Backpack senses scaled: French-leaning {steer['senses']['fr']}, English-leaning "
             f"{steer['senses']['en']}; Transformer control: as many random input-embedding directions.\n"]
    rows = []
    for scale in STEERING_SCALES:
        row = [f"{scale:g}"]
        for target in LANGS:
            row += [pm(steer['backpack'][target][scale][lang]) for lang in LANGS]
        if steer['transformer']:
            row += [pm(steer['transformer'][scale][lang]) for lang in LANGS]
        rows.append(row)
    header = ['scale'] + [f'{target} senses, {lang.upper()} prompt' for target in LANGS for lang in LANGS]
    header += ['random dirs, EN prompt', 'random dirs, FR prompt'] if steer['transformer'] else []
    return lines + [markdown_table(header, rows), ""]


def render(results):
    lines = [f"# Sense interventions\n\nBackpack `{results['out_dir']}`, Transformer baseline `{results['baseline_dir']}`. "
             f"Command: `{results['command']}` ({results['seconds']:.0f} s). ± is one standard error over the unit "
             "named in each table.\n"]
    lines += render_topic(results['topic']) + render_debias(results['debias'])
    lines += render_knowledge(results['knowledge']) + render_steering(results['steering'])
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    data = read_data(args.intervention_data)  # before any model loads
    model, ckpt, tok, data_dir = load_for_eval(args.out_dir, args.ckpt, args.device, args.data_dir)
    try:
        iv.require_backpack(model, "experiments/run_interventions.py --out_dir")
    except iv.InterventionError as e:
        raise SystemExit(f"error: {e} (pass the Transformer as --baseline_dir)")
    if args.gender_sense is not None and not 0 <= args.gender_sense < model.config.n_senses:
        raise SystemExit(f"error: --gender_sense {args.gender_sense} is not a sense of this model "
                         f"(it has {model.config.n_senses}: 0-{model.config.n_senses - 1})")
    baseline = None
    if args.baseline_dir is not None:
        baseline, bckpt, _, _ = load_for_eval(args.baseline_dir, args.ckpt, args.device, data_dir)
        if bckpt['meta'].get('vocab_size') != ckpt['meta'].get('vocab_size'):
            raise SystemExit("error: --baseline_dir was trained on a different vocabulary")
    try:
        masks = token_language_masks(token_language_counts(data_dir, ckpt['meta']))
    except Exception as e:
        raise SystemExit(f"error: language masks need the dataset's pairs_train.bin: {e}")
    try:
        check_placement(tok, data)
        results = run_all(model, baseline, tok, masks, data, args)
    except iv.InterventionError as e:
        raise SystemExit(f"error: {e}")
    out = Path(args.out_dir) / 'interventions'
    atomic_write_text(out / 'interventions.json', json.dumps(json_safe(results), indent=2, ensure_ascii=False))
    atomic_write_text(out / 'interventions.md', render(results))
    print(render(results))
    print(f"wrote {out}/interventions.json and interventions.md ({results['seconds']:.0f} s)")


def run_all(model, baseline, tok, masks, data, args):
    n_topics = sum(len(list(data['topics'][lang])[:args.topics]) for lang in LANGS)
    backpack_settings = len(ANNEALING) * (len(iv.TOPIC_STRENGTHS) - 1) + 1
    total = (n_topics * (backpack_settings + (len(TRANSFORMER_BONUSES) if baseline else 0))
             + 2 * len(data['gender']['professions'][:args.professions]) + len(data['knowledge']['edits'])
             + len(STEERING_SCALES) * len(LANGS) * (3 if baseline else 2))
    start = time.time()
    with torch.no_grad(), tqdm(total=total, desc="interventions") as bar:
        results = {'out_dir': str(args.out_dir), 'baseline_dir': args.baseline_dir, 'command': ' '.join(sys.argv),
                   'settings': dict(vars(args))}
        results['topic'] = topic_control(model, baseline, tok, data['topics'], args, bar)
        results['debias'] = debiasing(model, baseline, tok, data['gender'], args, bar)
        results['knowledge'] = knowledge_editing(model, tok, data['knowledge'], bar)
        results['steering'] = language_steering(model, baseline, tok, masks, data['steering'], args, bar)
    results['seconds'] = time.time() - start
    return results


if __name__ == '__main__':
    main()
