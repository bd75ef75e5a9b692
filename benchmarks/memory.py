"""Memory and speed of `divcfg finetune` on a model large enough to matter: full fine-tuning (fp32
teacher copy, bf16 teacher copy) vs LoRA vs LoRA + gradient checkpointing (peak memory, s/step),
and LoRA with 1 vs 2 data-parallel processes (s/step, generations/s), printed side by side.

    python benchmarks/memory.py                       # CPU, a random 12-layer d=768 built-in transformer
    python benchmarks/memory.py --device cuda         # the same on a GPU (peak = torch.cuda.max_memory_allocated)

The base is built in code (random weights, saved once to a temporary folder). Each configuration
runs the real training loop (``divcfg finetune`` through the CLI) in its own child process, so the
peak resident memory (``ru_maxrss``) is that configuration's alone; the 2-process run goes through
``--num-processes 2`` (torch.distributed.run, gloo on CPU) and reports the largest rank's peak. s/step is the
mean ``time/step`` of the steps after the first. With no diversity judge (β=0) the step is
sampling + teacher + update; P prompts × G generations of ``--max-new-tokens`` tokens per process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.finetune import child_env  # noqa: E402

CHILD = """
import json, resource, sys, runpy, torch
sys.argv = ["divcfg"] + json.loads(sys.argv[1])
from divcfg.cli import main
rc = main()
# the largest process: this one, or (--num-processes) the biggest of the ranks it launched
peak = {"rss_mb": max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024}
if torch.cuda.is_available():
    peak["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
print("PEAK " + json.dumps(peak))
sys.exit(rc)
"""


def build_base(work: Path, data_dir: Path, n_layer: int, d_model: int, max_len: int) -> Path:
    import torch
    from divcfg.models.generator import save_generator
    from divcfg.models.transformer import ModelConfig, MusicTransformer
    from divcfg.music.tokenizer import load_tokenizer, special_ids
    tok = load_tokenizer(data_dir)
    ids = special_ids(tok)
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(vocab_size=len(tok), n_layer=n_layer, n_head=12, d_model=d_model,
                                         n_prefix=4, max_len=max_len, dropout=0.0, pad_id=ids["pad"],
                                         bos_id=ids["bos"], eos_id=ids["eos"]))
    path = work / "base"
    save_generator(path, model, {"provenance": {"note": "random benchmark base"}}, data_dir / "tokenizer.json")
    print(f"base: random built-in transformer, {n_layer} layers, d={d_model}, "
          f"{model.num_parameters() / 1e6:.1f} M parameters")
    return path


def run_config(name: str, extra: list[str], args, base: Path, data_dir: Path, work: Path) -> dict:
    out = work / name.replace(" ", "_").replace("+", "")
    argv = ["finetune", "--preset", "tiny", "--data-dir", str(data_dir), "--base", str(base), "--embedder", "",
            "--out", str(out), "--gamma", "2", "--prompts-per-step", str(args.prompts), "--group-size", "2",
            "--max-new-tokens", str(args.max_new_tokens), "--max-steps", str(args.steps), "--eval-every", "0",
            "--eval-prompts", "1", "--eval-samples", "2", "--eval-max-new-tokens", "4", "--eval-teacher", "false",
            "--ckpt-every", "1000", "--threads", str(args.threads), "--device", args.device, "--no-progress", *extra]
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv)], cwd=ROOT, capture_output=True, text=True,
                         env=child_env(OMP_NUM_THREADS=str(args.threads)))
    if res.returncode != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr[-3000:]}")
    peak = [json.loads(line[5:]) for line in res.stdout.splitlines() if line.startswith("PEAK ")][-1]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl") if '"time/step"' in line]
    steps = rows[1:] or rows
    cfg = json.loads((out / "checkpoint" / "config.json").read_text())
    s_step = sum(r["time/step"] for r in steps) / len(steps)
    gens = cfg["effective_batch"]["generations"]
    return {"config": name, "peak_rss_mb": peak["rss_mb"], "peak_cuda_mb": peak.get("cuda_mb"),
            "s_per_step": s_step, "update_s": sum(r["time/update"] for r in steps) / len(steps),
            "generations_per_step": gens, "generations_per_s": gens / s_step,
            "trainable_M": cfg["trainable_parameters"] / 1e6, "wall_s": time.time() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--prompts", type=int, default=2, help="prompts per step per process")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="steps per configuration (the first is not measured)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default="data/small")
    p.add_argument("--skip-ddp", action="store_true", help="no 1-vs-2-process comparison")
    args = p.parse_args()

    from benchmarks.finetune import stand_in_data
    import torch
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir = stand_in_data(work, Path(args.data_dir))
        base = build_base(work, data_dir, args.layers, args.d_model, args.max_new_tokens + 8)
        lora = ["--lora-r", str(args.lora_r)]
        configs = [("full", []), ("full, bf16 teacher", ["--teacher-dtype", "bf16"]), (f"LoRA r={args.lora_r}", lora),
                   (f"LoRA r={args.lora_r} + grad ckpt", lora + ["--gradient-checkpointing", "true"])]
        if not args.skip_ddp:
            configs += [(f"LoRA r={args.lora_r}, 2 processes", lora + ["--num-processes", "2"])]
        results = []
        for name, extra in configs:
            print(f"running {name} ...", flush=True)
            results.append(run_config(name, extra, args, base, data_dir, work))
    print(f"\n{args.layers} layers, d={args.d_model}; {args.prompts} prompts × 2 generations × ≤{args.max_new_tokens} "
          f"tokens per process per step; device {args.device}, {args.threads} thread(s) per process; "
          f"mean of {max(args.steps - 1, 1)} step(s)")
    cuda = args.device.startswith("cuda")
    head = f"{'configuration':34s} {'trainable M':>11s} {'peak RSS MB':>11s}" + (f" {'peak GPU MB':>11s}" if cuda else "") \
        + f" {'s/step':>8s} {'update s':>8s} {'gen/step':>8s} {'gen/s':>7s}"
    print(head)
    for r in results:
        print(f"{r['config']:34s} {r['trainable_M']:11.2f} {r['peak_rss_mb']:11.0f}"
              + (f" {r['peak_cuda_mb']:11.0f}" if cuda else "")
              + f" {r['s_per_step']:8.2f} {r['update_s']:8.2f} {r['generations_per_step']:8d} {r['generations_per_s']:7.2f}")
    print("\nJSON " + json.dumps(results))


if __name__ == "__main__":
    main()
