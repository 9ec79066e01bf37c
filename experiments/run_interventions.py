"""
Sense interventions of a trained Backpack against its matched Transformer (Hewitt et al., ACL 2023,
sections 6-7): topic control, gender debiasing, knowledge editing and language steering, in English
and in French. Writes RUN/interventions/interventions.json and interventions.md (atomically).

    python -m experiments.run_interventions --out_dir out/backpack_full --baseline_dir out/transformer_full

The data (topic bags, professions and prompts, edits, steering prompts) are data/interventions/*.json.
Uncertainties are standard errors over topics, professions, edits or samples (the unit is named
in each table). Without --baseline_dir the Transformer columns are left out.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backpacks import interventions as iv
from backpacks.atomic import atomic_write_text
from backpacks.devices import resolve_device
from backpacks.evaluation import load_for_eval
from backpacks.lexical import WordVectors, token_language_counts, token_language_masks, word_pieces
from backpacks.report import json_safe, markdown_table

DATA = Path(__file__).resolve().parent.parent / 'data' / 'interventions'
LANGS = ('en', 'fr')
TRANSFORMER_BONUSES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)  # logit bonus grid searched for matched topic rates
STEERING_SCALES = (0.0, 0.5, 1.0, 1.5, 2.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.run_interventions",
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
    p.add_argument('--seed', type=int, default=1337)
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    for name in ('samples', 'max_new_tokens', 'top_k', 'steer_senses'):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1")
    args.device = resolve_device(args.device)
    return args


def read_data(directory):
    data = {}
    for name in ('topics', 'gender', 'knowledge', 'steering'):
        path = Path(directory) / f'{name}.json'
        try:
            data[name] = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: cannot read {path}: {e}")
    return data


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


def sample_from(model, tok, prompt, args, edits_for=None, logits_fn=None):
    """args.samples continuations of one prompt (ids), seeded, and their decoded new text."""
    torch.manual_seed(args.seed)
    idx = torch.tensor([prompt] * args.samples, dtype=torch.long, device=args.device)
    out = iv.generate_edited(model, idx, args.max_new_tokens, edits_for, logits_fn, temperature=1.0, top_k=args.top_k)
    return out, [tok.decode(row[len(prompt):].tolist()) for row in out]


# ----------------------------------------------------------------------------- 3. topic control

def topic_control(model, baseline, tok, bags, args, bar):
    """Per language and topic: Backpack topic rate and sample NLL at strengths 0-3, Transformer at each bonus.
    Samples start from the language tag (the authors start from <|endoftext|>), and fluency is the NLL under
    the unedited model that generated them (the authors score with GPT-2 large, which has no French)."""
    per_topic = {}
    for lang in LANGS:
        prompt = [tag(tok, lang)]
        for name, words in list(bags[lang].items())[:args.topics]:
            pieces = word_pieces(tok, words)
            bag, ids = iv.bag_vector(tok, words, model.config.vocab_size)
            entry = {'words': len(words), 'with_a_piece': len(ids), 'single_piece': sum(len(p) == 1 for p in pieces),
                     'distinct_first_pieces': len(set(ids.values())), 'backpack': {}, 'transformer': {}}
            scores = iv.topic_scores(model, bag)
            for strength in iv.TOPIC_STRENGTHS:
                delta = iv.topic_weights(scores, strength)
                out, texts = sample_from(model, tok, prompt, args,
                                         lambda idx: {'senses_fn': iv.topic_senses_fn(model, idx, delta)})
                entry['backpack'][strength] = {'rate': iv.topic_rate(texts, words),
                                               'nll': float(iv.continuation_nll(model, out, 1).mean())}
                bar.update()
            for bonus in TRANSFORMER_BONUSES if baseline is not None else ():
                out, texts = sample_from(baseline, tok, prompt, args, logits_fn=iv.logit_bonus_fn(bag, bonus))
                entry['transformer'][bonus] = {'rate': iv.topic_rate(texts, words),
                                               'nll': float(iv.continuation_nll(baseline, out, 1).mean())}
                bar.update()
            per_topic[f'{lang}:{name}'] = entry
    return {'per_topic': per_topic, 'summary': summarise_topics(per_topic)}


def summarise_topics(per_topic):
    """Mean ± SE over topics; the Transformer bonus whose mean rate is closest to each Backpack strength's."""
    summary = {}
    for lang in LANGS:
        topics = [e for k, e in per_topic.items() if k.startswith(lang + ':')]
        if not topics:
            continue
        rows = {'coverage': {'words': sum(e['words'] for e in topics), 'single_piece': sum(e['single_piece'] for e in topics),
                             'distinct_first_pieces_mean': float(np.mean([e['distinct_first_pieces'] for e in topics]))}}
        stat = lambda model, key, setting: mean_se([e[model][setting][key] for e in topics])
        rows['backpack'] = {s: {'rate': stat('backpack', 'rate', s), 'nll': stat('backpack', 'nll', s)}
                            for s in iv.TOPIC_STRENGTHS}
        if topics[0]['transformer']:
            bonuses = list(topics[0]['transformer'])
            rows['transformer'] = {b: {'rate': stat('transformer', 'rate', b), 'nll': stat('transformer', 'nll', b)}
                                   for b in bonuses}
            rows['matched'] = {s: min(bonuses, key=lambda b: abs(rows['transformer'][b]['rate']['mean']
                                                                  - rows['backpack'][s]['rate']['mean']))
                               for s in iv.TOPIC_STRENGTHS}
        summary[lang] = rows
    return summary


# ----------------------------------------------------------------------------- 4. gender debiasing

def debiasing(model, baseline, tok, gender, args, bar):
    results = {}
    for lang in LANGS:
        he, she = (tok.encode(' ' + w) for w in gender['pronouns'][lang])
        professions = [(p[lang], p['gendered_form'] if lang == 'fr' else False)
                       for p in gender['professions'][:args.professions]]
        fill = lambda which, word: iv.fill_prompts(tok, tag(tok, lang), gender[which][lang], word)
        ids = {w: set(word_pieces(tok, [w])[0]) for w, _ in professions}
        estimation = {w: (fill('estimation_prompts', w), ids[w]) for w, _ in professions}
        if args.gender_sense is None:
            sense, helped, reduction = iv.gender_sense(model, estimation, he, she, tok.eot_id)
        else:
            sense, helped, reduction = args.gender_sense, None, None
        if baseline is not None:  # the he-she direction of the Transformer's input embeddings (pronouns' piece means)
            pronouns = WordVectors(baseline, tok, gender['pronouns'][lang])
            direction = torch.from_numpy(pronouns.embedding[1] - pronouns.embedding[0]).to(args.device)
        rows = {}
        for word, gendered in professions:
            evaluation = fill('evaluation_prompts', word)
            bias = lambda prompts, edit=None: iv.profession_bias(model, prompts, he, she, tok.eot_id, edit)
            edit = iv.backpack_debias_edit(ids[word], sense)
            p = iv.optimise_scale(lambda q: bias(estimation[word][0], edit(q)))
            row = {'gendered_form': gendered, 'backpack': {'unmodified': bias(evaluation), 'removed': bias(evaluation, edit(0.0)),
                                                           'optimised': bias(evaluation, edit(p)), 'p': p}}
            if baseline is not None:
                t_edit = iv.transformer_debias_edit(ids[word], direction)
                t_bias = lambda prompts, e=None: iv.profession_bias(baseline, prompts, he, she, tok.eot_id, e)
                tp = iv.optimise_scale(lambda q: t_bias(estimation[word][0], t_edit(q)))
                row['transformer'] = {'unmodified': t_bias(evaluation), 'removed': t_bias(evaluation, t_edit(0.0)),
                                      'optimised': t_bias(evaluation, t_edit(tp)), 'p': tp}
            rows[word] = row
            bar.update()
        groups = {'all': list(rows)}
        if lang == 'fr':
            groups.update({'gendered_form': [w for w in rows if rows[w]['gendered_form']],
                           'epicene': [w for w in rows if not rows[w]['gendered_form']]})
        summary = {g: {m: {s: mean_se([rows[w][m][s] for w in words]) for s in ('unmodified', 'removed', 'optimised', 'p')}
                       for m in ('backpack', 'transformer') if m in rows[words[0]]}
                   for g, words in groups.items() if words}
        results[lang] = {'gender_sense': sense, 'sense_share_helped': helped, 'sense_mean_reduction': reduction,
                         'professions': rows, 'summary': summary}
    return results


# ----------------------------------------------------------------------------- 5. knowledge editing

def knowledge_editing(model, tok, knowledge, bar):
    rows = []
    for edit in knowledge['edits']:
        lang, prompt_tag = edit['lang'], tag(tok, edit['lang'])
        x_ids = set(word_pieces(tok, [edit['x']])[0])
        firsts = iv.first_pieces(tok, [edit['r'], edit['a']])
        prompts = iv.fill_prompts(tok, prompt_tag, edit['prompts'], edit['x'])
        edits_for = lambda idx: {'senses_fn': iv.knowledge_edit_fn(model, idx, x_ids, firsts[edit['r']], firsts[edit['a']])}
        a, r = tok.encode(' ' + edit['a']), tok.encode(' ' + edit['r'])
        before = iv.answer_margin(model, prompts, a, r, tok.eot_id)
        after = iv.answer_margin(model, prompts, a, r, tok.eot_id, edits_for)
        collateral = [[prompt_tag] + tok.encode(t) for t in knowledge['collateral_prompts'][lang]]
        rows.append({'lang': lang, 'x': edit['x'], 'r': edit['r'], 'a': edit['a'],
                     'x_pieces': len(x_ids), 'margin_before': float(before.mean()), 'margin_after': float(after.mean()),
                     'margin_change': float((after - before).mean()),
                     'collateral_kl': iv.next_token_kl(model, collateral, tok.eot_id, edits_for)})
        bar.update()
    summary = {lang: {key: mean_se([r[key] for r in rows if r['lang'] == lang]) for key in ('margin_change', 'collateral_kl')}
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
                out, _ = sample_from(m, tok, prompt, args, edit_of_scale(scale))
                rows += [iv.language_shares(row[len(prompt):], masks)[1] for row in out]
            by_prompt_lang[lang] = mean_se(rows)  # French share, over samples of all prompts
            bar.update()
        return by_prompt_lang

    results = {'sense_language_scores': scores.tolist(), 'senses': senses, 'backpack': {}, 'transformer': {}}
    for target in LANGS:
        edit = lambda s: lambda idx: {'senses_fn': iv.scale_senses_fn(idx, None, senses[target], s)}
        results['backpack'][target] = {s: shares(model, edit, s) for s in STEERING_SCALES}
    if baseline is not None:
        edit = lambda s: lambda idx: {'embeddings_fn': iv.scale_directions_fn(directions.to(args.device), s)}
        results['transformer'] = {s: shares(baseline, edit, s) for s in STEERING_SCALES}
    return results


# ----------------------------------------------------------------------------- report

def render(results):
    lines = [f"# Sense interventions\n\nBackpack `{results['out_dir']}`, Transformer baseline `{results['baseline_dir']}`. "
             f"Command: `{results['command']}`. ± is one standard error over the unit named in each table.\n"]
    topic = results['topic']['summary']
    lines.append("## Topic control (unit: topics)\n\nTopic rate: share of generated words in the bag; NLL: mean "
                 "nats/token of the samples under the unedited model that made them. Transformer: the logit bonus "
                 "whose mean topic rate is closest to the Backpack's at that strength.\n")
    rows = []
    for lang, s in topic.items():
        for strength, b in s['backpack'].items():
            row = [lang, str(strength), pm(b['rate']), pm(b['nll'])]
            if 'matched' in s:
                bonus = s['matched'][strength]
                row += [f"{bonus:g}", pm(s['transformer'][bonus]['rate']), pm(s['transformer'][bonus]['nll'])]
            rows.append(row)
    header = ['lang', 'strength', 'Backpack rate', 'Backpack NLL']
    header += ['matched bonus', 'Transformer rate', 'Transformer NLL'] if any('matched' in s for s in topic.values()) else []
    lines += [markdown_table(header, rows), ""]
    lines.append("Coverage: " + "; ".join(f"{lang}: {s['coverage']['single_piece']} of {s['coverage']['words']} bag words "
                                           f"are one token" for lang, s in topic.items()) + ".\n")
    lines.append("## Gender debiasing (unit: professions)\n\nBias: mean over the 13 evaluation prompts of "
                 "max(p(he)/p(she), p(she)/p(he)); 1 is unbiased. The scale p is fitted per profession on the 5 "
                 "estimation prompts.\n")
    rows = []
    for lang, r in results['debias'].items():
        for group, models in r['summary'].items():
            for m, stats in models.items():
                rows.append([lang, group, m] + [pm(stats[s], median=True) for s in ('unmodified', 'removed', 'optimised', 'p')])
    lines += [markdown_table(['lang', 'professions', 'model', 'unmodified', 'removed (p=0)', 'optimised p', 'fitted p'], rows), ""]
    lines.append("Gender sense used: " + ", ".join(f"{lang} {r['gender_sense']}" for lang, r in results['debias'].items()) + ".\n")
    lines.append("## Knowledge editing (unit: edits)\n\nChange of log p(a) - log p(r) after prompts mentioning x; "
                 "collateral: mean KL(unedited || edited) of next-token distributions on prompts without x.\n")
    rows = [[lang, pm(s['margin_change']), pm(s['collateral_kl'])] for lang, s in results['knowledge']['summary'].items()]
    lines += [markdown_table(['lang', 'margin change', 'collateral KL'], rows), ""]
    steer = results['steering']
    lines.append(f"## Language steering (unit: samples)\n\nShare of French among the generated English or French "
                 f"tokens. Backpack senses scaled: French-leaning {steer['senses']['fr']}, English-leaning "
                 f"{steer['senses']['en']}; Transformer control: as many random input-embedding directions.\n")
    rows = []
    for scale in STEERING_SCALES:
        row = [f"{scale:g}"]
        for target in LANGS:
            row += [pm(steer['backpack'][target][scale][lang]) for lang in LANGS]
        if steer['transformer']:
            row += [pm(steer['transformer'][scale][lang]) for lang in LANGS]
        rows.append(row)
    header = ['scale', 'fr senses, EN prompt', 'fr senses, FR prompt', 'en senses, EN prompt', 'en senses, FR prompt']
    header += ['random dirs, EN prompt', 'random dirs, FR prompt'] if steer['transformer'] else []
    lines += [markdown_table(header, rows), ""]
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
    n_topics = sum(len(list(data['topics'][lang])[:args.topics]) for lang in LANGS)
    total = (n_topics * (len(iv.TOPIC_STRENGTHS) + (len(TRANSFORMER_BONUSES) if baseline else 0))
             + 2 * len(data['gender']['professions'][:args.professions]) + len(data['knowledge']['edits'])
             + len(STEERING_SCALES) * len(LANGS) * (3 if baseline else 2))
    start = time.time()
    with torch.no_grad(), tqdm(total=total, desc="interventions") as bar:
        results = {'out_dir': str(args.out_dir), 'baseline_dir': args.baseline_dir, 'command': ' '.join(sys.argv),
                   'settings': {k: v for k, v in vars(args).items()}}
        results['topic'] = topic_control(model, baseline, tok, data['topics'], args, bar)
        results['debias'] = debiasing(model, baseline, tok, data['gender'], args, bar)
        results['knowledge'] = knowledge_editing(model, tok, data['knowledge'], bar)
        results['steering'] = language_steering(model, baseline, tok, masks, data['steering'], args, bar)
    results['seconds'] = time.time() - start
    out = Path(args.out_dir) / 'interventions'
    atomic_write_text(out / 'interventions.json', json.dumps(json_safe(results), indent=2, ensure_ascii=False))
    atomic_write_text(out / 'interventions.md', render(results))
    print(render(results))
    print(f"wrote {out}/interventions.json and interventions.md ({results['seconds']:.0f} s)")


if __name__ == '__main__':
    main()
