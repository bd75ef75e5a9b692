"""A small Vision Transformer over piano-roll patches.

Input ``x[B, C, P, T]`` (channels × pitches × time steps). The pitch axis is zero-padded to a
multiple of ``patch_pitch`` and the time axis to a multiple of ``patch_time``; each
``patch_pitch × patch_time`` patch is linearly embedded (a strided convolution), a learned
position embedding per patch (pitch-row, time-column) is added, and ``depth`` pre-LayerNorm
transformer blocks mix the patches. The output is the LayerNorm'd mean over patches, ``[B, dim]``.

Named sizes (``VIT_CONFIGS``): ``tiny`` for tests, ``small`` (the default: 3 layers, width 128,
octave × 2-beat patches, so a 5-octave × 16-beat chunk is 40 patches; trains on two CPU cores in
minutes), ``paper`` (12 layers, 6 heads, width 384 as in the paper's ViT).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ViTConfig:
    in_channels: int = 2
    n_pitches: int = 88          # rows of the input roll
    n_steps: int = 64            # columns of the input roll
    patch_pitch: int = 12        # one octave
    patch_time: int = 4          # one beat of 16th notes
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    @property
    def grid(self) -> tuple[int, int]:
        return (-(-self.n_pitches // self.patch_pitch), -(-self.n_steps // self.patch_time))

    def to_dict(self) -> dict:
        return asdict(self)


VIT_CONFIGS: dict[str, dict] = {
    "tiny": dict(dim=64, depth=2, heads=2, patch_pitch=12, patch_time=8),
    "small": dict(dim=128, depth=3, heads=4, patch_pitch=12, patch_time=8),
    "paper": dict(dim=384, depth=12, heads=6, patch_pitch=12, patch_time=4),
}


class PianoRollViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=(cfg.patch_pitch, cfg.patch_time),
                               stride=(cfg.patch_pitch, cfg.patch_time))
        rows, cols = cfg.grid
        self.pos = nn.Parameter(torch.randn(1, rows * cols, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, int(cfg.dim * cfg.mlp_ratio), cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        pad_p = (-x.shape[2]) % cfg.patch_pitch
        pad_t = (-x.shape[3]) % cfg.patch_time
        if pad_p or pad_t:
            x = F.pad(x, (0, pad_t, 0, pad_p))
        h = self.patch(x).flatten(2).transpose(1, 2)       # [B, rows*cols, dim]
        if h.shape[1] != self.pos.shape[1]:
            raise ValueError(f"roll of {tuple(x.shape[2:])} does not match the configured "
                             f"{cfg.n_pitches}x{cfg.n_steps} grid")
        h = self.blocks(h + self.pos)
        return self.norm(h.mean(1))
