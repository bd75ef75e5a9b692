"""Descriptors a *rich* caption names: register, range, motion and melodic steps.

Each is a statistic of a piece's notes (``pianoroll.score_notes``: onset and duration in quarter
notes, MIDI pitch); a caption names it only when the value lies in an outer band, as a person
describing a tune mentions what stands out:

=========  ==========================================================  ==============  ===============
name       statistic                                                   lower band       upper band
=========  ==========================================================  ==============  ===============
register   median pitch of all notes                                    ≤ 68: low       ≥ 73: high
range      ambitus, max − min pitch in semitones                        ≤ 11: narrow    ≥ 18: wide
motion     distinct onsets per quarter note over the piece's span       ≤ 1.2: slow     ≥ 1.9: running
steps      share of successive melodic intervals ≤ 2 semitones          ≤ 0.57: leaping ≥ 0.77: stepwise
=========  ==========================================================  ==============  ===============

The melody for ``steps`` is the highest note at each onset. The bands are the quartiles of
``data/small``'s 10,735 training pieces, rounded (10 %/25 %/75 %/90 %: median pitch 67/69/72/74,
ambitus 9/12/17/20, onsets per quarter 0.88/1.21/1.89/2.17, step share 0.48/0.57/0.77/0.83), fixed
here so that captions and the attribute accuracy that scores generations against them
(``divcfg.music.attributes``) use one definition. About a quarter of the pieces fall in each outer
band, so a rich caption names about two of the four.
"""

from __future__ import annotations

import numpy as np

#: name -> (lower bound's value, lower word, upper bound's value, upper word)
BANDS = {
    "register": (68.0, "low", 73.0, "high"),
    "range": (11.0, "narrow", 18.0, "wide"),
    "motion": (1.2, "slow", 1.9, "running"),
    "steps": (0.57, "leaping", 0.77, "stepwise"),
}
#: (name, word) -> the phrase a caption uses; each phrase occurs in no other caption text
PHRASES = {
    ("register", "low"): "in a low register", ("register", "high"): "in a high register",
    ("range", "narrow"): "with a narrow range", ("range", "wide"): "with a wide range",
    ("motion", "slow"): "slow-moving", ("motion", "running"): "with running notes",
    ("steps", "leaping"): "leaping", ("steps", "stepwise"): "mostly stepwise",
}
MIN_NOTES = 4


def values(notes: np.ndarray) -> dict[str, float] | None:
    """The four statistics of ``notes`` (``float[n, 3]``: onset, duration, pitch); None under ``MIN_NOTES``."""
    if len(notes) < MIN_NOTES:
        return None
    onset, dur, pitch = notes[:, 0], notes[:, 1], notes[:, 2]
    starts = np.unique(onset)
    span = float((onset + dur).max() - onset.min())
    melody = np.array([pitch[onset == t].max() for t in starts])
    return {"register": float(np.median(pitch)), "range": float(pitch.max() - pitch.min()),
            "motion": len(starts) / max(span, 1e-6),
            "steps": float(np.mean(np.abs(np.diff(melody)) <= 2)) if len(melody) > 1 else 0.0}


def band(name: str, value: float) -> str | None:
    """The word for ``value`` of descriptor ``name``, or None in the middle band."""
    lo, lo_word, hi, hi_word = BANDS[name]
    return lo_word if value <= lo else (hi_word if value >= hi else None)


def describe(notes: np.ndarray) -> dict[str, str]:
    """``{name: word}`` for the descriptors of ``notes`` that lie in an outer band."""
    v = values(notes)
    if v is None:
        return {}
    return {name: word for name in BANDS if (word := band(name, v[name])) is not None}


def phrases(described: dict[str, str]) -> list[str]:
    """The caption phrases of ``describe``'s result, in ``BANDS`` order."""
    return [PHRASES[(name, described[name])] for name in BANDS if name in described]


def asked(text: str) -> dict[str, str]:
    """The descriptors a caption ``text`` names: ``{name: word}``."""
    return {name: word for (name, word), phrase in PHRASES.items() if phrase in text}
