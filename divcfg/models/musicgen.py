"""MusicGen (``MusicgenForConditionalGeneration`` from transformers) as a divcfg generator: the module
protocol of ``divcfg.sampling`` / ``divcfg.guidance`` / ``divcfg.objectives``, unchanged.

**Codebooks as a flattened token stream.** MusicGen predicts, at decoder step ``s``, K codebook
tokens at once from the frames before ``s``: ``p(z_s | x, z_<s) = Π_k p_k(z_{s,k} | x, z_<s)``, the
K codebooks *independent given the past* (transformers samples the K rows of one step separately).
So the product factorises exactly as a chain over the flattened stream
``z_{1,0} z_{1,1} … z_{1,K−1} z_{2,0} …``: the distribution of ``z_{s,k}`` given everything before
it in the stream is ``p_k(· | x, z_<s)`` (the codes ``z_{s,<k}`` of the same step are simply not
looked at). The adapter presents that stream to the core, one codebook token per core token::

    tokens:  [BOS] z_{1,0} … z_{1,K−1}  z_{2,0} …  z_{S,K−1}  [EOS]        (max_len = S·K + 2)
    logits[:, t] predicts tokens[:, t+1]; t = (s−1)·K + k  ↔  step s, codebook k

``logits[:, t]`` comes from decoder position ``s−1``, which reads frames ``0 … s−1`` (frame 0 = the
decoder start token in every codebook). ``forward_step`` therefore calls the decoder once per
*frame* (when its K-th token arrives) and answers the other K−1 calls from the stored (B, K, C)
logits of that position. Per-token sampling (temperature, top-k, top-p) is per codebook row, as in
transformers; the token KL summed over the stream is the KL summed over codebooks and steps.

**Vocabulary.** ``0 … C−1`` the codec's codes (``C = decoder.vocab_size``), ``C`` = the delay token
(MusicGen's pad / decoder-start id, fed to the decoder as ``decoder_start_token_id``), ``C+1`` BOS,
``C+2`` EOS, ``C+3`` PAD (divcfg's; never fed as codes). ``vocab_size = C + 4``; the four extra
columns get the logit ``FORBIDDEN`` (a large finite negative, so CFG's ``(1−γ)·ℓ_u + γ·ℓ_c`` stays
finite) except where forced.

**The delay pattern.** Codebook k is delayed by ``d_k`` steps (``build_delay_pattern_mask``):
``d_k = k`` for mono models; stereo models interleave left/right codebooks, ``d_k = ⌊k/2⌋``. With
``D = max d_k`` and ``M = S + 1`` decoder positions (the start included), codebook k holds the delay
token at steps ``s ≤ d_k`` and ``s ≥ M − D + d_k``, i.e. ``F = S − D`` audio frames. Those positions, and EOS
after the last step, are *forced*: their logit row is 0 at the forced id and ``FORBIDDEN``
elsewhere, identical for the conditional and the null condition. Consequences, all exact and with
no change to the core: the sampler draws the forced id (log-prob 0); CFG leaves the row unchanged;
the divergence to the teacher is 0 there and no gradient reaches the model (the row is a
constant), i.e. the delayed positions are masked out of the KL; ``log π(y|x)`` is MusicGen's.
One convention differs from a hand-written MusicGen loss: the core's per-token mean divides by all
``S·K + 1`` stream positions (forced ones included), a constant factor for a fixed duration.

**Conditioning.** ``cond`` is a (B, P) LongTensor of T5 token ids, right-padded with the text pad
id (``encode_prompts``); the frozen T5 encoder runs inside the adapter (``attention_mask = ids ≠
pad``). The null condition ∅ is MusicGen's own: zero encoder states with an all-zero attention
mask, exactly as ``generate(guidance_scale=γ)`` builds its unconditional half (``cond=None``: width
1, which gives the same logits since every key is masked). ``transformers``' CFG,
``ℓ_u + γ(ℓ_c − ℓ_u)``, is ``divcfg.guidance.cfg_logits``; after a softmax it equals
``cfg_logprobs``. The text and audio encoders are frozen (``requires_grad=False``): fine-tuning
updates the decoder (and the encoder-to-decoder projection), as AudioCraft trains MusicGen.
"""

from __future__ import annotations

import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from divcfg.errors import UserError

FORBIDDEN = -1e9   # the logit of ids that cannot come next (finite: see the module docstring)


@dataclass
class MusicgenGeneratorConfig:
    """Protocol fields (``bos_id``, ``eos_id``, ``pad_id``, ``max_len``, ``vocab_size``) plus the
    codebook layout: K codebooks of C codes, ``steps`` decoder steps = ``frames + D`` (D = the
    largest codebook delay: K − 1 mono, K/2 − 1 stereo), ``channels`` 1 or 2."""
    bos_id: int
    eos_id: int
    pad_id: int
    max_len: int
    vocab_size: int
    num_codebooks: int
    codebook_size: int
    delay_id: int
    steps: int
    frames: int
    text_pad_id: int = 0
    channels: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def steps_for_max_len(max_len: int, num_codebooks: int) -> int:
    """Decoder steps S that fit ``max_len`` stream positions (``S·K + 2 ≤ max_len``)."""
    return (int(max_len) - 2) // int(num_codebooks)


@dataclass
class MusicgenCache:
    """State of ``forward_step``: the transformers ``EncoderDecoderCache``, the encoder states and
    mask of each row, the stream tokens fed so far, those of the unfinished frame, and the (B, K, C)
    logits of the last decoder position."""
    batch: int
    kv: object | None = None
    states: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    n_tokens: int = 0
    frames_fed: int = 0
    pending: torch.Tensor | None = None
    last_logits: torch.Tensor | None = None


class MusicgenGenerator(nn.Module):
    """Wraps ``model`` (a ``MusicgenForConditionalGeneration``) for ``frames`` audio frames
    (``frames / frame_rate`` seconds). Stereo models (``audio_channels=2``) interleave left and
    right codebooks; a pair shares one delay, and each channel is decoded by the codec separately."""

    def __init__(self, model: nn.Module, *, frames: int, text_pad_id: int = 0):
        super().__init__()
        dec = model.config.decoder
        K, C = int(dec.num_codebooks), int(dec.vocab_size)
        channels = int(getattr(dec, "audio_channels", 1) or 1)
        if channels not in (1, 2) or K % channels:
            raise UserError(f"a MusicGen decoder with {channels} audio channels and {K} codebooks is not supported: "
                            f"use a mono or stereo MusicGen checkpoint")
        if frames < 1:
            raise UserError(f"a MusicGen generation needs at least 1 audio frame, got {frames}: raise --max-new-tokens")
        self.lm = model
        self.lm.text_encoder.requires_grad_(False)
        self.lm.audio_encoder.requires_grad_(False)
        self.delays = [k // channels for k in range(K)]
        S = frames + max(self.delays)
        self.cfg = MusicgenGeneratorConfig(bos_id=C + 1, eos_id=C + 2, pad_id=C + 3, max_len=S * K + 2,
                                           vocab_size=C + 4, num_codebooks=K, codebook_size=C, delay_id=C,
                                           steps=S, frames=int(frames), text_pad_id=int(text_pad_id),
                                           channels=channels)
        gen_cfg = getattr(model, "generation_config", None)
        start = getattr(gen_cfg, "decoder_start_token_id", None) if gen_cfg is not None else None
        if start is None:
            start = dec.bos_token_id if dec.bos_token_id is not None else dec.pad_token_id
        self.start_id = int(start)          # what transformers feeds at frame 0 and delayed positions
        forced = self._forced_ids()
        self.register_buffer("forced", forced, persistent=False)
        self._forced_host = forced.tolist()   # branch on the host: no device sync per sampled token

    # ------------------------------------------------------------------ layout

    def _forced_ids(self) -> torch.Tensor:
        """(max_len,) the forced id of each logit position t (−1: sampled), see the docstring; after
        EOS (the last position) PAD."""
        c = self.cfg
        K, S = c.num_codebooks, c.steps
        t = torch.arange(S * K)
        s, k = t // K + 1, t % K
        d = torch.tensor(self.delays)[k]
        delayed = (s <= d) | (s >= S - max(self.delays) + 1 + d)
        forced = torch.where(delayed, torch.full_like(t, c.delay_id), torch.full_like(t, -1))
        return torch.cat([forced, torch.tensor([c.eos_id, c.pad_id])])

    def _apply_forced(self, logits: torch.Tensor, t0: int) -> torch.Tensor:
        """``logits`` (B, T, V) for positions ``t0 … t0+T−1``: forced rows replaced."""
        T = logits.shape[1]
        if all(i < 0 for i in self._forced_host[t0:t0 + T]):
            return logits
        ids = self.forced[t0:t0 + T]
        hit = ids >= 0
        onehot = torch.full((T, logits.shape[-1]), FORBIDDEN, dtype=logits.dtype, device=logits.device)
        onehot.scatter_(1, ids.clamp(min=0).unsqueeze(1), 0.0)
        return torch.where(hit.view(1, T, 1), onehot.unsqueeze(0), logits)

    def _widen(self, logits: torch.Tensor) -> torch.Tensor:
        """(…, C) codebook logits -> (…, C+4) stream logits (the extra ids ``FORBIDDEN``)."""
        extra = logits.new_full((*logits.shape[:-1], self.cfg.vocab_size - self.cfg.codebook_size), FORBIDDEN)
        return torch.cat([logits, extra], dim=-1)

    def _decoder_ids(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, n, K) stream ids -> (B·K, n) decoder ids (codes kept, anything else -> start id)."""
        ids = torch.where(frames < self.cfg.codebook_size, frames, torch.full_like(frames, self.start_id))
        B, n, K = ids.shape
        return ids.permute(0, 2, 1).reshape(B * K, n)

    # ------------------------------------------------------------------ conditioning

    def encoder_states(self, cond: torch.Tensor | None, null_mask: torch.Tensor | None, batch: int,
                       device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(states (B, P, D), attention_mask (B, P))`` of the T5 encoder; ∅ rows: zeros, mask 0."""
        hidden = int(self.lm.text_encoder.config.hidden_size if hasattr(self.lm.text_encoder.config, "hidden_size")
                     else self.lm.text_encoder.config.d_model)
        dtype = next(self.lm.decoder.parameters()).dtype
        if cond is None or cond.shape[1] == 0:
            return (torch.zeros(batch, 1, hidden, device=device, dtype=dtype),
                    torch.zeros(batch, 1, dtype=torch.long, device=device))
        if cond.dim() != 2 or cond.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"cond must be a (B, P) integer tensor of T5 ids, got {tuple(cond.shape)} {cond.dtype}")
        if cond.shape[0] != batch:
            raise ValueError(f"cond has {cond.shape[0]} rows for a batch of {batch}")
        ids = cond.long()
        mask = (ids != self.cfg.text_pad_id).long()
        with torch.no_grad():
            states = self.lm.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if null_mask is not None:
            rows = null_mask.to(device).view(batch, 1)
            states = torch.where(rows.unsqueeze(-1), torch.zeros_like(states), states)
            mask = torch.where(rows, torch.zeros_like(mask), mask)
        return states, mask

    def _decode_frames(self, frames: torch.Tensor, states, mask, kv=None) -> torch.Tensor:
        """Decoder logits (B, n, K, C) for decoder inputs ``frames`` (B, n, K) (stream ids)."""
        B, n, K = frames.shape
        out = self.lm(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=self._decoder_ids(frames),
                      cache=kv, use_cache=kv is not None)
        return out.logits.reshape(B, K, n, -1).permute(0, 2, 1, 3)

    def _start_frame(self, B: int, device) -> torch.Tensor:
        return torch.full((B, 1, self.cfg.num_codebooks), self.cfg.delay_id, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ protocol

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Stream logits (B, T, C+4); ``logits[:, t]`` predicts ``tokens[:, t+1]`` (``tokens[:, 0]``
        is BOS). Forced positions (delays, EOS) hold their one-hot rows."""
        B, T = tokens.shape
        c = self.cfg
        if T > c.max_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_len={c.max_len}")
        K = c.num_codebooks
        T_dec = min(T, c.steps * K)              # positions that need the decoder
        n = (T_dec - 1) // K + 1 if T_dec > 0 else 0
        parts = []
        if n > 0:
            body = tokens[:, 1:1 + (n - 1) * K].reshape(B, n - 1, K)
            frames = torch.cat([self._start_frame(B, tokens.device), body], dim=1)
            states, mask = self.encoder_states(cond, null_mask, B, tokens.device)
            logits = self._decode_frames(frames, states, mask).reshape(B, n * K, -1)[:, :T_dec]
            parts.append(self._widen(logits))
        if T > T_dec:
            dtype = parts[0].dtype if parts else torch.float32
            parts.append(torch.full((B, T - T_dec, c.vocab_size), FORBIDDEN, dtype=dtype, device=tokens.device))
        return self._apply_forced(torch.cat(parts, dim=1), 0)

    def new_cache(self, batch: int, dtype: torch.dtype | None = None) -> MusicgenCache:
        return MusicgenCache(batch)

    def forward_step(self, tokens: torch.Tensor, cache: MusicgenCache, cond: torch.Tensor | None = None,
                     null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Incremental forward: feed ``tokens`` (B, T) (the first call starts with BOS); returns the
        logits (B, C+4) of the next stream token. One decoder call per completed frame."""
        B, T = tokens.shape
        c = self.cfg
        K = c.num_codebooks
        if B != cache.batch:
            raise ValueError(f"cache made for {cache.batch} rows, got {B}")
        if cache.n_tokens + T > c.max_len:
            raise ValueError(f"KV cache full: max_len={c.max_len} tokens")
        new = tokens
        frames = []
        if cache.n_tokens == 0:
            from transformers import DynamicCache, EncoderDecoderCache
            cache.states, cache.mask = self.encoder_states(cond, null_mask, B, tokens.device)
            dcfg = self.lm.decoder.config
            cache.kv = EncoderDecoderCache(DynamicCache(config=dcfg), DynamicCache(config=dcfg))
            cache.pending = tokens[:, :0]
            frames.append(self._start_frame(B, tokens.device))
            new = tokens[:, 1:]
        pending = torch.cat([cache.pending, new], dim=1)
        n_full = pending.shape[1] // K
        if n_full:
            frames.append(pending[:, :n_full * K].reshape(B, n_full, K))
        cache.pending = pending[:, n_full * K:]
        cache.n_tokens += T
        if frames:
            frames = torch.cat(frames, dim=1)
            # frames at decoder positions >= steps only predict the forced EOS: never run them
            keep = max(0, min(frames.shape[1], c.steps - cache.frames_fed))
            if keep:
                cache.last_logits = self._decode_frames(frames[:, :keep], cache.states, cache.mask, cache.kv)[:, -1]
            cache.frames_fed += frames.shape[1]
        t = cache.n_tokens - 1                   # the logit position answered
        if t < c.steps * K:
            row = self._widen(cache.last_logits[:, t % K])
        else:
            dtype = cache.last_logits.dtype if cache.last_logits is not None else torch.float32
            row = torch.full((B, c.vocab_size), FORBIDDEN, dtype=dtype, device=tokens.device)
        return self._apply_forced(row.unsqueeze(1), t)[:, 0]

    # ------------------------------------------------------------------ audio

    @property
    def sampling_rate(self) -> int:
        return int(self.lm.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.lm.config.audio_encoder.frame_rate)

    def codes(self, seq: list[int]) -> torch.Tensor | None:
        """A generated stream (no BOS/EOS) -> codec codes (K, F'), the delay pattern undone; the
        complete frames only (F' = F for a full generation). None if a code is not a code."""
        c = self.cfg
        K, D = c.num_codebooks, max(self.delays)
        n = len(seq) // K
        F = n - D
        if F <= 0:
            return None
        grid = torch.tensor(seq[:n * K], dtype=torch.long).view(n, K)
        codes = torch.stack([grid[d:d + F, k] for k, d in enumerate(self.delays)])
        if bool((codes < 0).any() or (codes >= c.codebook_size).any()):
            return None
        return codes

    @torch.no_grad()
    def audio(self, seqs: list[list[int]]) -> list[np.ndarray | None]:
        """Waveforms (float32 at ``sampling_rate``; shape (samples,) mono, (2, samples) stereo) of
        generated streams, via the EnCodec decoder (None where a stream has no complete frame)."""
        out: list[np.ndarray | None] = [None] * len(seqs)
        codes = [self.codes(s) for s in seqs]
        by_len: dict[int, list[int]] = {}
        for i, cd in enumerate(codes):
            if cd is not None:
                by_len.setdefault(cd.shape[1], []).append(i)
        device = next(self.lm.audio_encoder.parameters()).device
        for idx in by_len.values():
            batch = torch.stack([codes[i] for i in idx]).to(device)          # (B, K, F)
            scales = [None] * len(idx)
            if self.cfg.channels == 1:
                values = self.lm.audio_encoder.decode(batch[None], audio_scales=scales).audio_values[:, :1]
            else:                      # as transformers' generate: even codebooks left, odd right
                values = torch.cat([self.lm.audio_encoder.decode(batch[None, :, ch::2], audio_scales=scales)
                                    .audio_values[:, :1] for ch in (0, 1)], dim=1)
            for j, i in enumerate(idx):
                v = values[j].float().cpu().numpy()
                out[i] = v[0] if self.cfg.channels == 1 else v
        return out


def write_wav(path: str | Path, samples: np.ndarray, sampling_rate: int) -> Path:
    """16-bit PCM WAV (samples clipped to [−1, 1]): (samples,) mono or (channels, samples)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.asarray(samples, dtype=np.float32)
    x = x[None] if x.ndim == 1 else x
    pcm = (np.clip(x.T, -1.0, 1.0) * 32767.0).astype("<i2")             # interleaved frames
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[0])
        w.setsampwidth(2)
        w.setframerate(int(sampling_rate))
        w.writeframes(pcm.tobytes())
    return path


def encode_texts(tokenizer, texts: list[str], pad_id: int = 0, max_length: int | None = None) -> torch.Tensor:
    """``cond`` (B, P) for ``MusicgenGenerator``: T5 ids (with the tokenizer's EOS), right-padded with
    ``pad_id`` to the longest; ``max_length`` keeps each prompt's first tokens."""
    if isinstance(texts, str):
        texts = [texts]
    rows = tokenizer(list(texts))["input_ids"]
    if max_length is not None:
        rows = [r[:max_length] for r in rows]
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long).view(len(rows), width)
