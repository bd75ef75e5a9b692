"""Training objectives of `divcfg finetune`: token-level divergences to the CFG teacher, the
pairwise diversity reward, baselines, and the REINFORCE surrogate.

Notation: ``s = π_θ(·|x, y<t)`` the student's and ``t = π_γ(·|x, y<t)`` the CFG teacher's
next-token distribution (full-vocabulary log-softmax rows of shape (B, T, V)); ``mask[b, t]`` is
True at generated positions (the sampled tokens ``y_1..y_L`` including EOS when produced).

**Divergences** (exact sums over the vocabulary, no sampling estimate)::

    reverse KL   KL(s‖t) = Σ_v s_v (log s_v − log t_v)            (the paper's; mode-seeking)
    forward KL   KL(t‖s) = Σ_v t_v (log t_v − log s_v)            (mass-covering)
    JSD(β_jsd)   β·KL(t‖m) + (1−β)·KL(s‖m),  m = β·t + (1−β)·s    (generalised JSD)

JSD follows TRL's ``GKDTrainer.generalized_jsd_loss`` conventions exactly: β_jsd = 0 is *defined*
as forward KL, β_jsd = 1 as reverse KL (the mixture formula itself tends to 0 at both ends).

**Normalisation.** Every divergence is reduced as the *mean over generated tokens of the whole
batch*: ``Σ_{b,t} mask·D_{b,t} / Σ_{b,t} mask`` (TRL's ``reduction="batchmean"`` with labels), so
the loss is in nats per generated token and does not grow with the generation length.

**Diversity reward.** G samples per prompt, embedded by the frozen diversity embedder E as unit
vectors ``e_i``; ``r(y_i, y_j) = 1 − cos(e_i, e_j)`` and ``r_i = mean_{j≠i} r(y_i, y_j)`` within
the prompt's group. Rows are ordered prompt-major: rows ``p·G .. p·G+G−1`` belong to prompt p.

**REINFORCE.** For the pairwise objective ``D(θ) = E_x E_{y,y'~π_θ} r(y, y')`` the U-statistic
over G samples gives the unbiased gradient estimate ``∇D ≈ (2/G) Σ_i r_i ∇log π_θ(y_i|x)``
(both members of each pair get the pair's reward; for G=2 this is (r−b)(∇log π(y1) + ∇log π(y2))).
A baseline ``b_i`` that does not depend on ``y_i`` keeps it unbiased and lowers the variance:

* ``batch``: the mean reward of the *other* prompts in the batch (never the prompt's own group:
  for G=2 and a symmetric reward the group mean equals r itself and every advantage is zero);
* ``ema``: an exponential moving average of past batches' mean reward (the current batch is
  folded in *after* its advantages are computed; the very first batch uses its own mean);
* ``loo`` (G≥3): the mean pairwise reward among the other G−1 samples of the same prompt (pairs
  not involving i). The naive "mean of the other r_k" would be biased: each r_k contains r(y_k, y_i).

The surrogate ``S = (2/N) Σ_i A_i · log π_θ(y_i|x)`` with ``log π_θ(y_i|x) = Σ_t log π_θ(y_{i,t}|·)``
(summed over generated tokens, EOS included) has ``∇S`` = the estimate of ``∇D``; its value is
meaningless, only its gradient. **Scale vs the KL:** the KL above is per token, while ``∇S`` is per
sequence, i.e. it grows with the generation length L. In ``loss = KL − β·S`` the diversity term is
therefore weighted about L times more than the same β against a per-sequence (summed) KL. The
fine-tuning loop can divide S by the batch's mean generated length (``pg_normalise="token"``), which
puts β on the same per-token footing as the KL; see ``divcfg.finetune``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")
BASELINES = ("batch", "ema", "loo")


# --------------------------------------------------------------------------- divergences

def _kl_rows(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``Σ_v p_v (log p_v − log q_v)`` over the last dim; terms with p_v = 0 count as 0."""
    p = logp.exp()
    diff = torch.where(p > 0, logp - logq, torch.zeros_like(logp))
    return (p * diff).sum(-1)


def token_divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: str = "reverse_kl",
                     jsd_beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence (B, T) between two log-prob tensors (B, T, V) (computed in float32).

    ``kind``: ``reverse_kl`` = KL(student‖teacher), ``forward_kl`` = KL(teacher‖student),
    ``jsd`` = generalised JSD with TRL's β convention (0 → forward KL, 1 → reverse KL).
    The teacher is a fixed target: no gradient flows into ``teacher_logp``.
    """
    s, t = student_logp.float(), teacher_logp.detach().float()
    if kind == "reverse_kl":
        return _kl_rows(s, t)
    if kind == "forward_kl":
        return _kl_rows(t, s)
    if kind != "jsd":
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {kind!r}")
    if not 0.0 <= jsd_beta <= 1.0:
        raise ValueError(f"jsd_beta must lie in [0, 1], got {jsd_beta}")
    if jsd_beta == 0.0:
        return _kl_rows(t, s)
    if jsd_beta == 1.0:
        return _kl_rows(s, t)
    log_m = torch.logsumexp(torch.stack([s + math.log(1.0 - jsd_beta), t + math.log(jsd_beta)]), dim=0)
    return jsd_beta * _kl_rows(t, log_m) + (1.0 - jsd_beta) * _kl_rows(s, log_m)


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Σ mask·values / Σ mask`` (0 when the mask is empty): the mean over generated tokens."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def distillation_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor,
                      kind: str = "reverse_kl", jsd_beta: float = 0.5) -> torch.Tensor:
    """Divergence to the teacher, averaged over the generated tokens of the batch (nats/token)."""
    return masked_token_mean(token_divergence(student_logp, teacher_logp, kind, jsd_beta), mask)


def token_entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy ``−Σ_v p_v log p_v`` per position (B, T)."""
    p = logp.float().exp()
    return -(p * torch.where(p > 0, logp.float(), torch.zeros_like(p))).sum(-1)


def sequence_logprobs(logp: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log π(y|x) = Σ_t mask·log π(y_t|x, y<t)`` per row (B,), from log-probs (B, T, V)
    where ``logp[:, t]`` is the distribution of ``tokens[:, t]``."""
    tok_lp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).float()
    return (tok_lp * mask.to(tok_lp.dtype)).sum(-1)


# --------------------------------------------------------------------------- diversity reward

def pairwise_cosine_distance(emb: torch.Tensor, group_size: int, valid: torch.Tensor | None = None,
                             empty_value: float = 0.0) -> torch.Tensor:
    """``1 − cos(e_i, e_j)`` within each group: (P, G, G) from embeddings (P·G, D).

    ``valid`` (P·G,) bool marks decodable, non-empty generations; a pair with an invalid member
    gets ``empty_value`` (0: no credit for degenerate output, the judges' convention in
    ``divcfg.music.judges.diversity``; otherwise an empty sample looks maximally different)."""
    if group_size < 2:
        raise ValueError(f"a diversity reward needs at least 2 samples per prompt, got {group_size}")
    if emb.shape[0] % group_size:
        raise ValueError(f"{emb.shape[0]} embeddings do not split into groups of {group_size}")
    e = F.normalize(emb.float(), dim=-1).view(-1, group_size, emb.shape[-1])
    d = (1.0 - e @ e.transpose(1, 2)).clamp(0.0, 2.0)
    if valid is not None:
        v = valid.view(-1, group_size)
        both = v.unsqueeze(-1) & v.unsqueeze(-2)
        d = torch.where(both, d, torch.full_like(d, empty_value))
    return d


def diversity_rewards(emb: torch.Tensor, group_size: int, valid: torch.Tensor | None = None,
                      empty_value: float = 0.0) -> torch.Tensor:
    """``r_i = mean_{j≠i} (1 − cos(e_i, e_j))`` within each prompt's group: (P, G)."""
    d = pairwise_cosine_distance(emb, group_size, valid, empty_value)
    G = group_size
    off = ~torch.eye(G, dtype=torch.bool, device=d.device)
    return (d * off).sum(-1) / (G - 1)


def leave_one_out_pair_baseline(emb: torch.Tensor, group_size: int, valid: torch.Tensor | None = None,
                                empty_value: float = 0.0) -> torch.Tensor:
    """Per sample i (P, G): the mean of ``1 − cos(e_j, e_k)`` over pairs j<k of the group that
    exclude i — a baseline independent of ``y_i``. Needs G≥3."""
    G = group_size
    if G < 3:
        raise ValueError("the leave-one-out baseline needs G>=3 samples per prompt; use 'batch' or 'ema' for G=2")
    d = pairwise_cosine_distance(emb, G, valid, empty_value)
    off = ~torch.eye(G, dtype=torch.bool, device=d.device)
    total = (d * off).sum((-1, -2)) / 2                       # Σ_{j<k} d_jk per group (P,)
    involving_i = (d * off).sum(-1)                           # Σ_{j≠i} d_ij (P, G)
    n_pairs = (G - 1) * (G - 2) / 2
    return (total.unsqueeze(-1) - involving_i) / n_pairs


class RewardBaseline:
    """Advantages ``A = r − b`` for rewards (P, G), with one of the baselines in the module doc.

    ``ema`` keeps its running value in ``self.value`` (save/restore it with ``state_dict``).
    """

    def __init__(self, kind: str = "batch", ema_decay: float = 0.9):
        if kind not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
        self.kind, self.ema_decay = kind, ema_decay
        self.value: float | None = None

    def advantages(self, rewards: torch.Tensor, emb: torch.Tensor | None = None,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
        """``rewards`` (P, G); ``emb``/``valid`` (P·G, ...) are needed by ``loo`` only."""
        P, G = rewards.shape
        if self.kind == "batch":
            if P < 2:
                raise ValueError("the 'batch' baseline needs at least 2 prompts per batch (it excludes the own prompt)")
            group_sum = rewards.sum(-1, keepdim=True)
            b = (rewards.sum() - group_sum) / ((P - 1) * G)
            return rewards - b.expand(P, G)
        if self.kind == "loo":
            if emb is None:
                raise ValueError("the 'loo' baseline needs the embeddings")
            return rewards - leave_one_out_pair_baseline(emb, G, valid)
        mean = float(rewards.mean())
        b = mean if self.value is None else self.value
        adv = rewards - b
        self.value = mean if self.value is None else self.ema_decay * self.value + (1 - self.ema_decay) * mean
        return adv

    def state_dict(self) -> dict:
        return {"kind": self.kind, "ema_decay": self.ema_decay, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state.get("value")


def reinforce_surrogate(seq_logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """``S = (2/N) Σ_i A_i · log π_θ(y_i|x)`` (advantages detached): ``∇S`` estimates ∇ of the
    expected pairwise reward (the 2 because each pair's reward credits both its members).
    ``seq_logp``: (N,) sums over generated tokens; ``advantages``: (N,) or (P, G) prompt-major."""
    a = advantages.detach().reshape(-1).to(seq_logp.dtype)
    return 2.0 * (a * seq_logp).mean()
