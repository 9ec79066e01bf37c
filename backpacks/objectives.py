"""
What train.py's loop optimises: the language-model objective here, SENSIA's in sensia.py, behind one
interface (prepare, batch, loss, evaluate, state_dict, load_state_dict, selection_key); the check
that the data they will read is fit, made before any model is built; the LM loss every evaluation
reports, whatever the objective; and how long the objective's selection_key has not improved (early
stopping).

    check_data(cfg, meta, data_path)
    objective = make_objective(cfg, raw_model, data_path, meta, device, seed)
    losses = estimate_losses(model, eval_sampler, cfg, autocast, device, ddp)   # train_loss, val_loss, ...
"""
import torch
import torch.distributed as dist

from backpacks import metrics, sensia
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


def selection_label(key):
    """How log lines name the loss that selects best.pt: 'val loss', or the objective's own key."""
    return 'val loss' if key == 'val_loss' else key


def evaluations_since_best(training_log, key='val_loss'):
    """How many evaluations have passed since the lowest value of key, the loss that selects best.pt
    (the first one, if tied). Derived from the checkpointed log, so a resumed run stops early exactly
    where the straight run does."""
    losses = [entry[key] for entry in training_log]
    return len(losses) - 1 - losses.index(min(losses)) if losses else 0


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


@torch.no_grad()
def estimate_losses(model, sampler, cfg, autocast, device, ddp):
    """Mean per-token loss on eval_iters batches of train and of val, and the val loss on English-target
    and French-target tokens (None when there are none), averaged over all processes. The sums stay on
    the device: one host sync per evaluation (float64 where the device has it; MPS has not)."""
    model.eval()
    dtype = torch.float32 if torch.device(device).type == 'mps' else torch.float64
    sums = {split: torch.zeros(len(metrics.LOSS_PARTS), 2, dtype=dtype, device=device) for split in ('train', 'val')}
    for split in ('train', 'val'):
        for _ in range(cfg['eval_iters']):
            x, y, *lang = sampler.get_batch(split, cfg['batch_size'], cfg['block_size'], device,
                                            with_language=split == 'val')
            with autocast:
                logits, _ = model(x)
            sums[split] += metrics.language_loss_sums(logits, y, *lang)
    totals = torch.cat([sums['train'][:1], sums['val']])  # train all; val all, en, fr
    if ddp:
        dist.all_reduce(totals)
    model.train()
    names = ('train_loss', 'val_loss', 'val_loss_en', 'val_loss_fr')
    return {name: total / count if count else None for name, (total, count) in zip(names, totals.tolist())}
