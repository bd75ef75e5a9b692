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
    from divcfg.music.judges.alignment import AlignmentScorer, save_alignment_scorer
    from divcfg.music.judges.alignment_cli import make_config
    from divcfg.music.judges.diversity import DiversityEmbedder, EmbedderConfig, save_diversity_embedder
    from divcfg.music.dataset import load_split
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
    from divcfg.music.judges.diversity import load_diversity_embedder
    f = R.make_diversity_reward(setup["E"])
    ys = [p["tokens"] for p in setup["pieces"]]
    prompts = ["a", "b", "a", "b", "a", "c"]              # groups {0,2,4}, {1,3}, {5}
    r = f(prompts, ys)
    assert f.__name__ == "diversity" and len(r) == 6
    # the definition, from embeddings taken one generation at a time (no batching shared with the reward):
    # r_i = mean over the j != i of i's prompt of (1 - cos(e_i, e_j)); alone with its prompt: 0
    E = load_diversity_embedder(setup["E"])
    with torch.no_grad():
        e = [E.embed([y])[0] for y in ys]

    def loo(i):
        js = [j for j in range(6) if j != i and prompts[j] == prompts[i]]
        return sum(1 - float(e[i] @ e[j]) for j in js) / len(js) if js else 0.0

    expected = [loo(i) for i in range(6)]
    assert r == pytest.approx(expected, abs=1e-5)
    assert min(expected[:5]) > 1e-4 and expected[5] == 0.0  # real distances are compared, not zeros
    # an empty generation earns nothing and gives its partner nothing either
    assert f(["x", "x"], [[], ys[0]]) == [0.0, 0.0]
    # identical generations: zero diversity
    assert f(["x", "x"], [ys[0], ys[0]]) == [0.0, 0.0]


def test_alignment_reward_matches_the_scorer(setup):
    from divcfg.music.judges.alignment import load_alignment_scorer
    f = R.make_alignment_reward(setup["S"])
    ps = setup["pieces"][:3]
    # equal lengths: the scorer's music tower is not exactly padding-invariant (a padded batch adds a
    # partly padded conv window), so only unpadded rows can be compared with one-at-a-time scores
    prompts, gens = [p["captions"][0] for p in ps] + ["x"], [p["tokens"][:160] for p in ps] + [[]]
    with pytest.warns(UserWarning):
        r = f(prompts, gens)
    # the definition, one (prompt, generation) pair at a time: cos(text(prompt), music(generation))
    S = load_alignment_scorer(setup["S"]).eval()
    with torch.no_grad():
        expected = [float(torch.nn.functional.cosine_similarity(S.encode_text([t]), S.music_embed(S.pad_batch([g]))))
                    for t, g in zip(prompts[:3], gens[:3])]
    assert r[:3] == pytest.approx(expected, abs=1e-5) and r[3] == -1.0
    assert len({round(x, 4) for x in expected}) == 3  # three different scores: the order is checked too


def test_validity_reward(setup):
    from divcfg.domains.music import validity_reward
    p = setup["pieces"][0]
    r = validity_reward(["x", "x", "x"], [p["tokens"], [], p["tokens"]], tokenizer=setup["tok"],
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
    import divcfg.domains.music  # noqa: F401  (the music plug-in registers "validity")
    bound = R.get_reward("validity", tokenizer=setup["tok"])
    assert bound.__name__ == "validity" and bound(["a"], [[]]) == [0.0]
    with pytest.raises(UserError, match="unknown reward"):
        R.get_reward("nope")
    with pytest.raises(UserError):
        R.combine_rewards([lambda p, g, **kw: [1.0]], ["a", "b"], gens)


def test_a_plug_in_reward_is_found_by_name_without_importing_its_domain_first():
    import subprocess
    import sys
    code = ("import sys; from divcfg.rewards import get_reward; assert 'divcfg.domains.music' not in sys.modules; "
            "f = get_reward('validity'); print(f.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "divcfg.domains.music"
