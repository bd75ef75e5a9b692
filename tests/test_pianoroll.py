"""Piano rolls from symusic scores, chunking, key canonicalisation and augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import symusic

from divcfg.music import pianoroll as pr


def score_of(notes, tpq=480):
    s = symusic.Score(tpq)
    t = symusic.Track("x", 0, False)
    for on, dur, p in notes:
        t.notes.append(symusic.Note(int(on * tpq), int(dur * tpq), p, 80))
    s.tracks.append(t)
    drums = symusic.Track("drums", 0, True)
    drums.notes.append(symusic.Note(0, tpq, 36, 80))
    s.tracks.append(drums)
    return s


def test_score_notes_in_quarters_without_drums():
    notes = pr.score_notes(score_of([(1, 0.5, 64), (0, 1, 60)]))
    assert notes.tolist() == [[0, 1, 60], [1, 0.5, 64]]
    assert pr.score_notes(None).shape == (0, 3)
    assert pr.length_beats(notes) == 1.5 and pr.length_steps(notes) == 6


def test_rasterize_onsets_and_sustain():
    spec = pr.RollSpec(pitch_low=21, n_pitches=88, steps_per_beat=4)
    notes = np.array([[0, 1, 60], [0.5, 0.25, 64], [3.5, 2, 67]], np.float32)
    roll = pr.rasterize(notes, 0, 16, spec)
    assert roll.shape == (2, 88, 16)
    p60, p64, p67 = 60 - 21, 64 - 21, 67 - 21
    assert np.flatnonzero(roll[0, p60]).tolist() == [0] and np.flatnonzero(roll[1, p60]).tolist() == [0, 1, 2, 3]
    assert np.flatnonzero(roll[0, p64]).tolist() == [2] and np.flatnonzero(roll[1, p64]).tolist() == [2]
    assert np.flatnonzero(roll[1, p67]).tolist() == list(range(14, 16))   # clipped at the window's end
    assert roll[0].sum() == 3 and roll[1].sum() == 4 + 1 + 2
    # a window starting later: the note that began before it sustains but has no onset
    later = pr.rasterize(notes, 15, 8, spec)
    assert later[0].sum() == 0 and np.flatnonzero(later[1, p67]).tolist() == list(range(0, 7))


def test_pitches_fold_into_range():
    spec = pr.RollSpec(pitch_low=36, n_pitches=48)
    assert pr.fold_pitch(np.array([20, 36, 83, 100]), spec).tolist() == [44, 36, 83, 76]


def test_chunk_starts():
    assert pr.chunk_starts(100, 32) == [0, 32, 64]            # rest 4 < 16: dropped
    assert pr.chunk_starts(112, 32) == [0, 32, 64, 96]        # rest 16 >= 16: kept
    assert pr.chunk_starts(10, 32) == [0]                     # shorter than a chunk: one chunk
    assert pr.chunk_starts(0, 32) == [0]
    assert pr.chunk_starts(32 * 10, 32, max_chunks=3) == [0, 128, 288]   # chunks 0, 4, 9 of 10


def test_canonical_key_is_transposition_invariant_on_real_tunes(tiny_data_dir):
    from divcfg.music.judges.diversity_cli import load_piece_notes
    pieces, _ = load_piece_notes(tiny_data_dir, "train", max_pieces=40, progress=False)
    for notes in pieces:
        c = pr.canonical_key(notes)
        mean = np.average(c[:, 2], weights=c[:, 1])
        assert 60 <= mean < 72
        for k in (-7, -1, 3, 6, 11):
            assert np.array_equal(pr.canonical_key(pr.transpose(notes, k)), c)


def test_key_root_of_scales():
    g_major = np.array([[i, 1, p] for i, p in enumerate([67, 69, 71, 72, 74, 76, 78, 79])], np.float32)
    assert pr.key_root(g_major) == 7
    assert pr.canonical_key(g_major)[0, 2] % 12 == 0          # G becomes C


def test_augmentations():
    rng = np.random.default_rng(0)
    notes = np.array([[i * 0.5, 0.5, 60 + i % 7] for i in range(40)], np.float32)
    assert np.array_equal(pr.transpose(notes, 3)[:, 2], notes[:, 2] + 3)
    stretched = pr.time_stretch(notes, 1.25)
    assert np.allclose(stretched[:, :2], notes[:, :2] * 1.25)
    same = pr.note_noise(notes, rng, p_drop=0, p_insert=0, jitter_steps=0)
    assert np.array_equal(same, notes)
    noisy = pr.note_noise(notes, rng, p_drop=0.5, p_insert=0.1, jitter_steps=0)
    assert 10 < len(noisy) < 35 and noisy[:, 2].min() >= 60 and noisy[:, 2].max() <= 66
    view = pr.Augment()(notes, np.random.default_rng(1))
    assert view.shape[1] == 3 and len(view) > 20 and (view[:, 0] >= 0).all()
    a, b = pr.Augment()(notes, np.random.default_rng(5)), pr.Augment()(notes, np.random.default_rng(5))
    assert np.array_equal(a, b)                               # seeded: reproducible


def test_window():
    notes = np.array([[0, 1, 60], [4, 1, 62], [7.5, 2, 64], [9, 1, 65]], np.float32)
    w = pr.window(notes, 4, 4)
    assert w.tolist() == [[0, 1, 62], [3.5, 2, 64]]
    with pytest.raises(AssertionError):
        assert pr.window(notes, 20, 4).size
