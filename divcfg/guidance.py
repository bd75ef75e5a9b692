"""Classifier-free guidance (CFG) as a mixture of log-probabilities.

For conditional logits ``ℓ_c`` (prompt x) and unconditional logits ``ℓ_u`` (null prompt ∅),

    log p_γ(· | x) = log_softmax( (1-γ)·log_softmax(ℓ_u) + γ·log_softmax(ℓ_c) )

γ = 1 gives the conditional distribution, γ = 0 the unconditional one, γ > 1 extrapolates
away from ∅ ("guidance"). Normalising ℓ_u and ℓ_c first makes the result independent of
each row's logit offset; the outer log_softmax renormalises (the mixture is a product of
powers, p_c^γ · p_u^(1-γ), which is not normalised by itself).

Two ways to get ``ℓ_c`` and ``ℓ_u`` from a generator (both give the same distribution):
- ``batched``: one forward over a 2B batch [cond rows; null rows] (fast, 2× activations);
- ``two_pass``: two forwards over B rows each (half the peak memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CFG_MODES = ("batched", "two_pass")


def cfg_logprobs(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, gamma: float) -> torch.Tensor:
    """Guided log-probabilities over the last dimension (float32)."""
    lc = F.log_softmax(cond_logits.float(), dim=-1)
    if gamma == 1.0:
        return lc
    lu = F.log_softmax(uncond_logits.float(), dim=-1)
    return F.log_softmax((1.0 - gamma) * lu + gamma * lc, dim=-1)


def cfg_logits(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, gamma: float) -> torch.Tensor:
    """Unnormalised guided logits ``(1-γ)·ℓ_u + γ·ℓ_c`` (float32), one fused kernel.

    ``log_softmax(cfg_logits(ℓ_c, ℓ_u, γ)) = cfg_logprobs(ℓ_c, ℓ_u, γ)``: the per-row normalisers
    that ``cfg_logprobs`` subtracts first only shift each row by a constant, which the outer
    log_softmax removes. The sampler uses this form (one log_softmax per step instead of three);
    logits must be finite (a −∞ logit times ``1-γ < 0`` would be +∞ in either form)."""
    return torch.lerp(uncond_logits.float(), cond_logits.float(), gamma)


def guided_sequence_logprobs(model, tokens: torch.Tensor, cond: torch.Tensor, gamma: float,
                             mode: str = "batched", temperature: float = 1.0) -> torch.Tensor:
    """Teacher-forced guided log-probs (B, T, V) of ``model`` over ``tokens`` (rows start with BOS), at
    temperature τ: ``log softmax(log p_γ / τ)``, which is ``log softmax(((1-γ)·ℓ_u + γ·ℓ_c) / τ)`` (the
    normaliser of ``p_γ`` only shifts each row, and the outer softmax removes it).

    Used as the CFG teacher in distillation (τ ≠ 1: a hotter or colder teacher). γ=1 needs only the
    conditional pass.
    """
    if mode not in CFG_MODES:
        raise ValueError(f"cfg mode must be one of {CFG_MODES}, got {mode!r}")
    B = tokens.shape[0]
    if gamma == 1.0:
        return F.log_softmax(model(tokens, cond).float() / temperature, dim=-1)
    if mode == "batched":
        null_mask = torch.arange(2 * B, device=tokens.device) >= B  # [cond rows; null rows]
        logits = model(torch.cat([tokens, tokens]), torch.cat([cond, cond]), null_mask)
        lc, lu = logits[:B], logits[B:]
    else:
        lc = model(tokens, cond)
        lu = model(tokens, None)
    lp = cfg_logprobs(lc, lu, gamma)
    return lp if temperature == 1.0 else F.log_softmax(lp / temperature, dim=-1)
