"""The diversity embedder ``E`` and the diversity of pairs and groups of generations.

``E`` maps a piece (a REMI token-id list) to a unit vector. A piece is cut into non-overlapping
chunks of ``chunk_steps`` grid steps tiling it from the start (``pianoroll.chunk_starts``; at most
``max_chunks``, spread evenly); each chunk's piano roll goes through the ViT and a projection
head to a unit vector ``z_k``; the piece's embedding is the normalised mean

    E(y) = Σ_k z_k / ‖Σ_k z_k‖          ("chunks averaged").

With ``canonical_key`` (the default) the whole piece is first transposed to its canonical key
and octave (``pianoroll.canonical_key``), so ``E(transpose(y, k)) = E(y)`` exactly: E is blind to
key by construction, and its diversity comes from melody, rhythm and texture (the prompts fix the
key; a diversity reward that paid for key changes would pay for ignoring the prompt).

An undecodable or note-less generation embeds as one all-zero chunk, and is counted in
``E.stats["empty_or_undecodable"]`` (``tokens_to_score`` reports both as None).

Diversity of a pair: ``d(y1, y2) = 1 - cos(E(y1), E(y2)) ∈ [0, 2]``. By default a pair with an
empty/undecodable member gets ``empty_value = 0`` (no credit for degenerate output: otherwise an
empty sample would look maximally "different" from a real one). For G ≥ 2 generations of one
prompt, ``group_diversity`` returns the mean over the G(G-1)/2 pairs and the per-sample
leave-one-out rewards ``r_i = mean_{j≠i} d(y_i, y_j)``.

Training (``divcfg embedder train``, see ``diversity_cli``) is self-supervised InfoNCE: two
non-overlapping chunks of one piece, independently augmented (``pianoroll.Augment``), are a positive
pair; the other pieces of the batch are negatives.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from divcfg.embedders.vit import VIT_CONFIGS, PianoRollViT, ViTConfig
from divcfg.errors import UserError
from divcfg.music import pianoroll as pr

KIND = "diversity_embedder"
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class EmbedderConfig:
    """Architecture of ``E`` (stored in the checkpoint)."""
    vit: str = "small"                 # named ViT size: tiny | small | paper
    chunk_steps: int = 64              # chunk length in grid steps (64 = 16 quarter notes)
    steps_per_beat: int = 4            # grid steps per quarter note (4 = 16th notes)
    pitch_low: int = 21
    n_pitches: int = 88
    out_dim: int = 128                 # embedding dimension D
    max_chunks: int = 16               # chunks embedded per piece at most (spread over the piece)
    canonical_key: bool = True         # transpose each piece to its canonical key (key-blind E)
    vit_overrides: dict = field(default_factory=dict)

    @property
    def spec(self) -> pr.RollSpec:
        return pr.RollSpec(self.pitch_low, self.n_pitches, self.steps_per_beat)

    @property
    def chunk_beats(self) -> float:
        return self.chunk_steps / self.steps_per_beat

    def vit_config(self) -> ViTConfig:
        if self.vit not in VIT_CONFIGS:
            raise UserError(f"unknown ViT size '{self.vit}': choose one of {', '.join(VIT_CONFIGS)}")
        kw = {**VIT_CONFIGS[self.vit], **self.vit_overrides}
        return ViTConfig(in_channels=2, n_pitches=self.n_pitches, n_steps=self.chunk_steps, **kw)


class DiversityEmbedder(nn.Module):
    """Piano-roll ViT + projection head; ``embed(token-id lists) -> [N, D]`` unit rows."""

    def __init__(self, cfg: EmbedderConfig, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.encoder = PianoRollViT(cfg.vit_config())
        dim = self.encoder.cfg.dim
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, cfg.out_dim))
        self.tokenizer = tokenizer
        self.stats: Counter = Counter()   # "undecodable"/"empty" generations seen by embed()

    # -- chunks -----------------------------------------------------------------------------
    def forward(self, rolls: torch.Tensor) -> torch.Tensor:
        """Chunk rolls ``[B, 2, P, chunk_steps]`` -> unit vectors ``[B, D]``."""
        return F.normalize(self.head(self.encoder(rolls)), dim=-1)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- whole pieces -----------------------------------------------------------------------
    def piece_rolls(self, notes: np.ndarray) -> np.ndarray:
        """The chunks of one piece, ``float32[K, 2, P, chunk_steps]`` (K ≥ 1)."""
        cfg = self.cfg
        if cfg.canonical_key:
            notes = pr.canonical_key(notes)
        starts = pr.chunk_starts(max(1, pr.length_steps(notes, cfg.spec)), cfg.chunk_steps, cfg.max_chunks)
        return np.stack([pr.rasterize(notes, s, cfg.chunk_steps, cfg.spec) for s in starts])

    @torch.no_grad()
    def embed_notes(self, pieces: Sequence[np.ndarray], batch_size: int = 256) -> torch.Tensor:
        """Note arrays (``pianoroll.score_notes``) -> ``[N, D]`` unit rows (chunks averaged)."""
        was_training = self.training
        self.eval()
        rolls = [self.piece_rolls(n) for n in pieces]
        owner = np.concatenate([np.full(len(r), i) for i, r in enumerate(rolls)]) if rolls else np.zeros(0, int)
        flat = np.concatenate(rolls) if rolls else np.zeros((0, 2, self.cfg.n_pitches, self.cfg.chunk_steps), np.float32)
        z = torch.cat([self(torch.from_numpy(flat[i:i + batch_size]).to(self.device))
                       for i in range(0, len(flat), batch_size)]) if len(flat) else torch.zeros(0, self.cfg.out_dim)
        out = torch.zeros(len(pieces), self.cfg.out_dim, device=z.device)
        out.index_add_(0, torch.from_numpy(owner).to(z.device), z)
        self.train(was_training)
        return F.normalize(out, dim=-1).cpu()

    def decode(self, ids: Sequence[int]) -> np.ndarray | None:
        """Token ids -> note array, or None (counted) when undecodable or note-less."""
        from divcfg.music.tokenizer import tokens_to_score
        if self.tokenizer is None:
            raise UserError("this embedder has no tokenizer: load it with load_diversity_embedder(path)")
        notes = pr.score_notes(tokens_to_score(self.tokenizer, list(ids)))
        if len(notes) == 0:
            self.stats["empty_or_undecodable"] += 1
            return None
        return notes

    def embed(self, generations: Sequence[Sequence[int]]) -> torch.Tensor:
        """Token-id lists (BOS/EOS/PAD allowed) -> ``[N, D]`` unit rows. Identical inputs get
        identical rows; a note-less/undecodable one embeds as an all-zero roll and is counted."""
        emb, _ = self.embed_with_mask(generations)
        return emb

    def embed_with_mask(self, generations: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings [N, D], valid [N] bool)``; ``valid`` is False for empty/undecodable."""
        keys = [tuple(int(i) for i in (g.tolist() if hasattr(g, "tolist") else g)) for g in generations]
        unique = list(dict.fromkeys(keys))
        decoded = [self.decode(k) for k in unique]
        notes = [n if n is not None else np.zeros((0, pr.N_FIELDS), np.float32) for n in decoded]
        emb = self.embed_notes(notes)
        index = {k: i for i, k in enumerate(unique)}
        rows = torch.tensor([index[k] for k in keys], dtype=torch.long)
        valid = torch.tensor([decoded[index[k]] is not None for k in keys], dtype=torch.bool)
        return emb[rows], valid


# ---------------------------------------------------------------------------------------------
# diversity


def pair_diversity(e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` of unit rows, clamped to [0, 2]; exactly 0 for identical rows (no rounding noise)."""
    d = (1 - (e1 * e2).sum(-1)).clamp(0.0, 2.0)
    return torch.where((e1 == e2).all(-1), torch.zeros_like(d), d)


def diversity(E: DiversityEmbedder, y1s: Sequence[Sequence[int]], y2s: Sequence[Sequence[int]],
              empty_value: float | None = 0.0) -> torch.Tensor:
    """``d_i = 1 - cos(E(y1_i), E(y2_i))``, ``FloatTensor[N]``. Pairs with an empty/undecodable
    member get ``empty_value`` (None: keep the raw 1 - cos)."""
    if len(y1s) != len(y2s):
        raise UserError(f"diversity needs pairs: got {len(y1s)} and {len(y2s)} generations")
    emb, valid = E.embed_with_mask(list(y1s) + list(y2s))
    n = len(y1s)
    d = pair_diversity(emb[:n], emb[n:])
    if empty_value is not None:
        d = torch.where(valid[:n] & valid[n:], d, torch.full_like(d, empty_value))
    return d


def group_diversity(E: DiversityEmbedder, groups: Sequence[Sequence[Sequence[int]]],
                    empty_value: float | None = 0.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """For each group (the G ≥ 2 generations of one prompt): the mean pairwise diversity, and the
    leave-one-out reward ``r_i = mean_{j≠i} d(y_i, y_j)`` of each member.

    Returns ``(per_group_mean [P], [r of group p: FloatTensor[G_p]])``; a group of one has mean nan
    and reward ``[0.]``."""
    flat = [g for grp in groups for g in grp]
    emb, valid = E.embed_with_mask(flat)
    means, loo, i = [], [], 0
    for grp in groups:
        g = len(grp)
        e, v = emb[i:i + g], valid[i:i + g]
        i += g
        if g < 2:
            means.append(float("nan"))
            loo.append(torch.zeros(g))
            continue
        d = pair_diversity(e[:, None, :], e[None, :, :])
        if empty_value is not None:
            both = v[:, None] & v[None, :]
            d = torch.where(both, d, torch.full_like(d, empty_value))
        d.fill_diagonal_(0.0)
        means.append(float(d.sum() / (g * (g - 1))))
        loo.append(d.sum(1) / (g - 1))
    return torch.tensor(means), loo


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_diversity_embedder(path, E: DiversityEmbedder, *, tokenizer_path=None, extra: dict | None = None,
                            training_state: dict | None = None) -> Path:
    """Write ``E`` as a checkpoint folder (kind "diversity_embedder") with the tokenizer copied in."""
    from divcfg.checkpoint import save_checkpoint
    config = {"kind": KIND, "embedder": asdict(E.cfg), "vit": E.encoder.cfg.to_dict(), **(extra or {})}
    if tokenizer_path is not None:
        config["tokenizer"] = json.loads(Path(tokenizer_path).read_text())
    path = save_checkpoint(path, E.state_dict(), config, training_state)
    if tokenizer_path is not None:
        (Path(path) / TOKENIZER_FILE).write_text(Path(tokenizer_path).read_text())
    return path


def tokenizer_from_checkpoint(path: Path, config: dict):
    """The REMI tokenizer stored with a judge checkpoint (file beside it, else the config copy)."""
    from divcfg.music.tokenizer import load_tokenizer
    if (path / TOKENIZER_FILE).exists():
        return load_tokenizer(path / TOKENIZER_FILE)
    if "tokenizer" in config:
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / TOKENIZER_FILE
            f.write_text(json.dumps(config["tokenizer"]))
            return load_tokenizer(f)
    return None


def load_diversity_embedder(path: str | os.PathLike, device: str = "cpu") -> DiversityEmbedder:
    """Load ``E`` from a checkpoint folder, in eval mode, with its tokenizer."""
    from divcfg.checkpoint import load_checkpoint, load_into
    state, config = load_checkpoint(path, kind=KIND)
    cfg = EmbedderConfig(**config["embedder"])
    return load_into(DiversityEmbedder(cfg, tokenizer_from_checkpoint(Path(path), config)), state, path, device)
