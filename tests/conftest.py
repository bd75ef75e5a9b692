"""Shared fixtures. ``tiny_data_dir``: the ``tiny`` data preset (~200 real tunes from a few
music21 corpus files: O'Neill, Ryan, Essen, Bach), built once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """Folder with manifest.json, tokenizer.json, train/val/test.jsonl of the tiny preset."""
    from divcfg.music.corpus import build

    root = tmp_path_factory.mktemp("data")
    return build("tiny", root, workers=2, quiet=True)
