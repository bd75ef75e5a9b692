"""The "Bring your own model" command sequence on a device (issue 8's GPU check): README's five
commands (finetune β=0, finetune β>0, merge, evaluate, sample) run as written on a random GPT-2 and a
word-level tokenizer built in code (docs/bring_your_own_model.md's snippet), with ``--device`` added.

    python benchmarks/hf_gpu.py --device cuda --json $OUT/hf_gpu.json
    python benchmarks/hf_gpu.py --device cpu --steps 2          # smoke run

The text judges here are two small user judges (``--diversity-judge benchmarks.hf_gpu:bag_of_words``,
``--quality-judge benchmarks.hf_gpu:prompt_overlap``) instead of MiniLM, whose 88 MB of weights do not
travel to a device machine that cannot download; the plug-in path for judges is the same.

Checked, beyond every command's exit status 0:
- the fine-tuned and merged folders load in plain transformers on the device and ``generate`` there
  from ``prompt + [BOS]`` as the docs say;
- every loss and KL in ``metrics.jsonl`` is finite, and the students' weights moved from the base;
- ``merge`` at λ=0.5 is the mean of the two students, tensor by tensor;
- ``evaluate`` wrote one row per system (base, CFG γ, temperature, students, merges).

``--size small`` uses GPT-2 small's dimensions (12 layers, d=768, 124M parameters with GPT-2's
50,257-word vocabulary; the word-level vocabulary here is 34 words, so the LM head is tiny) and
prints the fine-tuning s/step split into sampling / teacher / update and the peak device memory.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

WORDS = "a song story poem about the sea forest city river night rain sun wind calm wild old new and of in is we sing .".split()
SIZES = {"tiny": dict(n_embd=64, n_layer=2, n_head=2), "small": dict(n_embd=768, n_layer=12, n_head=12),
         "bench": dict(n_embd=256, n_layer=4, n_head=4)}   # bench: benchmarks/finetune.py's TRL peer


def bag_of_words(completions):
    """Diversity judge (embedder form): word counts over the prompt vocabulary, plus a constant so an
    empty completion is not a zero row."""
    index = {w: i for i, w in enumerate(sorted(set(WORDS)))}
    rows = torch.full((len(completions), len(index) + 1), 0.0)
    rows[:, -1] = 0.1
    for r, text in enumerate(completions):
        for w in text.split():
            if w in index:
                rows[r, index[w]] += 1.0
    return rows


def prompt_overlap(prompts, completions, **kwargs):
    """Quality judge (TRL reward form): the share of the prompt's words the completion uses."""
    return [len(set(p.split()) & set(c.split())) / max(len(set(p.split())), 1) for p, c in zip(prompts, completions)]


def build(folder: Path, size: str) -> tuple[Path, Path]:
    """docs/bring_your_own_model.md's tiny model and prompt file (``size`` picks the dimensions)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "[UNK]"] + sorted(set(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="[UNK]")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=128, initializer_range=0.3,
                                       bos_token_id=0, eos_token_id=0, **SIZES[size]))
    model.save_pretrained(folder / "my-model")
    tok.save_pretrained(folder / "my-model")
    prompts = folder / "prompts.txt"
    prompts.write_text("".join(f"a {adj} {kind} about the {noun}\n" for kind in ("song", "story", "poem")
                               for adj in ("calm", "wild", "old", "new")
                               for noun in ("sea", "forest", "city", "river", "night", "rain")))
    return folder / "my-model", prompts


JUDGES = ["--diversity-judge", "benchmarks.hf_gpu:bag_of_words", "--quality-judge", "benchmarks.hf_gpu:prompt_overlap"]


def commands(w: Path, model: Path, prompts: Path, device: str, steps: int) -> list[tuple[str, list[str]]]:
    judges = JUDGES
    ft = ["--prompts", str(prompts), "--gamma", "3", "--max-steps", str(steps), "--prompts-per-step", "8",
          "--max-new-tokens", "24", "--eval-max-new-tokens", "24", "--eval-prompts", "8", "--lr", "1e-3",
          "--bf16", "false", "--device", device, "--no-progress", *judges]
    return [
        ("finetune beta=0", ["finetune", "--base", f"hf:{model}", "--out", str(w / "beta0"), "--beta", "0", *ft]),
        ("finetune beta=5", ["finetune", "--base", f"hf:{model}", "--out", str(w / "beta5"), "--beta", "5", *ft]),
        ("merge", ["merge", f"hf:{w / 'beta0'}", f"hf:{w / 'beta5'}", "--lam", "0.5", "--out", str(w / "merge05")]),
        ("evaluate", ["evaluate", "--base", f"hf:{model}", "--quality", f"hf:{w / 'beta0'}", "--diversity",
                      f"hf:{w / 'beta5'}", "--prompts", str(prompts), "--num-prompts", "7", "--generations", "4",
                      "--max-new-tokens", "24", "--batch-size", "28", "--cfg-gammas", "2,3", "--temperatures", "1.3",
                      "--lams", "0,0.5,1", "--bootstrap", "200", "--device", device, *judges, "--out", str(w / "eval")]),
        ("sample", ["sample", "--base", f"hf:{w / 'merge05'}", "--prompt", "a calm song about the sea",
                    "--num-samples", "2", "--max-new-tokens", "24", "--device", device, "--out", str(w / "samples")]),
    ]


def check(w: Path, model: Path, device: str) -> dict:
    """What the docs promise of the outputs, checked on the device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = {}
    for run in ("beta0", "beta5"):
        rows = [json.loads(line) for line in (w / run / "metrics.jsonl").read_text().splitlines()]
        losses = [v for r in rows for k, v in r.items() if k.startswith(("loss", "kl/")) and isinstance(v, (int, float))]
        assert losses and all(math.isfinite(v) for v in losses), f"{run}: a non-finite loss or KL"
        out[f"{run}/steps"] = sum("time/step" in r for r in rows)
        out[f"{run}/s_per_step"] = [r["time/step"] for r in rows if "time/step" in r]
        for key in ("time/sampling", "time/teacher", "time/update"):
            vals = [r[key] for r in rows if key in r]
            out[f"{run}/{key}"] = sum(vals[1:] or vals) / max(len(vals[1:] or vals), 1)
    folder = lambda n: w / n / "checkpoint" if (w / n / "checkpoint").is_dir() else w / n   # noqa: E731
    sd = {n: AutoModelForCausalLM.from_pretrained(folder(n)).state_dict() for n in ("beta0", "beta5", "merge05")}
    base = AutoModelForCausalLM.from_pretrained(model).state_dict()
    moved = {n: max(float((sd[n][k].float() - base[k].float()).abs().max()) for k in base if sd[n][k].shape == base[k].shape)
             for n in ("beta0", "beta5")}
    assert all(v > 0 for v in moved.values()), f"a student did not move from the base: {moved}"
    gap = max(float((sd["merge05"][k] - 0.5 * (sd["beta0"][k] + sd["beta5"][k])).abs().max()) for k in sd["merge05"])
    assert gap < 1e-5, f"the λ=0.5 merge is not the mean of the students (max gap {gap})"
    out["merge/max_gap"] = gap
    tok = AutoTokenizer.from_pretrained(folder("merge05"))
    lm = AutoModelForCausalLM.from_pretrained(folder("merge05")).to(device)
    ids = tok("a calm song about the sea", add_special_tokens=False, return_tensors="pt").input_ids.to(device)
    ids = torch.cat([ids, torch.tensor([[tok.bos_token_id]], device=device)], 1)
    gen = lm.generate(ids, max_new_tokens=8, do_sample=True, pad_token_id=tok.pad_token_id)
    out["plain_transformers_generate"] = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    res = json.loads((w / "eval" / "results.json").read_text())
    systems = res["systems"] if isinstance(res, dict) and "systems" in res else res
    out["evaluate/systems"] = len(systems)
    assert len(systems) >= 7, f"evaluate wrote {len(systems)} systems"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--steps", type=int, default=60, help="fine-tuning steps (README: 60)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from divcfg.cli import main as cli
    from divcfg.provenance import provenance, write_json_atomic
    figures = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        model, prompts = build(w, args.size)
        from transformers import AutoModelForCausalLM
        figures["parameters_M"] = AutoModelForCausalLM.from_pretrained(model).num_parameters() / 1e6
        for name, argv in commands(w, model, prompts, args.device, args.steps):
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            print("$ divcfg " + " ".join(argv), flush=True)
            t0 = time.perf_counter()
            rc = cli(argv)
            figures[f"{name}/wall_s"] = time.perf_counter() - t0
            if args.device.startswith("cuda"):
                figures[f"{name}/peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
            if rc != 0:
                raise SystemExit(f"FAILED: divcfg {name} exited {rc}")
        figures.update(check(w, model, args.device))
    print("\nstage              wall s   peak GPU MiB")
    for name, _ in commands(Path("."), Path("."), Path("."), args.device, args.steps):
        print(f"{name:18s} {figures[f'{name}/wall_s']:7.1f}   {figures.get(f'{name}/peak_gpu_mib', float('nan')):8.0f}")
    for run in ("beta0", "beta5"):
        print(f"{run}: {figures[f'{run}/steps']} steps, s/step (after the first) sampling "
              f"{figures[f'{run}/time/sampling']:.3f} teacher {figures[f'{run}/time/teacher']:.3f} "
              f"update {figures[f'{run}/time/update']:.3f}")
    print(f"merge gap {figures['merge/max_gap']:.1e}; evaluate systems {figures['evaluate/systems']}; "
          f"plain transformers generate: {figures['plain_transformers_generate']!r}")
    print("HF PATH OK on", figures["device"])
    if args.json:
        figures["provenance"] = provenance(0, stage="benchmark hf_gpu", size=args.size, device=args.device)
        write_json_atomic(Path(args.json), figures)


if __name__ == "__main__":
    main()
