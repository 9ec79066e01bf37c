# The Transformer baseline of config/train_sample_tiny.py, given after it: the same backbone, data and
# schedule, logits read from the final hidden states instead of from sense vectors (0.88M parameters
# against the Backpack's 1.37M at the sample corpus's 512-token vocabulary).
#   python train.py config/train_sample_tiny.py config/train_sample_tiny_transformer.py
out_dir = 'out-europarl-tiny-transformer'
model_type = 'transformer'
n_senses = 16  # train.py's default: a Transformer has no senses, so its settings do not keep the Backpack's 4
