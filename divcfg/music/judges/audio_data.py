"""The audio E's data: the corpus pieces of a data cache rendered by the synthesiser, positive pairs
of augmented chunks, and held-out retrieval.

**Rendering and its cache.** Each piece's REMI tokens are decoded to a score and rendered by
``music.render.render_audio`` (the General MIDI soundfont, 120 quarter notes per minute, mono,
peak-normalised) at E's sample rate, cut to ``max_seconds``. A split's clips are stored once as one
int16 array plus offsets under ``<data_dir>/audio_cache/<split>-<key>/`` (``audio.npy``,
``offsets.npy``, ``meta.json``), written atomically and read memory-mapped; ``key`` hashes the piece
ids, the rate, the length cap, the soundfont and the tokenizer, so a rerun never re-renders and a
change never reads a stale cache.

**Positive pairs** (:class:`AudioPairSampler`): two non-overlapping windows of one recording, each
independently augmented (``audio.AudioAugment``); a window for tempo factor t spans
``round(t·chunk_frames)`` frames of source. Clips too short for two windows at the largest tempo
are left out of training.

**Held-out retrieval** (:func:`audio_retrieval`), as the symbolic E's ``retrieval``: N held-out
clips, two non-overlapping un-augmented chunks each (deterministic given the seed); a chunk scores
a hit when its nearest neighbour (cosine) among the other 2N−1 chunks is its partner, chance
1/(2N−1). :func:`audio_half_retrieval` embeds the two halves of each clip whole, as E judges
generations.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from divcfg.embedders.audio import (AudioAugment, AudioEmbedder, add_noise,
                                    power_spectrogram, shift_pitch, stretch_time)
from divcfg.errors import UserError

CACHE_DIR = "audio_cache"
PCM_SCALE = 32767.0


# ---------------------------------------------------------------------------------------------
# rendering


def soundfont_or_error():
    from divcfg.music.render import find_soundfont
    sf = find_soundfont()
    if sf is None:
        raise UserError("no General MIDI soundfont: the audio E needs rendered audio (install one: "
                        "`sudo apt-get install timgm6mb-soundfont`, or set DIVCFG_SOUNDFONT=/path/to.sf2)")
    return sf


def render_tokens(tokenizer, tokens, sample_rate: int, max_seconds: float = 0.0) -> np.ndarray | None:
    """Token ids -> mono float32 clip at ``sample_rate`` (None when undecodable or note-less)."""
    from divcfg.music.pianoroll import score_notes
    from divcfg.music.render import render_audio
    from divcfg.music.tokenizer import tokens_to_score
    score = tokens_to_score(tokenizer, list(tokens))
    if score is None or len(score_notes(score)) == 0:
        return None
    clip = render_audio(score, sample_rate)
    if clip is None:
        soundfont_or_error()
    if max_seconds:
        clip = clip[:int(max_seconds * sample_rate)]
    return clip


class ClipSet:
    """A split's rendered clips (float32 views of a memory-mapped int16 array) and their ids."""

    def __init__(self, folder: Path):
        self.audio = np.load(folder / "audio.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")
        self.meta = json.loads((folder / "meta.json").read_text())
        self.ids = self.meta["ids"]
        self.folder = folder

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.audio[self.offsets[i]:self.offsets[i + 1]], dtype=np.float32) / PCM_SCALE

    def seconds(self, i: int) -> float:
        return (self.offsets[i + 1] - self.offsets[i]) / self.meta["sample_rate"]


def render_split(data_dir, split: str, sample_rate: int, max_pieces: int | None = None, seed: int = 0,
                 max_seconds: float = 30.0, progress: bool = True) -> ClipSet:
    """The rendered clips of ``split`` (a random subset of ``max_pieces``), from the cache when there."""
    from divcfg.music.dataset import load_split
    from divcfg.music.tokenizer import load_tokenizer
    data_dir = Path(data_dir)
    if not (data_dir / "tokenizer.json").is_file():
        raise UserError(f"no data cache in '{data_dir}' (no tokenizer.json): build it with "
                        f"`divcfg data --data-dir {data_dir}`")
    sf = soundfont_or_error()
    pieces = load_split(data_dir, split)
    if max_pieces is not None and len(pieces) > max_pieces:
        idx = np.random.default_rng(seed).choice(len(pieces), max_pieces, replace=False)
        pieces = [pieces[i] for i in sorted(idx)]
    ids = [p["id"] for p in pieces]
    key_src = json.dumps({"ids": ids, "sr": int(sample_rate), "max_seconds": float(max_seconds),
                          "soundfont": [str(sf), sf.stat().st_size],
                          "tokenizer": hashlib.sha1((data_dir / "tokenizer.json").read_bytes()).hexdigest()})
    key = hashlib.sha1(key_src.encode()).hexdigest()[:12]
    folder = data_dir / CACHE_DIR / f"{split}-{sample_rate}hz-{len(ids)}-{key}"
    if (folder / "meta.json").is_file():
        return ClipSet(folder)
    tok = load_tokenizer(data_dir)
    clips, kept = [], []
    for p in tqdm(pieces, desc=f"render {split}", unit="piece", disable=not progress, leave=False):
        c = render_tokens(tok, p["tokens"], sample_rate, max_seconds)
        if c is not None and c.size:
            clips.append(np.clip(np.round(c * PCM_SCALE), -32768, 32767).astype(np.int16))
            kept.append(p["id"])
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "audio.npy", np.concatenate(clips) if clips else np.zeros(0, np.int16))
    np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum([len(c) for c in clips])]).astype(np.int64))
    (tmp / "meta.json").write_text(json.dumps({"ids": kept, "sample_rate": int(sample_rate), "split": split,
                                               "max_seconds": max_seconds, "soundfont": str(sf),
                                               "data_dir": str(data_dir)}))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return ClipSet(folder)


# ---------------------------------------------------------------------------------------------
# views and pairs


def view_windows(E: AudioEmbedder, clips, i: int, start: int, frames: int, augment: AudioAugment | None,
                 rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, int, float]:
    """A view's source: ``frames`` frames of clip i from sample ``start`` (with noise added when
    augmenting), its frame count and its pitch shift in semitones."""
    x = torch.from_numpy(read_window(clips, i, start, E.cfg.samples_for(frames)))
    if augment is not None and rng.random() < augment.p_noise:
        x = add_noise(x, float(rng.uniform(*augment.snr_db)), gen)
    semitones = float(rng.uniform(-augment.max_semitones, augment.max_semitones)) if augment is not None else 0.0
    return x, frames, semitones


def views_to_power(E: AudioEmbedder, views: list[tuple[torch.Tensor, int, float]]) -> torch.Tensor:
    """Views -> power spectrograms ``[V, F, chunk_frames]``: one batched STFT over the zero-padded
    sources, each cut to its own frames and resampled in time (tempo), then pitch-shifted."""
    cfg = E.cfg
    n = max(len(x) for x, _, _ in views)
    power = power_spectrogram(torch.stack([torch.nn.functional.pad(x, (0, n - len(x))) for x, _, _ in views]), cfg)
    return torch.stack([shift_pitch(stretch_time(p[:, :f], cfg.chunk_frames), s)
                        for p, (_, f, s) in zip(power, views)])


class AudioPairSampler:
    """Batches of positive pairs (module docstring): ``batch(B) -> [2B, F, chunk_frames]`` power
    spectrograms, rows 2b and 2b+1 from clip b."""

    def __init__(self, E: AudioEmbedder, clips, augment: AudioAugment | None, seed: int = 0):
        self.E, self.augment = E, augment
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.max_tempo = augment.max_tempo if augment is not None else 1.0
        need = 2 * E.cfg.samples_for(math.ceil(self.max_tempo * E.cfg.chunk_frames))
        self.source = clips   # read clip by clip (a ClipSet is memory-mapped)
        self.index = [i for i in range(len(clips)) if clip_length(clips, i) >= need]
        if len(self.index) < 2:
            raise UserError(f"only {len(self.index)} clips are long enough for two {E.cfg.chunk_seconds:.1f}-second "
                            f"chunks: use a shorter chunk (--preset tiny) or more data")

    def pair(self, i: int) -> list[tuple[torch.Tensor, int, float]]:
        """The two views of clip ``i`` of the source."""
        cfg, a = self.E.cfg, self.augment
        if a is not None and a.max_tempo > 1:
            t = np.exp(self.rng.uniform(-1, 1, 2) * math.log(a.max_tempo))
        else:
            t = np.ones(2)
        frames = [max(2, round(f * cfg.chunk_frames)) for f in t]
        lens = [cfg.samples_for(f) for f in frames]
        total = clip_length(self.source, i)
        first = int(self.rng.integers(0, total - sum(lens) + 1))
        second = int(self.rng.integers(first + lens[0], total - lens[1] + 1))
        views = [view_windows(self.E, self.source, i, first, frames[0], a, self.rng, self.gen),
                 view_windows(self.E, self.source, i, second, frames[1], a, self.rng, self.gen)]
        return views[::-1] if self.rng.random() < 0.5 else views   # the earlier window is not always view 1

    def batch(self, batch_size: int) -> torch.Tensor:
        idx = self.rng.choice(len(self.index), size=min(batch_size, len(self.index)), replace=False)
        return views_to_power(self.E, [v for i in idx for v in self.pair(self.index[i])])


# ---------------------------------------------------------------------------------------------
# evaluation


def _top_k(z: torch.Tensor) -> dict:
    sim = (z @ z.T).fill_diagonal_(-2.0)
    target = torch.arange(len(z)) ^ 1
    rank = (sim > sim[torch.arange(len(z)), target][:, None]).sum(1)
    return {"top1": (sim.argmax(1) == target).float().mean().item(), "top5": (rank < 5).float().mean().item(),
            "chance": 1 / (len(z) - 1), "n_pieces": len(z) // 2, "n_chunks": len(z)}


def read_window(clips, i: int, start: int, n: int) -> np.ndarray:
    """Samples ``start .. start+n`` of clip i as float32 (only those are read from a ClipSet)."""
    if isinstance(clips, ClipSet):
        off = int(clips.offsets[i]) + start
        return np.asarray(clips.audio[off:off + n], dtype=np.float32) / PCM_SCALE
    return np.asarray(clips[i][start:start + n], dtype=np.float32)


def clip_length(clips, i: int) -> int:
    """Samples in clip i (without reading a memory-mapped clip)."""
    return int(clips.offsets[i + 1] - clips.offsets[i]) if isinstance(clips, ClipSet) else len(clips[i])


def _pick(clips, n: int, need: int, seed: int) -> list[np.ndarray]:
    long = [i for i in range(len(clips)) if clip_length(clips, i) >= need]
    if len(long) < 2:
        raise UserError(f"only {len(long)} held-out clips are long enough for retrieval: use more data")
    sel = np.random.default_rng(seed).choice(len(long), min(n, len(long)), replace=False)
    return [clips[long[i]] for i in sel]


@torch.no_grad()
def audio_retrieval(E: AudioEmbedder, clips, n_pieces: int = 100, seed: int = 0) -> dict:
    """Top-1/top-5 same-clip retrieval among 2N un-augmented held-out chunks (module docstring)."""
    E.eval()
    sampler = AudioPairSampler(E, _pick(clips, n_pieces, 2 * E.cfg.chunk_samples, seed), None, seed)
    power = views_to_power(E, [v for i in sampler.index for v in sampler.pair(i)])
    z = torch.cat([E(E.features(power[i:i + 128].to(E.device))) for i in range(0, len(power), 128)]).float().cpu()
    return _top_k(z)


@torch.no_grad()
def audio_half_retrieval(embed: Callable[[list[np.ndarray]], torch.Tensor], clips, chunk_samples: int,
                         n_pieces: int = 100, seed: int = 0) -> dict:
    """Each of N held-out clips (≥ two chunks long) cut at its middle; the halves embedded whole by
    ``embed`` (E's ``embed_waveforms``, or any clip embedder); top-1 = a half's nearest neighbour
    among the other 2N−1 halves is its other half."""
    halves = []
    for w in _pick(clips, n_pieces, 2 * chunk_samples, seed):
        mid = len(w) // 2
        halves += [w[:mid], w[mid:]]
    return _top_k(torch.nn.functional.normalize(torch.as_tensor(embed(halves)).float(), dim=-1))


@torch.no_grad()
def audio_invariance(E: AudioEmbedder, clips, n_pieces: int = 100, seed: int = 0) -> dict:
    """Mean ``1 − cos`` between a held-out chunk and its transformed self (noise at 20 dB SNR, tempo
    ×0.8/×1.25, ±1 and ±6 semitones) beside the mean between chunks of different clips."""
    E.eval()
    cfg = E.cfg
    sel = _pick(clips, n_pieces, cfg.samples_for(math.ceil(1.25 * cfg.chunk_frames)), seed)
    gen = torch.Generator().manual_seed(seed)

    def emb(transform) -> torch.Tensor:
        return E(E.features(torch.stack([transform(torch.from_numpy(np.ascontiguousarray(w))) for w in sel])))

    def chunk(x: torch.Tensor, frames: int = cfg.chunk_frames) -> torch.Tensor:
        return stretch_time(power_spectrogram(x[:cfg.samples_for(frames)], cfg), cfg.chunk_frames)

    e0 = emb(chunk)
    out = {"noise_20db": emb(lambda x: chunk(add_noise(x, 20.0, gen)))}
    for f in (0.8, 1.25):
        out[f"tempo_{f:g}"] = emb(lambda x, f=f: chunk(x, round(f * cfg.chunk_frames)))
    for s in (1, -1, 6, -6):
        out[f"pitch_{s:+d}"] = emb(lambda x, s=s: shift_pitch(chunk(x), float(s)))
    res = {k: float((1 - (e0 * v).sum(-1)).mean()) for k, v in out.items()}
    res["other_piece"] = float((1 - (e0 * e0.roll(1, 0)).sum(-1)).mean())
    return res


def stand_in_embed(sample_rate: int) -> Callable[[list[np.ndarray]], torch.Tensor]:
    """The untrained log-mel statistics stand-in (``domains.audio.LogMelStatsDiversity``) as a clip embedder."""
    from divcfg.domains.audio import LogMelStatsDiversity
    judge = LogMelStatsDiversity(sample_rate)
    return lambda clips: torch.stack([judge.embed_one(c) for c in clips])
