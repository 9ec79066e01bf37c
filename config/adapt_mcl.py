# The MCL baseline of SENSIA, given after a SENSIA config: InfoNCE over mean-pooled backbone states plus
# the French LM loss, with SENSIA's data, steps and schedule. --out_dir names its run folder:
#   python train.py config/adapt_sensia_tiny.py config/adapt_mcl.py --out_dir=out-mcl-tiny
#   python train.py config/adapt_sensia_backpack_gpt2.py config/adapt_mcl.py --out_dir=out-mcl-backpack-gpt2
out_dir = 'out-mcl'  # without --out_dir: a folder of its own, never the SENSIA run's
sensia_losses = 'context,lm'
sensia_context = 'hidden_mean'  # MCL: InfoNCE over mean-pooled backbone states, no senses
sensia_freeze = False           # MCL does not use the senses: nothing to freeze
