#!/usr/bin/env bash
# The main job on a CPU, from a fresh clone: install the requirements, prepare an English-French
# dataset, train a tiny Backpack and its matched Transformer, evaluate both and write the comparison.
#
#   bash experiments/tiny_comparison.sh                    # the project's sample corpus, offline
#   bash experiments/tiny_comparison.sh --source europarl  # Europarl from the Hugging Face hub
#
# Evaluation resources (word similarity, dictionaries) are read from $ENFR_DATA (by default
# ../shared/data/en-fr beside the repository when it exists), else from the resources.py cache,
# else fetched when online; a missing resource skips its metric with the reason recorded. Running it again resumes or reuses what is already trained.
# PYTHON: the interpreter that runs each step (default: the python on PATH), e.g. PYTHON=venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
# glibc keeps freed memory for reuse instead of unmapping each step's large buffers (logits, their gradient):
# CPU training steps 12-25% faster measured (docs/performance.md); a value already set is kept
export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_-68719476736}

source=local
if [[ $# -gt 0 ]]; then
  [[ $# -eq 2 && $1 == --source && ($2 == local || $2 == europarl) ]] \
    || { echo "usage: bash experiments/tiny_comparison.sh [--source local|europarl]" >&2; exit 2; }
  source=$2
fi
if [[ -z ${ENFR_DATA:-} && -d ../shared/data/en-fr ]]; then
  export ENFR_DATA=$(cd ../shared/data/en-fr && pwd)
fi
"$PYTHON" -m backpacks.cli  # the environment, in one line, before anything is installed or written

"$PYTHON" -m pip install -q -r requirements.txt

sizing=()  # the configs' 600 iterations fit the 450-pair sample; 20,000 pairs teach longer: stop on val loss
if [[ $source == europarl ]]; then
  data=europarl_tiny
  sizing=(--max_iters=2400 --early_stop_evals=3)
  [[ -f data/$data/meta.json ]] || "$PYTHON" -m data.europarl.prepare --source europarl --name $data --max_pairs 20000 --vocab_size 4096
else
  data=sample
  [[ -f data/$data/meta.json ]] || "$PYTHON" -m data.europarl.prepare --source local --corpus data/europarl/sample/parliament --name $data --vocab_size 512
fi

train() {  # out_dir, config files: continue an earlier run of the same job instead of starting over
  local out=$1 resume=()
  shift
  [[ -f $out/ckpt.pt ]] && resume=(--init_from=resume)
  "$PYTHON" train.py "$@" --data_dir=$data --out_dir="$out" "${sizing[@]}" "${resume[@]}"
}
train out/tiny_${data}_backpack config/train_sample_tiny.py
train out/tiny_${data}_transformer config/train_sample_tiny.py config/train_sample_tiny_transformer.py

"$PYTHON" compare_models.py --backpack_dir out/tiny_${data}_backpack --transformer_dir out/tiny_${data}_transformer \
  --device cpu --output_dir out/tiny_${data}_comparison
# tasks that must have run: word similarity and lexicon induction wherever their resources exist
require=loss,translation,sentence
[[ -n ${ENFR_DATA:-} && -d $ENFR_DATA/wordsim ]] && require+=,wordsim
[[ -n ${ENFR_DATA:-} && -f $ENFR_DATA/lexicon/muse-en-fr.0-5000.tsv ]] && require+=,bli
"$PYTHON" verify_evaluation.py --out_dir out/tiny_${data}_backpack --require $require,senses
"$PYTHON" verify_evaluation.py --out_dir out/tiny_${data}_transformer --require $require
echo "comparison report: out/tiny_${data}_comparison/comparison.md"
