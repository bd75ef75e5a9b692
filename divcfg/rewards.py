"""Rewards: the fine-tuning step's reward (``step_rewards``, what ``divcfg finetune`` uses) and the
same judges as plain TRL-style callables

    f(prompts: list[str], completions: list, **kw) -> list[float]

one float per completion (``completions``: token-id lists for the music testbed, strings for text).

**The step reward.** P prompts × G completions, rows prompt-major. With the diversity judge's unit
embeddings ``e_i`` (``divcfg.judges.base.DiversityEmbedder``) and the domain's gate ``paid_i`` (which
completions may earn reward: at least those the judge could embed),

    d_i = mean_{j≠i, same prompt} (1 − cos(e_i, e_j))      (0 for a pair with an unpaid member)
    additive (default):    r_i = d_i + w·q_i               (q: the quality judge, w = --quality-weight)
    multiplicative:        r_i = d_i · clip(q_i, 0, 1) + w·q_i
    length:                r_i = d_i · min(1, L_i / L_ref) + w·q_i

``w = 0`` with the additive form (the default) is the paper's diversity-only reward. The
multiplicative form is DARLING's (Li et al., 2025) idea for our judges: diversity pays only in
proportion to how well the generation matches its prompt (the music scorer's cosine, clipped at 0,
so an off-prompt or undecodable generation earns no diversity at all), which removes the cheap way
of buying diversity by leaving the prompt behind. The length form closes the other cheap way,
shortening: ``L_i`` is the generation's length in tokens and ``L_ref`` the mean length of the first
step's samples (the starting policy's, kept with the checkpoint), so a generation shorter than the
start's mean earns its diversity only in proportion. ``advantages`` subtracts the baseline
of ``divcfg.objectives.RewardBaseline``; for ``loo`` the quality part gets its own leave-one-out
baseline ``w·mean_{j≠i} q_j`` (independent of y_i, so the estimate stays unbiased).

Built-in callables:
- ``diversity_reward``: completions sharing a prompt string form a group (TRL repeats each prompt G
  times); each gets its leave-one-out diversity ``r_i`` above (``empty_value`` for pairs with an
  invalid member; a prompt with one completion gets 0). Works with any diversity judge.
- ``alignment_reward`` (alias ``quality_reward``): the quality judge's score (the music alignment
  scorer gives −1 for an empty, note-less or undecodable generation).
- ``validity`` (registered by the music domain, ``divcfg.domains.music.validity_reward``, once it is
  imported): 1.0 if the sequence decodes to notes with bars consistent with the meter passed as
  ``meters=[...]``, else 0.0.

Judges are bound with ``make_diversity_reward(path_or_judge)`` / ``make_alignment_reward(path_or_judge)``
(``__name__`` set, as TRL logs it; a path is loaded by the domain's ``judges``, the music testbed's by
default). Custom functions are registered by name with
``@register_reward("name")`` and looked up with ``get_reward(name)``; ``combine_rewards`` evaluates
several and their weighted sum.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from divcfg.errors import UserError
from divcfg.objectives import RewardBaseline, diversity_rewards

RewardFn = Callable[..., list[float]]
_REGISTRY: dict[str, RewardFn] = {}


# --------------------------------------------------------------------------- the fine-tuning step

@dataclass
class StepRewards:
    rewards: torch.Tensor            # (P, G) r_i
    diversity: torch.Tensor          # (P, G) d_i
    emb: torch.Tensor                # (P·G, D) unit embeddings
    embedded: torch.Tensor           # (P·G,) the judge could embed it
    paid: torch.Tensor               # (P·G,) may earn reward (the domain's gate)
    quality: torch.Tensor | None     # (P·G,) q_i when w > 0 or the form is multiplicative

    def stats(self, adv: torch.Tensor) -> dict[str, float]:
        out = {"reward/diversity/mean": float(self.diversity.mean()), "reward/diversity/std": float(self.diversity.std()),
               "reward/empty_rate": float((~self.embedded).float().mean()),
               "reward/unpaid_rate": float((~self.paid).float().mean()),
               "advantage/abs_mean": float(adv.abs().mean()), "reward/mean": float(self.rewards.mean())}
        if self.quality is not None:
            out["reward/quality/mean"] = float(self.quality.mean())
        return out


REWARD_FORMS = ("additive", "multiplicative", "length")


def step_rewards(diversity_judge, completions: list, G: int, gate: Callable[[torch.Tensor], torch.Tensor],
                 quality_judge=None, prompts: Sequence[str] | None = None, quality_weight: float = 0.0,
                 form: str = "additive", lengths: torch.Tensor | None = None,
                 length_ref: float | None = None) -> StepRewards:
    """The rewards of one step's P·G completions (``gate(embedded) -> paid``); the length form needs
    ``lengths`` (P·G,) and ``length_ref`` > 0."""
    if form not in REWARD_FORMS:
        raise UserError(f"--reward-form must be one of {', '.join(REWARD_FORMS)}, got {form!r}")
    emb, embedded = diversity_judge.embed_with_mask(completions)
    emb, embedded = emb.float().cpu(), embedded.cpu()
    paid = gate(embedded).cpu()
    d = diversity_rewards(emb, G, paid)
    r, q = d, None
    if form == "length":
        if lengths is None or not length_ref or length_ref <= 0:
            raise ValueError("the length reward form needs the completions' lengths and a reference length > 0")
        r = d * (lengths.float().cpu() / length_ref).clamp(max=1.0).view_as(d)
    if quality_weight > 0 or form == "multiplicative":
        if quality_judge is None or prompts is None:
            raise UserError(f"{'--reward-form multiplicative' if form == 'multiplicative' else '--quality-weight > 0'}"
                            f" needs a quality judge: pass --scorer CKPT (music) or --quality-judge module:function")
        q = torch.as_tensor(quality_judge.score(list(prompts), completions)).float().cpu()
        if form == "multiplicative":
            r = d * q.view_as(d).clamp(0.0, 1.0)
        r = r + quality_weight * q.view_as(d)
    return StepRewards(r, d, emb, embedded, paid, q)


def advantages(baseline: RewardBaseline, sr: StepRewards, quality_weight: float = 0.0) -> torch.Tensor:
    """``r_i − b_i`` (P, G) with the configured baseline."""
    adv = baseline.advantages(sr.rewards, sr.emb, sr.paid)
    if baseline.kind == "loo" and sr.quality is not None:
        q = sr.quality.view_as(sr.rewards)
        G = q.shape[1]
        adv = adv - quality_weight * (q.sum(1, keepdim=True) - q) / (G - 1)
    return adv


# --------------------------------------------------------------------------- TRL-style callables

def register_reward(name: str, fn: RewardFn | None = None):
    """Register ``fn`` under ``name`` (usable as a decorator). Re-registering a name replaces it."""
    def deco(f: RewardFn) -> RewardFn:
        _REGISTRY[name] = f
        return f
    return deco(fn) if fn is not None else deco


def get_reward(name: str, **bound) -> RewardFn:
    """The registered function, with keyword arguments ``bound`` (e.g. ``embedder=E``) fixed."""
    if name not in _REGISTRY:   # a plug-in's reward (music's "validity") registers when its domain is imported
        from divcfg.domains.base import import_builtin_domains
        import_builtin_domains()
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
    """Indices of the completions of each distinct prompt, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    return list(groups.values())


def _pair_distances(e: torch.Tensor) -> torch.Tensor:
    """``1 − cos`` of unit rows, clamped to [0, 2], exactly 0 for identical rows."""
    d = (1 - (e[:, None, :] * e[None, :, :]).sum(-1)).clamp(0.0, 2.0)
    return torch.where((e[:, None, :] == e[None, :, :]).all(-1), torch.zeros_like(d), d)


@register_reward("diversity")
def diversity_reward(prompts: Sequence[str], generations: Sequence, *, embedder,
                     empty_value: float = 0.0, **kw) -> list[float]:
    if len(prompts) != len(generations):
        raise UserError(f"one prompt per generation needed: got {len(prompts)} and {len(generations)}")
    emb, valid = embedder.embed_with_mask(list(generations))
    out = [0.0] * len(generations)
    for g in prompt_groups(prompts):
        if len(g) < 2:
            continue
        d = _pair_distances(emb[g])
        v = valid[g]
        d = torch.where(v[:, None] & v[None, :], d, torch.full_like(d, empty_value))
        d.fill_diagonal_(0.0)
        for i, x in zip(g, (d.sum(1) / (len(g) - 1)).tolist()):
            out[i] = float(x)
    return out


@register_reward("alignment")
def alignment_reward(prompts: Sequence[str], generations: Sequence, *, scorer, **kw) -> list[float]:
    return [float(x) for x in torch.as_tensor(scorer.score(list(prompts), list(generations))).tolist()]


register_reward("quality", alignment_reward)
quality_reward = alignment_reward


def _checkpoint_judge(domain: str, role: str, path) -> object:
    """The ``role`` judge ("diversity", "quality") of a checkpoint ``path``, loaded by ``domain``'s judges."""
    from divcfg.domains.base import domain_named
    if not path:
        raise UserError(f"no {role} judge given: pass a loaded judge or a checkpoint path")
    kw = {"embedder": path} if role == "diversity" else {"scorer": path}
    return getattr(domain_named(domain).judges(**kw, need=(role,)), role)


def make_diversity_reward(embedder, empty_value: float = 0.0, domain: str = "music") -> RewardFn:
    """``diversity_reward`` bound to a judge (a loaded one, or an embedder checkpoint path of ``domain``)."""
    if not hasattr(embedder, "embed_with_mask"):
        embedder = _checkpoint_judge(domain, "diversity", embedder)
    return get_reward("diversity", embedder=embedder, empty_value=empty_value)


def make_alignment_reward(scorer, domain: str = "music") -> RewardFn:
    """``alignment_reward`` bound to a judge (a loaded one, or a scorer checkpoint path of ``domain``)."""
    if not hasattr(scorer, "score"):
        scorer = _checkpoint_judge(domain, "quality", scorer)
    return get_reward("alignment", scorer=scorer)


def combine_rewards(funcs: Sequence[RewardFn], prompts: Sequence[str], generations: Sequence,
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
