"""The alignment scorer (tiny config) trained on caption–piece pairs of the tiny data set; held-out
pieces are left out of the training split by the fixture."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from divcfg.music.judges.alignment import load_alignment_scorer, save_alignment_scorer
from divcfg.music.judges.alignment_cli import clip_loss, evaluate, make_config, train_scorer
from divcfg.errors import UserError

N_HELD_OUT = 50


@pytest.fixture(scope="module")
def split(tiny_data_dir):
    from divcfg.music.dataset import load_split
    pieces = load_split(tiny_data_dir, "train")
    order = np.random.default_rng(1).permutation(len(pieces))
    return {"held": [pieces[i] for i in order[:N_HELD_OUT]], "train": [pieces[i] for i in order[N_HELD_OUT:]]}


@pytest.fixture(scope="module")
def trained(split, tiny_data_dir, tmp_path_factory):
    from divcfg.music.tokenizer import load_tokenizer
    tok = load_tokenizer(tiny_data_dir)
    torch.manual_seed(0)
    scorer, hist = train_scorer(split["train"], tok, make_config(tok, "tiny"), steps=120, minutes=10.0,
                                batch_size=64, lr=2e-3, progress=False)
    path = save_alignment_scorer(tmp_path_factory.mktemp("scorer") / "scorer", scorer,
                                 tokenizer_path=tiny_data_dir / "tokenizer.json")
    return {"scorer": load_alignment_scorer(path), "hist": hist, "path": path}


def test_own_caption_beats_a_mismatched_one_on_held_out_pieces(trained, split):
    res = evaluate(trained["scorer"], split["held"], n_pieces=N_HELD_OUT)
    assert res["auc"] > 0.75, res
    assert res["own_above_other"] > 0.75
    assert res["recall@10"] > 3 * res["chance_recall@10"]
    assert res["mean_matched"] > res["mean_mismatched"]


def test_scores_are_cosines_and_loss_fell(trained, split):
    s = trained["scorer"]
    held = split["held"][:5]
    q = s.score([p["captions"][0] for p in held], [p["tokens"] for p in held])
    assert q.shape == (5,) and ((q >= -1) & (q <= 1)).all()
    loss = trained["hist"]["loss"]
    assert np.mean(loss[-10:]) < np.mean(loss[:10])


def test_degenerate_generations_get_the_minimum_score_and_are_counted(trained, split):
    s = trained["scorer"]
    piece = split["held"][0]
    from divcfg.music.tokenizer import special_ids
    sp = special_ids(s.tokenizer)
    bar = s.tokenizer["Bar_None"]
    gens = [[], [sp["bos"], sp["eos"]], [bar, bar, bar], [10_000, -1], piece["tokens"]]
    before = s.stats["empty_or_undecodable"]
    with pytest.warns(UserWarning, match="4 of 5"):
        q = s.score([piece["captions"][0]] * 5, gens)
    assert q[:4].tolist() == [-1.0] * 4 and q[4] > -1
    assert s.stats["empty_or_undecodable"] == before + 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.score([piece["captions"][0]], [piece["tokens"]])        # no warning for usable music
    with pytest.raises(UserError):
        s.score(["a"], [])


def test_checkpoint_round_trip(trained, split, tmp_path):
    again = load_alignment_scorer(trained["path"])
    held = split["held"][:3]
    args = ([p["captions"][0] for p in held], [p["tokens"] for p in held])
    assert torch.allclose(again.score(*args), trained["scorer"].score(*args))
    with pytest.raises(UserError):
        load_alignment_scorer(tmp_path / "missing")


def test_clip_loss_treats_identical_captions_as_positives():
    torch.manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    m, swapped = t.clone(), t[[1, 0, 2, 3]].clone()
    scale = torch.tensor(float(np.log(10.0)))
    same, distinct = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 3, 1, 2])
    # pieces 0 and 1 share a caption: which of them matches which text does not matter
    assert clip_loss(t, swapped, scale, same).item() == pytest.approx(clip_loss(t, m, scale, same).item(), abs=1e-6)
    # with different captions, swapping them is penalised
    assert clip_loss(t, swapped, scale, distinct) > clip_loss(t, m, scale, distinct) + 0.1
