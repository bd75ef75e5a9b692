"""Prompts: captions of a data split and their frozen MiniLM embeddings (the generator's condition).

``load_prompts(data_dir, split)`` gives one prompt per piece (its canonical caption,
``captions[0]``); held-out evaluation uses the ``test`` split, quick checks ``val``, and
fine-tuning ``train`` (with caption variants, as in pre-training).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from divcfg.embedders.text import encode_cached
from divcfg.errors import UserError


@dataclass
class Prompts:
    texts: list[str]
    cond: torch.Tensor        # (N, 384) unit-norm MiniLM embeddings
    meta: list[dict]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> "Prompts":
        return Prompts([self.texts[i] for i in idx], self.cond[idx], [self.meta[i] for i in idx],
                       [self.ids[i] for i in idx])


CAPTION_CACHE = "caption_embeddings.safetensors"


def embed_texts(texts: list[str], data_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """MiniLM embeddings (N, 384); captions of a data set are cached in ``<data_dir>/{CAPTION_CACHE}``."""
    return encode_cached(texts, Path(data_dir) / CAPTION_CACHE if data_dir is not None else None)


def check_data_dir(data_dir: str | os.PathLike) -> Path:
    data_dir = Path(data_dir)
    if not (data_dir / "manifest.json").exists():
        raise UserError(f"no data set at '{data_dir}': build it with `divcfg data --preset small` "
                        f"(or pass --data-dir)")
    return data_dir


def load_prompts(data_dir: str | os.PathLike, split: str = "test", limit: int | None = None,
                 seed: int = 0, variants: bool = False) -> Prompts:
    """Prompts of one split; ``limit`` takes a seeded random subset; ``variants`` picks a random
    caption variant per piece instead of the canonical one."""
    from divcfg.music.corpus import load_split
    pieces = load_split(check_data_dir(data_dir), split)
    rng = random.Random(seed)
    if limit is not None and limit < len(pieces):
        pieces = rng.sample(pieces, limit)
    texts = [rng.choice(p["captions"]) if variants else p["captions"][0] for p in pieces]
    return Prompts(texts, embed_texts(texts, data_dir), [p.get("meta", {}) for p in pieces], [p["id"] for p in pieces])


def prompts_from_texts(texts: list[str]) -> Prompts:
    """Free-text prompts (e.g. from the command line). Empty prompts are a user error."""
    for t in texts:
        if not t or not t.strip():
            raise UserError("empty prompt: pass a description, e.g. --prompt \"an Irish jig in D major, 6/8\"")
    return Prompts(list(texts), embed_texts(list(texts)), [{} for _ in texts], [f"prompt{i}" for i in range(len(texts))])
