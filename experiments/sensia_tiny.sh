#!/usr/bin/env bash
# SENSIA at CPU scale, from a clean checkout (about 20 minutes on 2 cores): prepare a bilingual BPE
# dataset whose LM stream is English only, pretrain a tiny English Backpack on it, adapt it to French
# with SENSIA and with the LM-only control (same data, steps, schedule and freezing; MCL too with
# RUN_MCL=1), evaluate both on the test pairs and print one comparison table (also written to
# $OUT/comparison.md).
#
#   bash experiments/sensia_tiny.sh
#
# Corpus: $ENFR_DATA/parallel/europarl-v7-head (3,000 Europarl pairs) when present, else the project's
# sample corpus (500 pairs); the table says which. Runs go to $OUT (default experiments/out/sensia_tiny);
# a finished step is reused when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${ENFR_DATA:-} && -d ../shared/data/en-fr ]]; then
  export ENFR_DATA=$(cd ../shared/data/en-fr && pwd)
fi
OUT=${OUT:-experiments/out/sensia_tiny}
PRETRAIN_ITERS=${PRETRAIN_ITERS:-400}
ADAPT_ITERS=${ADAPT_ITERS:-200}
COMMON=(--device=cpu --dtype=auto)  # bfloat16 only where the CPU has it natively (AMX, AVX512-BF16)
corpus=${ENFR_DATA:-/nonexistent}/parallel/europarl-v7-head
[[ -f $corpus.en && -f $corpus.fr ]] || corpus=data/europarl/sample/parliament
data=$OUT/data/sensia_en

[[ -f $data/meta.json ]] || python -m data.europarl.prepare --source local --corpus "$corpus" --name sensia_en \
  --out_root "$OUT/data" --vocab_size 2048 --lm_languages en

train() {  # out_dir, then train.py arguments: a finished run is kept, an interrupted one resumed
  local out=$1; shift
  if [[ -f $out/ckpt.pt ]]; then
    python train.py --init_from=resume --out_dir="$out"
  else
    python train.py "$@" --out_dir="$out" --data_dir="$data" "${COMMON[@]}"
  fi
}
train "$OUT/english" config/pretrain_english_tiny.py --max_iters="$PRETRAIN_ITERS" --eval_interval=200
runs=(sensia lm_only)
[[ ${RUN_MCL:-0} == 1 ]] && runs+=(mcl)
for run in "${runs[@]}"; do
  train "$OUT/$run" "config/adapt_${run}_tiny.py" --init_from="$OUT/english" --max_iters="$ADAPT_ITERS"
done

tasks=loss,sensia,xnli,pawsx
for run in english "${runs[@]}"; do  # the end of each run (same steps): no checkpoint selection
  python evaluate.py --out_dir "$OUT/$run" --ckpt latest --tasks "$tasks" --device cpu > /dev/null
done
python - "$OUT" "$corpus" "${runs[@]}" <<'PY'
import json, sys
from pathlib import Path
from backpacks.report import markdown_table, fmt
out, corpus, runs = Path(sys.argv[1]), sys.argv[2], ['english'] + sys.argv[3:]
res = {run: json.loads((out / run / 'eval' / 'results.json').read_text()) for run in runs}
def ci(entry):
    return f"{entry['mean']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"
rows = []
for run, r in res.items():
    s = r['sensia']
    if 'skipped' in s:
        rows.append([run] + ['n/a'] * 9)
        continue
    t, p, m = s['test_pairs'], s['procrustes'], s['mixture_ablation']
    rows.append([run, fmt(t['ppl_fr']), fmt(t['recall@1_sns']), fmt(t['recall@1_ctx']),
                 f"{t['sense_entropy_fr']:.2f} / {t['sense_entropy_max']:.2f}",
                 ci(s['topology']['pairs']), ci(s['topology']['random_pairing']),
                 f"{p['in_sample']:.3f} ({p['in_sample_random_pairing']:.3f})",
                 f"{p['held_out_half']:.3f} ({p['held_out_half_random_pairing']:.3f})",
                 ' / '.join(f"{m[k]['loss']:.3f}" for k in ('full', 'top1', 'uniform'))])
header = ['run', 'French ppl (test)', 'R@1 z_sns', 'R@1 z_ctx', 'entropy fr / ln k', 'topology rho [95% CI]',
          'topology, random pairing', 'Procrustes cos (random)', 'Procrustes held-out (random)',
          'French CE full / top-1 / uniform']
first = res[runs[0]]['sensia']
note = (f"corpus {corpus}; {first.get('test_pairs', {}).get('pairs')} test pairs (R@1 chance "
        f"{first.get('test_pairs', {}).get('recall@1_chance', float('nan')):.3f}), {first.get('word_pairs')} dictionary pairs; "
        "english = the starting point before adaptation")
if any('xnli' in r for r in res.values()):
    note += "; multiple-choice accuracies (xnli, pawsx): " + ", ".join(str(out / run / 'eval' / 'report.md') for run in runs)
table = markdown_table(header, rows) + "\n\n" + note + "\n"
(out / 'comparison.md').write_text(table)
print(table)
PY
