"""The music domain's audio clips of an evaluation run: the run's REMI tokenizer and token ids → WAV
(the listening study's clips, ``divcfg.listening.media``; the judge comparison,
``divcfg.music.judges.compare``).

A generation with no notes (or that does not decode) becomes ``SILENCE_SECONDS`` of silence, so raters
hear it and rate it rather than it silently leaving the study.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

from divcfg.errors import UserError

SILENCE_SECONDS = 2.0


def tokenizer_for(results: dict):
    """The run's tokenizer: a system checkpoint's ``tokenizer.json``, else the data folder's."""
    from divcfg.music.tokenizer import load_tokenizer

    for r in results["systems"]:
        f = Path(r.get("checkpoint", "")) / "tokenizer.json"
        if r.get("checkpoint") and f.exists():
            return load_tokenizer(f)
    data_dir = (results.get("config") or {}).get("data_dir")
    if not data_dir or not Path(data_dir).exists():
        raise UserError("cannot find the run's tokenizer (no checkpoint tokenizer.json, no data_dir): "
                        "rerun `divcfg evaluate` on this machine")
    return load_tokenizer(data_dir)


def _silence(path: Path, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(b"\0\0" * int(SILENCE_SECONDS * sample_rate))


def render_clip(tokenizer, tokens: list[int], path: Path, beats: int, sample_rate: int) -> bool:
    """Write the first ``beats`` quarter notes of ``tokens`` to ``path`` (WAV); silence when the
    generation has no notes. Returns True when the clip is empty (silence)."""
    from divcfg.music.pianoroll import score_notes
    from divcfg.music.render import write_wav
    from divcfg.music.tokenizer import tokens_to_score

    score = tokens_to_score(tokenizer, tokens)
    if score is None or len(score_notes(score)) == 0:
        _silence(path, sample_rate)
        return True
    clip = score.clip(0, beats * score.ticks_per_quarter, clip_end=True)
    if len(score_notes(clip)) == 0:
        _silence(path, sample_rate)
        return True
    tmp = path.with_name(path.name + ".tmp.wav")
    if not write_wav(clip, tmp, sample_rate=sample_rate):
        raise UserError("no General MIDI soundfont: a listening study needs audio (install one: "
                        "`sudo apt-get install timgm6mb-soundfont`, or set DIVCFG_SOUNDFONT=/path/to.sf2)")
    os.replace(tmp, path)
    return False
