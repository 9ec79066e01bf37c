"""
See a Backpack's senses: for each word, its senses' top English and French tokens (E C(x)_l, raw
logits, ranked within each language's tokens), and for a translation pair, alpha heatmaps per sense
showing which tokens' senses each French position draws on. Writes PNGs and one self-contained
HTML page (images embedded) to RUN/senses/ (or --output_dir).

    python -m experiments.visualize_senses --out_dir out/backpack_full --words vote commission \\
        --sentence "The committee adopted the report." --translation "La commission a adopté le rapport."

Without --translation the model's own greedy translation is shown.
"""
import argparse
import base64
import html
import io
import math
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import torch

from backpacks import cli
from backpacks.atomic import atomic_write, atomic_write_text
from backpacks.dataset import resolve_dataset
from backpacks.eval.options import check_run_dir
from backpacks.eval.context import load_for_eval
from backpacks.generation import translate
from backpacks.interventions import InterventionError, read_senses, require_backpack
from backpacks.eval.lexical import token_language_counts, token_language_masks


def parse_args(argv=None):
    p = cli.ArgumentParser(prog="python -m experiments.visualize_senses",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    p.add_argument('--out_dir', required=True, help="Backpack training output directory")
    p.add_argument('--ckpt', choices=['best', 'latest'], default='best')
    p.add_argument('--data_dir', default=None, help="dataset directory if it moved since training")
    p.add_argument('--words', nargs='+', required=True, help="words (or word arithmetic '+a-b+c') to show")
    p.add_argument('--sentence', required=True, help="English sentence of the translation pair")
    p.add_argument('--translation', default=None, help="its French translation (default: the model's greedy one)")
    p.add_argument('--top', type=int, default=6, help="tokens shown per sense and language")
    p.add_argument('--output_dir', default=None, help="default: OUT_DIR/senses")
    args = p.parse_args(argv)
    cli.check_at_least(args, 1, ('top',))
    if not args.sentence.strip():
        cli.fail("--sentence must have text")
    check_run_dir(args.out_dir, args.ckpt, results=None)
    args.output_dir = args.output_dir or str(Path(args.out_dir) / 'senses')
    cli.check_writable(args.output_dir, "--output_dir")
    args.data_dir = resolve_dataset(args.data_dir)
    return args


def png_bytes(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=110, bbox_inches='tight')
    plt.close(fig)
    return buffer.getvalue()


def sense_table_figure(word, tables):
    """Per language, a (senses x rank) grid coloured by logit and labelled with the token."""
    k, top = len(tables['en']), len(tables['en'][0]['positive'])
    fig, axes = plt.subplots(1, 2, figsize=(2 + 2.2 * top, 0.9 + 0.42 * k))
    for ax, lang in zip(axes, ('en', 'fr')):
        values = [[v for _, v in row['positive']] for row in tables[lang]]
        ax.imshow(values, cmap='Blues', aspect='auto')
        for l, row in enumerate(tables[lang]):
            for r, (token, value) in enumerate(row['positive']):
                ax.text(r, l, f"{token.strip() or repr(token)}\n{value:.1f}", ha='center', va='center', fontsize=7)
        ax.set_yticks(range(k), [f"sense {l}" for l in range(k)], fontsize=8)
        ax.set_xticks(range(top), [f"#{r + 1}" for r in range(top)], fontsize=8)
        ax.set_title(f"{word!r}: top {'English' if lang == 'en' else 'French'} tokens of E C(x)_l", fontsize=9)
    return fig


def alpha_figure(tok, ids, source_length, alpha):
    """alpha (k, T, T) of a pair: for each target position (rows), weight on each token's sense (columns)."""
    k = alpha.shape[0]
    labels = [tok.token_str(i).replace('\n', ' ') for i in ids]
    rows = range(source_length, len(ids))
    cols = 2 if k <= 4 else 4
    grid = math.ceil(k / cols)
    fig, axes = plt.subplots(grid, cols, figsize=((0.2 * len(ids) + 2) * cols, (0.2 * len(rows) + 1.2) * grid),
                             squeeze=False, constrained_layout=True)
    for l, ax in enumerate(axes.flat):
        if l >= k:
            ax.axis('off')
            continue
        image = ax.imshow(alpha[l, source_length:], cmap='viridis', vmin=0, vmax=1, aspect='auto')
        ax.set_title(f"sense {l}", fontsize=9)
        ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(rows)), [f"{labels[i]} (pred. {labels[i + 1] if i + 1 < len(ids) else ''})"
                                        for i in rows] if l % cols == 0 else [], fontsize=6)
    fig.colorbar(image, ax=axes, shrink=0.6, label='alpha')
    fig.suptitle("alpha[l, i, j]: weight of token j's sense l at French position i", fontsize=10)
    return fig


def html_table(word, tables):
    cells = lambda items: ' '.join(f"{html.escape(t)}<sub>{v:.1f}</sub>" for t, v in items)
    rows = ''.join(f"<tr><td>{r['sense']}</td><td>{cells(r['positive'])}</td><td>{cells(f['positive'])}</td>"
                   f"<td>{cells(r['negative'])}</td></tr>" for r, f in zip(tables['en'], tables['fr']))
    return (f"<h3>{html.escape(word)}</h3><table><tr><th>sense</th><th>top English</th><th>top French</th>"
            f"<th>most negative (English)</th></tr>{rows}</table>")


def main(argv=None):
    args = parse_args(argv)
    model, ckpt, tok, data_dir = load_for_eval(args.out_dir, args.ckpt, 'cpu', args.data_dir)
    try:
        require_backpack(model, "visualize_senses.py")
        masks = token_language_masks(token_language_counts(data_dir, ckpt['meta']))
        tables = {w: {lang: read_senses(model, tok, w, args.top, masks[lang]) for lang in ('en', 'fr')} for w in args.words}
    except InterventionError as e:
        raise SystemExit(f"error: {e}")
    except Exception as e:  # the language masks need the dataset's pairs_train.bin
        raise SystemExit(f"error: cannot build the language masks from {data_dir}: {e}")
    translation = args.translation or translate(model, tok, [args.sentence], 'en-fr', progress=False)[0]
    source = [tok.en_id] + tok.encode(args.sentence.strip()) + [tok.fr_id]
    ids = (source + tok.encode(translation.strip()))[:model.config.block_size]
    with torch.no_grad():
        alpha = model.contextualization(torch.tensor([ids]))[0].float().numpy()

    output = Path(args.output_dir)
    images = {f"senses_{i}_{''.join(c for c in w if c.isalnum()) or 'word'}.png": png_bytes(sense_table_figure(w, tables[w]))
              for i, w in enumerate(args.words)}
    images['alpha_pair.png'] = png_bytes(alpha_figure(tok, ids, len(source) - 1, alpha))
    for name, data in images.items():
        atomic_write(output / name, lambda f, data=data: f.write(data))
    embed = lambda name: f'<img src="data:image/png;base64,{base64.b64encode(images[name]).decode()}" alt="{name}">'
    page = ("<!doctype html><meta charset='utf-8'><title>Backpack senses</title><style>body{font-family:sans-serif;"
            "max-width:1200px;margin:auto}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
            "table{border-collapse:collapse}img{max-width:100%}</style>"
            f"<h1>Senses of {html.escape(str(args.out_dir))}</h1>"
            + ''.join(html_table(w, tables[w]) + embed(name) for w, name in zip(args.words, images))
            + f"<h2>Translation pair</h2><p>{html.escape(args.sentence)} &rarr; {html.escape(translation)}"
            f"{'' if args.translation else ' (the model&#39;s greedy translation)'}</p>" + embed('alpha_pair.png'))
    atomic_write_text(output / 'senses.html', page)
    print(f"wrote {len(images)} PNG figures and senses.html to {output}")


if __name__ == '__main__':
    main()
