"""Listening: a ``symusic.Score`` to MIDI, to WAV (General MIDI soundfont), to a piano-roll PNG.

Audio uses symusic 0.5.9's built-in synthesiser (prestosynth) with a General MIDI soundfont:
``$DIVCFG_SOUNDFONT`` if set, else the first of ``SOUNDFONT_CANDIDATES`` that exists (Debian's
``timgm6mb-soundfont`` first: small, loads fast). The signal is peak-normalised,

    y = x · (peak / max|x|),   peak = 0.9 (≈ -0.9 dBFS),

and written as 16-bit PCM. Without a soundfont, ``write_wav`` prints one line saying how to
install one and returns False; MIDI output needs nothing.
"""

from __future__ import annotations

import os
import sys
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np

SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
)
INSTALL_HINT = ("no General MIDI soundfont found: audio skipped, MIDI written "
                "(install one: `sudo apt-get install timgm6mb-soundfont`, or set DIVCFG_SOUNDFONT=/path/to.sf2)")
PEAK = 0.9
_warned = False


def find_soundfont() -> Path | None:
    """Path of the soundfont ``write_wav`` would use, or None."""
    env = os.environ.get("DIVCFG_SOUNDFONT")
    for cand in ([env] if env else []) + list(SOUNDFONT_CANDIDATES):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


@lru_cache(maxsize=4)
def _synthesizer(sf_path: str, sample_rate: int):
    from symusic import Synthesizer

    return Synthesizer(sf_path, sample_rate, 0)


def _with_tempo(score, qpm: float | None):
    if qpm is None and len(score.tempos) > 0:
        return score
    from symusic import Tempo

    score = score.copy()
    score.tempos = type(score.tempos)()
    score.tempos.append(Tempo(0, qpm=float(qpm or 120.0)))
    return score


def write_midi(score, path: str | os.PathLike, qpm: float | None = None) -> Path:
    """Write ``score`` as a standard MIDI file (tempo ``qpm``, default the score's or 120)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _with_tempo(score, qpm).dump_midi(str(path))
    return path


def render_audio(score, sample_rate: int = 22050, qpm: float | None = None) -> np.ndarray | None:
    """Mono float32 signal in [-PEAK, PEAK] (peak-normalised), or None without a soundfont."""
    sf = find_soundfont()
    if sf is None:
        return None
    audio = np.asarray(_synthesizer(str(sf), int(sample_rate)).render(_with_tempo(score, qpm), False),
                       dtype=np.float32)
    mono = audio.mean(axis=0) if audio.ndim == 2 else audio
    peak = float(np.abs(mono).max()) if mono.size else 0.0
    return mono * (PEAK / peak) if peak > 0 else mono


def write_wav(score, path: str | os.PathLike, sample_rate: int = 22050, qpm: float | None = None) -> bool:
    """Render ``score`` to a peak-normalised 16-bit mono WAV. False (one printed line) when no
    soundfont is installed; True when written."""
    global _warned
    audio = render_audio(score, sample_rate, qpm)
    if audio is None:
        if not _warned:
            print(INSTALL_HINT, file=sys.stderr)
            _warned = True
        return False
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return True


def piano_roll_png(score, path: str | os.PathLike, title: str | None = None, max_beats: float | None = None) -> Path:
    """A piano-roll picture: one bar per note (x = time in quarter notes, y = MIDI pitch),
    thin grey lines at bar starts when the score has time signatures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from divcfg.music.tokenizer import score_notes

    notes = score_notes(score)
    if max_beats is not None:
        notes = [n for n in notes if n[0] < max_beats]
    end = max((o + d for o, _, d in notes), default=4.0)
    fig, ax = plt.subplots(figsize=(min(16, 2 + end / 6), 3), dpi=100)
    polys = [[(o, p - 0.4), (o + d, p - 0.4), (o + d, p + 0.4), (o, p + 0.4)] for o, p, d in notes]
    ax.add_collection(PolyCollection(polys, facecolors="#2b6cb0", edgecolors="none"))
    # bar lines from the time signatures
    tpq = score.ticks_per_quarter
    sigs = [(ts.time / tpq, ts.numerator * 4 / ts.denominator) for ts in score.time_signatures]
    for i, (t0, bar) in enumerate(sigs):
        t1 = sigs[i + 1][0] if i + 1 < len(sigs) else end
        t = t0
        while t < t1 and bar > 0:
            ax.axvline(t, color="#cccccc", lw=0.5, zorder=0)
            t += bar
    pitches = [p for _, p, _ in notes] or [60]
    ax.set_xlim(0, end)
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    ax.set_xlabel("quarter notes")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
