"""The text–music alignment scorer (the MuLan-score analogue): ``quality(x, y) = cos(t(x), m(y))``.

Text side ``t``: the frozen MiniLM sentence embedding (``divcfg.embedders.text``, 384-d, unit
norm) followed by a trainable two-layer projection to ``out_dim``, normalised.

Music side ``m``: its own encoder over the REMI token ids (not the diversity embedder's weights).
Token embeddings ``e_1..e_T`` feed two paths that are summed, with an embedding of the bar count
``n_bars`` (number of Bar tokens, capped at ``max_bars``):

- a bag of tokens ``mean_t e_t`` (pitch content → key, TimeSig tokens → meter, Position/Duration
  tokens → rhythm vocabulary);
- a strided 1-D convolution (``conv_stride`` tokens per step) + learned positions + ``depth``
  transformer blocks, mean-pooled over the non-padding steps (order: melody, phrase shape).

then a linear projection to ``out_dim``, normalised. Ids are cleaned with ``strip_special`` and
truncated to ``max_len``.

Training (``divcfg scorer train``, see ``alignment_cli``) is CLIP's symmetric contrastive loss on
(caption, piece) pairs of the training split, one random caption variant per piece and step.

Degenerate generations: an empty, note-less or undecodable sequence gets the minimum score
``-1.0`` and is counted in ``scorer.stats["empty_or_undecodable"]`` (with a warning per call),
so that degenerate CFG outputs can never look good.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from divcfg.errors import UserError

KIND = "alignment_scorer"
TEXT_DIM = 384
MIN_SCORE = -1.0


@dataclass
class ScorerConfig:
    """Architecture of the scorer (stored in the checkpoint)."""
    vocab_size: int
    pad_id: int
    bar_id: int
    dim: int = 128
    depth: int = 2
    heads: int = 4
    conv_stride: int = 4
    max_len: int = 1024
    max_bars: int = 64
    out_dim: int = 128
    text_hidden: int = 256


SCORER_SIZES = {
    "tiny": dict(dim=64, depth=1, heads=2, out_dim=64, text_hidden=128),
    "small": dict(dim=128, depth=2, heads=4, out_dim=128, text_hidden=256),
}


class MusicTokenEncoder(nn.Module):
    """REMI ids ``[B, T]`` -> ``[B, dim]`` (see the module docstring)."""

    def __init__(self, cfg: ScorerConfig):
        super().__init__()
        self.cfg = cfg
        d, s = cfg.dim, cfg.conv_stride
        self.tok = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)
        self.conv = nn.Conv1d(d, d, kernel_size=2 * s, stride=s, padding=s // 2)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_len // s + 2, d) * 0.02)
        self.bars = nn.Embedding(cfg.max_bars + 1, d)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, 0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        mask = ids != cfg.pad_id                                         # [B, T]
        m = mask.float().unsqueeze(-1)
        e = self.tok(ids) * m
        bag = e.sum(1) / m.sum(1).clamp(min=1)
        h = self.conv(e.transpose(1, 2)).transpose(1, 2)                 # [B, T', d]
        hm = F.max_pool1d(mask.float().unsqueeze(1), 2 * cfg.conv_stride, cfg.conv_stride,
                          cfg.conv_stride // 2).squeeze(1)[:, :h.shape[1]] > 0
        hm[:, 0] |= ~hm.any(1)                                           # keep one step for empty rows
        h = self.blocks(h + self.pos[:, :h.shape[1]], src_key_padding_mask=~hm)
        hmf = hm.float().unsqueeze(-1)
        seq = (h * hmf).sum(1) / hmf.sum(1).clamp(min=1)
        n_bars = (ids == cfg.bar_id).sum(1).clamp(max=cfg.max_bars)
        return self.norm(seq + bag + self.bars(n_bars))


class AlignmentScorer(nn.Module):
    def __init__(self, cfg: ScorerConfig, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.music = MusicTokenEncoder(cfg)
        self.music_proj = nn.Linear(cfg.dim, cfg.out_dim)
        self.text_proj = nn.Sequential(nn.Linear(TEXT_DIM, cfg.text_hidden), nn.GELU(),
                                       nn.Linear(cfg.text_hidden, cfg.out_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.tokenizer = tokenizer
        self.stats: Counter = Counter()   # "scored", "empty_or_undecodable"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- the two towers ---------------------------------------------------------------------
    def pad_batch(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Clean, truncate and right-pad id lists into ``LongTensor[B, T]``."""
        from divcfg.music.tokenizer import strip_special
        rows = []
        for s in seqs:
            s = s.tolist() if hasattr(s, "tolist") else list(s)
            if self.tokenizer is not None:
                s = strip_special(self.tokenizer, s)
            rows.append([i for i in s if 0 <= i < self.cfg.vocab_size][:self.cfg.max_len])
        width = max([len(r) for r in rows] + [1])
        out = torch.full((len(rows), width), self.cfg.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out.to(self.device)

    def music_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.music_proj(self.music(ids)), dim=-1)

    def text_embed(self, minilm: torch.Tensor) -> torch.Tensor:
        """Frozen MiniLM embeddings ``[B, 384]`` -> unit ``[B, out_dim]``."""
        return F.normalize(self.text_proj(minilm.to(self.device)), dim=-1)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        from divcfg.embedders.text import get_text_embedder
        return self.text_embed(get_text_embedder().encode(list(prompts)))

    # -- scoring ----------------------------------------------------------------------------
    def usable(self, gen: Sequence[int]) -> bool:
        """Decodes to a score with at least one note."""
        from divcfg.music.tokenizer import tokens_to_score
        if self.tokenizer is None:
            raise UserError("this scorer has no tokenizer: load it with load_alignment_scorer(path)")
        return tokens_to_score(self.tokenizer, gen.tolist() if hasattr(gen, "tolist") else list(gen)) is not None

    @torch.no_grad()
    def score(self, prompts: Sequence[str], gens: Sequence[Sequence[int]], batch_size: int = 128) -> torch.Tensor:
        """``cos(text(prompt_i), music(gen_i))`` as ``FloatTensor[N]``; -1 for an empty, note-less
        or undecodable generation (counted in ``stats``, one warning per call)."""
        if len(prompts) != len(gens):
            raise UserError(f"score needs one prompt per generation: got {len(prompts)} and {len(gens)}")
        was_training = self.training
        self.eval()
        ok = [self.usable(g) for g in gens]
        out = torch.full((len(gens),), MIN_SCORE)
        idx = [i for i, good in enumerate(ok) if good]
        for b in range(0, len(idx), batch_size):
            chunk = idx[b:b + batch_size]
            t = self.encode_text([prompts[i] for i in chunk])
            m = self.music_embed(self.pad_batch([gens[i] for i in chunk]))
            out[chunk] = (t * m).sum(-1).cpu()
        bad = len(gens) - len(idx)
        self.stats["scored"] += len(gens)
        self.stats["empty_or_undecodable"] += bad
        if bad:
            warnings.warn(f"alignment scorer: {bad} of {len(gens)} generations are empty, note-less or "
                          f"undecodable and scored {MIN_SCORE}", stacklevel=2)
        self.train(was_training)
        return out

    def forward(self, prompts: Sequence[str], gens: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.score(prompts, gens)


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_alignment_scorer(path, scorer: AlignmentScorer, *, tokenizer_path=None, extra: dict | None = None,
                          training_state: dict | None = None) -> Path:
    import json
    from divcfg.checkpoint import save_checkpoint
    from divcfg.music.judges.diversity import TOKENIZER_FILE
    config = {"kind": KIND, "scorer": asdict(scorer.cfg), **(extra or {})}
    if tokenizer_path is not None:
        config["tokenizer"] = json.loads(Path(tokenizer_path).read_text())
    path = save_checkpoint(path, scorer.state_dict(), config, training_state)
    if tokenizer_path is not None:
        (Path(path) / TOKENIZER_FILE).write_text(Path(tokenizer_path).read_text())
    return path


def load_alignment_scorer(path: str | os.PathLike, device: str = "cpu") -> AlignmentScorer:
    """Load the scorer from a checkpoint folder, in eval mode, with its tokenizer."""
    from divcfg.checkpoint import load_checkpoint, load_into
    from divcfg.music.judges.diversity import tokenizer_from_checkpoint
    state, config = load_checkpoint(path, kind=KIND)
    scorer = AlignmentScorer(ScorerConfig(**config["scorer"]), tokenizer_from_checkpoint(Path(path), config))
    return load_into(scorer, state, path, device)
