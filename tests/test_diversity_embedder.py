"""The diversity embedder E, trained (tiny config) on real tunes of the tiny data set.

Held-out pieces are pieces of the training split that the fixture leaves out of training (the tiny
preset's test split is too small for retrieval)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from divcfg.music.judges.diversity import (DiversityEmbedder, EmbedderConfig, diversity, group_diversity,
                                        load_diversity_embedder, save_diversity_embedder)
from divcfg.music.judges.diversity_cli import (PairSampler, half_retrieval, info_nce, load_piece_notes, retrieval,
                                            train_embedder)
from divcfg.errors import UserError
from divcfg.music import pianoroll as pr

N_HELD_OUT = 50


@pytest.fixture(scope="module")
def pieces(tiny_data_dir):
    notes, meta = load_piece_notes(tiny_data_dir, "train", progress=False)
    order = np.random.default_rng(0).permutation(len(notes))
    held, train = order[:N_HELD_OUT], order[N_HELD_OUT:]
    return {"train": [notes[i] for i in train], "train_bars": [meta[i]["bar_beats"] for i in train],
            "held": [notes[i] for i in held], "held_tokens": [meta[i]["tokens"] for i in held]}


@pytest.fixture(scope="module")
def trained(pieces, tiny_data_dir, tmp_path_factory):
    torch.manual_seed(0)
    cfg = EmbedderConfig(vit="tiny", chunk_steps=32, pitch_low=36, n_pitches=60, out_dim=64)
    E, hist = train_embedder(pieces["train"], cfg, augment=pr.Augment(), steps=300, minutes=30.0, batch_size=64,
                             lr=2e-3, progress=False, bar_beats=pieces["train_bars"])
    path = save_diversity_embedder(tmp_path_factory.mktemp("E") / "embedder", E,
                                   tokenizer_path=tiny_data_dir / "tokenizer.json")
    return {"E": load_diversity_embedder(path), "hist": hist, "path": path}


def test_training_lowers_the_contrastive_loss(trained):
    loss = trained["hist"]["loss"]
    assert np.mean(loss[-10:]) < np.mean(loss[:10]) - 0.5


def test_held_out_retrieval_far_above_chance_and_above_the_untrained_network(trained, pieces):
    """Measured over seeds 0-2 (tiny data, 300 steps): chunk top-1 0.11-0.21 and half-piece top-1
    0.14-0.19 (chance 0.013); the same network at initialisation gets 0.03-0.10 / 0.06-0.11 (key
    canonicalisation alone already separates some tunes). Both margins below are ~2x those spreads."""
    res = retrieval(trained["E"], pieces["held"], n_pieces=40)
    assert res["chance"] == pytest.approx(1 / 79)
    assert res["top1"] >= 6 * res["chance"], res
    halves = half_retrieval(trained["E"], pieces["held"], n_pieces=40)
    assert halves["top1"] >= 6 * halves["chance"], halves
    torch.manual_seed(0)
    untrained = DiversityEmbedder(trained["E"].cfg).eval()
    before = retrieval(untrained, pieces["held"], n_pieces=40)["top1"] + \
        half_retrieval(untrained, pieces["held"], n_pieces=40)["top1"]
    assert res["top1"] + halves["top1"] > before + 0.05, (res, halves, before)


def test_embeddings_are_unit_norm_and_diversity_of_a_piece_with_itself_is_zero(trained, pieces):
    E, ys = trained["E"], pieces["held_tokens"][:8]
    emb = E.embed(ys)
    assert emb.shape == (8, 64)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert torch.equal(diversity(E, ys, ys), torch.zeros(8))
    d = diversity(E, ys, ys[1:] + ys[:1])
    assert ((d > 0) & (d <= 2)).all()
    # BOS/EOS/PAD around the ids do not change the embedding
    from divcfg.music.tokenizer import special_ids
    sp = special_ids(E.tokenizer)
    wrapped = [[sp["bos"]] + list(y) + [sp["eos"], sp["pad"], sp["pad"]] for y in ys]
    assert torch.allclose(E.embed(wrapped), emb, atol=1e-6)


def test_transposition_moves_the_embedding_less_than_another_piece(trained, pieces):
    E, held = trained["E"], [n for n in pieces["held"] if len(n) >= 16][:30]
    e0 = E.embed_notes(held)
    other = (1 - (e0 * e0.roll(1, 0)).sum(-1)).mean()
    for k in (-5, 2, 7):
        moved = (1 - (e0 * E.embed_notes([pr.transpose(n, k) for n in held])).sum(-1)).mean()
        assert moved < 0.25 * other
    # note noise (drops, insertions, jitter) also moves it less than swapping the piece
    rng = np.random.default_rng(0)
    noisy = (1 - (e0 * E.embed_notes([pr.note_noise(n, rng) for n in held])).sum(-1)).mean()
    assert noisy < other


def test_group_diversity_leave_one_out(trained, pieces):
    E, ys = trained["E"], pieces["held_tokens"][:6]
    means, loo = group_diversity(E, [ys[:3], ys[3:5], ys[5:]])
    emb = E.embed(ys[:3])
    d = 1 - emb @ emb.T
    assert loo[0].tolist() == pytest.approx([float(d[0, 1] + d[0, 2]) / 2, float(d[1, 0] + d[1, 2]) / 2,
                                             float(d[2, 0] + d[2, 1]) / 2], abs=1e-5)
    assert means[0].item() == pytest.approx(float((d[0, 1] + d[0, 2] + d[1, 2]) / 3), abs=1e-5)
    assert means[1].item() == pytest.approx(diversity(E, [ys[3]], [ys[4]]).item(), abs=1e-5)
    assert torch.isnan(means[2]) and loo[2].tolist() == [0.0]


def test_empty_and_undecodable_generations_are_defined_and_counted(trained, pieces):
    E, y = trained["E"], pieces["held_tokens"][0]
    before = E.stats["empty_or_undecodable"]
    emb, valid = E.embed_with_mask([[], [10_000, -4, 7], y])
    assert valid.tolist() == [False, False, True]
    assert torch.isfinite(emb).all()
    assert E.stats["empty_or_undecodable"] == before + 2
    assert diversity(E, [[], y], [y, []]).tolist() == [0.0, 0.0]          # no credit for degenerate output
    raw = diversity(E, [[]], [y], empty_value=None)
    assert 0 < raw.item() <= 2


def test_checkpoint_round_trip_and_errors(trained, pieces, tmp_path):
    E = trained["E"]
    again = load_diversity_embedder(trained["path"])
    ys = pieces["held_tokens"][:4]
    assert torch.allclose(again.embed(ys), E.embed(ys))
    assert (trained["path"] / "tokenizer.json").exists()
    with pytest.raises(UserError):
        load_diversity_embedder(tmp_path / "missing")
    with pytest.raises(UserError, match="unknown ViT size"):
        DiversityEmbedder(EmbedderConfig(vit="huge"))


def test_info_nce_prefers_matching_pairs():
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    paired = torch.stack([z, z], 1).reshape(16, 16)          # rows 2b and 2b+1 identical
    loss_good, acc = info_nce(paired, 0.1)
    loss_bad, _ = info_nce(torch.nn.functional.normalize(torch.randn(16, 16), dim=-1), 0.1)
    assert acc == 1.0 and loss_good < loss_bad


def test_positive_chunks_do_not_overlap(pieces):
    """Each view is located in its piece (an exact match of the rolls of every quarter-grid window),
    and the two views of a pair start at least one chunk apart."""
    cfg = EmbedderConfig(vit="tiny", chunk_steps=32)
    length = cfg.chunk_beats

    def window_starts(notes) -> dict[bytes, list[float]]:
        notes = pr.canonical_key(notes) if cfg.canonical_key else notes
        table: dict[bytes, list[float]] = {}
        for s in np.arange(0.0, pr.length_beats(notes) - length + 1e-9, 1.0):  # no bar lengths: a quarter grid
            roll = pr.rasterize(pr.window(notes, float(s), length), 0, cfg.chunk_steps, cfg.spec)
            table.setdefault(roll.tobytes(), []).append(float(s))
        return table

    # two long pieces whose windows all differ, so that a view names its start unambiguously
    chosen, tables = [], []
    for notes in pieces["train"]:
        if pr.length_beats(notes) >= 3 * length:
            table = window_starts(notes)
            if all(len(v) == 1 for v in table.values()):
                chosen.append(notes)
                tables.append(table)
        if len(chosen) == 2:
            break
    assert len(chosen) == 2
    sampler = PairSampler(chosen, cfg, augment=None, seed=0)
    pairs = set()
    for _ in range(30):
        x = sampler.batch(2)
        assert x.shape == (4, 2, 88, 32)
        for b in range(2):
            a, c = x[2 * b].numpy().tobytes(), x[2 * b + 1].numpy().tobytes()
            table = next((t for t in tables if a in t and c in t), None)
            assert table is not None, "a view is not a window of its piece"
            (start_a,), (start_c,) = table[a], table[c]
            assert abs(start_a - start_c) >= length, (start_a, start_c)
            pairs.add((start_a, start_c))
    assert len(pairs) >= 5  # the windows are drawn at varied places, in either order


def test_cli_train_and_eval(tiny_data_dir, tmp_path, capsys):
    from divcfg.cli import main
    out = tmp_path / "E"
    assert main(["embedder", "train", "--preset", "tiny", "--data-dir", str(tiny_data_dir), "--out", str(out),
                 "--steps", "5", "--eval-pieces", "100"]) == 0
    text = capsys.readouterr().out
    assert "held-out retrieval" in text and (out / "model.safetensors").exists()
    assert main(["embedder", "eval", "--checkpoint", str(out), "--data-dir", str(tiny_data_dir)]) == 0
    assert main(["embedder", "eval", "--checkpoint", str(tmp_path / "nope"), "--data-dir", str(tiny_data_dir)]) == 2
