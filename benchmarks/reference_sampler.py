"""The sampler and decode step as they were before the speed work (commit 9e92119), kept verbatim
as a reference: ``benchmarks/inference.py`` times it side by side with ``divcfg.sampling.sample``
in one process (so "before" and "after" see the same machine load), and the tests check that the
fast path samples the same tokens from the same seed.

Only for the built-in ``MusicTransformer``: ``reference_forward_step`` is the old
``MusicTransformer.forward_step`` (fused SDPA per layer on a (B, 1, d) sequence, cache in the
autocast dtype), written against the current module's sub-modules.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from divcfg.guidance import CFG_MODES, cfg_logprobs
from divcfg.models.transformer import KVCache
from divcfg.sampling import SampleOutput, filter_logprobs


def reference_new_cache(model, batch: int, dtype: torch.dtype | None = None) -> KVCache:
    cache = KVCache.empty(model.cfg, batch, model.null_prefix.device, dtype or model.null_prefix.dtype)
    for t in cache.k + cache.v:
        t.zero_()  # as before: a zero-filled cache
    return cache


def reference_forward_step(model, tokens: torch.Tensor, cache: KVCache, cond: torch.Tensor | None = None,
                           null_mask: torch.Tensor | None = None) -> torch.Tensor:
    B, T = tokens.shape
    P = model.cfg.n_prefix
    if cache.pos == 0:
        pre = model.prefix(cond, null_mask, B) + model.pos_emb.weight[:P]
        x = torch.cat([pre, model._embed(tokens, P)], dim=1)
    else:
        x = model._embed(tokens, cache.pos)
    if cache.pos + x.shape[1] > P + model.cfg.max_len:
        raise ValueError(f"KV cache full: max_len={model.cfg.max_len} tokens")
    for i, blk in enumerate(model.blocks):
        x = blk(x, cache, i)  # SelfAttention.forward's cache path: SDPA over the cache
    cache.pos += x.shape[1]
    return model.head(model.ln_f(x[:, -1]))


def _autocast(enabled: bool):
    if enabled:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def reference_sample(model, cond: torch.Tensor, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, gamma: float = 1.0, cfg_mode: str = "batched", use_cache: bool = True,
                     generator: torch.Generator | None = None, autocast: bool = False,
                     min_new_tokens: int = 0) -> SampleOutput:
    if cfg_mode not in CFG_MODES:
        raise ValueError(f"cfg_mode must be one of {CFG_MODES}, got {cfg_mode!r}")
    cfg = model.cfg
    max_new_tokens = min(max_new_tokens, cfg.max_len - 1)
    was_training = model.training
    model.eval()
    device = cond.device
    B = cond.shape[0]
    guided = gamma != 1.0
    passes = 2 if guided else 1
    tokens = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=device)
    out_tok = torch.full((B, max_new_tokens), cfg.pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros(B, max_new_tokens, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)

    cache_dtype = torch.bfloat16 if autocast else None
    if guided and cfg_mode == "batched":
        cond_in = torch.cat([cond, cond])
        null_in = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(device)
        caches = [reference_new_cache(model, 2 * B, cache_dtype)] if use_cache else None
    else:
        caches = ([reference_new_cache(model, B, cache_dtype)]
                  + ([reference_new_cache(model, B, cache_dtype)] if guided else [])) if use_cache else None
    step = lambda *a: reference_forward_step(model, *a)  # noqa: E731

    def next_logits(step_tokens: torch.Tensor, all_tokens: torch.Tensor):
        if guided and cfg_mode == "batched":
            if use_cache:
                lg = step(torch.cat([step_tokens, step_tokens]), caches[0], cond_in, null_in)
            else:
                lg = model(torch.cat([all_tokens, all_tokens]), cond_in, null_in)[:, -1]
            return lg[:B], lg[B:]
        if use_cache:
            lc = step(step_tokens, caches[0], cond)
            lu = step(step_tokens, caches[1], None) if guided else None
        else:
            lc = model(all_tokens, cond)[:, -1]
            lu = model(all_tokens, None)[:, -1] if guided else None
        return lc, lu

    never = torch.tensor([cfg.pad_id, cfg.bos_id], device=device)
    step_tokens = tokens
    with _autocast(autocast):
        for t in range(max_new_tokens):
            lc, lu = next_logits(step_tokens, tokens)
            logp = cfg_logprobs(lc, lu, gamma) if guided else F.log_softmax(lc.float(), dim=-1)
            logp[:, never] = float("-inf")
            if t < min_new_tokens:
                logp[:, cfg.eos_id] = float("-inf")
            logp = filter_logprobs(logp, temperature, top_k, top_p)
            nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            lp = logp.gather(1, nxt.unsqueeze(1)).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, cfg.pad_id), nxt)
            out_tok[:, t] = nxt
            out_lp[:, t] = torch.where(done, torch.zeros_like(lp), lp)
            lengths += (~done).long()
            done = done | (nxt == cfg.eos_id)
            step_tokens = nxt.unsqueeze(1)
            if not use_cache:
                tokens = torch.cat([tokens, step_tokens], dim=1)
            if bool(done.all()):
                out_tok, out_lp = out_tok[:, : t + 1], out_lp[:, : t + 1]
                break
    model.train(was_training)
    return SampleOutput(out_tok, lengths, out_lp, done, passes)
