"""Musical metrics against values computed by hand on small constructed scores, token validity on
real and broken sequences, and corpus reference values on the tiny data set."""

from __future__ import annotations

import math

import pytest
import symusic

from divcfg.music import metrics as M

TPQ = 480


def make_score(notes, ts=(4, 4)):
    """notes: (onset_quarters, duration_quarters, pitch)."""
    s = symusic.Score(TPQ)
    if ts:
        s.time_signatures.append(symusic.TimeSignature(0, *ts))
    t = symusic.Track("x", 0, False)
    for on, dur, p in notes:
        t.notes.append(symusic.Note(int(on * TPQ), int(dur * TPQ), p, 80))
    s.tracks.append(t)
    return s


C_MAJOR_SCALE = [(i, 1, p) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]


def test_pitch_class_entropy_by_hand():
    # C twice, six other pitch classes once: -(1/4 log2 1/4 + 6 · 1/8 log2 1/8) = 0.5 + 2.25
    assert M.pitch_class_entropy(make_score(C_MAJOR_SCALE)) == pytest.approx(2.75)
    # one pitch class only -> 0; all twelve equally -> log2 12
    assert M.pitch_class_entropy(make_score([(0, 1, 60), (1, 1, 72)])) == pytest.approx(0.0)
    assert M.pitch_class_entropy(make_score([(i, 1, 60 + i) for i in range(12)])) == pytest.approx(math.log2(12))
    assert math.isnan(M.pitch_class_entropy(make_score([])))


def test_scale_consistency_by_hand():
    assert M.scale_consistency(make_score(C_MAJOR_SCALE)) == pytest.approx(1.0)
    # add F#: 8 of 9 notes in C major (and no scale holds all nine)
    assert M.scale_consistency(make_score(C_MAJOR_SCALE + [(8, 1, 66)])) == pytest.approx(8 / 9)
    # A harmonic-minor figure A B C D E F G#: best scale holds 6 of 7
    notes = [(i, 1, p) for i, p in enumerate([69, 71, 72, 74, 76, 77, 80])]
    assert M.scale_consistency(make_score(notes)) == pytest.approx(6 / 7)


def test_groove_consistency_by_hand():
    # bar 1: four quarters (onsets 0, 480, 960, 1440); bar 2: two halves (onsets 0, 960)
    # -> the patterns differ at 2 of 1920 positions: 1 - 2/1920
    notes = [(0, 1, 60), (1, 1, 62), (2, 1, 64), (3, 1, 65), (4, 2, 67), (6, 2, 65)]
    assert M.groove_consistency(make_score(notes)) == pytest.approx(1 - 2 / 1920)
    # identical bars -> 1; a single bar -> nan
    same = [(b * 4 + i, 1, 60) for b in range(3) for i in range(4)]
    assert M.groove_consistency(make_score(same)) == pytest.approx(1.0)
    assert math.isnan(M.groove_consistency(make_score([(0, 4, 60)])))
    # in 3/4 the bar is 1440 ticks: quarters in bar 1, a dotted half in bar 2 -> 2 of 1440 differ
    notes34 = [(0, 1, 60), (1, 1, 62), (2, 1, 64), (3, 3, 65)]
    assert M.groove_consistency(make_score(notes34, ts=(3, 4))) == pytest.approx(1 - 2 / 1440)
    # the requested meter overrides the score's own time signature
    assert M.groove_consistency(make_score(notes34, ts=(4, 4)), meter="3/4") == pytest.approx(1 - 2 / 1440)


def test_empty_bar_rate_by_hand():
    # notes in bars 1 and 3 of 4/4, bar 2 silent -> 1 of 3 bars empty
    assert M.empty_bar_rate(make_score([(0, 1, 60), (8, 4, 62)])) == pytest.approx(1 / 3)
    # a whole note tied over the bar line sounds in bars 1 and 2
    assert M.empty_bar_rate(make_score([(2, 4, 60), (8, 1, 62)])) == pytest.approx(0.0)
    assert math.isnan(M.empty_bar_rate(make_score([])))


def test_polyphony_by_hand():
    # C [0,2) and E [1,3): sounding time 3 quarters, per-pitch time 2 + 2 -> 4/3
    assert M.polyphony(make_score([(0, 2, 60), (1, 2, 64)])) == pytest.approx(4 / 3)
    # a monophonic line -> 1; a sustained triad -> 3; unison duplicates count once per pitch
    assert M.polyphony(make_score(C_MAJOR_SCALE)) == pytest.approx(1.0)
    assert M.polyphony(make_score([(0, 4, 60), (0, 4, 64), (0, 4, 67), (0, 2, 60)])) == pytest.approx(3.0)


def test_pair_figures_by_hand():
    a = make_score(C_MAJOR_SCALE)
    assert M.pitch_class_distance(a, a) == pytest.approx(0.0)
    # disjoint pitch classes -> total variation 1
    assert M.pitch_class_distance(make_score([(0, 1, 60)]), make_score([(0, 1, 61)])) == pytest.approx(1.0)
    # a transposed melody has the same interval n-grams
    up = make_score([(on, d, p + 5) for on, d, p in C_MAJOR_SCALE])
    assert M.interval_ngram_distance(a, up) == pytest.approx(0.0)
    assert M.melody_intervals(a) == [2, 2, 1, 2, 2, 2, 1]
    # onsets on every beat vs only on beat 1: TV distance of the bar-position histograms = 3/4
    beats = make_score([(i, 1, 60) for i in range(8)])
    downbeats = make_score([(4 * i, 4, 60) for i in range(2)])
    assert M.onset_distance(beats, downbeats) == pytest.approx(0.75)
    # distinct n-grams: nothing shared -> 1; identical, non-repeating -> 1/2
    assert M.distinct_ngram_ratio([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], n=2) == pytest.approx(1.0)
    assert M.distinct_ngram_ratio([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], n=2) == pytest.approx(0.5)
    figs = M.pair_diversity_figures(a, None, [1, 2, 3, 4, 5], [], "4/4")  # 2 distinct 4-grams
    assert math.isnan(figs["pitch_class_distance"]) and figs["distinct_ngram_ratio"] == pytest.approx(1.0)


def test_token_validity(tiny_data_dir):
    from divcfg.music.dataset import load_split
    from divcfg.music.tokenizer import load_tokenizer
    tok = load_tokenizer(tiny_data_dir)
    piece = next(p for p in load_split(tiny_data_dir, "train") if p["meta"]["meter"] in ("3/4", "6/8"))
    meter = piece["meta"]["meter"]
    ok = M.token_validity(tok, piece["tokens"], meter)
    assert ok == {"decodes": True, "has_notes": True, "meter_ok": True, "valid": True}
    other = "4/4"
    assert not M.token_validity(tok, piece["tokens"], other)["meter_ok"]
    # a position beyond the end of a 3/4 bar (3 beats x 8 positions) breaks the bar structure
    pos = [i for i in range(len(tok)) if tok[i].startswith("Position_") and int(tok[i].split("_")[1]) >= 24]
    bar = tok["Bar_None"]
    pitch, dur = tok["Pitch_60"], next(i for i in range(len(tok)) if tok[i].startswith("Duration_"))
    seq = [bar, tok["TimeSig_3/4"], pos[0], pitch, dur]
    assert M.token_validity(tok, seq, "3/4")["meter_ok"] is False
    assert M.token_validity(tok, seq, "4/4")["meter_ok"] is False           # TimeSig token disagrees
    empty = M.token_validity(tok, [], "3/4")
    assert empty["decodes"] is False and empty["valid"] is False
    garbage = M.token_validity(tok, [10_000, -3], None)
    assert garbage["valid"] is False


def test_corpus_reference(tiny_data_dir):
    ref = M.corpus_reference(tiny_data_dir, "train", max_pieces=40)
    assert set(ref) == set(M.SCORE_METRICS)
    assert ref["pitch_class_entropy"]["n"] == 40
    assert 1.5 < ref["pitch_class_entropy"]["mean"] < math.log2(12)
    assert 0.8 < ref["scale_consistency"]["mean"] <= 1.0
    assert 0.0 <= ref["empty_bar_rate"]["mean"] < 0.2
    assert ref["polyphony"]["mean"] >= 1.0
