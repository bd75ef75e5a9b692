"""What CFG does to the base model, without trained judges: a γ sweep on validation prompts.

For each γ, K validation prompts × G samples: rate of empty (note-less or undecodable) outputs,
rate of natural endings (EOS before the length cap), mean length in tokens, rate of outputs in
the requested key (Krumhansl–Schmuckler estimate of the generated notes vs the caption's key,
tonic pitch class and mode), and the mean pitch-class-histogram distance (total variation)
between two samples of one prompt (lower = CFG narrows pitch content).

    python benchmarks/gamma_sweep.py --checkpoint runs/small/base --data-dir data/small
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from divcfg.domains.music import load_prompts  # noqa: E402
from divcfg.models.generator import load_generator, tokenizer_path  # noqa: E402
from divcfg.music.captions import estimate_key  # noqa: E402
from divcfg.music.tokenizer import load_tokenizer, pitch_class_histogram, tokens_to_notes  # noqa: E402
from divcfg.sampling import bf16_supported  # noqa: E402
from divcfg.sampling import sample  # noqa: E402

PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def key_pc(name: str | None) -> tuple[int, str] | None:
    """'F# minor' -> (6, 'minor')."""
    if not name:
        return None
    parts = name.replace("♯", "#").replace("♭", "b").split()
    if len(parts) < 2 or not parts[0] or parts[0][0].upper() not in PC:
        return None
    tonic = parts[0]
    pc = PC[tonic[0].upper()] + tonic[1:].count("#") - tonic[1:].count("b") - tonic[1:].count("-")
    return pc % 12, parts[1].lower()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/small/base")
    ap.add_argument("--data-dir", default="data/small")
    ap.add_argument("--gammas", default="0,1,1.5,2,3,5")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=511)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args()

    model, config = load_generator(args.checkpoint)
    tok = load_tokenizer(tokenizer_path(config))
    prompts = load_prompts(args.data_dir, "val", limit=args.prompts, seed=args.seed)
    cond = prompts.cond.repeat_interleave(args.samples, 0)
    bf16 = bf16_supported()
    rows = []
    print(f"{len(prompts)} validation prompts × {args.samples} samples, checkpoint {args.checkpoint}")
    print(f"{'γ':>4} {'empty':>6} {'EOS':>6} {'length':>7} {'in key':>7} {'pc dist':>8} {'s':>5}")
    for g in [float(x) for x in args.gammas.split(",")]:
        t0 = time.time()
        out = sample(model, cond, max_new_tokens=args.max_new_tokens, gamma=g, autocast=bf16,
                     generator=torch.Generator().manual_seed(args.seed))
        seqs = out.sequences()
        notes = [tokens_to_notes(tok, s) for s in seqs]
        empty = np.mean([len(n) == 0 for n in notes])
        in_key = []
        for i, n in enumerate(notes):
            want = key_pc(prompts.meta[i // args.samples].get("key"))
            if n and want:
                got = key_pc(estimate_key(n))
                in_key.append(got == want)
        dists = []
        for p in range(len(prompts)):
            hs = [pitch_class_histogram(notes[p * args.samples + j]) for j in range(args.samples)
                  if notes[p * args.samples + j]]
            for a in range(len(hs)):
                for b in range(a + 1, len(hs)):
                    dists.append(0.5 * np.abs(hs[a] - hs[b]).sum())
        row = {"gamma": g, "empty_rate": float(empty), "eos_rate": float(out.finished.float().mean()),
               "mean_length": float(np.mean([len(s) for s in seqs])),
               "in_key_rate": float(np.mean(in_key)) if in_key else float("nan"),
               "pitch_class_distance": float(np.mean(dists)) if dists else float("nan"),
               "seconds": time.time() - t0}
        rows.append(row)
        print(f"{g:>4g} {row['empty_rate']:>6.2f} {row['eos_rate']:>6.2f} {row['mean_length']:>7.0f} "
              f"{row['in_key_rate']:>7.2f} {row['pitch_class_distance']:>8.3f} {row['seconds']:>5.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
