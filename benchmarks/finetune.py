"""Benchmark of one `divcfg finetune` step: seconds split into sampling / teacher / reward /
student update, generated tokens per second and peak memory, for G=2 and G=4 generations per
prompt, printed side by side (same prompts per step, so G=4 is twice the batch).

    python benchmarks/finetune.py                      # small base if it exists, else a tiny random one
    python benchmarks/finetune.py --base runs/small/base --embedder runs/small/embedder --data-dir data/small

Each G runs in its own child process (so ``ru_maxrss``, the peak resident memory, belongs to that
configuration alone) through the real training loop (``divcfg.finetune.finetune``); the first
``--warmup`` steps are dropped from the means. The output says which base/embedder/data were used.
``--reference`` adds a G=2 run with the sampler as it was before the speed work
(``benchmarks/reference_sampler.py``, swapped in for ``divcfg.sampling.sample`` in that child).
No TRL peer: TRL is not a dependency of this project.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEYS = ("time/sampling", "time/teacher", "time/reward", "time/update", "time/step", "tokens_per_s",
        "completions/mean_length")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark's child process: this checkout first on ``PYTHONPATH``, then
    whatever the caller had there (packages installed beside the checkout, as on a lent GPU machine)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def stand_in_data(work: Path, data_dir: Path) -> Path:
    """The given data set, or the tiny one built into ``work`` when it is missing."""
    if (data_dir / "manifest.json").exists():
        return data_dir
    from divcfg.music.corpus import build
    return build("tiny", data_dir=work / "data", workers=2, quiet=True)


def stand_in_base(work: Path, data_dir: Path) -> Path:
    """A random generator with the small preset's architecture (no trained model needed)."""
    import torch

    from divcfg.models.generator import save_generator
    from divcfg.models.transformer import ModelConfig, MusicTransformer
    from divcfg.music.tokenizer import load_tokenizer, special_ids
    tok = load_tokenizer(data_dir)
    ids = special_ids(tok)
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(vocab_size=len(tok), pad_id=ids["pad"], bos_id=ids["bos"], eos_id=ids["eos"]))
    return save_generator(work / "base", model, {"provenance": {"note": "random benchmark base"}},
                          data_dir / "tokenizer.json")


def stand_in_embedder(work: Path, data_dir: Path) -> Path:
    """An untrained diversity embedder of the small size (same cost as a trained one)."""
    from divcfg.embedders.diversity import DiversityEmbedder, EmbedderConfig, save_diversity_embedder
    from divcfg.music.tokenizer import load_tokenizer
    E = DiversityEmbedder(EmbedderConfig(vit="small"), load_tokenizer(data_dir))
    return save_diversity_embedder(work / "embedder", E, tokenizer_path=data_dir / "tokenizer.json")


def child(args) -> None:
    """Run a few real training steps with G = args.child and print one JSON line of means."""
    import torch

    if args.reference_sampler:  # before importing the loop, so it binds the old sampler
        import divcfg.sampling
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from reference_sampler import reference_sample
        divcfg.sampling.sample = reference_sample
    from divcfg.finetune import FinetuneConfig, finetune
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        cfg = FinetuneConfig(base=args.base, embedder=args.embedder, data_dir=args.data_dir, out=str(Path(d) / "ft"),
                             gamma=args.gamma, beta=1.0, group_size=args.child, prompts_per_step=args.prompts,
                             max_new_tokens=args.max_new_tokens, max_steps=args.steps + args.warmup,
                             max_minutes=0.0, eval_every=0, eval_prompts=2, eval_max_new_tokens=8,
                             eval_teacher=False, ckpt_every=10**6, threads=args.threads, updates_per_batch=1,
                             preset="bench")
        finetune(cfg, progress=False)
        rows = [json.loads(line) for line in open(Path(d) / "ft" / "metrics.jsonl") if '"time/step"' in line]
    rows = rows[args.warmup:]
    res = {k: sum(r[k] for r in rows) / len(rows) for k in KEYS}
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["samples_per_step"] = args.prompts * args.child
    print("RESULT " + json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="runs/small/base/checkpoint")
    p.add_argument("--embedder", default="runs/small/embedder")
    p.add_argument("--data-dir", default="data/small")
    p.add_argument("--gamma", type=float, default=2.0)
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="measured steps per G")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured first steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--reference", action="store_true",
                   help="also run G=2 with the sampler as it was before the speed work")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--reference-sampler", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from divcfg.sampling import bf16_supported
    work = Path(tempfile.mkdtemp(prefix="bench_ft_"))
    data_dir = stand_in_data(work, Path(args.data_dir))
    what = [f"data '{data_dir}'"]
    if (Path(args.base) / "model.safetensors").exists():
        what.append(f"trained base '{args.base}'")
    else:
        args.base = str(stand_in_base(work, data_dir))
        what.append("RANDOM base (small architecture)")
    if Path(args.embedder).exists():
        what.append(f"trained embedder '{args.embedder}'")
    else:
        args.embedder = str(stand_in_embedder(work, data_dir))
        what.append("UNTRAINED small embedder")
    what = ", ".join(what)
    print(f"finetune step benchmark: {what}")
    print(f"{args.prompts} prompts/step, ≤{args.max_new_tokens} new tokens, γ={args.gamma}, {args.threads} threads, "
          f"bf16={bf16_supported()}, {args.steps} measured steps after {args.warmup} warm-up; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (timings are contended above that)")
    results = {}
    runs = [(2, "G=2", False), (4, "G=4", False)] + ([(2, "G=2 before", True)] if args.reference else [])
    for G, label, ref in runs:
        t0 = time.time()
        cmd = [sys.executable, __file__, "--child", str(G), "--base", args.base, "--embedder", args.embedder,
               "--data-dir", str(data_dir), "--gamma", str(args.gamma), "--prompts", str(args.prompts),
               "--max-new-tokens", str(args.max_new_tokens), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--threads", str(args.threads)] + (["--reference-sampler"] if ref else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"error: the {label} run failed: {out.stderr.strip().splitlines()[-1] if out.stderr else '?'}")
        results[label] = json.loads(line[7:])
        print(f"  {label} done in {time.time() - t0:.0f} s")
    rows = [("samples per step", "samples_per_step", "{:.0f}"), ("mean generated length", "completions/mean_length", "{:.0f}"),
            ("sampling  s/step", "time/sampling", "{:.3f}"), ("teacher   s/step", "time/teacher", "{:.3f}"),
            ("reward    s/step", "time/reward", "{:.3f}"), ("update    s/step", "time/update", "{:.3f}"),
            ("total     s/step", "time/step", "{:.3f}"), ("tokens/s (generated)", "tokens_per_s", "{:.0f}"),
            ("peak RSS MiB", "peak_rss_mib", "{:.0f}")]
    before = "G=2 before" in results
    print(f"\n{'':24s}{'G=2':>10s}{'G=4':>10s}{'G4/G2':>8s}" + (f"{'G=2 before':>12s}{'G2/before':>10s}" if before else ""))
    for label, key, fmt in rows:
        a, b = results["G=2"][key], results["G=4"][key]
        line = f"{label:24s}{fmt.format(a):>10s}{fmt.format(b):>10s}{b / a if a else float('nan'):>8.2f}"
        if before:
            r = results["G=2 before"][key]
            line += f"{fmt.format(r):>12s}{a / r if r else float('nan'):>10.2f}"
        print(line)
    share = {k: results["G=2"][f"time/{k}"] / results["G=2"]["time/step"] for k in ("sampling", "teacher", "reward", "update")}
    print("\nG=2 time shares: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))


if __name__ == "__main__":
    main()
