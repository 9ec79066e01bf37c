# SENSIA on a GPU from the published English Backpack (stanfordnlp/backpack-gpt2, 124M), on Europarl pairs
# prepared with its tokenizer:
#   python -m data.europarl.prepare --tokenizer gpt2 --name europarl_en_fr_gpt2
#   python train.py config/adapt_sensia_backpack_gpt2.py        (torchrun for several GPUs: negatives span them)
# The controls are overlays given after it (config/adapt_lm_only.py, config/adapt_mcl.py).
# Optimisation follows the authors' defaults (lr 5e-5, 32 pairs, 10% warmup, 40k steps); where the other
# SENSIA settings differ from their code's defaults: see docs/sensia.md.
out_dir = 'out-sensia-backpack-gpt2'
data_dir = 'europarl_en_fr_gpt2'
init_from = 'backpack-gpt2'
objective = 'sensia'
sensia_losses = 'sense,context,lm'

block_size = 512
dropout = 0.1
batch_size = 32
learning_rate = 5e-5
max_iters = 40000
warmup_iters = 4000
weight_decay = 0.01

eval_interval = 2000
eval_iters = 50
sensia_eval_pairs = 2000
checkpoint_interval = 1000
