"""SENSIA sense adaptation (Cruz, Adelani, Aji, "Multilinguality as Sense Adaptation"): make an
English Backpack French-fluent by aligning sense-level and contextual sentence vectors of translation
pairs with an InfoNCE loss while training a French LM loss, in three phases.

    python train.py config/adapt_sensia_tiny.py        # objective='sensia' in train.py's one loop

Notation: senses C (B,k,T,d), alpha (B,k,T,T), per-sense contributions P[b,l,i] = sum_j alpha[b,l,i,j] C[b,l,j]
(the model's `contributions_fn` hook hands them over before the sum over senses), Backpack output o = sum_l P.

  z_sns: a = ||P[l,i]||, pi = softmax_l(a / tau_pool), h_i = sum_l pi_l P[l,i], mean of h over the
         sentence's tokens, L2-normalised
  z_ctx: o (or the backbone's final hidden state) at the last token, L2-normalised
  L = w_sns InfoNCE(z_sns; tau_sns) + w_ctx InfoNCE(z_ctx; tau_ctx) + w_lm CE(French tokens, smoothing 0.05)
  weights: cosine ramps align -> mid over p in [0, a), mid -> tail over [a, z), tail after; renormalised
  polish (p >= z): the sense network and the sense-weight network are frozen (and, with
         sensia_freeze_sense_input, the embedding the sense network reads: see apply_freeze)

InfoNCE direction: the paper writes it symmetric (English->French and French->English, averaged), the
authors' code runs it one way, English queries against French keys. Symmetric is the default here
(sensia_symmetric=True); sensia_symmetric=False is the authors' English->French.

Differences from the authors' code (jcblaisecruz02/sensia) and the paper, with the places in their code,
are listed in docs/sensia.md.
"""
import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from backpacks import metrics
from backpacks.cli import fail
from backpacks.dataset import DataError, token_file

# (w_sns, w_ctx, w_lm) at the schedule's three anchors (the authors' LossScheduleCfg)
ALIGN, MID, TAIL = (0.55, 0.45, 0.02), (0.40, 0.40, 0.20), (0.15, 0.15, 0.70)
LOSS_TERMS = ('sense', 'context', 'lm')
CONTEXT_STATES = ('output', 'hidden', 'hidden_mean')  # hidden_mean: the MCL baseline's mean-pooled backbone


def interp(a, b, t):
    """Cosine ramp from a (t=0) to b (t=1)."""
    return b + (a - b) * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0))) / 2


def phase(p, a, z):
    return 'align' if p < a else 'joint' if p < z else 'polish'


def loss_weights(p, a=0.2, z=0.5, enabled=(True, True, True)):
    """(w_sns, w_ctx, w_lm) at progress p, terms switched off forced to 0, renormalised to sum 1.
    z defaults to 0.5, and p == a already belongs to the joint phase (the same weights: the ramps meet
    there); the authors' phase boundaries differ: see docs/sensia.md."""
    name = phase(p, a, z)
    if name == 'align':
        w = [interp(s, e, p / a) for s, e in zip(ALIGN, MID)]
    elif name == 'joint':
        w = [interp(s, e, (p - a) / (z - a)) for s, e in zip(MID, TAIL)]
    else:
        w = list(TAIL)
    w = [x if on else 0.0 for x, on in zip(w, enabled)]
    total = sum(w)
    return tuple(x / total for x in w)


def temperature(p, a, start, end):
    """start, ramped to end over the alignment phase as the weights are, then held (end <= 0: fixed)."""
    if end <= 0:
        return start
    return interp(start, end, p / a) if p < a else end


def info_nce(u, v, tau, symmetric=True):
    """-(1/2B) sum_i [log softmax_j(u_i.v_j/tau)_i + log softmax_j(v_i.u_j/tau)_i] with in-batch
    negatives, as the paper writes it; not symmetric: only the u -> v term, -(1/B) sum_i log
    softmax_j(u_i.v_j/tau)_i, as the authors' code runs it (u English, v French)."""
    # similarities in float32, outside autocast: at tau 0.05, bfloat16's 8-bit mantissa would put about
    # 0.1 of noise on each logit
    with torch.autocast(u.device.type, enabled=False):
        logits = (u.float() @ v.float().t()) / tau
    target = torch.arange(len(u), device=u.device)
    loss = F.cross_entropy(logits, target)
    return (loss + F.cross_entropy(logits.t(), target)) / 2 if symmetric else loss


def gather_with_grad(z):
    """z of every process concatenated in rank order; gradients flow back to each process's rows,
    so the negatives of the InfoNCE span the global batch (as the authors' gather_autograd)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(z), dim=0)


def sense_pool(P, mask, tau_pool):
    """(z_sns (B,d) L2-normalised, per-token entropy of pi (B,T)) from contributions P (B,k,T,d) and a
    (B,T) mask of real tokens. Norms, softmax and entropy in float32."""
    P = P.float()
    pi = torch.softmax(P.norm(dim=-1) / tau_pool, dim=1)  # (B,k,T)
    entropy = -(pi * pi.clamp_min(1e-12).log()).sum(dim=1)
    h = (pi.unsqueeze(-1) * P).sum(dim=1)  # (B,T,d)
    w = mask.float().unsqueeze(-1)
    z = (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
    return F.normalize(z, dim=-1), entropy


def last_token(states, lengths):
    return states[torch.arange(len(states), device=states.device), lengths - 1]


def masked_mean(states, mask):
    w = mask.to(states.dtype).unsqueeze(-1)
    return (states * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def next_token_losses(logits, idx, lengths, smoothing=0.0):
    """(sum of per-token losses with label smoothing, unsmoothed sum, tokens) of next-token prediction
    inside each right-padded sentence (its first token has no context and is not predicted)."""
    targets = idx[:, 1:].masked_fill(torch.arange(1, idx.shape[1], device=idx.device)[None] >= lengths[:, None], -1)
    flat_logits, flat_targets = logits[:, :-1].float().flatten(0, 1), targets.flatten()
    smoothed = F.cross_entropy(flat_logits, flat_targets, ignore_index=-1, label_smoothing=smoothing, reduction='sum')
    plain = smoothed.detach() if smoothing == 0 else \
        F.cross_entropy(flat_logits.detach(), flat_targets, ignore_index=-1, reduction='sum')
    return smoothed, plain, (flat_targets != -1).sum()


def pad_batch(seqs, pad, device):
    """(idx (N,T) right-padded with pad, lengths (N,)) of token sequences."""
    lengths = torch.tensor([len(s) for s in seqs])
    idx = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long)
    for row, seq in enumerate(seqs):
        idx[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return idx.to(device), lengths.to(device)


def bidirectional_recall(en, fr):
    """Recall@1 English -> French, French -> English and their mean, for aligned rows of unit vectors,
    and each pair's mean of its two hits (the per-item data of a paired test)."""
    with torch.autocast(en.device.type, enabled=False):  # the run's evaluation may be under autocast
        sims = (en.float() @ fr.float().t()).numpy()
    forward, backward = (metrics.hits_at_1(s).astype(np.float64) for s in (sims, sims.T))  # bool + bool is or
    return {'en_fr': float(forward.mean()), 'fr_en': float(backward.mean()),
            'mean': float((forward.mean() + backward.mean()) / 2), 'pair_hits': ((forward + backward) / 2).tolist()}


@torch.no_grad()
def pair_metrics(model, batches, tau_pool, per_pair=False):
    """Recall@1 both ways of z_sns and z_ctx (o at the last token), the French-side mean entropy of pi
    and the French perplexity over batches of (idx, lengths), English rows then French rows; per_pair:
    also each pair's mean hit of both directions (evaluation; the training log keeps the means only)."""
    z = {'sns': ([], []), 'ctx': ([], [])}
    entropy_sum, entropy_count, nll, tokens = 0.0, 0, 0.0, 0
    for idx, lengths in batches:
        n = len(idx) // 2
        logits, z_sns, z_ctx, entropy, mask = sentence_vectors(model, idx, lengths, tau_pool)
        for name, vectors in (('sns', z_sns), ('ctx', z_ctx)):
            z[name][0].append(vectors[:n].cpu())
            z[name][1].append(vectors[n:].cpu())
        entropy_sum += float(entropy[n:][mask[n:]].sum())
        entropy_count += int(mask[n:].sum())
        _, plain, count = next_token_losses(logits[n:], idx[n:], lengths[n:])
        nll, tokens = nll + float(plain), tokens + int(count)
    n_pairs = sum(len(e) for e in z['sns'][0])
    result = {'pairs': n_pairs, 'recall@1_chance': 1 / n_pairs}
    for name, (en, fr) in z.items():
        r = bidirectional_recall(torch.cat(en), torch.cat(fr))
        result.update({f'recall@1_{name}_en_fr': r['en_fr'], f'recall@1_{name}_fr_en': r['fr_en'], f'recall@1_{name}': r['mean']})
        if per_pair:
            result.setdefault('pair_hits', {})[f'recall@1_{name}'] = r['pair_hits']
    result['sense_entropy_fr'] = entropy_sum / max(1, entropy_count)
    result['sense_entropy_max'] = math.log(model.config.n_senses)
    result['loss_fr'] = nll / max(1, tokens)
    result['ppl_fr'] = math.exp(result['loss_fr'])
    return result


def sentence_vectors(model, idx, lengths, tau_pool, context='output', hidden=None):
    """(logits, z_sns, z_ctx, entropy of pi (B,T), mask of real tokens (B,T)) of right-padded sentences
    in one forward pass. hidden() returns the backbone's final states of that pass (context != 'output')."""
    captured = {}

    def keep(P):
        captured['P'] = P
        return P

    logits, _ = model(idx, contributions_fn=keep)
    mask = torch.arange(idx.shape[1], device=idx.device)[None] < lengths[:, None]
    z_sns, entropy = sense_pool(captured['P'], mask, tau_pool)
    if context == 'output':  # the authors' backpack_hidden_states: o before the LM head
        z_ctx = last_token(captured['P'].float().sum(dim=1), lengths)
    elif context == 'hidden':
        z_ctx = last_token(hidden().float(), lengths)
    else:
        z_ctx = masked_mean(hidden().float(), mask)
    return logits, z_sns, F.normalize(z_ctx, dim=-1), entropy, mask


# ----------------------------------------------------------------------------- data

def pair_files(data_dir, split, meta):
    """(tokens memmap, int64 (n, 4) index of the pairs whose both sides are non-empty) of
    pairs_<split>.bin and pairs_<split>_index.npy, checked: the tokens against meta.json's record
    (dataset.token_file), the index readable and pointing inside the tokens. DataError otherwise."""
    tokens_path, index_path = data_dir / f'pairs_{split}.bin', data_dir / f'pairs_{split}_index.npy'
    if not tokens_path.is_file() or not index_path.is_file():
        raise DataError(f"{data_dir} has no {tokens_path.name} / {index_path.name}: SENSIA needs a dataset "
                        "with translation pairs, prepared by python -m data.europarl.prepare")
    tokens = token_file(tokens_path, meta)
    try:
        index = np.load(index_path)
    except (OSError, ValueError, EOFError) as e:  # truncated, or not a .npy file
        raise DataError(f"{index_path} is not a readable index ({str(e).splitlines()[0]}): prepare the dataset again") from None
    if index.ndim != 2 or index.shape[1] != 4 or index.dtype.kind not in 'iu':
        raise DataError(f"{index_path} holds a {index.dtype} array of shape {index.shape}, not the (pairs, 4) "
                        "integer index prepare.py writes: prepare the dataset again")
    if len(index) and (index.min() < 0 or index.max() > len(tokens)
                       or (index[:, 1] < index[:, 0]).any() or (index[:, 3] < index[:, 2]).any()):
        raise DataError(f"{index_path} points outside the {len(tokens)} tokens of {tokens_path.name}: one of the "
                        "two is truncated or from another preparation; prepare the dataset again")
    keep = (index[:, 1] > index[:, 0]) & (index[:, 3] > index[:, 2])
    return tokens, index[keep].astype(np.int64)  # a side that tokenizes to nothing has no sentence vector


def check_pairs(data_dir, meta, batch_size):
    """DataError unless the train and val pairs files are sound and train holds batch_size pairs
    (checked before training: a failure after the first evaluation would leave a best.pt behind)."""
    for split, needed in (('train', max(2, batch_size)), ('val', 2)):
        n = len(pair_files(data_dir, split, meta)[1])
        if n < needed:
            raise DataError(f"pairs_{split}.bin of {data_dir} has {n} usable pairs, fewer than the {needed} its "
                            f"batches need (contrastive batches need 2 or more; batch_size is {batch_size})")


class PairSampler:
    """Batches of translation pairs from pairs_<split>.bin (both sides tokenized separately, see
    data/europarl/prepare.py pair_arrays): pairs drawn without replacement within a batch (duplicates would
    be false negatives for the InfoNCE) by a torch.Generator, so state_dict() makes a resumed run draw
    the same batches. Sides are cut to max_len tokens; an optional language tag is put first."""

    def __init__(self, data_dir, split, meta, seed=1337, max_len=512, tags=False):
        tokens, self.index = pair_files(data_dir, split, meta)
        self.tokens = np.array(tokens)  # in memory: batches gather many short slices
        if len(self.index) < 2:
            raise DataError(f"pairs_{split}.bin of {data_dir} has {len(self.index)} usable pairs; contrastive "
                            "batches need 2 or more")
        special = meta['special_tokens']
        self.pad, self.tags = special['eot'], (special['en'], special['fr']) if tags else None
        self.max_len = max_len
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return len(self.index)

    def draw(self, batch_size):
        if batch_size > len(self):
            raise DataError(f"batch_size {batch_size} exceeds the {len(self)} training pairs")
        return torch.randperm(len(self), generator=self.generator)[:batch_size].numpy()

    def batch(self, rows, device):
        """(idx (2B,T) English rows then French rows, right-padded; lengths (2B,)) of pair rows."""
        sides = [(s, e) for col in (0, 2) for s, e in self.index[rows][:, col:col + 2]]
        seqs = [self.tokens[s:e].astype(np.int64) for s, e in sides]
        if self.tags:
            seqs = [np.concatenate([[tag], seq]) for tag, seq in zip([self.tags[0]] * len(rows) + [self.tags[1]] * len(rows), seqs)]
        return pad_batch([seq[:self.max_len] for seq in seqs], self.pad, device)

    def state_dict(self):
        return {'generator': self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state['generator'])


# ----------------------------------------------------------------------------- the objective

class SensiaObjective:
    """train.py's objective interface: prepare(model, iter_num) -> whether the trainable set changed,
    batch(), loss(model, batch, iter_num) -> (loss, scalars), evaluate(model, iter_num) -> dict, state_dict()."""
    selection_key = 'val_loss_fr_pairs'  # best.pt: the lowest French loss on the val pairs

    def __init__(self, cfg, raw_model, data_path, meta, device, seed):
        if raw_model.model_type != 'backpack':
            raise DataError(f"objective 'sensia' adapts a Backpack's senses; the starting model is a "
                            f"{raw_model.model_type}")
        self.cfg, self.raw_model, self.device = cfg, raw_model, device
        self.enabled = tuple(term in cfg['sensia_losses'].split(',') for term in LOSS_TERMS)
        self.sampler = PairSampler(data_path, 'train', meta, seed, cfg['block_size'], cfg['sensia_tags'])
        self.val = PairSampler(data_path, 'val', meta, 0, cfg['block_size'], cfg['sensia_tags'])
        self.frozen = False
        self.hidden = None  # the backbone's final hidden states of the last forward pass, when needed
        for module in self.idle_modules():
            module.requires_grad_(False)
        if cfg['sensia_context'] != 'output':
            raw_model.backbone.register_forward_hook(lambda module, inputs, output: setattr(self, 'hidden', output))

    def idle_modules(self):
        """The modules no enabled loss reaches: the sense network and the sense-weight network when only the
        context InfoNCE trains, on the backbone's state. They would get no gradient, which DDP refuses at
        its second step (without the cost of find_unused_parameters); frozen, they train as before: not."""
        if self.enabled[0] or self.enabled[2] or self.cfg['sensia_context'] == 'output':
            return []
        return [self.raw_model.sense_network, self.raw_model.sense_weight_net]

    def progress(self, iter_num):
        return iter_num / max(1, self.cfg['max_iters'])

    def prepare(self, model, iter_num):
        """Freeze the sense network and the sense-weight network the first time p >= z (the polish phase);
        True when the trainable set changed (DDP must then be re-wrapped)."""
        if self.frozen or not self.cfg['sensia_freeze'] or self.progress(iter_num) < self.cfg['sensia_polish_start']:
            return False
        self.frozen = True
        self.apply_freeze()
        return True

    def apply_freeze(self):
        # requires_grad off: the grads stay None after zero_grad(set_to_none=True), and AdamW skips
        # parameters without a grad entirely (no moment update, no weight decay)
        for module in (self.raw_model.sense_network, self.raw_model.sense_weight_net):
            module.requires_grad_(False)
        # As in the authors' code (see docs/sensia.md) the sense vectors C(E[x]) still move after
        # this: E, the sense network's input, is tied to the LM head and trains. sensia_freeze_sense_input
        # gives the sense network a copy of E taken now (kept in the model's state_dict, so a resumed run
        # keeps the copy of the first freeze); E itself trains on through the head and the backbone.
        if self.cfg['sensia_freeze_sense_input']:
            self.raw_model.freeze_sense_input()

    def batch(self):
        return self.sampler.batch(self.sampler.draw(self.cfg['batch_size']), self.device)

    def embed(self, model, idx, lengths):
        return sentence_vectors(model, idx, lengths, self.cfg['tau_pool'], self.cfg['sensia_context'], lambda: self.hidden)

    def loss(self, model, batch, iter_num):
        cfg, p = self.cfg, self.progress(iter_num)
        a, z = cfg['sensia_align_end'], cfg['sensia_polish_start']
        w_sns, w_ctx, w_lm = loss_weights(p, a, z, self.enabled)
        idx, lengths = batch
        n = len(idx) // 2
        # The paper runs the English and the French sentences through two forward passes; one pass over
        # both halves computes the same thing (causal attention, right padding: rows never interact)
        # and keeps one forward per backward, which DDP's reducer expects.
        logits, z_sns, z_ctx, entropy, mask = self.embed(model, idx, lengths)
        total = torch.zeros((), device=idx.device)
        scalars = {'w_sns': w_sns, 'w_ctx': w_ctx, 'w_lm': w_lm}
        for name, weight, zs, tau in (('sns', w_sns, z_sns, temperature(p, a, cfg['tau_sense'], cfg['tau_sense_end'])),
                                      ('ctx', w_ctx, z_ctx, temperature(p, a, cfg['tau_context'], cfg['tau_context_end']))):
            if weight > 0:
                term = info_nce(gather_with_grad(zs[:n]), gather_with_grad(zs[n:]), tau, cfg['sensia_symmetric'])
                total = total + weight * term
                scalars[f'loss_{name}'] = term.item()
        if w_lm > 0:
            smoothed, plain, count = next_token_losses(logits[n:], idx[n:], lengths[n:], cfg['label_smoothing'])
            global_count, world = count.detach().clone(), 1
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(global_count)
                world = dist.get_world_size()
            # the mean over the global batch's French tokens: DDP averages gradients over processes, so
            # each process contributes its sum times the number of processes
            total = total + w_lm * smoothed * world / global_count.clamp_min(1)
            scalars['loss_lm'] = plain.item() / max(1, count.item())
        scalars['entropy_fr'] = (entropy[n:][mask[n:]]).mean().item()
        return total, scalars

    def evaluate(self, model, iter_num):
        """pair_metrics over the first sensia_eval_pairs val pairs (z_ctx from o, whatever trains), and the phase."""
        was_training = model.training
        model.eval()
        rows = np.arange(min(len(self.val), self.cfg['sensia_eval_pairs']))
        bs = self.cfg['batch_size']
        result = pair_metrics(model, (self.val.batch(rows[i:i + bs], self.device) for i in range(0, len(rows), bs)),
                              self.cfg['tau_pool'])
        if was_training:
            model.train()
        result = {f'val_pairs_{k}': v for k, v in result.items()}
        result['val_loss_fr_pairs'] = result.pop('val_pairs_loss_fr')
        p = self.progress(iter_num)
        return {**result, 'phase': phase(p, self.cfg['sensia_align_end'], self.cfg['sensia_polish_start']),
                'frozen': self.frozen}

    def state_dict(self):
        return {**self.sampler.state_dict(), 'frozen': self.frozen}

    def load_state_dict(self, state):
        self.sampler.load_state_dict(state)
        if state.get('frozen'):
            self.frozen = True
            self.apply_freeze()


def validate_settings(cfg):
    """One clear line for SENSIA settings out of range (checked before any work)."""
    terms = cfg['sensia_losses'].split(',')
    if not terms or any(t not in LOSS_TERMS for t in terms):
        fail(f"sensia_losses must be a comma-separated subset of {','.join(LOSS_TERMS)}, got {cfg['sensia_losses']!r}")
    if not 0.0 <= cfg['sensia_align_end'] <= cfg['sensia_polish_start'] <= 1.0:
        fail("SENSIA phases need 0 <= sensia_align_end <= sensia_polish_start <= 1")
    if cfg['sensia_freeze_sense_input'] and not cfg['sensia_freeze']:
        fail("sensia_freeze_sense_input fixes the sense vectors in the polish phase, which needs sensia_freeze=True")
    if min(cfg['tau_pool'], cfg['tau_sense'], cfg['tau_context']) <= 0 or not 0.0 <= cfg['label_smoothing'] < 1.0:
        fail("tau_pool, tau_sense and tau_context must be > 0 and label_smoothing in [0, 1)")
    if cfg['objective'] == 'sensia' and cfg['batch_size'] < 2:
        fail("objective 'sensia' needs batch_size >= 2 (in-batch negatives)")
