"""MusicGen on a GPU (issue 9, item 4): a randomly initialised MusicGen of ``musicgen-small``'s size,
built from configs in code (nothing is downloaded), fine-tuned for a few steps through the real CLI
(``divcfg finetune --base hf:FOLDER --prompts FILE --device ...``), then plain vs CFG sampling with
divcfg's sampler on the same model, batch and length, side by side in one process.

    python benchmarks/musicgen_gpu.py --size small --device cuda --json $OUT/musicgen_gpu.json
    python benchmarks/musicgen_gpu.py --size tiny --device cpu --steps 2 --seconds 0.2 --batch 4   # smoke run

Printed, and written to ``--json`` with ``divcfg.provenance``:
- **finetune**: s/step (mean over the steps after the first, which pays the warm-up; from the run's
  ``metrics.jsonl``) split into sampling / teacher / reward / update, the loop's tokens/s, and the
  peak GPU memory (``torch.cuda.max_memory_allocated``) of the whole CLI run;
- **sampling**: best-of-``--repeats`` wall time of one batch of ``--batch`` generations of
  ``--seconds`` of audio: divcfg plain (γ=1: one decoder pass per frame), divcfg CFG (γ, batched:
  one pass over 2B rows), the EnCodec decode, and transformers' ``generate`` (γ=1 and
  ``guidance_scale=γ``, its codec decode included) as a peer. tokens/s count codebook tokens
  ``B·S·K`` (S = F + K − 1 steps for F frames, delay positions included, as ``generate`` does);
  "audio s/s" = audio seconds generated per wall second; plain/CFG = what a CFG-free student saves.

Bounded by construction: 5 s of audio (250 frames → 253 steps × 4 codebooks = 1013 stream tokens),
8 generations a step, ``--max-minutes`` on the training time, ``--budget-s`` on the timed sampling
repeats, quick evaluations of ≤ 10 frames on 1 prompt, no intermediate checkpoint. Speed does not
depend on the weights (MusicGen has no EOS: every generation has the same length), so a user with
the real ``musicgen-small`` weights gets these figures on the same card, batch and duration. The
diversity judge is the audio domain's log-mel stand-in (``--embedder ''``).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# facebook/musicgen-small, as published: 591M parameters in all (the Hugging Face hub's count of
# its model.safetensors, https://huggingface.co/facebook/musicgen-small); of these the decoder LM is
# ~0.4B (https://huggingface.co/thepatch/musicgen-small-GGUF: "musicgen-small (0.4B parameters)",
# 802 MiB in F16), T5-base's encoder ~0.1B and the 32 kHz EnCodec ~57M. The paper's "300M"
# (Copet et al. 2023, arXiv:2306.05284, Table 1) counts the LM's self-attention and feed-forward
# weights only: 24 · (4·1024² + 2·1024·4096) = 302M.
MUSICGEN_SMALL_TOTAL = 591e6
MUSICGEN_SMALL_DECODER = 0.4e9
MUSICGEN_SMALL_PAPER_LM = 300e6
WORDS = "a calm wild song with drums piano guitar slow fast bright dark".split()


def small_config():
    """``MusicgenConfig`` with facebook/musicgen-small's dimensions (its config.json): decoder 24
    layers × 1024 wide, 16 heads, FFN 4096, 4 codebooks of 2048 codes; text encoder T5-base (12
    layers, d_model 768, 12 heads, d_ff 3072, vocabulary 32128); EnCodec 32 kHz (hop 8·5·4·4 = 640
    samples, i.e. 50 frames/s; 4 codebooks at 2.2 kbps)."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config
    t5 = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12,
                  num_heads=12, relative_attention_num_buckets=32, feed_forward_proj="relu", dropout_rate=0.1,
                  pad_token_id=0, eos_token_id=1)
    codec = EncodecConfig(target_bandwidths=[2.2], sampling_rate=32000, audio_channels=1, normalize=False,
                          chunk_length_s=None, overlap=None, hidden_size=128, num_filters=64, num_residual_layers=1,
                          upsampling_ratios=[8, 5, 4, 4], norm_type="weight_norm", kernel_size=7, last_kernel_size=7,
                          residual_kernel_size=3, dilation_growth_rate=2, use_causal_conv=False, pad_mode="reflect",
                          compress=2, num_lstm_layers=2, trim_right_ratio=1.0, codebook_size=2048, codebook_dim=128,
                          use_conv_shortcut=False)
    dec = MusicgenDecoderConfig(vocab_size=2048, max_position_embeddings=2048, num_hidden_layers=24, ffn_dim=4096,
                                num_attention_heads=16, hidden_size=1024, num_codebooks=4, activation_function="gelu",
                                dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
                                scale_embedding=False, tie_word_embeddings=False, pad_token_id=2048, bos_token_id=2048)
    return MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=codec.to_dict(), decoder=dec.to_dict())


def tiny_config():
    """tests/test_musicgen.py's tiny MusicGen (3 codebooks of 32 codes, 800 Hz audio at 50 frames/s)."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config
    t5 = T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                  pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    codec = EncodecConfig(target_bandwidths=[1.5], sampling_rate=800, audio_channels=1, hidden_size=8, num_filters=2,
                          num_residual_layers=1, upsampling_ratios=[4, 4], codebook_size=32, num_lstm_layers=1,
                          kernel_size=3, last_kernel_size=3, residual_kernel_size=3, codebook_dim=8)
    dec = MusicgenDecoderConfig(vocab_size=32, max_position_embeddings=512, num_hidden_layers=2, ffn_dim=32,
                                num_attention_heads=2, hidden_size=24, num_codebooks=3, pad_token_id=32,
                                bos_token_id=32, dropout=0.0)
    return MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=codec.to_dict(), decoder=dec.to_dict())


CONFIGS = {"small": small_config, "tiny": tiny_config}


def parameter_counts(config) -> dict[str, int]:
    """Parameters per part, counted on the meta device (nothing is allocated), plus the paper's
    way of counting the LM (self-attention + feed-forward weights of the decoder layers)."""
    from transformers import MusicgenForConditionalGeneration
    with torch.device("meta"):
        model = MusicgenForConditionalGeneration(config)
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["paper_lm"] = sum(p.numel() for layer in model.decoder.model.decoder.layers
                             for name, p in layer.named_parameters()
                             if name.startswith(("self_attn.", "fc1.", "fc2.")) and name.endswith("weight"))
    return counts


def save_random_checkpoint(folder: Path, size: str, frames: int, device: torch.device,
                           seed: int = 0) -> tuple[int, int, int]:
    """A random MusicGen of ``size`` (initialised on ``device``: seconds on a GPU for 587M
    parameters) + a word-level T5-style tokenizer (``<pad>``=0, ``</s>``=1 appended, as T5's)
    written with ``save_pretrained``; returns (K codebooks, C codes, frame rate)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>"] + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    with torch.device(device):
        model = MusicgenForConditionalGeneration(CONFIGS[size]()).eval()
    with torch.no_grad():      # EnCodec's codebooks start as zeros (k-means init): give the decoder sound
        for q in model.audio_encoder.quantizer.layers:
            q.codebook.embed.normal_()
    dec = model.config.decoder
    K, C = int(dec.num_codebooks), int(dec.vocab_size)
    model.generation_config.decoder_start_token_id = C
    model.generation_config.pad_token_id = C
    model.generation_config.max_length = frames + K             # M = S + 1 positions: F = M − 1 − (K − 1)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    rate = int(model.config.audio_encoder.frame_rate)
    del model
    reset_peak(device)
    return K, C, rate


def write_prompts(path: Path) -> list[str]:
    texts = [f"a {a} {b}{c}" for a, b, c in itertools.product(
        ["calm", "wild", "slow", "fast", "bright", "dark"], ["song", "drums", "piano", "guitar"],
        ["", " with drums", " with piano", " with guitar"])]
    path.write_text("".join(t + "\n" for t in texts))
    return texts


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_finetune(args, base: Path, prompts: Path, out: Path, K: int, frames: int, device: torch.device) -> dict:
    """``divcfg finetune`` in this process (so its peak GPU memory is measurable); figures from its
    metrics.jsonl and summary.json."""
    from divcfg.cli import run_command
    steps_S = frames + K - 1
    eval_tokens = K * (min(frames, 10) + K - 1) + 1               # quick evaluations: ≤ 10 frames
    argv = ["finetune", "--base", f"hf:{base}", "--prompts", str(prompts), "--out", str(out),
            "--device", args.device, "--max-steps", str(args.steps), "--max-minutes", str(args.max_minutes),
            "--gamma", str(args.gamma), "--beta", "1", "--embedder", "", "--group-size", "2",
            "--prompts-per-step", str(args.batch // 2), "--max-new-tokens", str(steps_S * K + 1),
            "--eval-max-new-tokens", str(eval_tokens), "--eval-prompts", "1", "--eval-samples", "2",
            "--eval-teacher", "false", "--ckpt-every", str(10**6), "--lr", "1e-5", "--warmup-steps", "0",
            "--updates-per-batch", str(args.updates_per_batch), "--threads", str(args.threads), "--no-progress"]
    print("$ divcfg " + " ".join(a if a else "''" for a in argv), flush=True)
    reset_peak(device)
    t0 = time.perf_counter()
    run_command(argv)
    res, mem = {"finetune/cli_wall_s": time.perf_counter() - t0}, peak_gib(device)
    reset_peak(device)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"time/step"' in line]
    summary = json.loads((out / "summary.json").read_text())
    timed = rows[1:] or rows                                       # step 1 pays the warm-up
    mean = lambda key: sum(r[key] for r in timed) / len(timed)     # noqa: E731
    res.update({"finetune/steps": len(rows), "finetune/s_per_step": mean("time/step"),
                "finetune/first_step_s": rows[0]["time/step"], "finetune/sampling_s": mean("time/sampling"),
                "finetune/teacher_s": mean("time/teacher"), "finetune/reward_s": mean("time/reward"),
                "finetune/update_s": mean("time/update"), "finetune/tokens_per_s": mean("tokens_per_s"),
                "finetune/mean_length": mean("completions/mean_length"),
                "finetune/train_minutes": summary["elapsed_s"] / 60})
    if mem is not None:
        res["finetune/peak_gpu_memory_gib"] = mem
    return res


def sampling_runners(args, base: Path, K: int, frames: int, texts: list[str], device: torch.device, bf16: bool):
    """name -> a function that generates one batch (returns the stream tokens it sampled, or 0);
    the plug-in is loaded as ``divcfg sample`` loads it."""
    from divcfg.models.base import load_generator_any
    from divcfg.sampling import sample
    S = frames + K - 1
    plug = load_generator_any(f"hf:{base}", device=str(device), max_len=S * K + 2)
    assert plug.model.cfg.frames == frames and plug.model.cfg.steps == S
    cond = plug.encode_prompts([texts[i % len(texts)] for i in range(args.batch)])
    state: dict = {}

    def divcfg(gamma: float):
        def run():
            out = sample(plug.model, cond, max_new_tokens=S * K + 1, gamma=gamma, top_k=args.top_k, autocast=bf16,
                         generator=torch.Generator(device=device).manual_seed(0))
            state["last"] = out
            return int(out.lengths.sum())                          # stream tokens sampled (EOS included)
        return run

    def decode():
        clips = plug.decode(state["last"].sequences())
        assert all(c is not None and c.shape[-1] == frames * plug.lm.config.audio_encoder.hop_length for c in clips)
        return 0

    fns = {"divcfg plain (γ=1)": divcfg(1.0), f"divcfg CFG (γ={args.gamma:g}, batched 2B)": divcfg(args.gamma),
           "codec decode (EnCodec, B clips)": decode}
    if args.peer:
        lm, pad = plug.lm, plug.model.cfg.text_pad_id

        def generate(gamma: float):
            def run():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    audio = lm.generate(input_ids=cond, attention_mask=(cond != pad).long(), do_sample=True,
                                        guidance_scale=gamma, top_k=args.top_k, max_length=S + 1)
                assert audio.shape[0] == args.batch and audio.shape[-1] == frames * lm.config.audio_encoder.hop_length
                return 0
            return run
        fns["HF generate plain (γ=1, incl. decode)"] = generate(1.0)
        fns[f"HF generate CFG (guidance_scale={args.gamma:g}, incl. decode)"] = generate(args.gamma)
    return plug, fns


def run_sampling(args, base: Path, K: int, frames: int, rate: int, texts: list[str],
                 device: torch.device) -> tuple[dict, dict]:
    """Best-of-``--repeats`` wall seconds per configuration, the configurations interleaved per
    repeat (one warm-up run each first); stops repeating once ``--budget-s`` is spent."""
    from divcfg.sampling import bf16_supported
    bf16 = bf16_supported(device.type) if args.bf16 is None else args.bf16
    plug, fns = sampling_runners(args, base, K, frames, texts, device, bf16)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    best, peak = {k: math.inf for k in fns}, {k: 0.0 for k in fns}
    sampled, peer_error, timed = {}, None, 0
    t_start = time.perf_counter()
    for rep in range(args.repeats + 1):                            # repeat 0 = warm-up, not timed
        if rep > 1 and time.perf_counter() - t_start > args.budget_s:
            print(f"  sampling budget {args.budget_s:.0f} s spent after {rep - 1} timed repeat(s)")
            break
        timed = rep
        for name, fn in list(fns.items()):
            if name not in fns:                                    # a failed peer, dropped
                continue
            reset_peak(device)
            t0 = time.perf_counter()
            try:
                n = fn()
            except Exception as e:       # the peer is context, not the measurement: keep divcfg's figures
                if not name.startswith("HF generate"):
                    raise
                peer_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
                print(f"  note: {name} failed ({peer_error}); timing divcfg only", flush=True)
                args.peer = False
                for k in [k for k in fns if k.startswith("HF generate")]:
                    del fns[k]
                continue
            sync()
            if not rep:
                print(f"  warm-up {name}: {time.perf_counter() - t0:.2f} s", flush=True)
            else:
                best[name] = min(best[name], time.perf_counter() - t0)
                peak[name] = max(peak[name], peak_gib(device) or 0.0)
            if n:
                sampled[name] = n
    B, S = args.batch, frames + K - 1
    tokens, audio_s = B * S * K, B * frames / rate
    res = {"sample/codebook_tokens_per_batch": tokens, "sample/audio_seconds_per_batch": audio_s,
           "sample/stream_tokens_expected": B * (S * K + 1),       # BOS excluded, EOS included
           "sample/timed_repeats": timed}
    keys = {}
    for name in fns:
        key = name.split(" (")[0].replace("divcfg ", "").replace(" ", "_").lower()
        keys[name] = key
        res[f"sample/{key}/seconds"] = best[name]
        if "decode" not in key:
            res[f"sample/{key}/tokens_per_s"] = tokens / best[name]
            res[f"sample/{key}/audio_s_per_s"] = audio_s / best[name]
        if name in sampled:
            res[f"sample/{key}/stream_tokens_sampled"] = sampled[name]
        if device.type == "cuda":
            res[f"sample/{key}/peak_gpu_memory_gib"] = peak[name]
    sec = lambda key: res[f"sample/{key}/seconds"]                 # noqa: E731
    res["sample/plain_over_cfg_speed"] = sec("cfg") / sec("plain")
    if args.peer:
        res["sample/hf_generate_plain_over_cfg_speed"] = sec("hf_generate_cfg") / sec("hf_generate_plain")
        res["sample/divcfg_plain_with_decode_over_hf_generate_plain_speed"] = (
            sec("hf_generate_plain") / (sec("plain") + sec("codec_decode")))
    del plug
    return res, {"names": keys, "bf16": bf16, "peer_error": peer_error}


def print_table(args, fig: dict, names: dict[str, str], device_name: str) -> None:
    print(f"\n== MusicGen {args.size} on {device_name}: batch {args.batch}, {args.seconds:g} s of audio "
          f"({fig['sample/codebook_tokens_per_batch']} codebook tokens per batch), γ={args.gamma:g} ==")
    mem = lambda key: (f"{fig[key]:>9.2f}" if key in fig else f"{'-':>9}")  # noqa: E731
    title = f"finetune (divcfg finetune, {fig['finetune/steps']} steps)"
    print(f"\n{title:<50}{'s/step':>9}{'peak GiB':>9}")
    print(f"{'  total (steps after the first)':<50}{fig['finetune/s_per_step']:>9.2f}"
          + mem("finetune/peak_gpu_memory_gib"))
    for part in ("sampling", "teacher", "reward", "update"):
        print(f"{'    ' + part:<50}{fig['finetune/' + part + '_s']:>9.2f}")
    print(f"{'  first step (warm-up)':<50}{fig['finetune/first_step_s']:>9.2f}")
    print(f"{'  generated tokens/s in the loop':<50}{fig['finetune/tokens_per_s']:>9.0f}")
    title = f"sampling, best of {fig['sample/timed_repeats']}"
    print(f"\n{title:<50}{'s/batch':>9}{'tokens/s':>10}{'audio s/s':>10}{'peak GiB':>9}")
    for name, key in names.items():
        tps = fig.get(f"sample/{key}/tokens_per_s")
        aps = fig.get(f"sample/{key}/audio_s_per_s")
        print(f"{name:<50}{fig[f'sample/{key}/seconds']:>9.3f}"
              + (f"{tps:>10.0f}{aps:>10.2f}" if tps else f"{'':>20}") + mem(f"sample/{key}/peak_gpu_memory_gib"))
    print(f"\nplain / CFG speed, divcfg sampler:  {fig['sample/plain_over_cfg_speed']:.2f}x")
    if "sample/hf_generate_plain_over_cfg_speed" in fig:
        print(f"plain / CFG speed, HF generate:     {fig['sample/hf_generate_plain_over_cfg_speed']:.2f}x")
        print(f"divcfg plain + decode vs HF generate plain: "
              f"{fig['sample/divcfg_plain_with_decode_over_hf_generate_plain_speed']:.2f}x the speed")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--steps", type=int, default=5, help="fine-tuning steps (the first is reported apart)")
    ap.add_argument("--seconds", type=float, default=5.0, help="audio per generation (50 frames/s)")
    ap.add_argument("--batch", type=int, default=8, help="generations per step / per sampling batch (even, ≥ 4)")
    ap.add_argument("--gamma", type=float, default=3.0, help="CFG scale (MusicGen's default 3)")
    ap.add_argument("--top-k", type=int, default=250, help="sampling top-k of the timed runs (MusicGen's default)")
    ap.add_argument("--updates-per-batch", type=int, default=2, help="optimizer steps per sampled batch (CLI default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed sampling repeats (best of), after one warm-up")
    ap.add_argument("--budget-s", type=float, default=90.0, help="stop timed sampling repeats after this")
    ap.add_argument("--max-minutes", type=float, default=3.0, help="cap on the fine-tuning time (safety)")
    ap.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                    help="also time transformers' generate (plain and guidance_scale=γ)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast for sampling (default: where the device supports it, as finetune)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: 1 on --device cpu, else torch's)")
    ap.add_argument("--json", default=None, help="figures file (default runs/bench/musicgen_gpu_SIZE_DEVICE.json)")
    ap.add_argument("--work", default=None, help="folder for the model and run (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.batch < 4 or args.batch % 2:
        ap.error("--batch must be even and ≥ 4 (≥ 2 prompts × 2 generations per step: the batch baseline)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible; use --device cpu")
    args.threads = args.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()      # the released config's pad id C is outside [0, C) too; generate's notes
    from divcfg.provenance import provenance, write_json_atomic
    out_json = Path(args.json or ROOT / "runs" / "bench" / f"musicgen_gpu_{args.size}_{args.device}.json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    counts = parameter_counts(CONFIGS[args.size]())
    parts = ", ".join(f"{k} {counts[k] / 1e6:.3g}M" for k in ("decoder", "text_encoder", "audio_encoder"))
    print(f"MusicGen '{args.size}', random init: {counts['total'] / 1e6:.3g}M parameters ({parts}); "
          f"device {device_name}, {args.threads} CPU thread(s)", flush=True)
    t_all = time.perf_counter()
    fig: dict = {"parameters/total": counts["total"], "parameters/decoder": counts["decoder"]}
    info: dict = {}
    record = lambda: write_json_atomic(out_json, {  # noqa: E731
        "figures": fig, "config": vars(args), "device": device_name, "sampling": info,
        "provenance": provenance(0, stage="benchmark musicgen_gpu", size=args.size, device=device_name)})
    with tempfile.TemporaryDirectory(prefix="mg_bench_", dir=args.work) as work:
        work = Path(work)
        t0, rate = time.perf_counter(), int(CONFIGS[args.size]().audio_encoder.frame_rate)
        frames = max(1, round(args.seconds * rate))
        K, C, rate = save_random_checkpoint(work / "base", args.size, frames, device)
        fig["build_and_save_s"] = time.perf_counter() - t0
        print(f"built and saved in {fig['build_and_save_s']:.1f} s: {frames} frames = {frames / rate:g} s, "
              f"{frames + K - 1} decoder steps × {K} codebooks", flush=True)
        texts = write_prompts(work / "prompts.txt")
        fig.update(run_finetune(args, work / "base", work / "prompts.txt", work / "run", K, frames, device))
        record()
        print(f"finetune done: {fig['finetune/s_per_step']:.2f} s/step", flush=True)
        res, more = run_sampling(args, work / "base", K, frames, rate, texts, device)
        fig.update(res), info.update(more)
    fig["total_wall_s"] = time.perf_counter() - t_all
    fig["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    record()
    print_table(args, fig, info["names"], device_name)
    print(f"\ntotal {fig['total_wall_s']:.0f} s; figures -> {out_json}")
    return fig


if __name__ == "__main__":
    main()
