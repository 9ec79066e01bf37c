# The parameter-matched Transformer baseline of config/train_sample_tiny.py, given after it: the same data,
# schedule, depth and heads, but wider (n_embd 160 instead of 128) so that its total parameter count is
# within 3% of the tiny Backpack's on the sample corpus's 512-token vocabulary (1.34M against 1.37M; the
# Backpack's extra parameters are its sense network). config/train_sample_tiny_transformer.py is the
# backbone-matched baseline (same n_embd, 0.88M parameters). tests/test_train.py checks the match.
#   python train.py config/train_sample_tiny.py config/train_sample_tiny_transformer_matched.py
out_dir = 'out-europarl-tiny-transformer-matched'
model_type = 'transformer'
n_embd = 160
n_senses = 16  # train.py's default: a Transformer has no senses, so its settings do not keep the Backpack's 4
