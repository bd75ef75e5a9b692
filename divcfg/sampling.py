"""Autoregressive sampling with a KV cache, temperature, top-k, top-p and CFG.

Works for any generator that follows the protocol of ``divcfg.models.transformer``:
``cfg.{bos_id,eos_id,pad_id,max_len}``, ``new_cache(batch)``,
``forward_step(tokens, cache, cond, null_mask) -> next-token logits`` and, for the no-cache
reference path, ``forward(tokens, cond, null_mask) -> logits``.

At step t the sampling distribution is built in this order:
1. ``log p_γ = cfg_logprobs(ℓ_c, ℓ_u, γ)`` (γ=1: plain conditional, one forward pass per token;
   otherwise two passes: one 2B batch in ``batched`` mode, two B batches in ``two_pass`` mode);
2. temperature: ``log_softmax(log p_γ / τ)``;
3. top-k then top-p (nucleus) truncation, renormalised.
PAD and BOS get probability zero before step 2 (they are never valid continuations).
The returned ``logprobs`` are those of the sampled tokens under that final distribution.
Rows that emitted EOS are padded with PAD afterwards; sampling stops when every row is done.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from divcfg.guidance import CFG_MODES, cfg_logprobs


@dataclass
class SampleOutput:
    tokens: torch.Tensor     # (B, L) generated ids, BOS excluded, PAD after EOS
    lengths: torch.Tensor    # (B,) generated tokens, EOS included when produced
    logprobs: torch.Tensor   # (B, L) log-prob of each sampled token (0 at padding)
    finished: torch.Tensor   # (B,) True where EOS was produced
    forward_passes_per_token: int

    def sequences(self) -> list[list[int]]:
        """Generated ids per row, without EOS/PAD (what a tokenizer decodes)."""
        out = []
        for row, n, fin in zip(self.tokens.tolist(), self.lengths.tolist(), self.finished.tolist()):
            out.append(row[: n - 1] if fin else row[:n])
        return out

    def with_bos(self, bos_id: int) -> torch.Tensor:
        """(B, L+1) teacher-forcing input ``[BOS, y_1..y_L]``."""
        bos = torch.full((self.tokens.shape[0], 1), bos_id, dtype=self.tokens.dtype, device=self.tokens.device)
        return torch.cat([bos, self.tokens], dim=1)


def filter_logprobs(logp: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, top-k and top-p applied to log-probabilities (B, V); returns normalised log-probs."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if temperature != 1.0:
        logp = F.log_softmax(logp / temperature, dim=-1)
    if top_k and top_k < logp.shape[-1]:
        kth = torch.topk(logp, top_k, dim=-1).values[..., -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_lp, idx = torch.sort(logp, dim=-1, descending=True)
        cum = sorted_lp.exp().cumsum(dim=-1)
        drop = (cum - sorted_lp.exp()) > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_lp = sorted_lp.masked_fill(drop, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, idx, sorted_lp)
    return F.log_softmax(logp, dim=-1)


def _autocast(enabled: bool):
    if enabled:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def sample(model, cond: torch.Tensor, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, gamma: float = 1.0, cfg_mode: str = "batched", use_cache: bool = True,
           generator: torch.Generator | None = None, autocast: bool = False,
           min_new_tokens: int = 0) -> SampleOutput:
    """Sample ``B = cond.shape[0]`` continuations of ``[BOS]`` (one per condition row).
    EOS is forbidden before ``min_new_tokens`` tokens (as in Hugging Face generation)."""
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

    # under bf16 autocast the keys/values are bf16: cache them as such (no per-step conversion)
    cache_dtype = torch.bfloat16 if autocast else None
    if guided and cfg_mode == "batched":
        cond_in = torch.cat([cond, cond])
        null_in = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(device)
        caches = [model.new_cache(2 * B, cache_dtype)] if use_cache else None
    else:
        caches = ([model.new_cache(B, cache_dtype)] + ([model.new_cache(B, cache_dtype)] if guided else [])
                  ) if use_cache else None

    def next_logits(step_tokens: torch.Tensor, all_tokens: torch.Tensor):
        """(cond_logits, uncond_logits or None) for the next position."""
        if guided and cfg_mode == "batched":
            if use_cache:
                lg = model.forward_step(torch.cat([step_tokens, step_tokens]), caches[0], cond_in, null_in)
            else:
                lg = model(torch.cat([all_tokens, all_tokens]), cond_in, null_in)[:, -1]
            return lg[:B], lg[B:]
        if use_cache:
            lc = model.forward_step(step_tokens, caches[0], cond)
            lu = model.forward_step(step_tokens, caches[1], None) if guided else None
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
            logp[:, never] = float("-inf")  # PAD and BOS are never valid continuations
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
