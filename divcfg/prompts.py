"""Prompts: texts and their frozen MiniLM embeddings (the built-in generator's condition).

A domain gives the prompts of a data split (the music testbed's: ``divcfg.domains.music.load_prompts``,
one caption per piece); ``prompts_from_texts`` makes prompts of free texts.
"""

from __future__ import annotations

import os
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


def prompts_from_texts(texts: list[str]) -> Prompts:
    """Free-text prompts (e.g. from the command line). Empty prompts are a user error."""
    for t in texts:
        if not t or not t.strip():
            raise UserError("empty prompt: pass a description, e.g. --prompt \"an Irish jig in D major, 6/8\"")
    return Prompts(list(texts), embed_texts(list(texts)), [{} for _ in texts], [f"prompt{i}" for i in range(len(texts))])
