"""The built-in text-to-music generator: a small decoder-only transformer (nanoGPT-like) whose
text condition is a prefix.

Sequence layout (positions 0..P+T-1)::

    [c_1 .. c_P] [BOS] y_1 ... y_L [EOS] [PAD ...]

The prefix ``c = W2·gelu(W1·e(x))`` reshaped to ``P × d`` is a projection of the frozen MiniLM
sentence embedding ``e(x) ∈ R^384``. The unconditional model ``p(y | ∅)`` uses a learned null
prefix ``c_∅ ∈ R^{P×d}`` instead; during pre-training each row's condition is replaced by ``c_∅``
with probability ``cond_dropout`` (condition dropout), so one network gives both the conditional
and the unconditional distributions that classifier-free guidance mixes.

``forward(tokens, cond, null_mask)`` returns logits for the token positions only:
``logits[:, t]`` is the distribution of ``tokens[:, t+1]``.
``forward_step`` runs the same network incrementally with a preallocated KV cache.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from divcfg.embedders.text import TEXT_DIM


@dataclass
class ModelConfig:
    vocab_size: int = 300
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    n_prefix: int = 4
    max_len: int = 640  # token positions (BOS + generation + EOS), prefix excluded
    cond_dim: int = TEXT_DIM
    dropout: float = 0.1
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class KVCache:
    """Preallocated keys/values for every layer: ``k[l], v[l]`` of shape (B, H, P+max_len, hd),
    views of one (2, B, H, P+max_len, hd) tensor ``kv[l]`` (so a decode step writes and reads
    both with one op). ``weights``: the decode step's copies of the linear weights in the autocast
    dtype, made once per cache (the weights do not change while one cache is in use). ``decoder``:
    None (the eager decode step), or the compiled one of ``MusicTransformer.new_compiled_cache``."""
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    pos: int = 0  # number of positions already written
    kv: list[torch.Tensor] = field(default_factory=list)
    weights: dict = field(default_factory=dict, repr=False)
    decoder: object = field(default=None, repr=False)

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, device, dtype) -> "KVCache":
        hd = cfg.d_model // cfg.n_head
        shape = (2, batch, cfg.n_head, cfg.n_prefix + cfg.max_len, hd)
        # uninitialised: only positions < pos are ever read, and untouched pages cost no memory
        kv = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        return cls([t[0] for t in kv], [t[1] for t in kv], kv=kv)


def effective_linear(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of a linear layer: an ``nn.Linear``, or a peft LoRA layer as its effective weight
    ``W + s·B·A`` (``W`` alone while its adapters are disabled); None for any other module."""
    if isinstance(layer, nn.Linear):
        return layer.weight, layer.bias
    if isinstance(getattr(layer, "base_layer", None), nn.Linear) and hasattr(layer, "get_delta_weight"):
        weight, bias = layer.base_layer.weight, layer.base_layer.bias
        if not layer.disable_adapters and not layer.merged:
            for name in layer.active_adapters:
                if name in layer.lora_A:
                    weight = weight + layer.get_delta_weight(name)
        return weight, bias
    return None


def _linear(layer: nn.Linear, x: torch.Tensor, dtype: torch.dtype | None, cache: KVCache) -> torch.Tensor:
    """``layer(x)``, or what autocast to ``dtype`` computes for it (input and weights cast to
    ``dtype``), with the weight copies kept in ``cache.weights`` instead of autocast's per-op path.
    A peft LoRA layer (``base_layer`` + adapters) is cached as its effective weight ``W + s·B·A``
    (``W`` alone while its adapters are disabled); any other wrapper runs its own forward."""
    if dtype is None:
        return layer(x)
    w = cache.weights.get(id(layer))
    if w is None:
        pair = effective_linear(layer)
        if pair is None:
            with torch.autocast(x.device.type, dtype=dtype):
                return layer(x)
        weight, bias = pair
        w = cache.weights[id(layer)] = (weight.to(dtype), None if bias is None else bias.to(dtype))
    return F.linear(x.to(dtype), w[0], w[1])


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            start = cache.pos
            cache.k[layer][:, :, start:start + T] = k.to(cache.k[layer].dtype)
            cache.v[layer][:, :, start:start + T] = v.to(cache.v[layer].dtype)
            keys = cache.k[layer][:, :, :start + T].to(q.dtype)
            vals = cache.v[layer][:, :, :start + T].to(q.dtype)
            if T == 1:
                y = F.scaled_dot_product_attention(q, keys, vals)
            else:  # prefill of T positions after `start` cached ones: causal within the block
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def decode(self, x: torch.Tensor, cache: KVCache, layer: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One new position per row, ``x`` (B, C), attending to the cache plus itself; writes its
        key/value at ``cache.pos`` (the caller advances ``pos``). Same maths as ``forward``, run
        outside autocast with the casts autocast to ``dtype`` would make (``dtype=None``: none).

        On CPU ``softmax(q·Kᵀ/√hd)·V`` runs in fp32 on fp32 copies of the cached keys and values:
        with a bf16 cache (exact: under bf16 autocast the keys/values come out of bf16 matmuls)
        that reads half the bytes of an fp32 cache and was measured faster than fp32 storage, than
        bf16 matmuls and, by far, than the fused bf16 kernel for a single query. Elsewhere the
        fused kernel runs in the cache's dtype."""
        B, C = x.shape
        hd = C // self.n_head
        qkv = _linear(self.qkv, x, dtype, cache).view(B, 3, self.n_head, hd)
        pos = cache.pos
        kv = cache.kv[layer]
        kv[:, :, :, pos] = qkv[:, 1:].transpose(0, 1)
        q = qkv[:, 0].unsqueeze(2)
        if x.device.type == "cpu":
            scores = torch.matmul(q.float(), kv[0, :, :, :pos + 1].float().transpose(2, 3)) * (1.0 / math.sqrt(hd))
            y = torch.matmul(torch.softmax(scores, dim=-1), kv[1, :, :, :pos + 1].float())
        else:
            y = F.scaled_dot_product_attention(q.to(kv.dtype), kv[0, :, :, :pos + 1], kv[1, :, :, :pos + 1])
        return _linear(self.proj, y.reshape(B, C).to(x.dtype), dtype, cache)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout))

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class MusicTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.cond_proj = nn.Sequential(nn.Linear(cfg.cond_dim, d), nn.GELU(), nn.Linear(d, cfg.n_prefix * d))
        self.null_prefix = nn.Parameter(torch.randn(cfg.n_prefix, d) * 0.02)
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Embedding(cfg.n_prefix + cfg.max_len, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying, as in nanoGPT
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") and "cond_proj" not in name:
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def prefix(self, cond: torch.Tensor | None, null_mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, P, d) prefix: projected condition, or the learned null where ``null_mask`` is True."""
        P, d = self.cfg.n_prefix, self.cfg.d_model
        null = self.null_prefix.unsqueeze(0).expand(batch, P, d)
        if cond is None:
            return null
        c = self.cond_proj(cond.to(self.null_prefix.dtype)).view(batch, P, d)
        if null_mask is None:
            return c
        return torch.where(null_mask.view(batch, 1, 1), null.to(c.dtype), c)

    def _embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        T = tokens.shape[1]
        pos = torch.arange(start, start + T, device=tokens.device)
        return self.tok_emb(tokens) + self.pos_emb(pos)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for token positions; ``logits[:, t]`` predicts ``tokens[:, t+1]``."""
        B, T = tokens.shape
        P = self.cfg.n_prefix
        if T > self.cfg.max_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_len={self.cfg.max_len}")
        pre = self.prefix(cond, null_mask, B) + self.pos_emb.weight[:P]
        x = self.drop(torch.cat([pre, self._embed(tokens, P)], dim=1))
        for i, blk in enumerate(self.blocks):
            x = blk(x)
        return self.head(self.ln_f(x[:, P:]))

    def new_cache(self, batch: int, dtype: torch.dtype | None = None) -> KVCache:
        p = self.null_prefix
        return KVCache.empty(self.cfg, batch, p.device, dtype or p.dtype)

    def new_compiled_cache(self, batch: int, dtype: torch.dtype | None = None,
                           autocast_dtype: torch.dtype | None = None, positions: int | None = None) -> KVCache:
        """A KV cache whose decode steps run through a ``torch.compile``d graph
        (``divcfg.models.fast_decode``; opt-in, ``sample(..., compile=True)``). ``autocast_dtype``: the
        autocast dtype the steps will run under (None: none); the linear weights are cast to it
        once, here. Sized for the prefix plus ``positions`` token positions (default ``max_len``)
        rounded up to a multiple of 64: the cache's strides are part of the compiled graph (one
        graph per rounded size), and a cache much longer than the run was measured slower (the
        transposed keys' rows are spread over more memory)."""
        from divcfg.models.fast_decode import CompiledDecoder

        cfg, p = self.cfg, self.null_prefix
        full = cfg.n_prefix + cfg.max_len
        size = full if positions is None else min(full, -(-(cfg.n_prefix + positions) // 64) * 64)
        hd = cfg.d_model // cfg.n_head
        # keys stored transposed, (L, B, H, hd, S), for the compiled step's one-query attention; the
        # prefill writes them through (B, H, S, hd) views
        keys = torch.empty((cfg.n_layer, batch, cfg.n_head, hd, size), device=p.device, dtype=dtype or p.dtype)
        values = torch.empty((cfg.n_layer, batch, cfg.n_head, size, hd), device=p.device, dtype=dtype or p.dtype)
        cache = KVCache(list(keys.transpose(3, 4).unbind(0)), list(values.unbind(0)))
        cache.decoder = CompiledDecoder(self, keys, values, autocast_dtype)
        return cache

    def forward_step(self, tokens: torch.Tensor, cache: KVCache, cond: torch.Tensor | None = None,
                     null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Incremental forward. On an empty cache the prefix is prepended (prefill); returns the
        logits (B, V) of the next token after the last of ``tokens``."""
        B, T = tokens.shape
        P = self.cfg.n_prefix
        if cache.pos > 0 and T == 1 and not self.training:
            if cache.decoder is not None:
                return cache.decoder(tokens[:, 0], cache)
            return self._decode_one(tokens[:, 0], cache)
        if cache.pos == 0:
            pre = self.prefix(cond, null_mask, B) + self.pos_emb.weight[:P]
            x = torch.cat([pre, self._embed(tokens, P)], dim=1)
        else:
            x = self._embed(tokens, cache.pos)
        if cache.pos + x.shape[1] > P + self.cfg.max_len:
            raise ValueError(f"KV cache full: max_len={self.cfg.max_len} tokens")
        for i, blk in enumerate(self.blocks):
            x = blk(x, cache, i)
        cache.pos += x.shape[1]
        return self.head(self.ln_f(x[:, -1]))

    def _decode_one(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The decode step proper (one token per row after the prefill), on (B, d) activations:
        the block maths of ``forward`` with fewer ops (no sequence axis, no position tensor) and,
        under autocast, the same casts made explicitly (bit-identical, without autocast's per-op
        cost): layer norms, residual stream and attention in fp32, linears in the autocast dtype."""
        pos = cache.pos
        if pos + 1 > self.cfg.n_prefix + self.cfg.max_len:
            raise ValueError(f"KV cache full: max_len={self.cfg.max_len} tokens")
        device = token.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        with torch.autocast(device, enabled=False):
            x = self.tok_emb(token) + self.pos_emb.weight[pos]
            for i, blk in enumerate(self.blocks):
                x = x + blk.attn.decode(blk.ln1(x), cache, i, dtype)
                fc1, act, fc2 = blk.mlp[0], blk.mlp[1], blk.mlp[2]  # mlp[3] is dropout (eval: identity)
                x = x + _linear(fc2, act(_linear(fc1, blk.ln2(x), dtype, cache)), dtype, cache)
            cache.pos = pos + 1
            return _linear(self.head, self.ln_f(x), dtype, cache)
