"""Rendering real corpus pieces to MIDI and WAV. The WAV test needs the soundfont `make` installs:
without it the test fails, it does not skip."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from divcfg.music import render
from divcfg.music import tokenizer as tk
from divcfg.music.dataset import load_split


@pytest.fixture(scope="module")
def real_score(tiny_data_dir):
    tok = tk.load_tokenizer(tiny_data_dir)
    row = load_split(tiny_data_dir, "train")[0]
    return tk.tokens_to_score(tok, row["tokens"])


def test_write_midi_round_trip(real_score, tmp_path):
    from symusic import Score

    path = render.write_midi(real_score, tmp_path / "a" / "piece.mid")
    back = Score(str(path))
    a, b = tk.score_notes(back), tk.score_notes(real_score)
    assert [(o, p) for o, p, _ in a] == [(o, p) for o, p, _ in b]
    # MIDI cuts a note short where the same pitch sounds again before it ends; otherwise exact
    assert sum(d1 == d2 for (_, _, d1), (_, _, d2) in zip(a, b)) >= 0.95 * len(a)
    assert back.tempos[0].qpm == pytest.approx(120)


def test_write_wav_is_not_silent(real_score, tmp_path):
    assert render.find_soundfont() is not None, "no General MIDI soundfont: run `make` (installs timgm6mb-soundfont)"
    path = tmp_path / "piece.wav"
    assert render.write_wav(real_score, path, sample_rate=22050) is True
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    seconds_of_music = tk.score_notes(real_score)[-1][0] * 0.5  # 120 quarter notes per minute
    assert len(pcm) / 22050 >= seconds_of_music
    assert np.abs(pcm).max() == pytest.approx(0.9 * 32767, rel=0.01)  # peak-normalised
    assert np.sqrt(np.mean(pcm ** 2)) > 300  # audible, not silence


def test_without_soundfont_wav_is_skipped_with_one_line(real_score, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(render, "SOUNDFONT_CANDIDATES", ())
    monkeypatch.delenv("DIVCFG_SOUNDFONT", raising=False)
    monkeypatch.setattr(render, "_warned", False)
    assert render.write_wav(real_score, tmp_path / "x.wav") is False
    assert not (tmp_path / "x.wav").exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "soundfont" in err
    assert render.write_midi(real_score, tmp_path / "x.mid").exists()
