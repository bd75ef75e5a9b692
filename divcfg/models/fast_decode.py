"""Opt-in compiled decode step for the built-in ``MusicTransformer`` (``sample(..., compile=True)``).

On a CPU at small batch the eager decode step (``MusicTransformer._decode_one``) pays a fixed cost
for each of its ~100 PyTorch ops per token (Python, dispatch, allocation, the fp32 copies of the
cached keys/values). Here the step is one ``torch.compile``d graph (inductor: fused C++ kernels on
the CPU; the linears stay oneDNN/BLAS calls) that serves every position:

- the cached positions ``< pos`` are passed as views whose length is a *dynamic* dimension, so the
  graph is compiled once per (batch, dtypes, architecture), not per position (a Python-int slice
  under a static compile recompiles at every step);
- the new key/value are not written inside the graph: attention is a softmax over [cached
  positions, the new one] written out, the graph returns the new keys/values of all layers and
  the decoder writes them with one indexed copy per cache tensor;
- keys are stored transposed, (L, B, H, hd, S), so ``q·K`` vectorises over positions; the cache
  is sized for the run (``sample`` passes ``max_new_tokens``), rounded up to 64 positions, since
  its strides are part of the graph and a ``max_len`` (644-position) cache measured no faster
  than eager (each key row spread over more memory);
- the weights are passed as two flat tensors (linears in the compute dtype, cast once per cache;
  embeddings and layer norms as stored) sliced inside the graph: a handful of tensor guards.

Measured alternatives (``benchmarks/inference.py``, CPU): a fixed-shape step attending to the whole
preallocated cache with an additive mask from a position tensor and ``index_copy_`` into the cache
is correct and compiles once, but reads every masked position (attention is bandwidth-bound:
slower than eager over a 640-position cache); windows rounded up to 64 positions (one graph per
window) beat eager by ~1.2× but compile 3 graphs for 128 tokens and still read up to 63 masked
positions per step. The dynamic-length graph was as fast and compiles once.

Each compiled step runs ``torch.compile`` on its own copy of the step's code object so that each
(spec, batch, dtypes) has its own dynamo cache (one entry: no recompile limit, one guard set). The
first run of a shape pays the compile time (seconds); later runs in the process reuse it.

The arithmetic is the eager step's: layer norms, residual stream and attention in fp32, linears in
the autocast dtype, the cache in the cache dtype. Kernels differ (inductor fuses pointwise ops and
reductions), so logits agree with the eager step to float rounding, not bit for bit. The default
(eager) path does not use this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from divcfg.errors import UserError
from divcfg.models.transformer import effective_linear as transformer_effective_linear


def effective_linear(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a linear layer or a peft LoRA layer, as the eager step's ``_linear`` uses them."""
    pair = transformer_effective_linear(layer)
    if pair is None:
        raise TypeError(f"compiled decoding supports nn.Linear and peft LoRA layers, not {type(layer).__name__}")
    return pair


def _flatten(tensors: list[torch.Tensor | None], dtype: torch.dtype) -> tuple[torch.Tensor, tuple]:
    """One flat ``dtype`` tensor holding ``tensors`` and its layout ((offset, shape) or None each)."""
    layout, offset = [], 0
    for t in tensors:
        if t is None:
            layout.append(None)
            continue
        layout.append((offset, tuple(t.shape)))
        offset += t.numel()
    flat = torch.empty(offset, dtype=dtype, device=next(t for t in tensors if t is not None).device)
    for t, item in zip(tensors, layout):
        if item is not None:
            flat[item[0]:item[0] + t.numel()].copy_(t.detach().reshape(-1))
    return flat, tuple(layout)


def _views(flat: torch.Tensor, layout: tuple) -> list[torch.Tensor | None]:
    return [None if item is None else flat[item[0]:item[0] + math.prod(item[1])].view(item[1]) for item in layout]


@dataclass(frozen=True)
class StepSpec:
    """What a compiled graph is specialised on besides tensor shapes and dtypes."""
    n_layer: int
    n_head: int
    eps: float
    linear_layout: tuple   # per layer: qkv w, b, proj w, b, fc1 w, b, fc2 w, b; then head w, b
    norm_layout: tuple     # tok_emb, pos_emb; per layer: ln1 w, b, ln2 w, b; then ln_f w, b
    cast: bool             # whether activations are cast to the linears' dtype (autocast)


def _make_step(spec: StepSpec):
    def step(token, pos, keys, values, lin_flat, norm_flat):
        """One decode step: ``token`` (B,), ``pos`` (1,) long, the cached positions ``< pos`` as
        ``keys`` (L, B, H, hd, pos) (transposed) and ``values`` (L, B, H, pos, hd) (``pos`` a
        dynamic size); returns the logits (B, V) and the new keys and values (L, B, H, hd), which
        the caller writes at ``pos``."""
        lin = _views(lin_flat, spec.linear_layout)
        norm = _views(norm_flat, spec.norm_layout)
        B = token.shape[0]
        H = spec.n_head
        x = F.embedding(token, norm[0]) + F.embedding(pos, norm[1])
        C = x.shape[1]
        hd = C // H
        dtype = lin_flat.dtype

        def linear(t, i):
            return F.linear(t.to(dtype) if spec.cast else t, lin[i], lin[i + 1])

        scale = 1.0 / math.sqrt(hd)
        new_k, new_v = [], []
        for layer in range(spec.n_layer):
            li, ni = 8 * layer, 2 + 4 * layer
            h = F.layer_norm(x, (C,), norm[ni], norm[ni + 1], spec.eps)
            qkv = linear(h, li).view(B, 3, H, hd).to(keys.dtype)
            k, v = qkv[:, 1], qkv[:, 2]
            new_k.append(k)
            new_v.append(v)
            q = qkv[:, 0].float().unsqueeze(2)                                     # (B, H, 1, hd)
            # softmax over [cached positions, the new one], written out (no concatenation)
            s_past = torch.matmul(q, keys[layer].float()) * scale                # (B, H, 1, pos)
            s_new = torch.matmul(q, k.float().unsqueeze(3)) * scale              # (B, H, 1, 1)
            m = torch.maximum(s_past.amax(dim=-1, keepdim=True), s_new)
            e_past, e_new = torch.exp(s_past - m), torch.exp(s_new - m)
            y = ((torch.matmul(e_past, values[layer].float()) + e_new * v.float().unsqueeze(2))
                 / (e_past.sum(dim=-1, keepdim=True) + e_new))
            x = x + linear(y.reshape(B, C).to(h.dtype), li + 2)
            h = F.layer_norm(x, (C,), norm[ni + 2], norm[ni + 3], spec.eps)
            x = x + linear(F.gelu(linear(h, li + 4)), li + 6)
        x = F.layer_norm(x, (C,), norm[-2], norm[-1], spec.eps)
        return linear(x, 8 * spec.n_layer), torch.stack(new_k), torch.stack(new_v)

    step.__code__ = step.__code__.replace()  # its own code object: its own dynamo cache
    return step


_COMPILED: dict = {}  # (spec, batch, dtypes, device type) -> compiled step


def compiled_step(spec: StepSpec, key: tuple):
    fn = _COMPILED.get((spec, key))
    if fn is None:
        fn = _COMPILED[(spec, key)] = torch.compile(_make_step(spec), fullgraph=True, dynamic=False)
    return fn


class CompiledDecoder:
    """The decode step of one ``KVCache`` (``cache.decoder``) through a compiled graph. ``keys``
    (L, B, H, hd, S) and ``values`` (L, B, H, S, hd): the cache storage; the weights are flattened
    here, once (linears cast to ``dtype``, the autocast dtype, or as stored when None)."""

    def __init__(self, model, keys: torch.Tensor, values: torch.Tensor, dtype: torch.dtype | None):
        cfg = model.cfg
        linears = []
        for blk in model.blocks:
            for layer in (blk.attn.qkv, blk.attn.proj, blk.mlp[0], blk.mlp[2]):
                linears += effective_linear(layer)
        linears += effective_linear(model.head)
        norms = [model.tok_emb.weight, model.pos_emb.weight]
        for blk in model.blocks:
            norms += [blk.ln1.weight, blk.ln1.bias, blk.ln2.weight, blk.ln2.bias]
        norms += [model.ln_f.weight, model.ln_f.bias]
        for m in [blk.ln1 for blk in model.blocks] + [blk.ln2 for blk in model.blocks] + [model.ln_f]:
            if m.eps != model.ln_f.eps or m.weight is None:
                raise ValueError("compiled decoding needs affine layer norms with one eps")
        param_dtype = model.null_prefix.dtype
        lin, lin_layout = _flatten(linears, dtype or param_dtype)
        norm, norm_layout = _flatten(norms, param_dtype)
        self.weights = (lin, norm)
        self.dtype = dtype
        self.keys, self.values = keys, values
        self.size = keys.shape[4]
        self.step = compiled_step(StepSpec(cfg.n_layer, cfg.n_head, model.ln_f.eps, lin_layout, norm_layout,
                                           dtype is not None),
                                  (keys.shape[1], keys.dtype, lin.dtype, norm.dtype, keys.device.type))

    def __call__(self, token: torch.Tensor, cache) -> torch.Tensor:
        pos = cache.pos
        if pos + 1 > self.size:
            raise ValueError(f"KV cache full: {self.size} positions")
        device = token.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        if dtype != self.dtype:
            raise ValueError(f"compiled decoder built for autocast dtype {self.dtype}, called under {dtype}")
        keys, values = self.keys[..., :pos], self.values[:, :, :, :pos]
        if pos > 1:  # one graph for every length (1 would be specialised: its own graph)
            torch._dynamo.maybe_mark_dynamic(keys, 4)
            torch._dynamo.maybe_mark_dynamic(values, 3)
        with torch.autocast(device, enabled=False):
            try:
                logits, k, v = self.step(token, torch.tensor([pos], device=token.device), keys, values,
                                         *self.weights)
            except torch._dynamo.exc.BackendCompilerFailed as e:
                first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
                raise UserError(f"compiled decoding: torch.compile could not build the decode step ({first[:160]}): "
                                f"install a C++ compiler (gcc/g++) for its CPU backend, or sample without "
                                f"compile / --compile") from None
        self.keys[..., pos] = k
        self.values[:, :, :, pos] = v
        cache.pos = pos + 1
        return logits
