"""Reproducibility: what produced an output (git commit, versions, seed, time)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import random
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = ("torch", "numpy", "music21", "miditok", "symusic", "sentence-transformers", "divcfg")


def git_commit() -> str:
    """The current commit of the divcfg source tree (``+dirty`` if uncommitted changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance(seed: int | None = None, **extra) -> dict:
    """A dict to store beside every output: commit, versions, seed, host, UTC time, plus ``extra``."""
    from divcfg.embedders.text import CACHE_ENV, captions_from_cache
    return {"git_commit": git_commit(), "versions": versions(), "seed": seed,
            **({CACHE_ENV: "1"} if captions_from_cache() else {}),
            "host": platform.node(), "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **extra}


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def file_hash(path: str | os.PathLike, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
