# The LM-only control of config/adapt_sensia_tiny.py: same data, steps, schedule and freezing, French LM loss only.
#   python train.py config/adapt_lm_only_tiny.py
out_dir = 'out-lm-only-tiny'
data_dir = 'sample_en'
init_from = 'out-english-tiny'
objective = 'sensia'
sensia_losses = 'lm'               # the LM-only control: weights (0, 0, 1)

dropout = 0.0
batch_size = 32              # pairs: 32 English + 32 French sentences, 31 negatives per InfoNCE row
learning_rate = 1e-3
max_iters = 300
warmup_iters = 30
weight_decay = 0.1
beta2 = 0.99

eval_interval = 50
eval_iters = 5
sensia_eval_pairs = 500
log_interval = 50
checkpoint_interval = 100
