"""The audio domain: text prompts from a file (as ``domains.text``: same format, same hash split),
completions are waveforms (a text-to-audio generator such as MusicGen, ``completion_kind="audio"``),
written as WAV.

**Judges.** ``--embedder PATH`` with an audio E checkpoint (the paper's ViT over log-mel patches,
``divcfg embedder train --modality audio``, see ``embedders.audio``) makes it the diversity judge, the
generator's audio resampled to E's rate. Without one (``--embedder`` naming no checkpoint, or a
symbolic E) the diversity judge is
:class:`LogMelStatsDiversity`, a fixed, untrained stand-in:
the embedding of a clip is its per-band log-mel mean (level removed) and standard deviation over
time, ``e = [mean_t(L) − mean(L), std_t(L)]`` with ``L = log(mel(|STFT|²) + 1e-6)``; the pairwise
diversity is ``1 − cos(e_i, e_j)``. It sees timbre and spectral balance, not melody or rhythm.
There is no built-in quality judge for audio (no text–audio model is available offline):
``--quality-judge module:function`` takes ``f(prompts, waveforms, **kw) -> list[float]``, and
``--diversity-judge module:function`` replaces the stand-in with ``f(waveforms) -> embeddings``.
Waveforms are float32 numpy arrays at the generator's ``sampling_rate``: (samples,) mono or
(2, samples) stereo (judged on the mono mix; written as stereo WAV).

**Validity**: a clip is valid when it exists (the stream had a complete frame) and is not silent
(RMS > 1e-4).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from divcfg.domains.base import Judges, user_or_default_judges
from divcfg.domains.text import TextDomain
from divcfg.errors import UserError

SILENCE_RMS = 1e-4


def mel_filterbank(n_freqs: int, n_mels: int, sampling_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """(n_mels, n_freqs) triangular HTK-mel filters from ``f_min`` to ``f_max`` (default 0 Hz to Nyquist)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sampling_rate / 2, n_freqs)
    top = min(f_max or sampling_rate / 2, sampling_rate / 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(top), n_mels + 2))
    fb = np.zeros((n_mels, n_freqs))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / max(mid - lo, 1e-9)
        down = (hi - freqs) / max(hi - mid, 1e-9)
        fb[m] = np.clip(np.minimum(up, down), 0, None)
    return torch.tensor(fb, dtype=torch.float32)


def log_mel(samples: np.ndarray, sampling_rate: int, n_mels: int = 32) -> torch.Tensor:
    """(n_mels', frames) log-mel spectrogram of the mono mix: ~32 ms Hann windows, hop 1/4 window."""
    x = np.asarray(samples, dtype=np.float32)
    x = torch.as_tensor(x.mean(0) if x.ndim == 2 else x)
    n_fft = 2 ** max(4, round(math.log2(max(sampling_rate * 0.032, 16))))
    n_fft = min(n_fft, 2 ** int(math.log2(max(len(x), 16))))
    if len(x) < n_fft:
        x = F.pad(x, (0, n_fft - len(x)))
    spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True,
                      center=False).abs() ** 2                                   # (n_fft/2+1, T)
    n_mels = min(n_mels, spec.shape[0])
    return torch.log(mel_filterbank(spec.shape[0], n_mels, sampling_rate) @ spec + 1e-6)


def is_valid_clip(samples) -> bool:
    return (samples is not None and np.asarray(samples).size > 0
            and float(np.sqrt(np.mean(np.square(samples)))) > SILENCE_RMS)


class LogMelStatsDiversity:
    """The untrained stand-in audio diversity embedder (see the module docstring)."""
    name = "logmel-stats"

    def __init__(self, sampling_rate: int, n_mels: int = 32):
        self.sampling_rate, self.n_mels = int(sampling_rate), n_mels

    def embed_one(self, samples) -> torch.Tensor:
        L = log_mel(samples, self.sampling_rate, self.n_mels)
        return torch.cat([L.mean(1) - L.mean(), L.std(1, unbiased=False)])

    def embed_with_mask(self, completions: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        valid = torch.tensor([is_valid_clip(c) for c in completions], dtype=torch.bool)
        rows = [self.embed_one(c) if v else None for c, v in zip(completions, valid.tolist())]
        dim = next((r.shape[0] for r in rows if r is not None), 2 * self.n_mels)
        emb = torch.stack([r if r is not None else torch.zeros(dim) for r in rows]) if rows else torch.zeros(0, dim)
        return F.normalize(emb, dim=-1), valid


def audio_embedder_judge(path: str, sampling_rate: int, device: str = "cpu"):
    """The diversity judge for ``--embedder path``: the trained audio E there (``divcfg embedder train
    --modality audio``) on clips at ``sampling_rate`` (resampled to E's rate). ``--embedder`` defaults
    to a music (symbolic) E path in the finetune/evaluate presets, so any other value (no checkpoint
    there, or a symbolic E: one note line on stderr) gives the log-mel stand-in."""
    import sys
    from divcfg.embedders.audio import KIND, AudioEmbedderJudge, checkpoint_kind, load_audio_embedder
    kind = checkpoint_kind(path) if path else None
    if kind == KIND:
        return AudioEmbedderJudge(load_audio_embedder(path, device=device or "cpu"), sampling_rate,
                                  name=f"audio-E:{path}")
    if kind is None and path:
        print(f"note: no checkpoint at --embedder '{path}': the audio domain judges diversity with the log-mel "
              f"stand-in (pass an audio E from `divcfg embedder train --modality audio`)", file=sys.stderr)
    elif kind is not None:
        print(f"note: --embedder '{path}' holds a {kind!r}, not an audio E: the audio domain judges diversity with "
              f"the log-mel stand-in (train an audio E with `divcfg embedder train --modality audio`)", file=sys.stderr)
    return LogMelStatsDiversity(sampling_rate)


class AudioDomain(TextDomain):
    name = "audio"
    reward_gates = ("empty",)
    quality_name = "quality"
    eval_figures: tuple[str, ...] = ()
    eval_extra_columns: tuple[str, ...] = ()

    def judges(self, *, embedder: str = "", scorer: str = "", diversity_judge: str = "", quality_judge: str = "",
               device: str = "cpu", need: tuple[str, ...] = ("diversity", "quality"), generator=None,
               required: bool = False) -> Judges:
        sr = getattr(generator, "sampling_rate", None)
        if sr is None and "diversity" in need and not diversity_judge:
            raise UserError("the audio domain needs a generator with a sampling rate (a MusicGen hf:PATH) "
                            "or --diversity-judge module:function")
        return user_or_default_judges(diversity_judge, quality_judge,
                                      lambda: audio_embedder_judge(embedder, sr, device), lambda: None, need)

    def prepare_generator(self, generator) -> None:
        if getattr(generator, "completion_kind", None) != "audio":
            raise UserError("the audio domain needs a text-to-audio generator: pass --base hf:PATH with a MusicGen "
                            "checkpoint")

    def reward_valid(self, gate: str, completions: list, infos: list, embedded: torch.Tensor,
                     generator=None) -> torch.Tensor:
        if gate != "empty":
            raise UserError(f"--reward-gate {gate} is a music gate: the audio domain has only 'empty'")
        return embedded & torch.tensor([is_valid_clip(c) for c in completions], dtype=torch.bool)

    def quick_figures(self, completions: list, prompts, G: int, generator=None) -> dict[str, float]:
        n = max(len(completions), 1)
        return {"valid_rate": sum(is_valid_clip(c) for c in completions) / n}

    def judge(self, prompts, completions: list, rows: dict, G: int, judges: Judges, generator=None) -> dict:
        from divcfg.judges.pairs import group_mean_diversity
        K = len(prompts)
        valid = [is_valid_clip(c) for c in completions]
        if judges.quality is not None:
            texts = [prompts.texts[r // G] for r in range(len(completions))]
            q = torch.as_tensor(judges.quality.score(texts, completions)).float().cpu()
        else:
            q = torch.full((len(completions),), float("nan"))
        d_prompt = group_mean_diversity(judges.diversity, completions, G)
        return {"per_generation": {"quality": q.tolist(), "valid": valid, "n_notes": [int(v) for v in valid],
                                   "seconds": [0.0 if c is None else np.asarray(c).shape[-1] / (getattr(generator, "sampling_rate", 0) or 1)
                                               for c in completions]},
                "per_prompt": {"quality": q.view(K, G).mean(1).tolist(), "diversity": d_prompt.tolist()},
                "summary": {}}

    def reference(self, prompts, judges: Judges, **kw) -> dict:
        return {"diversity_between_prompts": float("nan")}   # prompts are text, the judge hears audio

    def write(self, out: Path, rows: list[dict], generator) -> list[str]:
        """One WAV per row (``<prompt slug>_<index>.wav``); ``completion`` becomes the file's path."""
        from divcfg.models.musicgen import write_wav
        from divcfg.sample import slug
        sr = int(generator.sampling_rate)
        files = []
        for r in rows:
            clip = r.get("completion")
            r["completion"] = None
            if clip is None:
                continue
            path = write_wav(Path(out) / f"{slug(r['prompt'])}_{r['index']}.wav", clip, sr)
            r["completion"] = r["file"] = str(path)
            r["seconds"] = np.asarray(clip).shape[-1] / sr
            files.append(str(path))
        return files
