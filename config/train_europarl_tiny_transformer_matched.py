# The parameter-matched Transformer baseline of train_europarl_tiny.py: the same data, schedule, depth
# and heads, but wider (n_embd 160 instead of 128) so that its total parameter count is within 3% of
# the tiny Backpack's on the sample corpus's 512-token vocabulary (1.34M against 1.37M; the Backpack's
# extra parameters are its sense network). train_europarl_tiny_transformer.py is the backbone-matched
# baseline (same n_embd, 0.88M parameters). tests/test_model.py checks the match.
#   python train.py config/train_europarl_tiny_transformer_matched.py
out_dir = 'out-europarl-tiny-transformer-matched'
data_dir = 'sample'
model_type = 'transformer'

n_layer = 4
n_head = 4
n_embd = 160
block_size = 128
dropout = 0.2

batch_size = 16
learning_rate = 2e-3
max_iters = 600  # as train_europarl_tiny.py
warmup_iters = 150
weight_decay = 0.1
beta2 = 0.99  # small batches: a shorter second-moment memory

eval_interval = 200
eval_iters = 20
log_interval = 100
checkpoint_interval = 400
