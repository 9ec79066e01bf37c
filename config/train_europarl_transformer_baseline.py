# The Transformer baseline of train_europarl_scratch.py: the same backbone, data and schedule,
# logits read directly from the final hidden states instead of from sense vectors.
out_dir = 'out-europarl-transformer'
data_dir = 'europarl_en_fr'  # python -m data.europarl.prepare (default name)
model_type = 'transformer'

n_layer = 6
n_head = 6
n_embd = 384
block_size = 512
dropout = 0.1

batch_size = 32
learning_rate = 3e-4
max_iters = 50000
weight_decay = 0.1

eval_interval = 500
eval_iters = 200
checkpoint_interval = 500
