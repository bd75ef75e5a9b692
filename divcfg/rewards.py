"""Reward and metric functions as plain TRL-style callables:

    f(prompts: list[str], generations: list[list[int]], **kw) -> list[float]

one float per generation. ``generations`` are token-id lists (BOS/EOS/PAD allowed).

Built in:
- ``diversity_reward``: generations that share a prompt string form a group (TRL repeats each
  prompt G times); each gets its leave-one-out diversity ``r_i = mean_{j≠i} (1 - cos(E(y_i), E(y_j)))``
  under the diversity embedder ``E``. A pair with an empty/undecodable member counts
  ``empty_value`` (0: degenerate output earns nothing); a prompt with one generation gets 0.
- ``alignment_reward``: the alignment scorer's ``cos(text(prompt), music(y))``; -1 for an empty,
  note-less or undecodable generation.
- ``validity_reward``: 1.0 if the sequence decodes to notes with bars consistent with the meter
  passed as ``meters=[...]`` (see ``metrics.token_validity``), else 0.0.

Judges are bound with ``make_diversity_reward(path_or_E)`` / ``make_alignment_reward(path_or_scorer)``
(which return ``f(prompts, generations, **kw)`` with ``__name__`` set, as TRL logs it). Custom
functions are registered by name with ``@register_reward("name")`` and looked up with
``get_reward(name)``; ``combine_rewards`` evaluates several and their weighted sum.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

from divcfg.errors import UserError

RewardFn = Callable[..., list[float]]
_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str, fn: RewardFn | None = None):
    """Register ``fn`` under ``name`` (usable as a decorator). Re-registering a name replaces it."""
    def deco(f: RewardFn) -> RewardFn:
        _REGISTRY[name] = f
        return f
    return deco(fn) if fn is not None else deco


def get_reward(name: str, **bound) -> RewardFn:
    """The registered function, with keyword arguments ``bound`` (e.g. ``embedder=E``) fixed."""
    if name not in _REGISTRY:
        raise UserError(f"unknown reward '{name}': choose one of {', '.join(sorted(_REGISTRY))} "
                        f"or register it with divcfg.rewards.register_reward")
    fn = _REGISTRY[name]
    if not bound:
        return fn
    out = functools.partial(fn, **bound)
    out.__name__ = name  # type: ignore[attr-defined]
    return out


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def prompt_groups(prompts: Sequence[str]) -> list[list[int]]:
    """Indices of the generations of each distinct prompt, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    return list(groups.values())


@register_reward("diversity")
def diversity_reward(prompts: Sequence[str], generations: Sequence[Sequence[int]], *, embedder,
                     empty_value: float = 0.0, **kw) -> list[float]:
    from divcfg.embedders.diversity import group_diversity
    if len(prompts) != len(generations):
        raise UserError(f"one prompt per generation needed: got {len(prompts)} and {len(generations)}")
    groups = prompt_groups(prompts)
    _, loo = group_diversity(embedder, [[generations[i] for i in g] for g in groups], empty_value)
    out = [0.0] * len(generations)
    for g, r in zip(groups, loo):
        for i, v in zip(g, r.tolist()):
            out[i] = float(v)
    return out


@register_reward("alignment")
def alignment_reward(prompts: Sequence[str], generations: Sequence[Sequence[int]], *, scorer, **kw) -> list[float]:
    return [float(x) for x in torch.as_tensor(scorer.score(list(prompts), list(generations))).tolist()]


@register_reward("validity")
def validity_reward(prompts: Sequence[str], generations: Sequence[Sequence[int]], *, tokenizer,
                    meters: Sequence[str | None] | None = None, **kw) -> list[float]:
    from divcfg.music.metrics import token_validity
    meters = list(meters) if meters is not None else [None] * len(generations)
    return [float(token_validity(tokenizer, g, m)["valid"]) for g, m in zip(generations, meters)]


def make_diversity_reward(embedder, empty_value: float = 0.0) -> RewardFn:
    """``diversity_reward`` bound to an embedder (a loaded one or a checkpoint path)."""
    if not hasattr(embedder, "embed"):
        from divcfg.embedders.diversity import load_diversity_embedder
        embedder = load_diversity_embedder(embedder)
    return get_reward("diversity", embedder=embedder, empty_value=empty_value)


def make_alignment_reward(scorer) -> RewardFn:
    """``alignment_reward`` bound to a scorer (a loaded one or a checkpoint path)."""
    if not hasattr(scorer, "score"):
        from divcfg.embedders.alignment import load_alignment_scorer
        scorer = load_alignment_scorer(scorer)
    return get_reward("alignment", scorer=scorer)


def combine_rewards(funcs: Sequence[RewardFn], prompts: Sequence[str], generations: Sequence[Sequence[int]],
                    weights: Sequence[float] | None = None, **kw) -> tuple[list[float], dict[str, list[float]]]:
    """Evaluate each function; return (weighted sum per generation, {name: values})."""
    weights = list(weights) if weights is not None else [1.0] * len(funcs)
    if len(weights) != len(funcs):
        raise UserError(f"{len(funcs)} reward functions but {len(weights)} weights")
    parts: dict[str, list[float]] = {}
    total = [0.0] * len(generations)
    for k, (f, w) in enumerate(zip(funcs, weights)):
        vals = [float(v) for v in f(prompts, generations, **kw)]
        if len(vals) != len(generations):
            raise UserError(f"reward {getattr(f, '__name__', k)} returned {len(vals)} values for "
                            f"{len(generations)} generations")
        name = getattr(f, "__name__", f"reward_{k}")
        parts[name if name not in parts else f"{name}_{k}"] = vals
        total = [t + w * v for t, v in zip(total, vals)]
    return total, parts
