"""REMI tokens for the music21 testbed (miditok 3.1.0 over symusic 0.5.9).

One token stream per piece: all parts are merged into a single track before tokenising
(no Program tokens), velocities and tempos are off, time signatures are on. A bar reads

    Bar  TimeSig_n/d  Position_p  Pitch_k  Duration_d  [Pitch  Duration ...]  Position ...

Grid: a *beat* is the time signature's denominator note (miditok's convention). Positions
and durations shorter than 4 beats are quantised to 1/8 beat, longer durations (≤ 12 beats)
to 1/4 beat. Triplets therefore land on the nearest 1/8 of a beat (error ≤ 1/24 beat).
Pitches 21..108 (piano range). Vocabulary: PAD, BOS, EOS, Bar, 88 pitches, positions,
durations and ~14 time signatures: ~330 tokens.

Ids stored in the data cache exclude BOS/EOS; the model adds them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
PITCH_RANGE = (21, 109)  # miditok's range is half-open: pitches 21..108
BEAT_RES = {(0, 4): 8, (4, 12): 4}
# beat denominator -> numerators. 2/2, 3/2, 4/2 are rewritten as 4/4, 6/4, 8/4 (same bar length)
# by `supported_time_signature`, because miditok mis-sizes positions for */2 bars.
TIME_SIGNATURE_RANGE = {8: [3, 5, 6, 7, 9, 12], 4: [1, 2, 3, 4, 5, 6, 7, 8]}
SPECIAL_TOKENS = ["PAD", "BOS", "EOS"]
TICKS_PER_QUARTER = 480  # resolution of the symusic scores we build (quarter = 480 ticks)


def make_tokenizer():
    """A fresh REMI tokenizer with the testbed's configuration."""
    from miditok import REMI, TokenizerConfig

    cfg = TokenizerConfig(
        pitch_range=PITCH_RANGE,
        beat_res=dict(BEAT_RES),
        num_velocities=1,
        use_velocities=False,
        use_programs=False,
        use_tempos=False,
        use_time_signatures=True,
        time_signature_range={k: list(v) for k, v in TIME_SIGNATURE_RANGE.items()},
        use_chords=False,
        use_rests=False,
        use_sustain_pedals=False,
        use_pitch_bends=False,
        special_tokens=list(SPECIAL_TOKENS),
    )
    return REMI(cfg)


def save_tokenizer(tok, data_dir: str | os.PathLike) -> Path:
    path = Path(data_dir) / TOKENIZER_FILE
    tok.save(path)
    return path


def load_tokenizer(data_dir: str | os.PathLike):
    """The tokenizer saved beside a data cache (``<data_dir>/tokenizer.json``)."""
    from miditok import REMI

    from divcfg.errors import UserError

    path = Path(data_dir)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.exists():
        raise UserError(f"no tokenizer at '{path}': build the data first with `divcfg data`")
    return REMI(params=path)


def special_ids(tok) -> dict[str, int]:
    """{"pad", "bos", "eos"} -> token id."""
    return {"pad": tok["PAD_None"], "bos": tok["BOS_None"], "eos": tok["EOS_None"]}


def supported_time_signature(numerator: int, denominator: int) -> tuple[int, int] | None:
    """The vocabulary's time signature with the same bar length, or None when there is none.

    Tries the signature itself, then the same bar re-expressed over a quarter or an eighth
    beat (2/2 -> 4/4, 3/2 -> 6/4, 4/8 -> 2/4, 6/16 -> 3/8, ...).
    """
    if numerator <= 0 or denominator <= 0:
        return None
    if numerator in TIME_SIGNATURE_RANGE.get(denominator, ()):
        return numerator, denominator
    bar_in_eighths = numerator * 8 / denominator
    for denom in (4, 8):
        num = bar_in_eighths * denom / 8
        if num == int(num) and int(num) in TIME_SIGNATURE_RANGE[denom]:
            return int(num), denom
    return None


def merge_tracks(score):
    """A copy of ``score`` with all notes in one track (program 0)."""
    from symusic import Score, Track

    out = Score(score.ticks_per_quarter)
    out.time_signatures = score.time_signatures.copy()
    out.key_signatures = score.key_signatures.copy()
    out.tempos = score.tempos.copy()
    track = Track(program=0, is_drum=False, name="merged")
    for t in score.tracks:
        if not t.is_drum:
            track.notes.extend(t.notes)
    track.notes.sort()
    out.tracks.append(track)
    return out


def score_to_tokens(tok, score) -> list[int]:
    """REMI ids of ``score`` (tracks merged; no BOS/EOS)."""
    if len(score.tracks) != 1:
        score = merge_tracks(score)
    seq = tok.encode(score)
    if isinstance(seq, list):  # miditok returns one TokSequence per track in some configs
        seq = seq[0]
    return [int(i) for i in seq.ids]


def strip_special(tok, ids) -> list[int]:
    """Drop PAD anywhere, a leading BOS, and everything from the first EOS on."""
    sp = special_ids(tok)
    out = []
    for i in (int(x) for x in ids):
        if i == sp["eos"]:
            break
        if i in (sp["pad"], sp["bos"]):
            continue
        out.append(i)
    return out


def tokens_to_score(tok, ids):
    """Decode ids to a one-track ``symusic.Score``; None if nothing decodable. Never raises.

    Accepts ids with or without BOS/EOS/PAD (stops at the first EOS).
    """
    try:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        clean = [i for i in strip_special(tok, ids) if 0 <= i < len(tok)]
        if not clean:
            return None
        from miditok import TokSequence

        score = tok.decode([TokSequence(ids=clean)])
        if score is None or sum(len(t.notes) for t in score.tracks) == 0:
            return None
        return score
    except Exception:  # malformed generations: anything miditok chokes on is "undecodable"
        return None


def score_notes(score, unit: str = "quarters") -> list[tuple[float, int, float]]:
    """Sorted (onset, pitch, duration) of every note in every track of ``score``.

    ``unit="quarters"`` converts ticks to quarter notes (ticks / ticks_per_quarter);
    ``unit="ticks"`` returns raw ticks.
    """
    notes = []
    scale = 1.0 / score.ticks_per_quarter if unit == "quarters" else 1.0
    for t in score.tracks:
        if t.is_drum or len(t.notes) == 0:
            continue
        arr = t.notes.numpy()
        notes.extend(zip((arr["time"] * scale).tolist(), arr["pitch"].tolist(),
                         (arr["duration"] * scale).tolist()))
    return sorted((float(o), int(p), float(d)) for o, p, d in notes)


def tokens_to_notes(tok, ids) -> list[tuple[float, int, float]]:
    """(onset, pitch, duration) in quarter notes of the decoded ids; [] if undecodable."""
    score = tokens_to_score(tok, ids)
    return [] if score is None else score_notes(score)


def pitch_class_histogram(notes) -> np.ndarray:
    """Duration-weighted pitch-class histogram (12,), summing to 1 (zeros if no notes)."""
    h = np.zeros(12)
    for _, p, d in notes:
        h[p % 12] += max(d, 1e-3)
    s = h.sum()
    return h / s if s > 0 else h
