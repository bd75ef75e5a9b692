"""Inference speed of the generator: plain sampling, CFG batched (2B), CFG two-pass, and
sampling without the KV cache, all with the same model, batch and length, measured side by
side in one run. Prints tokens/s for each and the ratios.

    python benchmarks/inference.py [--checkpoint runs/small/base] [--batch 32] [--length 256]

Without --checkpoint a randomly initialised model of the `small` pretrain architecture is used
(speed does not depend on the weights). EOS is suppressed so every run generates exactly
--length tokens per row.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from divcfg.models.generator import load_generator  # noqa: E402
from divcfg.models.transformer import ModelConfig, MusicTransformer  # noqa: E402
from divcfg.pretrain import PretrainConfig, bf16_supported  # noqa: E402
from divcfg.sampling import sample  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--gamma", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs per configuration")
    ap.add_argument("--no-cache-length", type=int, default=None,
                    help="length for the no-KV-cache run (default: same as --length)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on where the CPU supports it)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0 = torch's default; use 1 on a machine shared with other jobs)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.checkpoint:
        model, _ = load_generator(args.checkpoint)
        source = args.checkpoint
    else:
        p = PretrainConfig()
        model = MusicTransformer(ModelConfig(vocab_size=300, n_layer=p.n_layer, n_head=p.n_head,
                                             d_model=p.d_model, n_prefix=p.n_prefix, max_len=p.max_len)).eval()
        source = "random init, small-preset architecture"
    bf16 = bf16_supported() if args.bf16 is None else args.bf16
    torch.manual_seed(0)
    cond = torch.nn.functional.normalize(torch.randn(args.batch, 384), dim=-1)

    def run(**kw) -> float:
        L = kw.pop("length", args.length)
        best = float("inf")
        for r in range(args.repeats):
            t0 = time.perf_counter()
            out = sample(model, cond, max_new_tokens=L, min_new_tokens=L, autocast=bf16,
                         generator=torch.Generator().manual_seed(r), **kw)
            best = min(best, time.perf_counter() - t0)
            assert out.tokens.shape[1] == L
        return args.batch * L / best

    print(f"model: {model.num_parameters() / 1e6:.2f}M parameters ({source}); batch {args.batch}, "
          f"length {args.length}, γ={args.gamma}, bf16={bf16}, threads={torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    nc_len = args.no_cache_length or args.length
    figures = {
        "plain (KV cache)": run(gamma=1.0),
        "CFG batched 2B (KV cache)": run(gamma=args.gamma, cfg_mode="batched"),
        "CFG two-pass (KV cache)": run(gamma=args.gamma, cfg_mode="two_pass"),
        f"plain, no KV cache (length {nc_len})": run(gamma=1.0, use_cache=False, length=nc_len),
    }
    base = figures["plain (KV cache)"]
    print(f"{'configuration':<40} {'tokens/s':>10} {'vs plain':>9}")
    for name, tps in figures.items():
        print(f"{name:<40} {tps:>10.0f} {tps / base:>8.2f}x")
    b, t = figures["CFG batched 2B (KV cache)"], figures["CFG two-pass (KV cache)"]
    print(f"plain / CFG batched = {base / b:.2f}x (the inference cost CFG distillation removes); "
          f"CFG batched / two-pass = {b / t:.2f}x; KV cache speed-up = {base / figures[list(figures)[-1]]:.2f}x")


if __name__ == "__main__":
    main()
