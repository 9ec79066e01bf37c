"""
Backpack language model (Hewitt et al., ACL 2023) and a matched GPT-2 Transformer.

Both models share one GPT-2 backbone (learned positions, pre-LN blocks, tanh GELU,
final LayerNorm, causal attention through scaled_dot_product_attention).

    StandardTransformerLM:  logits = E h                      h = backbone(x)
    BackpackLM:             logits = E o,  o_i = sum_j sum_l alpha[l,i,j] C(x_j)[l]
                            C = sense_network(E[x])             k sense vectors per token,
                                                                from the token alone
                            alpha = softmax_j(q_l(h_i) . k_l(h_j) / sqrt(d/k)), causal

E is the input embedding, tied to the LM head. The Backpack's logits are log-linear in
its sense vectors: the backbone only decides how much of each sense of each past token
goes into the prediction. Parameter and module names follow nanoGPT and the Hugging Face
stanfordnlp/backpack-gpt2 checkpoint, so loading it is a rename and a transpose
(backpacks/hf_format.py). This file depends on torch alone.
"""
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function


@dataclass
class ModelConfig:
    vocab_size: int = 50264
    block_size: int = 512
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    n_senses: int = 16               # Backpack only
    sense_intermediate_scale: int = 4  # Backpack only: hidden width of the sense MLP, in units of n_embd
    dropout: float = 0.0
    bias: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        """ValueError, in one line, for sizes no model can have: checked before any weight is built."""
        for name in ('vocab_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'n_senses', 'sense_intermediate_scale'):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


_SIZES = {'micro': dict(n_layer=6, n_head=6, n_embd=384),
          'mini': dict(n_layer=8, n_head=8, n_embd=640),
          'small': dict(n_layer=12, n_head=12, n_embd=768)}
PRESETS = {f'{kind}-{size}': (kind, dims) for kind in ('backpack', 'transformer') for size, dims in _SIZES.items()}


def preset_config(name, **overrides):
    """(model_type, ModelConfig) of a named preset, e.g. preset_config('backpack-micro', vocab_size=16384)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    model_type, dims = PRESETS[name]
    return model_type, ModelConfig(**{**dims, **overrides})


# ----------------------------------------------------------------------------- backbone

class MLP(nn.Module):
    def __init__(self, n_in, n_hidden, n_out, config):
        super().__init__()
        self.c_fc = nn.Linear(n_in, n_hidden, bias=config.bias)
        self.c_proj = nn.Linear(n_hidden, n_out, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate='tanh')))


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        head_size = config.n_embd // config.n_head
        # GPT-2's optional extra 1/(layer+1) damping of attention scores (used by backpack-gpt2)
        layer_scale = layer_idx + 1 if config.scale_attn_by_inverse_layer_idx else 1
        self.scale = 1.0 / (math.sqrt(head_size) * layer_scale)

    def forward(self, x, attn_mask=None, past=None):
        """x (B,T,d). attn_mask None means plain causal; past is a (keys, values) pair or None.
        Returns the output and the (keys, values) of all positions seen so far."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = fused_attention(q, k, v, attn_mask, dropout_p=self.dropout if self.training else 0.0, scale=self.scale)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config.n_embd, 4 * config.n_embd, config.n_embd, config)

    def forward(self, x, attn_mask=None, past=None):
        a, present = self.attn(self.ln_1(x), attn_mask, past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPT2Backbone(nn.Module):
    """Token + position embeddings, n_layer pre-LN blocks, final LayerNorm."""

    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)

    def forward(self, idx, positions, attn_mask=None, cache=None, embeddings_fn=None):
        """embeddings_fn: optional edit of the token embeddings (B,T,d) before positions are added
        (the input side only: the tied LM head keeps E)."""
        with record_function('backbone'):
            tokens = self.wte(idx)
            x = self.drop((embeddings_fn(tokens) if embeddings_fn is not None else tokens) + self.wpe(positions))
            for i, block in enumerate(self.h):
                past = cache.layers[i] if cache is not None and cache.layers else None
                x, present = block(x, attn_mask, past)
                if cache is not None:
                    cache.new_layers.append(present)
            return self.ln_f(x)


# ----------------------------------------------------------------------------- incremental decoding

class Cache:
    """What incremental decoding keeps of past tokens: each layer's keys and values and, for the
    Backpack, the sense-weight keys (B,k,T,d/k) and the sense vectors (B,T,k,d)."""

    def __init__(self):
        self.layers, self.new_layers = [], []
        self.sense_keys = self.senses = None

    @property
    def length(self):
        return self.layers[0][0].shape[2] if self.layers else 0

    def commit(self):
        self.layers, self.new_layers = self.new_layers, []

    def reorder(self, index):
        """Keep/reorder batch rows (beam search)."""
        pick = lambda t: None if t is None else t.index_select(0, index)
        self.layers = [(pick(k), pick(v)) for k, v in self.layers]
        self.sense_keys, self.senses = pick(self.sense_keys), pick(self.senses)
        return self


def _positions_and_mask(idx, past_length, attention_mask):
    """Position ids of the new tokens and the SDPA mask (None = plain causal).

    attention_mask (B, past+T), True on real tokens, lets prompts be left-padded: positions
    count real tokens only and no query attends to padding. Every query may see itself, so
    rows of padding stay finite instead of becoming NaN."""
    B, T = idx.shape
    if attention_mask is None:
        positions = torch.arange(past_length, past_length + T, device=idx.device).expand(B, T)
        if past_length == 0:
            return positions, None
        return positions, torch.ones(T, past_length + T, dtype=torch.bool, device=idx.device).tril(past_length)
    if attention_mask.shape != (B, past_length + T):
        raise ValueError(f"attention_mask must have shape {(B, past_length + T)}, got {tuple(attention_mask.shape)}")
    attention_mask = attention_mask.bool()
    positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)[:, past_length:]
    causal = torch.ones(T, past_length + T, dtype=torch.bool, device=idx.device).tril(past_length)
    itself = torch.zeros_like(causal)
    itself[:, past_length:] = torch.eye(T, dtype=torch.bool, device=idx.device)
    mask = (causal & attention_mask[:, None, :]) | itself
    return positions, mask[:, None]  # (B, 1, T, past+T), broadcast over heads


# ----------------------------------------------------------------------------- language models

PIECES = ('backbone', 'sense network', 'mixing', 'head and loss')  # the record_function ranges of forward


class LanguageModel(nn.Module):
    """What both models share: the backbone, tied LM head, loss, generation, optimizer, FLOPs."""
    model_type = None

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.backbone = GPT2Backbone(config)

    def _init_weights(self):
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            # GPT-2: residual projections scaled by 1/sqrt(2 n_layer)
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith('c_proj.weight') else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def token_embeddings(self):
        return self.backbone.wte.weight

    def _check_length(self, total):
        if total > self.config.block_size:
            raise ValueError(f"sequence of {total} tokens is longer than block_size {self.config.block_size}")

    def _states(self, idx, positions, attn_mask, cache, **edits):
        """(B,T,d): what the tied LM head turns into logits."""
        raise NotImplementedError

    def forward(self, idx, targets=None, **edits):
        """logits (B,T,V) for every position, and the mean cross-entropy over targets != -1 (or None).
        Its pieces run in record_function ranges named as in PIECES, which bench.py times."""
        self._check_length(idx.shape[1])
        positions, mask = _positions_and_mask(idx, 0, None)
        states = self._states(idx, positions, mask, None, **edits)
        with record_function('head and loss'):
            logits = states @ self.token_embeddings.t()
            if targets is None:
                return logits, None
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def step(self, idx, cache=None, attention_mask=None, **edits):
        """Incremental decoding: logits (B,T_new,V) of the new tokens idx, and the updated cache.
        edits as in forward: the Backpack's senses_fn sees the senses of every position so far (the
        cache keeps them unedited), the Transformer's embeddings_fn those of the new tokens only."""
        cache = cache if cache is not None else Cache()
        self._check_length(cache.length + idx.shape[1])
        positions, mask = _positions_and_mask(idx, cache.length, attention_mask)
        logits = self._states(idx, positions, mask, cache, **edits) @ self.token_embeddings.t()
        cache.commit()
        return logits, cache

    def hidden_states(self, idx):
        """The backbone's final hidden states (B,T,d), after its final LayerNorm."""
        self._check_length(idx.shape[1])
        positions, _ = _positions_and_mask(idx, 0, None)
        return self.backbone(idx, positions)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, eos_id=None):
        """Sample (temperature 0: greedy) up to max_new_tokens with a KV cache. Rows that emit a token
        of eos_id (an int or a collection of ints) stop; their later positions repeat that token."""
        stop_ids = torch.tensor([] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id),
                                device=idx.device, dtype=torch.long)
        stopped = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        logits, cache = self.step(idx[:, -self.config.block_size:])
        for _ in range(max_new_tokens):
            next_id = sample_next(logits[:, -1, :], temperature, top_k)
            next_id = torch.where(stopped[:, None], idx[:, -1:], next_id)
            idx = torch.cat([idx, next_id], dim=1)
            stopped |= torch.isin(next_id[:, 0], stop_ids)
            if stopped.all():
                break
            if cache.length < self.config.block_size:
                logits, cache = self.step(next_id, cache)
            else:  # window full: positions shift, so re-encode the last block_size tokens
                logits, cache = self.step(idx[:, -self.config.block_size:])
        return idx

    def param_counts(self):
        """{'embedding': token + position tables, 'non_embedding': all the rest, 'total'}, each parameter
        counted once (the tied LM head is the token table). nanoGPT's "non-embedding" count drops only
        the positions; here both tables are embedding."""
        total = sum(p.numel() for p in self.parameters())
        embedding = self.backbone.wte.weight.numel() + self.backbone.wpe.weight.numel()
        return {'embedding': embedding, 'non_embedding': total - embedding, 'total': total}

    def num_params(self, non_embedding=True):
        return self.param_counts()['non_embedding' if non_embedding else 'total']

    def _matmul_params(self):
        """Weights used in a matmul per token: all but the position table (the token table is the LM head)."""
        return self.num_params(non_embedding=False) - self.backbone.wpe.weight.numel()

    def _token_only_params(self):
        """Parameters of what reads the token alone, so runs once per distinct token of a batch."""
        return 0

    def flops_per_token(self, seq_len=None, distinct_share=1.0):
        """Training (forward + backward = 3 x forward) FLOPs per token, PaLM/nanoGPT convention:
        6 per matmul weight, plus the attention products counted over the full sequence. What reads
        the token alone (the Backpack's sense network) runs once per distinct token: distinct_share,
        the distinct tokens' share of a batch, counts what is computed; 1.0, every position, is the
        count of the papers."""
        cfg, T = self.config, seq_len or self.config.block_size
        per_position = self._matmul_params() - (1 - distinct_share) * self._token_only_params()
        return 6 * per_position + 12 * cfg.n_layer * cfg.n_embd * T

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW, decaying only matrices (weights, embeddings), fused on CUDA and CPU when available
        (on the bench shape's CPU step the fused update takes a third of the for-loop one's time)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
                  {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
        fused = device_type in ('cuda', 'cpu') and 'fused' in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({'fused': True} if fused else {}))


def sample_next(logits, temperature, top_k):
    """(B, 1) next ids from (B, V) logits: greedy at temperature 0 or top_k 1, else sampled at temperature
    from the top_k logits (all of them with top_k None)."""
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float('-inf'))
    return torch.multinomial(F.softmax(logits.float(), dim=-1), num_samples=1)


class StandardTransformerLM(LanguageModel):
    """GPT-2: logits = E h with the head tied to the input embedding.

    Interventions: forward(idx, targets, embeddings_fn=f) passes the input token embeddings (B,T,d)
    through f before the backbone; the output head is untouched."""
    model_type = 'transformer'

    def __init__(self, config):
        super().__init__(config)
        self._init_weights()

    def _states(self, idx, positions, attn_mask, cache, embeddings_fn=None):
        return self.backbone(idx, positions, attn_mask, cache, embeddings_fn)


class SenseNetwork(nn.Module):
    """C(x): k sense vectors per token, from its embedding alone (no position, no context)."""

    def __init__(self, config):
        super().__init__()
        d = config.n_embd
        self.n_senses = config.n_senses
        self.dropout = nn.Dropout(config.dropout)
        self.ln = nn.LayerNorm(d, eps=config.layer_norm_epsilon, bias=config.bias)
        self.block = nn.Module()  # a residual MLP block without mixing, named as in backpack-gpt2
        self.block.ln_1 = nn.LayerNorm(d, eps=config.layer_norm_epsilon, bias=config.bias)
        self.block.mlp = MLP(d, 4 * d, d, config)
        self.block.ln_2 = nn.LayerNorm(d, eps=config.layer_norm_epsilon, bias=config.bias)
        self.block.dropout = nn.Dropout(config.dropout)
        self.final_mlp = MLP(d, config.sense_intermediate_scale * d, config.n_senses * d, config)

    def forward(self, embeddings):
        """(..., d) token embeddings -> (..., k, d) sense vectors."""
        r = self.dropout(embeddings)
        h = self.ln(r)
        r = self.block.dropout(h) + r
        r = self.block.mlp(self.block.ln_1(r)) + r
        return self.final_mlp(self.block.ln_2(r)).unflatten(-1, (self.n_senses, -1))


FUSED_SDPA_DEVICES = ('cuda',)  # device types whose SDPA has fused kernels: attention padded for them, mixing in SDPA
FUSED_SDPA_ALIGNMENT = 8        # head sizes every fused CUDA kernel accepts, in half and float32 alike


def fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    """scaled_dot_product_attention (causal when attn_mask is None), in a fused kernel on CUDA. There the flash
    and memory-efficient kernels take only head sizes that are multiples of 16 bytes (8 in half precision;
    PyTorch's sdp_utils.cpp, check_head_dim_size_flash and check_head_dim_size_mem_efficient), and any other
    size falls back silently to the math kernel, which materialises the (B,h,T,T) weights. So q, k and v
    are zero-padded to a multiple of FUSED_SDPA_ALIGNMENT there: zeros leave q.k unchanged, the scale
    stays that of the true size, and the output's padding is cut off."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    width = v.shape[-1]
    if q.device.type in FUSED_SDPA_DEVICES:
        q, k, v = (F.pad(t, (0, -t.shape[-1] % FUSED_SDPA_ALIGNMENT)) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                       dropout_p=dropout_p, scale=scale)
    return y if y.shape[-1] == width else y[..., :width]


def sdpa_mixing(q, k, senses, attn_mask):
    """The CUDA sense mixing, o (B,T,d): the k sense heads as attention heads, the senses as values.
    The memory-efficient kernel accepts values wider than queries (d against d/k) and keeps no
    (B,k,T,T) tensor (flash needs equal widths). A plain function, so that it also runs on the CPU."""
    return fused_attention(q, k, senses, attn_mask).sum(dim=1)


def product_mixing(q, k, senses, attn_mask):
    """The CPU sense mixing, o (B,T,d). There SDPA would fall back to its math kernel for values wider
    than queries; one product contracting over (past position, sense) is cheaper than k products and
    their sum: (B, T_q, T_k * k) @ (B, T_k * k, d), senses laid out (B, T_k, k, d) as the sense network
    makes them."""
    alpha = BackpackLM._alpha(q, k, attn_mask)
    B, n_senses, T_q, T_k = alpha.shape
    return (alpha.permute(0, 2, 3, 1).reshape(B, T_q, T_k * n_senses)
            @ senses.transpose(1, 2).reshape(B, T_k * n_senses, -1))


# distinct share of a batch's tokens up to which the sense network runs once per distinct token: above it
# the gather and its backward cost more than the positions saved (random ids, 94% distinct: 5% slower)
GATHER_PAYS_UP_TO = 0.9


class BackpackLM(LanguageModel):
    """Backpack: logits = E o, o_i = sum_l sum_j alpha[l,i,j] C(x_j)[l].

    Sense interventions: forward(idx, targets, senses_fn=f, alpha_fn=g) passes the sense vectors
    (B,k,T,d) through f and/or the contextualization alpha (B,k,T,T) through g before mixing; each
    returns a tensor of the same shape. For example, to silence sense 3 of the token at position 5:
        def f(C): C = C.clone(); C[:, 3, 5] = 0; return C
    or to double the weight every position puts on sense 0:  g = lambda a: a * scale  with
    scale = torch.ones(1, k, 1, 1); scale[0, 0] = 2. Replace rather than scale by assigning.
    contributions_fn=h sees (and may replace) the per-sense contributions P (B,k,T,d),
    P[:, l, i] = sum_j alpha[l,i,j] C_j[l], before they are summed into o (sensia.py reads them there).
    """
    model_type = 'backpack'
    fast_mixing = True  # False: materialise alpha and multiply (the reference computation)

    def __init__(self, config):
        super().__init__(config)
        check_senses(config)
        self.sense_network = SenseNetwork(config)
        self.sense_weight_net = nn.Module()
        self.sense_weight_net.c_attn = nn.Linear(config.n_embd, 2 * config.n_embd)  # sense queries and keys
        self.register_buffer('sense_input', None)  # see freeze_sense_input
        self.register_load_state_dict_pre_hook(_make_room_for_sense_input)
        self._init_weights()

    def freeze_sense_input(self):
        """From now on the sense network reads a copy of the token embedding E as it is now.
        Freezing the sense network alone leaves the sense vectors C(E[x]) moving, since E (tied to the
        LM head) keeps training; with the copy they stay fixed while E trains through its other paths.
        The copy is part of the model (state_dict) from then on; a second call keeps the first copy."""
        if self.sense_input is None:
            self.sense_input = self.backbone.wte.weight.detach().clone()

    def sense_vectors(self, token_ids):
        """(...) token ids -> (..., k, d) sense vectors, from E or its frozen copy."""
        table = self.backbone.wte.weight if self.sense_input is None else self.sense_input
        return self.sense_network(F.embedding(token_ids, table))

    def senses(self, idx):
        """(B,T) ids -> (B,k,T,d) sense vectors: a view of the (B,T,k,d) layout the CPU mixing reads.
        Computed once per distinct token of the batch and gathered back to the positions where that
        pays (see _distinct_tokens): exact, the same vectors, their gradients summed over a token's
        positions by the gather's backward."""
        with record_function('sense network'):
            distinct = self._distinct_tokens(idx)
            if distinct is None:
                return self.sense_vectors(idx).transpose(1, 2)
            ids, position_of = distinct
            per_token = self.sense_vectors(ids)  # (U,k,d)
            return F.embedding(position_of, per_token.flatten(1)).unflatten(-1, per_token.shape[1:]).transpose(1, 2)

    def _distinct_tokens(self, idx):
        """(distinct ids, each position's index among them), or None where the sense network runs per
        position: with dropout in training, since each position then draws its own masks inside the
        sense network (the paper's noise; one mask per token would be another), and where the batch
        repeats too few tokens for the saving to pay for the gather (docs/performance.md)."""
        if self.training and self.config.dropout > 0:
            return None
        ids, position_of = torch.unique(idx, return_inverse=True)
        return (ids, position_of) if ids.numel() <= GATHER_PAYS_UP_TO * idx.numel() else None

    def sense_share(self, idx):
        """The share of idx's positions the sense network runs on (flops_per_token's distinct_share)."""
        distinct = self._distinct_tokens(idx)
        return 1.0 if distinct is None else distinct[0].numel() / idx.numel()

    def _sense_queries_keys(self, hidden):
        B, T, d = hidden.shape
        with record_function('mixing'):
            qk = self.sense_weight_net.c_attn(hidden).view(B, T, 2, self.config.n_senses, d // self.config.n_senses)
            return qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2)  # (B,k,T,d/k) each

    def _senses_and_weights(self, idx, positions, attn_mask, cache):
        """Sense vectors (B,k,T,d), and sense queries and keys (B,k,T,d/k) of all positions so far."""
        senses = self.senses(idx)
        q, k = self._sense_queries_keys(self.backbone(idx, positions, attn_mask, cache))
        if cache is not None:
            if cache.senses is not None:  # appended in (B,T,k,d), the layout the CPU mixing reads
                senses = torch.cat([cache.senses, senses.transpose(1, 2)], dim=1).transpose(1, 2)
                k = torch.cat([cache.sense_keys, k], dim=2)
            cache.senses, cache.sense_keys = senses.transpose(1, 2), k
        return senses, q, k

    @staticmethod
    def _alpha(q, k, attn_mask):
        """Contextualization weights (B,k,T_q,T_k): per-sense causal softmax of q.k / sqrt(d/k)."""
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if attn_mask is None:
            T = q.shape[2]
            attn_mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return scores.masked_fill(~attn_mask, float('-inf')).softmax(dim=-1)

    def _states(self, idx, positions, attn_mask, cache, senses_fn=None, alpha_fn=None, contributions_fn=None):
        senses, q, k = self._senses_and_weights(idx, positions, attn_mask, cache)
        if senses_fn is not None:
            senses = senses_fn(senses)
        with record_function('mixing'):
            if self.fast_mixing and alpha_fn is None and contributions_fn is None:
                return self._mix(q, k, senses, attn_mask)
            alpha = self._alpha(q, k, attn_mask)
            contributions = (alpha_fn(alpha) if alpha_fn is not None else alpha) @ senses  # P (B,k,T,d)
            if contributions_fn is not None:
                contributions = contributions_fn(contributions)
            return contributions.sum(dim=1)

    def _mix(self, q, k, senses, attn_mask):
        """o (B,T,d) = sum_l alpha_l C_l, without the per-sense (B,k,T,d) products the reference sums."""
        return (sdpa_mixing if q.device.type in FUSED_SDPA_DEVICES else product_mixing)(q, k, senses, attn_mask)

    def contextualization(self, idx):
        """alpha (B,k,T,T): how much sense l of token j contributes at position i."""
        return self._alpha(*self._sense_queries_keys(self.hidden_states(idx)), None)

    def output_states(self, idx):
        """o (B,T,d): the sense mixture that the tied head turns into logits."""
        self._check_length(idx.shape[1])
        positions, _ = _positions_and_mask(idx, 0, None)
        senses, q, k = self._senses_and_weights(idx, positions, None, None)
        return self._mix(q, k, senses, None)

    def _token_only_params(self):
        return sum(p.numel() for p in self.sense_network.parameters())

    def flops_per_token(self, seq_len=None, distinct_share=1.0):
        # + sense scores (2 T d) and sense mixing (2 k T d) per token, forward, times 3 for training
        cfg, T = self.config, seq_len or self.config.block_size
        mixing = 3 * (2 * T * cfg.n_embd + 2 * cfg.n_senses * T * cfg.n_embd)
        return super().flops_per_token(T, distinct_share) + mixing


def _make_room_for_sense_input(module, state_dict, prefix, *args):
    """load_state_dict pre-hook: a checkpoint saved after freeze_sense_input holds the frozen copy."""
    if prefix + 'sense_input' in state_dict and module.sense_input is None:
        module.sense_input = torch.empty_like(module.backbone.wte.weight)


MODEL_CLASSES = {'backpack': BackpackLM, 'transformer': StandardTransformerLM}


def check_senses(config):
    """A Backpack splits the width into n_senses sense heads (ValueError otherwise)."""
    if config.n_embd % config.n_senses:
        raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_senses ({config.n_senses})")


def check_model(model_type, config):
    """ValueError unless model_type names a model class that can be built with config."""
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"unknown model_type {model_type!r}; choose from {', '.join(MODEL_CLASSES)}")
    if model_type == 'backpack':
        check_senses(config)


def build_model(model_type, config):
    check_model(model_type, config)
    return MODEL_CLASSES[model_type](config)
