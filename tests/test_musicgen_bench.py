"""benchmarks/musicgen_gpu.py (issue 9, item 4): its musicgen-small configuration has the published
model's size (counted on the meta device, nothing allocated), and a CPU smoke run of the whole
script on the tiny MusicGen (``divcfg finetune`` through the CLI, plain vs CFG sampling, the
transformers ``generate`` peer) writes positive, finite figures and samples the expected tokens."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "musicgen_gpu.py"
_spec = importlib.util.spec_from_file_location("musicgen_gpu", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_small_config_has_musicgen_small_size():
    """facebook/musicgen-small: 591M parameters in all (the Hugging Face hub's count), a ~0.4B
    decoder, and the paper's "300M" LM = the decoder layers' self-attention + feed-forward weights
    (sources in the module's constants); each within 10%, and the published dimensions."""
    cfg = bench.small_config()
    counts = bench.parameter_counts(cfg)
    assert abs(counts["total"] / bench.MUSICGEN_SMALL_TOTAL - 1) < 0.10, counts
    assert abs(counts["decoder"] / bench.MUSICGEN_SMALL_DECODER - 1) < 0.10, counts
    assert abs(counts["paper_lm"] / bench.MUSICGEN_SMALL_PAPER_LM - 1) < 0.10, counts
    assert counts["total"] == sum(counts[k] for k in ("text_encoder", "audio_encoder", "decoder", "enc_to_dec_proj"))
    d, t, a = cfg.decoder, cfg.text_encoder, cfg.audio_encoder
    assert (d.num_hidden_layers, d.hidden_size, d.num_attention_heads, d.ffn_dim) == (24, 1024, 16, 4096)
    assert (d.num_codebooks, d.vocab_size) == (4, 2048)
    assert (t.num_layers, t.d_model, t.num_heads, t.d_ff, t.vocab_size) == (12, 768, 12, 3072, 32128)
    assert (a.sampling_rate, a.frame_rate, a.codebook_size) == (32000, 50, 2048)
    # EnCodec's 2.2 kbps at 50 frames/s of 11-bit codes = the decoder's 4 codebooks
    assert int(1000 * max(a.target_bandwidths) // (a.frame_rate * 10)) == d.num_codebooks
    tiny = bench.parameter_counts(bench.tiny_config())
    assert 0 < tiny["total"] < 1e5


def test_cpu_smoke_run_writes_positive_finite_figures(tmp_path):
    """The whole script on the tiny MusicGen: 2 fine-tuning steps through ``divcfg finetune``, then
    plain vs CFG sampling and transformers' generate; every figure in the JSON is a positive,
    finite number, plain and CFG both sampled B·(S·K + 1) stream tokens, and on the CPU there is no
    GPU-memory figure."""
    out = tmp_path / "bench.json"
    B, seconds, K, frames = 4, 0.2, 3, 10                         # tiny: 50 frames/s, 3 codebooks
    S = frames + K - 1
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny", "--device", "cpu", "--steps", "2", "--seconds", str(seconds),
         "--batch", str(B), "--repeats", "1", "--json", str(out), "--work", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plain / CFG speed, divcfg sampler" in proc.stdout and "$ divcfg finetune --base hf:" in proc.stdout
    data = json.loads(out.read_text())
    fig = data["figures"]
    bad = {k: v for k, v in fig.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0}
    assert not bad, bad
    assert fig["finetune/steps"] == 2 and fig["finetune/mean_length"] == S * K + 1
    assert fig["sample/stream_tokens_expected"] == B * (S * K + 1)
    assert fig["sample/plain/stream_tokens_sampled"] == fig["sample/cfg/stream_tokens_sampled"] == B * (S * K + 1)
    assert fig["sample/codebook_tokens_per_batch"] == B * S * K
    assert fig["sample/audio_seconds_per_batch"] == pytest.approx(B * seconds)
    for key in ("plain", "cfg", "hf_generate_plain", "hf_generate_cfg"):
        assert fig[f"sample/{key}/tokens_per_s"] == pytest.approx(B * S * K / fig[f"sample/{key}/seconds"])
    assert fig["sample/plain_over_cfg_speed"] == pytest.approx(fig["sample/cfg/seconds"] / fig["sample/plain/seconds"])
    assert not any("gpu_memory" in k for k in fig)
    assert data["device"] == "CPU" and data["config"]["size"] == "tiny"
    assert data["provenance"]["stage"] == "benchmark musicgen_gpu" and "git_commit" in data["provenance"]
    assert list(tmp_path.iterdir()) == [out]                      # the model and the run were removed
