"""
What train.py's loop optimises: the language-model objective here, SENSIA's in sensia.py, behind one
interface (prepare, batch, loss, evaluate, state_dict, load_state_dict, selection_key), and the check
that the data they will read is fit, made before any model is built.

    check_data(cfg, meta, data_path)
    objective = make_objective(cfg, raw_model, data_path, meta, device, seed)
"""
from backpacks import sensia
from backpacks.dataset import BatchSampler, split_tokens
from backpacks.tokenizer import check_vocabulary


class LMObjective:
    """The default objective: next-token cross-entropy on random windows of train.bin. The interface
    train()'s loop calls (sensia.SensiaObjective is the other): prepare(model, iter_num) -> whether the
    trainable parameters changed, batch(), loss(model, batch, iter_num) -> (loss, scalars to log),
    evaluate(model, iter_num) -> entries for training_log.json, state_dict() for resuming."""
    selection_key = 'val_loss'  # the training_log entry whose lowest value picks best.pt

    def __init__(self, cfg, data_path, device, seed):
        self.cfg, self.device = cfg, device
        self.sampler = BatchSampler(data_path, seed=seed)

    def prepare(self, model, iter_num):
        return False

    def batch(self):
        return self.sampler.get_batch('train', self.cfg['batch_size'], self.cfg['block_size'], self.device)

    def loss(self, model, batch, iter_num):
        return model(*batch)[1], {}

    def evaluate(self, model, iter_num):
        return {}

    def state_dict(self):
        return self.sampler.state_dict()

    def load_state_dict(self, state):
        self.sampler.load_state_dict(state)


def make_objective(cfg, raw_model, data_path, meta, device, seed):
    if cfg['objective'] == 'sensia':
        return sensia.SensiaObjective(cfg, raw_model, data_path, meta, device, seed)
    return LMObjective(cfg, data_path, device, seed)


def check_data(cfg, meta, data_path):
    """DataError, before any model is built, for data the run would fail on later (after best.pt, which
    would then block the re-run) or that is not what meta.json, and so the run's fingerprint, says:
    token streams replaced or too short (test.bin too: evaluation reads it), a vocabulary that disagrees
    with the tokenizer, SENSIA pairs files that do not fit."""
    for split in ('train', 'val'):
        BatchSampler(data_path).check_split(split, cfg['block_size'])
    if (data_path / 'test.bin').is_file():  # absent from datasets prepared before it was written
        split_tokens(data_path, 'test', meta)
    check_vocabulary(meta, data_path)
    if cfg['objective'] == 'sensia':
        sensia.check_pairs(data_path, meta, cfg['batch_size'])
