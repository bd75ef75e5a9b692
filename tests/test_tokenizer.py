"""REMI tokenizer: round trips on real corpus pieces, robust decoding, saved/loaded vocabulary."""

from __future__ import annotations

from collections import Counter

import pytest

from divcfg.music import tokenizer as tk
from divcfg.music.extract import extract_piece
from divcfg.music.sources import corpus_root


def _real_scores(rel: str, limit: int):
    """(symusic score, meta) of the first ``limit`` pieces of a corpus file, via the data pipeline."""
    from music21 import converter, stream

    from divcfg.music.sources import abc_headers

    path = corpus_root() / rel
    parsed = converter.parseFile(str(path), forceSource=True, storePickle=False)
    scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
    headers = abc_headers(path.read_text(errors="replace")) if rel.endswith(".abc") else {}
    out = []
    for s in scores[:limit]:
        header = headers.get(str(s.metadata.number), [None])[0] if headers else None
        score, meta = extract_piece(s, header, "test")
        if score is not None:
            out.append((score, meta))
    return out


@pytest.mark.parametrize("rel,limit", [("oneills1850/0721-0730.abc", 10),
                                       ("essenFolksong/erk5.abc", 12),
                                       ("bach/bwv277.krn", 1)])
def test_round_trip_preserves_notes(rel, limit):
    tok = tk.make_tokenizer()
    pieces = _real_scores(rel, limit)
    assert len(pieces) >= 1
    for score, meta in pieces:
        ids = tk.score_to_tokens(tok, score)
        back = tk.tokens_to_score(tok, ids)
        assert back is not None
        orig = tk.score_notes(score)
        dec = tk.score_notes(back)
        # the pipeline merges unisons: (onset, pitch) pairs are unique
        orig_unique = {(round(o, 6), p): d for o, p, d in orig}
        assert len(orig_unique) == len(orig)
        assert len(dec) == len(orig_unique), meta
        assert Counter(p for _, p in orig_unique) == Counter(p for _, p, _ in dec)
        # grid: a beat is the meter's denominator note (a quarter or an eighth here); onsets and
        # durations < 4 beats sit on 1/8 beat, longer durations on 1/4 beat, clipped at 12 beats.
        den = score.time_signatures[0].denominator if len(score.time_signatures) else 4
        beat = 4 / den
        max_dur = 12 * beat
        for (o1, p1, d1), ((o2, p2), d2) in zip(dec, sorted(orig_unique.items())):
            assert p1 == p2
            assert abs(o1 - o2) <= beat / 16 + 1e-6, (meta["title"], o1, o2)
            tol = beat / 16 if d2 < 4 * beat else beat / 8
            assert abs(d1 - min(d2, max_dur)) <= tol + 1e-6, (meta["title"], d1, d2)


def test_round_trip_keeps_time_signature_and_bars():
    tok = tk.make_tokenizer()
    score, meta = _real_scores("oneills1850/0721-0730.abc", 1)[0]
    assert meta["meter"] == "6/8"
    ids = tk.score_to_tokens(tok, score)
    names = [tok[i] for i in ids]
    assert names[0] == "Bar_None" and names[1] == "TimeSig_6/8"
    back = tk.tokens_to_score(tok, ids)
    assert (back.time_signatures[0].numerator, back.time_signatures[0].denominator) == (6, 8)


def test_tokens_to_score_never_raises():
    tok = tk.make_tokenizer()
    sp = tk.special_ids(tok)
    assert len(set(sp.values())) == 3
    assert tk.tokens_to_score(tok, []) is None
    assert tk.tokens_to_score(tok, [sp["bos"], sp["eos"]]) is None
    assert tk.tokens_to_score(tok, [sp["pad"]] * 5) is None
    assert tk.tokens_to_score(tok, [10 ** 6, -3]) is None
    bar = tok["Bar_None"]
    assert tk.tokens_to_score(tok, [bar, bar, bar]) is None  # no notes
    import random
    rng = random.Random(0)
    for _ in range(50):  # random garbage: either a Score or None, never an exception
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 60))]
        out = tk.tokens_to_score(tok, ids)
        assert out is None or len(out.tracks) >= 1


def test_special_tokens_are_stripped_and_eos_stops():
    tok = tk.make_tokenizer()
    sp = tk.special_ids(tok)
    score, _ = _real_scores("oneills1850/0721-0730.abc", 1)[0]
    ids = tk.score_to_tokens(tok, score)
    assert not set(ids) & set(sp.values())
    plain = tk.score_notes(tk.tokens_to_score(tok, ids))
    wrapped = tk.score_notes(tk.tokens_to_score(tok, [sp["bos"]] + ids + [sp["eos"]] + ids[:20] + [sp["pad"]] * 4))
    assert wrapped == plain


def test_tracks_are_merged():
    from symusic import Note, Score, TimeSignature, Track

    tok = tk.make_tokenizer()
    s = Score(480)
    s.time_signatures.append(TimeSignature(0, 4, 4))
    for prog, pitches in ((0, (60, 62, 64, 65)), (40, (48, 50, 52, 53))):
        t = Track(program=prog)
        for i, p in enumerate(pitches):
            t.notes.append(Note(i * 480, 480, p, 80))
        s.tracks.append(t)
    ids = tk.score_to_tokens(tok, s)
    back = tk.tokens_to_score(tok, ids)
    assert len(back.tracks) == 1 and len(back.tracks[0].notes) == 8


def test_saved_tokenizer_matches(tiny_data_dir):
    tok = tk.load_tokenizer(tiny_data_dir)
    fresh = tk.make_tokenizer()
    assert tok.vocab == fresh.vocab
    assert 250 <= len(tok) <= 450


def test_supported_time_signature():
    assert tk.supported_time_signature(6, 8) == (6, 8)
    assert tk.supported_time_signature(2, 2) == (4, 4)
    assert tk.supported_time_signature(4, 2) == (8, 4)
    assert tk.supported_time_signature(4, 8) == (2, 4)
    assert tk.supported_time_signature(9, 16) is None
