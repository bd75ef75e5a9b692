"""Judges: the frozen models that score generations, as plug-ins.

Two roles, two protocols. ``completions`` are what the generator plug-in's ``decode`` returns
(token-id lists for the built-in music model, strings for a text LM).

- :class:`DiversityEmbedder`: ``embed_with_mask(completions) -> (emb [N, D] unit rows, valid [N] bool)``.
  The pairwise diversity of two generations of one prompt is ``1 − cos(e_i, e_j)``; a pair with an
  invalid member (empty, undecodable) counts 0.
- :class:`QualityScorer`: ``score(prompts, completions) -> FloatTensor [N]`` (higher is better).

A user's own judge is a Python callable named ``module:function`` (the module must be importable:
installed, or on ``PYTHONPATH``/the working directory):

- ``--diversity-judge module:function``: the **embedder form** ``f(completions: list) -> embeddings``
  (a tensor, array or list of N vectors); rows are L2-normalised here; an all-zero row or an empty
  completion is invalid.
- ``--quality-judge module:function``: TRL's **reward signature**
  ``f(prompts: list[str], completions: list, **kwargs) -> list[float]`` (one float per completion);
  divcfg passes ``prompts`` repeated once per completion, like TRL.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from divcfg.errors import UserError


@runtime_checkable
class DiversityEmbedder(Protocol):
    def embed_with_mask(self, completions: Sequence) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class QualityScorer(Protocol):
    def score(self, prompts: Sequence[str], completions: Sequence) -> torch.Tensor: ...


def load_callable(spec: str, flag: str) -> Callable:
    """``"package.module:function"`` -> the function (one-line errors naming ``flag``)."""
    if ":" not in spec:
        raise UserError(f"{flag} {spec!r} is not module:function, e.g. {flag} my_judges:score")
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))   # a judge file in the working directory, as python -m does
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{flag} {spec!r}: cannot import module '{module_name}' ({e}): "
                        f"put it on PYTHONPATH or in the working directory") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise UserError(f"{flag} {spec!r}: module '{module_name}' has no '{attr}'")
    if not callable(fn):
        raise UserError(f"{flag} {spec!r} is not callable")
    return fn


class CallableEmbedder:
    """A diversity judge from ``f(completions) -> embeddings`` (the embedder form)."""

    def __init__(self, fn: Callable, name: str = "user"):
        self.fn, self.name = fn, name

    @torch.no_grad()
    def embed_with_mask(self, completions: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        completions = list(completions)
        if not completions:
            return torch.zeros(0, 1), torch.zeros(0, dtype=torch.bool)
        raw = self.fn(completions)
        if isinstance(raw, (list, tuple)) and raw and torch.is_tensor(raw[0]):
            raw = torch.stack([torch.as_tensor(r).detach().float().cpu() for r in raw])
        emb = torch.as_tensor(raw).detach().float().cpu()
        if emb.dim() != 2 or emb.shape[0] != len(completions):
            raise UserError(f"diversity judge {self.name} returned shape {tuple(emb.shape)} for "
                            f"{len(completions)} completions: return one vector per completion (N, D)")
        nonempty = torch.tensor([len(c) > 0 for c in completions])
        valid = (emb.norm(dim=1) > 0) & torch.isfinite(emb).all(1) & nonempty
        emb = torch.where(torch.isfinite(emb), emb, torch.zeros_like(emb))
        return F.normalize(emb, dim=1), valid


class RewardScorer:
    """A quality judge from a TRL-style reward ``f(prompts, completions, **kw) -> list[float]``."""

    def __init__(self, fn: Callable, name: str = "user", **kwargs):
        self.fn, self.name, self.kwargs = fn, name, kwargs

    def score(self, prompts: Sequence[str], completions: Sequence) -> torch.Tensor:
        values = self.fn(list(prompts), list(completions), **self.kwargs)
        out = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
        if out.shape[0] != len(completions):
            raise UserError(f"quality judge {self.name} returned {out.shape[0]} values for {len(completions)} "
                            f"completions: return one float per completion")
        return out


def user_diversity_judge(spec: str) -> CallableEmbedder:
    return CallableEmbedder(load_callable(spec, "--diversity-judge"), spec)


def user_quality_judge(spec: str) -> RewardScorer:
    return RewardScorer(load_callable(spec, "--quality-judge"), spec)
