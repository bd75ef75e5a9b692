"""The audio diversity embedder E (log-mel ViT), on real tunes of the tiny data set rendered by the
synthesiser. Rendering needs the soundfont `make` installs: without it these tests fail, they do
not skip."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from divcfg.cli import main
from divcfg.embedders.audio import (AudioAugment, AudioEmbedder, AudioEmbedderConfig, add_noise, load_audio_embedder,
                                    power_spectrogram, save_audio_embedder, shift_pitch, stretch_time)
from divcfg.music.judges.audio_cli import preset_config, train_audio_embedder
from divcfg.music.judges.audio_data import AudioPairSampler, audio_retrieval, render_split, views_to_power
from divcfg.errors import UserError
from divcfg.music import render

SR = 16000
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clips(tiny_data_dir):
    assert render.find_soundfont() is not None, "no General MIDI soundfont: run `make` (installs timgm6mb-soundfont)"
    return render_split(tiny_data_dir, "train", SR, max_seconds=20.0, progress=False)


def tiny_cfg() -> AudioEmbedderConfig:
    return preset_config("tiny", SR)


# --------------------------------------------------------------------------- rendering and its cache

def test_corpus_renders_once_to_a_cache(tiny_data_dir, clips):
    assert len(clips) > 100
    assert all(0 < clips.seconds(i) <= 20.0 for i in range(len(clips)))
    wave = clips[0]
    peaks = [np.abs(clips[i]).max() for i in range(20)]
    assert wave.dtype == np.float32 and min(peaks) > 0.3
    assert max(peaks) == pytest.approx(0.9, abs=0.01)                 # peak-normalised to 0.9 before the cut
    stamp = (clips.folder / "audio.npy").stat().st_mtime_ns
    again = render_split(tiny_data_dir, "train", SR, max_seconds=20.0, progress=False)
    assert again.folder == clips.folder and (again.folder / "audio.npy").stat().st_mtime_ns == stamp
    assert np.array_equal(again[3], clips[3])
    other = render_split(tiny_data_dir, "train", SR, max_seconds=5.0, progress=False)   # other settings, other cache
    assert other.folder != clips.folder and all(other.seconds(i) <= 5.0 for i in range(len(other)))


# --------------------------------------------------------------------------- augmentations

def test_noise_has_the_requested_snr_and_keeps_the_length(clips):
    x = torch.from_numpy(clips[0][:SR * 2].copy())
    y = add_noise(x, 20.0, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    snr = 10 * math.log10(x.pow(2).mean() / (y - x).pow(2).mean())
    assert snr == pytest.approx(20.0, abs=0.5)


def test_pitch_shift_moves_a_partial_by_the_semitone_factor():
    cfg = AudioEmbedderConfig(n_fft=1024, hop=320, sample_rate=SR)
    t = torch.arange(SR) / SR
    power = power_spectrogram(torch.sin(2 * math.pi * 440.0 * t), cfg)
    bin_hz = SR / cfg.n_fft
    for s in (-3, 2, 7):
        shifted = shift_pitch(power, float(s))
        assert shifted.shape == power.shape
        peak_hz = shifted.mean(1).argmax().item() * bin_hz
        assert peak_hz == pytest.approx(440.0 * 2 ** (s / 12), abs=bin_hz)
    assert torch.equal(shift_pitch(power, 0.0), power)


def test_tempo_change_resamples_time_and_keeps_the_chunk_shape(clips):
    cfg = tiny_cfg()
    x = torch.from_numpy(clips[0][:cfg.samples_for(2 * cfg.chunk_frames)].copy())
    long = power_spectrogram(x, cfg)
    assert long.shape[1] == 2 * cfg.chunk_frames
    slow = stretch_time(long, cfg.chunk_frames)                  # twice the music in one chunk
    assert slow.shape == (cfg.n_fft // 2 + 1, cfg.chunk_frames)
    assert torch.allclose(slow[:, 0], long[:, 0]) and torch.allclose(slow[:, -1], long[:, -1])
    assert torch.equal(stretch_time(long[:, :cfg.chunk_frames], cfg.chunk_frames), long[:, :cfg.chunk_frames])


def test_augmented_views_keep_their_shape_and_differ_from_plain_ones(clips):
    E = AudioEmbedder(tiny_cfg())
    plain = AudioPairSampler(E, clips, None, seed=0).batch(8)
    aug = AudioPairSampler(E, clips, AudioAugment(max_tempo=1.3, max_semitones=3.0, p_noise=1.0), seed=0).batch(8)
    assert plain.shape == aug.shape == (16, E.cfg.n_fft // 2 + 1, E.cfg.chunk_frames)
    assert torch.isfinite(aug).all() and not torch.allclose(plain, aug)
    feats = E.features(aug)
    assert feats.shape == (16, 1, E.cfg.n_mels, E.cfg.chunk_frames)
    assert torch.allclose(feats.mean((1, 2, 3)), torch.zeros(16), atol=1e-4)        # standardised per chunk
    x = torch.from_numpy(clips[1][:E.cfg.chunk_samples].copy())
    one = views_to_power(E, [(x, E.cfg.chunk_frames, 0.0)])
    assert torch.allclose(E.features(one), E.features(views_to_power(E, [(3.0 * x, E.cfg.chunk_frames, 0.0)])),
                          atol=1e-4)                                                   # blind to level


# --------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def few(clips):
    """A tiny training set: 16 real rendered tunes."""
    return [clips[i] for i in range(16)]


@pytest.fixture(scope="module")
def trained(few):
    torch.manual_seed(0)
    E0 = AudioEmbedder(tiny_cfg())
    E, hist = train_audio_embedder(few, tiny_cfg(), augment=None, steps=100, minutes=0, batch_size=16,
                                   lr=1e-3, progress=False)
    return {"E": E, "E0": E0, "hist": hist}


def positive_gap(E: AudioEmbedder, clips) -> tuple[float, float]:
    """(mean cos of two un-augmented chunks of one clip − mean cos of chunks of different clips,
    top-1 retrieval of the partner chunk)."""
    r = audio_retrieval(E, clips, n_pieces=len(clips), seed=1)
    sampler = AudioPairSampler(E, clips, None, seed=1)
    with torch.no_grad():
        z = E(E.features(sampler.batch(len(clips))))
    sim = z @ z.T
    pos = sim[torch.arange(0, len(z), 2), torch.arange(1, len(z), 2)].mean()
    mask = torch.ones_like(sim, dtype=torch.bool)
    mask.fill_diagonal_(False)
    mask[torch.arange(len(z)), torch.arange(len(z)) ^ 1] = False
    return float(pos - sim[mask].mean()), r["top1"]


def test_training_pulls_chunks_of_one_recording_together(few, trained):
    hist = trained["hist"]
    assert hist["steps"] == 100 and hist["cut_short"] is None
    assert np.mean(hist["loss"][-20:]) < np.mean(hist["loss"][:20]) - 0.3
    gap_before, _ = positive_gap(trained["E0"], few)
    gap_after, top1 = positive_gap(trained["E"], few)
    assert gap_after > 0.1 and gap_after > gap_before + 0.05
    assert top1 >= 2 / 31                                  # chance among 32 chunks is 1/31


def test_checkpoint_round_trip_and_whole_clip_embedding(tmp_path, clips, trained):
    E = trained["E"]
    path = save_audio_embedder(tmp_path / "E", E, extra={"note": "test"})
    back = load_audio_embedder(path)
    waves = [clips[i] for i in range(4)] + [clips[0][:1000]]          # the last is shorter than a chunk
    a, b = E.embed_waveforms(waves), back.embed_waveforms(waves)
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=1), torch.ones(5))
    assert json.loads((path / "config.json").read_text())["kind"] == "audio_diversity_embedder"
    with pytest.raises(UserError, match="not a 'diversity_embedder'"):
        from divcfg.music.judges.diversity import load_diversity_embedder
        load_diversity_embedder(path)


def test_resume_continues_exactly(clips, tmp_path):
    kw = dict(augment=AudioAugment(), steps=8, minutes=0, batch_size=8, lr=2e-3, progress=False)
    full, _ = train_audio_embedder(clips, tiny_cfg(), **kw)
    saved = {}

    def on_checkpoint(E, state):   # through bytes, as the CLI's checkpoint file (weights_only on load)
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        saved.setdefault("at4", ({k: v.clone() for k, v in E.state_dict().items()}, torch.load(buf, weights_only=True)))

    train_audio_embedder(clips, tiny_cfg(), ckpt_every=4, on_checkpoint=on_checkpoint, **kw)
    resumed, hist = train_audio_embedder(clips, tiny_cfg(), resume_from=saved["at4"], **kw)
    assert hist["steps"] == 8
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


# --------------------------------------------------------------------------- the audio domain's judge

def test_audio_domain_uses_a_trained_audio_E_at_the_generators_rate(tmp_path, clips, trained):
    from divcfg.domains.audio import AudioDomain
    from divcfg.embedders.audio import AudioEmbedderJudge, resample
    path = save_audio_embedder(tmp_path / "E", trained["E"])

    class Gen:
        sampling_rate = 32000

    judges = AudioDomain(None).judges(embedder=str(path), generator=Gen(), need=("diversity",))
    assert isinstance(judges.diversity, AudioEmbedderJudge)
    at32k = [resample(clips[i], SR, 32000) for i in range(3)]
    emb, valid = judges.diversity.embed_with_mask(at32k + [np.zeros(32000, np.float32)])
    assert valid.tolist() == [True, True, True, False] and torch.equal(emb[3], torch.zeros(emb.shape[1]))
    direct = trained["E"].embed_waveforms([clips[i] for i in range(3)])
    assert (emb[:3] * direct).sum(1).min() > 0.98                       # resampled back to E's 16 kHz
    # a symbolic E (the music presets' --embedder default) or no checkpoint: the log-mel stand-in
    from divcfg.domains.audio import LogMelStatsDiversity
    from divcfg.music.judges.diversity import DiversityEmbedder, EmbedderConfig, save_diversity_embedder
    sym = save_diversity_embedder(tmp_path / "sym", DiversityEmbedder(EmbedderConfig(vit="tiny")))
    for other in (str(sym), str(tmp_path / "missing"), ""):
        judges = AudioDomain(None).judges(embedder=other, generator=Gen(), need=("diversity",))
        assert isinstance(judges.diversity, LogMelStatsDiversity) and judges.names["diversity"] == "logmel-stats"


def test_musicgen_finetune_judges_diversity_with_the_audio_E(tmp_path, monkeypatch):
    """The unchanged fine-tuning loop on a tiny random MusicGen (800 Hz audio) with β > 0 and
    ``--embedder`` an audio E: the run records the audio E as its diversity judge and pays a reward."""
    from test_musicgen import _finetune_tiny
    E = save_audio_embedder(tmp_path / "audio_E", AudioEmbedder(tiny_cfg()))
    _finetune_tiny(tmp_path, monkeypatch, embedder=str(E))
    record = json.loads((tmp_path / "run" / "checkpoint" / "divcfg.json").read_text())
    assert f"audio-E:{E}" in json.dumps(record)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/diversity/mean"] for r in rows if "reward/diversity/mean" in r]
    assert rewards and all(0 <= r <= 2 for r in rewards) and max(rewards) > 0


# --------------------------------------------------------------------------- the CLI

def test_cli_trains_resumes_and_evaluates(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "audio_E"
    argv = ["embedder", "train", "--modality", "audio", "--preset", "tiny", "--data-dir", str(tiny_data_dir),
            "--out", str(out), "--steps", "6", "--ckpt-every", "3", "--threads", "1", "--eval-pieces", "8",
            "--max-seconds", "20"]
    assert main(argv) == 0
    done = json.loads((out / "DONE.json").read_text())
    assert done["finished"] is True and done["steps_done"] == 6
    ev = json.loads((out / "eval.json").read_text())
    assert {"retrieval", "retrieval_halves", "retrieval_halves_stand_in", "invariance"} <= set(ev)
    r = ev["retrieval"]
    assert 0 <= r["top1"] <= 1 and r["chance"] == pytest.approx(1 / (r["n_chunks"] - 1))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["provenance"]["seed"] == 0 and cfg["training"]["modality"] == "audio"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    capsys.readouterr()
    assert main(["embedder", "eval", "--checkpoint", str(out), "--data-dir", str(tiny_data_dir), "--threads", "1",
                 "--eval-pieces", "8", "--max-seconds", "20"]) == 0                # the kind picks the audio E
    assert "held-out retrieval" in capsys.readouterr().out
    (out / "DONE.json").unlink()                                                 # as if killed after the last step
    assert main(argv + ["--resume"]) == 0
    assert "resuming from step 6" in capsys.readouterr().out and (out / "DONE.json").exists()


def test_cli_seeds_train_one_audio_E_per_seed(tiny_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                                       # the default --out is relative
    argv = ["embedder", "train", "--modality", "audio", "--preset", "tiny", "--data-dir", str(tiny_data_dir),
            "--steps", "2", "--threads", "1", "--eval-pieces", "4", "--max-seconds", "20", "--seeds", "0,1"]
    assert main(argv) == 0
    for folder, seed in (("embedder", 0), ("embedder_s1", 1)):
        cfg = json.loads((tmp_path / "runs" / "audio" / folder / "config.json").read_text())
        assert cfg["kind"] == "audio_diversity_embedder" and cfg["provenance"]["seed"] == seed
    assert not (tmp_path / "runs" / "small").exists()


@pytest.mark.parametrize("argv, words", [
    (["embedder", "train", "--modality", "audio", "--data-dir", "/nonexistent/data", "--out", "{tmp}/x"],
     "no data cache"),
    (["embedder", "eval", "--modality", "audio", "--checkpoint", "/nonexistent/ckpt"], "not found"),
    (["embedder", "train", "--modality", "audio", "--sample-rate", "100"], "--sample-rate"),
])
def test_cli_errors_are_one_line(argv, words, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:   # argparse's own errors exit from the parser
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and words in err
