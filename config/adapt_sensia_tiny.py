# SENSIA on a CPU: adapt the tiny English Backpack of config/pretrain_english_tiny.py to French with the
# paper's three phases (alignment 0-20%, joint 20-50%, polish 50-100% with the senses frozen).
#   python train.py config/adapt_sensia_tiny.py
# The controls are overlays given after it (config/adapt_lm_only.py, config/adapt_mcl.py): they differ only
# in the loss terms.
out_dir = 'out-sensia-tiny'
data_dir = 'sample_en'
init_from = 'out-english-tiny'
objective = 'sensia'
sensia_losses = 'sense,context,lm'

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
