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

The per-token loop is written for few kernels and no host round trips: PAD/BOS (and EOS before
``min_new_tokens``) are removed by adding a precomputed −∞ bias to the logits, CFG mixes raw
logits (``guidance.cfg_logits``, one log_softmax instead of three; the same distribution), and
the steps 1–3 above collapse into one ``log_softmax`` when top-k/top-p are off. The "every row
finished" early exit reads the device each step only on the CPU (free there); on an accelerator
it is checked every ``SYNC_EVERY`` steps, and the output is cut to the longest row either way.

Device and precision (``choose_precision``): ``autocast=True`` means bf16 autocast where the
device supports it (``bf16_supported``), and the KV cache is then bf16 too (exact: the keys and
values come out of bf16 matmuls; half the memory and memory traffic of fp32). A CPU
``torch.Generator`` passed for a CUDA run seeds a generator on the device from one draw of its
own stream (so runs stay reproducible by seed).

Top-p is measured on the distribution after PAD/BOS removal and temperature, renormalised (before
this version, at τ=1 only, it was measured before renormalising; the same at τ≠1). In fp32 the
sampler draws the same tokens from the same seed as before; under bf16 autocast the decode step's
attention now runs in fp32 (it was a bf16 kernel), so draws differ after a few tokens while the
distribution is the same up to bf16 rounding.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from divcfg.guidance import CFG_MODES, cfg_logits


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


SYNC_EVERY = 16  # on an accelerator, steps between checks of "every row finished"
CHECK_EVERY = {"cpu": 1}  # per device type; a check reads the device (free on the CPU)


def bf16_supported(device_type: str = "cpu") -> bool:
    """Whether this machine runs bf16 natively on ``device_type`` ("cpu": AVX512-BF16/AMX via
    oneDNN; "cuda": ``torch.cuda.is_bf16_supported()``)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


@dataclass(frozen=True)
class Precision:
    autocast_dtype: torch.dtype | None  # None: no autocast (the model's own dtype)
    cache_dtype: torch.dtype | None     # KV cache; None: the model's parameter dtype


def choose_precision(device_type: str, bf16: bool, bf16_ok: bool) -> Precision:
    """Autocast and KV-cache dtypes for sampling on ``device_type`` (pure logic; ``bf16_ok`` is
    ``bf16_supported(device_type)``): bf16 autocast, and a bf16 cache, only where asked for *and*
    supported. The attention arithmetic itself is chosen by the model per device (the built-in
    one computes one-query attention in fp32 on the CPU, see ``SelfAttention.decode``)."""
    if not (bf16 and bf16_ok) or device_type not in ("cpu", "cuda"):
        return Precision(None, None)
    return Precision(torch.bfloat16, torch.bfloat16)


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """``generator`` itself when it lives on ``device``; otherwise a generator on ``device`` seeded
    from one draw of ``generator`` (deterministic given the caller's seed)."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


def _autocast(device_type: str, dtype: torch.dtype | None):
    if dtype is not None:
        return torch.autocast(device_type, dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def sample(model, cond: torch.Tensor, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, gamma: float = 1.0, cfg_mode: str = "batched", use_cache: bool = True,
           generator: torch.Generator | None = None, autocast: bool = False,
           min_new_tokens: int = 0, compile: bool = False) -> SampleOutput:
    """Sample ``B = cond.shape[0]`` continuations of ``[BOS]`` (one per condition row) on
    ``cond.device``. EOS is forbidden before ``min_new_tokens`` tokens (as in Hugging Face
    generation). ``autocast``: bf16 where the device supports it (see ``choose_precision``).
    ``compile``: opt-in decode steps through ``torch.compile``d fixed-shape graphs, for generators
    with ``new_compiled_cache`` (the built-in transformer; ``divcfg.models.fast_decode``): the same
    distribution up to float rounding (not the same bits as the default path), compiled on first
    use of each shape (seconds), then faster where a step is bound by per-op overhead."""
    if compile and not use_cache:
        raise ValueError("compile=True needs use_cache=True")
    if compile and not hasattr(model, "new_compiled_cache"):
        raise ValueError(f"compile=True: {type(model).__name__} has no compiled decoding (new_compiled_cache); "
                         "it is available for the built-in transformer")
    if cfg_mode not in CFG_MODES:
        raise ValueError(f"cfg_mode must be one of {CFG_MODES}, got {cfg_mode!r}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    cfg = model.cfg
    max_new_tokens = min(max_new_tokens, cfg.max_len - 1)
    was_training = model.training
    model.eval()
    device = cond.device
    precision = choose_precision(device.type, autocast, autocast and bf16_supported(device.type))
    generator = device_generator(generator, device)
    B = cond.shape[0]
    guided = gamma != 1.0
    batched = guided and cfg_mode == "batched"
    passes = 2 if guided else 1
    tokens = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=device)
    out_tok = torch.full((B, max_new_tokens), cfg.pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros(B, max_new_tokens, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)

    new_cache = (lambda n: model.new_cache(n, precision.cache_dtype)) if use_cache else None
    if compile:
        new_cache = (lambda n: model.new_compiled_cache(n, precision.cache_dtype, precision.autocast_dtype,
                                                        positions=max_new_tokens + 1))  # BOS + the tokens fed
    if batched:
        cond_in = torch.cat([cond, cond])
        null_in = torch.arange(2 * B, device=device) >= B  # [cond rows; null rows]
        caches = [new_cache(2 * B)] if use_cache else None
    else:
        caches = [new_cache(B) for _ in range(passes)] if use_cache else None

    def next_logits(step_tokens: torch.Tensor, all_tokens: torch.Tensor):
        """(cond_logits, uncond_logits or None) for the next position."""
        if batched:
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

    filtered = bool(top_k) or top_p < 1.0
    inv_temp = 1.0 / temperature
    check_every = CHECK_EVERY.get(device.type, SYNC_EVERY)
    bias = bias_no_eos = None
    step_tokens = tokens
    with _autocast(device.type, precision.autocast_dtype):
        for t in range(max_new_tokens):
            lc, lu = next_logits(step_tokens, tokens)
            if bias is None:  # −∞ on tokens that are never valid: PAD, BOS (and EOS while t < min)
                bias = torch.zeros(lc.shape[-1], device=device)
                bias[[cfg.pad_id, cfg.bos_id]] = float("-inf")
                bias_no_eos = bias.clone()
                bias_no_eos[cfg.eos_id] = float("-inf")
            z = cfg_logits(lc, lu, gamma) if guided else lc.float()
            z = z + (bias_no_eos if t < min_new_tokens else bias)
            if inv_temp != 1.0:
                z = z * inv_temp
            logp = torch.log_softmax(z, dim=-1)
            if filtered:
                logp = filter_logprobs(logp, 1.0, top_k, top_p)
            nxt = torch.multinomial(logp.exp(), 1, generator=generator)
            lp = logp.gather(1, nxt).squeeze(1)
            nxt = nxt.squeeze(1).masked_fill_(done, cfg.pad_id)
            out_tok[:, t] = nxt
            out_lp[:, t] = lp.masked_fill_(done, 0.0)
            done |= nxt == cfg.eos_id
            step_tokens = nxt.unsqueeze(1)
            if not use_cache:
                tokens = torch.cat([tokens, step_tokens], dim=1)
            if (t + 1) % check_every == 0 and bool(done.all()):
                break
    model.train(was_training)
    # PAD is never sampled, so a row's length is its count of non-PAD tokens (EOS included); the
    # longest row is where the loop stopped (or would have, checking every step)
    lengths = (out_tok != cfg.pad_id).sum(1)
    width = int(lengths.max()) if B else 0
    return SampleOutput(out_tok[:, :width], lengths, out_lp[:, :width], done, passes)
