"""TRL-style reward callables: diversity (leave-one-out within prompt groups), alignment, validity,
and plugging in custom functions. The judges here are untrained tiny models: the tests check the
plumbing against the judges' own API, not the judges' quality."""

from __future__ import annotations

import pytest
import torch

from divcfg import rewards as R
from divcfg.errors import UserError


@pytest.fixture(scope="module")
def setup(tiny_data_dir, tmp_path_factory):
    from divcfg.embedders.alignment import AlignmentScorer, save_alignment_scorer
    from divcfg.embedders.alignment_cli import make_config
    from divcfg.embedders.diversity import DiversityEmbedder, EmbedderConfig, save_diversity_embedder
    from divcfg.music.corpus import load_split
    from divcfg.music.tokenizer import load_tokenizer
    tok = load_tokenizer(tiny_data_dir)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("judges")
    e_path = save_diversity_embedder(root / "E", DiversityEmbedder(EmbedderConfig(vit="tiny", chunk_steps=32), tok),
                                     tokenizer_path=tiny_data_dir / "tokenizer.json")
    s_path = save_alignment_scorer(root / "S", AlignmentScorer(make_config(tok, "tiny"), tok),
                                   tokenizer_path=tiny_data_dir / "tokenizer.json")
    pieces = load_split(tiny_data_dir, "train")[:6]
    return {"tok": tok, "E": e_path, "S": s_path, "pieces": pieces}


def test_diversity_reward_is_leave_one_out_within_each_prompt(setup):
    from divcfg.embedders.diversity import group_diversity, load_diversity_embedder
    f = R.make_diversity_reward(setup["E"])
    ys = [p["tokens"] for p in setup["pieces"]]
    prompts = ["a", "b", "a", "b", "a", "c"]              # groups {0,2,4}, {1,3}, {5}
    r = f(prompts, ys)
    assert f.__name__ == "diversity" and len(r) == 6
    E = load_diversity_embedder(setup["E"])
    _, loo = group_diversity(E, [[ys[0], ys[2], ys[4]], [ys[1], ys[3]], [ys[5]]])
    assert [r[0], r[2], r[4]] == pytest.approx(loo[0].tolist(), abs=1e-6)
    assert [r[1], r[3]] == pytest.approx(loo[1].tolist(), abs=1e-6)
    assert r[5] == 0.0                                    # alone with its prompt: nothing to compare
    # an empty generation earns nothing and gives its partner nothing either
    assert f(["x", "x"], [[], ys[0]]) == [0.0, 0.0]
    # identical generations: zero diversity
    assert f(["x", "x"], [ys[0], ys[0]]) == [0.0, 0.0]


def test_alignment_reward_matches_the_scorer(setup):
    from divcfg.embedders.alignment import load_alignment_scorer
    f = R.make_alignment_reward(setup["S"])
    ps = setup["pieces"][:3]
    prompts, gens = [p["captions"][0] for p in ps] + ["x"], [p["tokens"] for p in ps] + [[]]
    with pytest.warns(UserWarning):
        r = f(prompts, gens)
    expected = load_alignment_scorer(setup["S"]).score(prompts[:3], gens[:3]).tolist()
    assert r[:3] == pytest.approx(expected, abs=1e-6) and r[3] == -1.0


def test_validity_reward(setup):
    p = setup["pieces"][0]
    r = R.validity_reward(["x", "x", "x"], [p["tokens"], [], p["tokens"]], tokenizer=setup["tok"],
                          meters=[p["meta"]["meter"], None, "12/8" if p["meta"]["meter"] != "12/8" else "2/4"])
    assert r == [1.0, 0.0, 0.0]


def test_custom_rewards_plug_in(setup):
    @R.register_reward("length_test")
    def length_reward(prompts, generations, **kw):
        return [float(len(g)) for g in generations]

    assert "length_test" in R.available_rewards()
    gens = [[1, 2, 3], [4]]
    total, parts = R.combine_rewards([R.get_reward("length_test"), lambda p, g, **kw: [1.0] * len(g)],
                                     ["a", "b"], gens, weights=[2.0, -1.0])
    assert total == [5.0, 1.0] and parts["length_reward"] == [3.0, 1.0]
    bound = R.get_reward("validity", tokenizer=setup["tok"])
    assert bound.__name__ == "validity" and bound(["a"], [[]]) == [0.0]
    with pytest.raises(UserError, match="unknown reward"):
        R.get_reward("nope")
    with pytest.raises(UserError):
        R.combine_rewards([lambda p, g, **kw: [1.0]], ["a", "b"], gens)
