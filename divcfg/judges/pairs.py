"""Pairwise diversity under any diversity embedder (``embed_with_mask``): the within-prompt mean of
``1 − cos(e_i, e_j)`` over the G(G−1)/2 pairs of each prompt's G generations; a pair with an
invalid member (empty, undecodable) counts ``empty_value`` (0: degenerate output earns nothing)."""

from __future__ import annotations

from typing import Sequence

import torch


def group_mean_diversity(embedder, completions: Sequence, G: int, empty_value: float = 0.0) -> torch.Tensor:
    """(K,) mean pairwise diversity of each prompt's G consecutive completions (rows prompt-major)."""
    emb, valid = embedder.embed_with_mask(list(completions))
    emb, valid = emb.float().cpu(), valid.cpu()
    K = len(completions) // G
    e = emb.view(K, G, -1)
    v = valid.view(K, G)
    d = (1 - (e[:, :, None, :] * e[:, None, :, :]).sum(-1)).clamp(0.0, 2.0)   # 1 − cos, in [0, 2]
    same = (e[:, :, None, :] == e[:, None, :, :]).all(-1)
    d = torch.where(same, torch.zeros_like(d), d)          # exactly 0 for identical rows
    both = v[:, :, None] & v[:, None, :]
    d = torch.where(both, d, torch.full_like(d, empty_value))
    off = ~torch.eye(G, dtype=torch.bool)
    return (d * off).sum((1, 2)) / (G * (G - 1))
