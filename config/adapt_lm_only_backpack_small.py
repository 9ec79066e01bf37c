# The LM-only control of config/adapt_sensia_backpack_small.py (see there for data and settings).
out_dir = 'out-lm-only-backpack-small'
data_dir = 'europarl_en_fr_gpt2'
init_from = 'backpack-gpt2'
objective = 'sensia'
sensia_losses = 'lm'  # the LM-only control: weights (0, 0, 1), same data, steps, schedule and freezing

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
