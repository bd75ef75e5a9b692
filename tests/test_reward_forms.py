"""The fine-tuning step's reward forms (``divcfg.rewards.step_rewards``) with real judge wrappers:
additive ``d + w·q``, multiplicative ``d·clip(q,0,1) + w·q`` and length ``d·min(1, L/L_ref) + w·q``."""

from __future__ import annotations

import pytest
import torch

from divcfg.judges.base import CallableEmbedder, RewardScorer
from divcfg.objectives import diversity_rewards
from divcfg.rewards import step_rewards

COMPLETIONS = ["a a b", "c d", "a b b b", "d", "c c", "a d d"]     # P=3 prompts × G=2, prompt-major
PROMPTS = [p for p in ("x", "y", "z") for _ in range(2)]
LENGTHS = torch.tensor([3, 2, 4, 1, 2, 3])


def embed(completions):
    return torch.stack([torch.tensor([float(c.count(ch)) for ch in "abcd"]) + 0.1 for c in completions])


def quality(prompts, completions, **kw):
    return [len(c.split()) / 4 - 0.25 for c in completions]      # in [0, 0.75], one below 0 would be clipped


def every_paid(embedded):
    return embedded


@pytest.fixture
def d():
    emb, ok = CallableEmbedder(embed).embed_with_mask(COMPLETIONS)
    return diversity_rewards(emb, 2, ok)


def test_additive_is_diversity_plus_weighted_quality(d):
    sr = step_rewards(CallableEmbedder(embed), COMPLETIONS, 2, every_paid, RewardScorer(quality), PROMPTS, 0.5)
    q = torch.tensor(quality(PROMPTS, COMPLETIONS)).view(3, 2)
    assert torch.allclose(sr.rewards, d + 0.5 * q) and (d > 0).any()


def test_multiplicative_pays_diversity_in_proportion_to_quality(d):
    sr = step_rewards(CallableEmbedder(embed), COMPLETIONS, 2, every_paid, RewardScorer(quality), PROMPTS,
                      0.0, "multiplicative")
    q = torch.tensor(quality(PROMPTS, COMPLETIONS)).view(3, 2).clamp(0, 1)
    assert torch.allclose(sr.rewards, d * q)


def test_length_form_pays_short_generations_less_and_needs_a_reference(d):
    sr = step_rewards(CallableEmbedder(embed), COMPLETIONS, 2, every_paid, form="length", lengths=LENGTHS,
                      length_ref=2.5)
    factor = (LENGTHS.float() / 2.5).clamp(max=1).view(3, 2)
    assert torch.allclose(sr.rewards, d * factor)
    longer = LENGTHS.view(3, 2) >= 2.5
    assert torch.equal(sr.rewards[longer], d[longer])               # at or above L_ref: the plain reward
    assert (sr.rewards[~longer] < d[~longer]).all()                 # below it: in proportion to L / L_ref
    with pytest.raises(ValueError):
        step_rewards(CallableEmbedder(embed), COMPLETIONS, 2, every_paid, form="length", lengths=LENGTHS)
