"""The data set written by `divcfg data`, read back: its splits and manifest, and which split a piece
belongs to.

A deterministic split by a hash of the piece's *split key* (its normalised title where it has one, so
that versions of one tune land in the same split; else its id): ``h = sha1(key) mod 1000``:
``h < 900`` train, ``< 950`` val, else test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from divcfg.errors import UserError

SPLITS = ("train", "val", "test")
SPLIT_BOUNDS = (900, 950)  # of 1000: train < 900 <= val < 950 <= test

# collections whose titles name a tune (variants of one tune share it): split by title there.
# Elsewhere titles repeat across different works (every Palestrina mass has a "Kyrie"): by id.
SPLIT_BY_TITLE = {"essen", "oneills", "ryans", "aird", "folk", "bach"}


def split_key(piece: dict) -> str:
    """What the split hashes: the normalised title ("The Hag with the Money -- Jig" ->
    "hagwithmoney", "25. Christ lag in Todesbanden" -> "christlagintodesbanden") in
    SPLIT_BY_TITLE collections, else the piece id (windows of a piece share its base id)."""
    meta = piece["meta"]
    base_id = piece["id"].split("@", 1)[0]
    if meta.get("collection", piece.get("collection")) not in SPLIT_BY_TITLE:
        return f"id:{base_id}"
    title = (meta.get("title") or "").lower()
    title = re.sub(r"--.*$", "", title)  # Ryan's "Name -- Reel"
    title = re.sub(r"^[\d\s.,:;-]+", "", title)  # "25. Christ lag ..."
    norm = re.sub(r"[^a-z0-9]+", "", re.sub(r"\b(the|a|an|der|die|das)\b", "", title))
    return f"title:{norm}" if len(norm) >= 4 else f"id:{base_id}"


def split_of(key: str) -> str:
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % 1000
    return "train" if h < SPLIT_BOUNDS[0] else ("val" if h < SPLIT_BOUNDS[1] else "test")


def load_split(data_dir: str | os.PathLike, split: str) -> list[dict]:
    """The rows of ``<data_dir>/<split>.jsonl`` (split in train/val/test)."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.exists():
        raise UserError(f"no data at '{path}': run `divcfg data --preset small` (or the preset you meant) first")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise UserError(f"no manifest at '{path}': run `divcfg data` first")
    return json.loads(path.read_text())
