"""Listening: a ``symusic.Score`` to MIDI and to WAV (General MIDI soundfont). Piano-roll pictures
are drawn by ``divcfg.domains.music_report.piano_roll_png``.

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
