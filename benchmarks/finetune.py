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

``--peer`` (on by default when TRL is installed: ``pip install 'divcfg[bench]'``; ``--peer-only`` runs it
alone) prints TRL's GKD step beside divcfg's, each in its own child process, on one GPT-2 built in
code (random weights, 4 layers, d=256, 4 heads, the word-level tokenizer of ``benchmarks/hf_gpu.py``):
the same P prompts × G=2 generations per step, the same ``--peer-max-new-tokens``, temperature 1, fp32,
no gradient checkpointing (TRL's default turns it on, and with it the KV cache off in generation).
divcfg runs ``divcfg finetune --base hf:...`` at β=0 (pure distillation; the cheap bag-of-words user
judge still scores the samples, shown as "reward") with its CFG teacher at ``--gamma`` (conditional +
unconditional rows) and at γ=1 (conditional rows only: the cost of TRL's plain teacher). TRL runs
``GKDTrainer`` with a frozen copy as teacher, ``lmbda=1`` (fully on-policy) and ``beta=1``: TRL's
generalised JSD at β=1 is ``KL(student‖teacher)``, divcfg's reverse KL. Measured per step, from the
start of sampling to the end of the optimizer step: wall seconds, CPU seconds (``time.process_time``,
all threads; honest on a busy machine) and the generated tokens (EOS included).
"""

from __future__ import annotations

import argparse
import importlib.util
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
    from divcfg.music.judges.diversity import DiversityEmbedder, EmbedderConfig, save_diversity_embedder
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


def peer_child(args) -> None:
    """One side of the TRL peer (``args.peer_child`` = divcfg or trl): per-step means as a RESULT line."""
    import torch
    torch.set_num_threads(args.threads)
    G, P, N, steps = 2, args.prompts, args.peer_max_new_tokens, args.warmup + args.steps
    marks, reward_s = [], float("nan")   # per step: [wall start, cpu start, generated tokens, wall end, cpu end]
    with tempfile.TemporaryDirectory() as d:
        if args.peer_child == "divcfg":
            import divcfg.finetune.loop as loop
            from benchmarks.hf_gpu import JUDGES
            from divcfg.cli import main as cli
            rollout, update = loop.rollout, loop.update   # timed where the step starts and ends

            def timed_rollout(*a, **k):
                marks.append([time.perf_counter(), time.process_time()])
                out = rollout(*a, **k)
                marks[-1].append(int(out[3].sum()))
                return out

            def timed_update(*a, **k):
                res = update(*a, **k)
                marks[-1] += [time.perf_counter(), time.process_time()]
                return res
            loop.rollout, loop.update = timed_rollout, timed_update
            rc = cli(["finetune", "--base", f"hf:{args.peer_model}", "--prompts", args.peer_prompts, "--out", d + "/ft",
                      "--gamma", str(args.gamma), "--beta", "0", "--group-size", str(G), "--prompts-per-step", str(P),
                      "--max-new-tokens", str(N), "--max-steps", str(steps), "--max-minutes", "0",
                      "--eval-prompts", "2", "--eval-max-new-tokens", "1", "--eval-teacher", "false",
                      "--ckpt-every", "1000000", "--updates-per-batch", "1", "--bf16", "false",
                      "--threads", str(args.threads), "--no-progress", *JUDGES])
            if rc:
                sys.exit(f"error: divcfg finetune exited {rc}")
            rows = [json.loads(x) for x in open(d + "/ft/metrics.jsonl") if '"time/reward"' in x][args.warmup:]
            reward_s = sum(r["time/reward"] for r in rows) / len(rows)
        else:
            from datasets import Dataset
            from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
            from trl.experimental.gkd import GKDConfig, GKDTrainer
            tok = AutoTokenizer.from_pretrained(args.peer_model)
            tok.pad_token, tok.padding_side = tok.eos_token, "left"
            texts = Path(args.peer_prompts).read_text().split("\n")[:P]

            def collate(rows):
                enc = tok([r["prompt"] for r in rows], return_tensors="pt", padding=True)
                return {"prompts": enc.input_ids, "prompt_attention_mask": enc.attention_mask,
                        "input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": enc.input_ids}

            class Clock(TrainerCallback):
                def on_step_begin(self, *a, **k):
                    marks.append([time.perf_counter(), time.process_time()])

                def on_step_end(self, *a, **k):
                    marks[-1] += [time.perf_counter(), time.process_time()]

            class CountingGKD(GKDTrainer):
                def training_step(self, model, inputs, num_items_in_batch=None):
                    loss = super().training_step(model, inputs, num_items_in_batch)  # inputs now hold the samples
                    marks[-1].append(int((inputs["labels"] != -100).sum()))
                    return loss
            teacher = AutoModelForCausalLM.from_pretrained(args.peer_model).eval().requires_grad_(False)
            conf = GKDConfig(output_dir=d, per_device_train_batch_size=P * G, max_steps=steps, learning_rate=1e-4,
                             lmbda=1.0, beta=1.0, temperature=1.0, max_new_tokens=N, use_cpu=True, bf16=False,
                             gradient_checkpointing=False,   # TRL's default True also turns the KV cache off
                             report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no",
                             disable_tqdm=True, dataloader_num_workers=0, seed=0)
            CountingGKD(model=AutoModelForCausalLM.from_pretrained(args.peer_model), teacher_model=teacher, args=conf,
                        data_collator=collate, processing_class=tok,
                        train_dataset=Dataset.from_dict({"prompt": [t for t in texts for _ in range(G)]}),
                        callbacks=[Clock()]).train()
    m = marks[args.warmup:]
    wall, cpu, tokens = (sum(r[3] - r[0] for r in m), sum(r[4] - r[1] for r in m), sum(r[2] for r in m))
    print("RESULT " + json.dumps({"s_per_step": wall / len(m), "cpu_s_per_step": cpu / len(m),
                                  "tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu,
                                  "mean_length": tokens / len(m) / (P * G), "reward_s_per_step": reward_s}))


def run_child(label: str, cmd: list[str]) -> dict:
    """Run one benchmark child process; its RESULT line, or a one-line error naming ``label``."""
    t0 = time.time()
    out = subprocess.run([sys.executable, __file__, *cmd], capture_output=True, text=True, env=child_env())
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"error: the {label} run failed: {out.stderr.strip().splitlines()[-1] if out.stderr else '?'}")
    print(f"  {label} done in {time.time() - t0:.0f} s", flush=True)
    return json.loads(line[7:])


def peer(args) -> None:
    """divcfg's step (CFG γ and γ=1) beside TRL's GKD step on one GPT-2 built in code (see the docstring)."""
    from transformers import AutoConfig

    from benchmarks.hf_gpu import build
    if args.peer_max_new_tokens > 120:
        sys.exit("error: --peer-max-new-tokens must be ≤ 120 (the peer GPT-2 has 128 positions)")
    g = f"{args.gamma:g}"
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as tmp:
        model, prompts = build(Path(tmp), "bench")
        c = AutoConfig.from_pretrained(model)
        print(f"\nTRL peer: random GPT-2 built in code ({c.n_layer} layers, d={c.n_embd}, {c.n_head} heads, "
              f"{c.vocab_size}-word vocabulary), {args.prompts} prompts × 2 generations/step, "
              f"≤{args.peer_max_new_tokens} new tokens, temperature 1, fp32, no gradient checkpointing, {args.threads} "
              f"threads, {args.steps} measured steps after {args.warmup} warm-up; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        common = ["--peer-model", str(model), "--peer-prompts", str(prompts), "--prompts", str(args.prompts),
                  "--peer-max-new-tokens", str(args.peer_max_new_tokens), "--steps", str(args.steps),
                  "--warmup", str(args.warmup), "--threads", str(args.threads)]
        res = {f"divcfg γ={g}": run_child(f"divcfg γ={g}", ["--peer-child", "divcfg", "--gamma", g, *common]),
               "divcfg γ=1": run_child("divcfg γ=1", ["--peer-child", "divcfg", "--gamma", "1", *common]),
               "TRL GKD": run_child("TRL GKD", ["--peer-child", "trl", *common])}
    print("\n" + f"{'':24s}" + "".join(f"{k:>13s}" for k in res))
    for label, key, fmt in (("mean generated length", "mean_length", "{:.1f}"),
                            ("wall s/step", "s_per_step", "{:.3f}"), ("CPU s/step", "cpu_s_per_step", "{:.3f}"),
                            ("  of which divcfg reward", "reward_s_per_step", "{:.3f}"),
                            ("tokens/s (generated)", "tokens_per_s", "{:.0f}"),
                            ("tokens per CPU-second", "tokens_per_cpu_s", "{:.0f}")):
        print(f"{label:24s}" + "".join(f"{fmt.format(r[key]) if r[key] == r[key] else '-':>13s}" for r in res.values()))
    trl = res["TRL GKD"]
    for name in (f"divcfg γ={g}", "divcfg γ=1"):
        r = res[name]
        print(f"{name} / TRL: tokens/s ×{r['tokens_per_s'] / trl['tokens_per_s']:.2f}, tokens per CPU-second "
              f"×{r['tokens_per_cpu_s'] / trl['tokens_per_cpu_s']:.2f}, "
              f"s/step ×{r['s_per_step'] / trl['s_per_step']:.2f}")
    print(f"What differs: divcfg's teacher is CFG (γ={g}: conditional + unconditional rows, twice TRL's teacher batch; "
          "γ=1: conditional rows only, TRL's cost); divcfg at β=0 still scores its samples with the bag-of-words "
          "judge; divcfg samples with its own sampler after prompt + an added BOS token, TRL with transformers' "
          "generate after the prompt; TRL's loss is GKD's generalised JSD at beta=1, i.e. KL(student‖teacher).")


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
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=None,
                   help="also time TRL's GKD step beside divcfg's on a GPT-2 built in code (default: on when TRL "
                        "is installed)")
    p.add_argument("--peer-only", action="store_true", help="run only the TRL peer (implies --peer)")
    p.add_argument("--peer-max-new-tokens", type=int, default=64, help="new tokens per sample in the peer (≤ 120)")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--peer-child", choices=("divcfg", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--peer-model", help=argparse.SUPPRESS)
    p.add_argument("--peer-prompts", help=argparse.SUPPRESS)
    p.add_argument("--reference-sampler", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.peer_child:
        return peer_child(args)
    has_trl = importlib.util.find_spec("trl") is not None
    if (args.peer or args.peer_only) and not has_trl:
        sys.exit("error: --peer needs TRL: pip install 'divcfg[bench]'")
    if args.peer_only:
        return peer(args)
    if args.peer is None:
        args.peer = has_trl
        if not has_trl:
            print("no TRL peer: pip install 'divcfg[bench]' to time TRL's GKD step beside divcfg's")

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
        cmd = ["--child", str(G), "--base", args.base, "--embedder", args.embedder,
               "--data-dir", str(data_dir), "--gamma", str(args.gamma), "--prompts", str(args.prompts),
               "--max-new-tokens", str(args.max_new_tokens), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--threads", str(args.threads)] + (["--reference-sampler"] if ref else [])
        results[label] = run_child(label, cmd)
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
    if args.peer:
        peer(args)


if __name__ == "__main__":
    main()
