"""`divcfg sample`: generate from a checkpoint for free-text prompts, with or without CFG.

Any generator plug-in: a divcfg checkpoint of the built-in music model writes
``<out>/<prompt-slug>_<i>.mid`` (always) and ``.wav`` (when a General MIDI soundfont is installed);
``hf:PATH`` (a local transformers causal LM, its own tokenizer) writes ``<prompt-slug>_<i>.txt``.
Both write ``samples.json`` with the prompt, γ, seed, lengths, token ids, the completion files and
provenance. Prompts come from ``--prompt TEXT`` (repeatable) or ``--prompts FILE`` (every prompt of
a .txt/.jsonl file). For text models the null condition ∅ of CFG is the empty prompt, or
``--null-prompt TEXT`` (a negative prompt).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from divcfg.config import arg_type
from divcfg.errors import UserError
from divcfg.models.base import check_device, load_generator_any
from divcfg.provenance import provenance, write_json_atomic
from divcfg.sampling import sample


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "prompt"


def _check_prompts(texts: list[str]) -> list[str]:
    for t in texts:
        if not t or not t.strip():
            raise UserError("empty prompt: pass a description, e.g. --prompt \"an Irish jig in D major, 6/8\"")
    return list(texts)


def generate_with(generator, prompts: list[str], gamma: float = 1.0, num_samples: int = 1,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                  max_new_tokens: int | None = None, cfg_mode: str = "batched", compile: bool = False) -> list[dict]:
    """Sample ``num_samples`` generations per prompt from a generator plug-in; rows with the prompt,
    token ids and the decoded completion (token ids for the music model, text for a text LM).
    ``compile``: the opt-in compiled decode step (built-in transformer only, ``sample(compile=True)``)."""
    if num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {num_samples}")
    if gamma < 0:
        raise UserError(f"--cfg must be >= 0 (1 = no guidance), got {gamma}")
    prompts = _check_prompts(prompts)
    model = generator.model
    if compile and not hasattr(model, "new_compiled_cache"):
        raise UserError("--compile is available for the built-in transformer only, not for this generator")
    device = generator.device
    cond = generator.encode_prompts(prompts).to(device).repeat_interleave(num_samples, dim=0)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = sample(model, cond, max_new_tokens=max_new_tokens or model.cfg.max_len - 1, gamma=gamma,
                 temperature=temperature, top_k=top_k, top_p=top_p, cfg_mode=cfg_mode, generator=gen,
                 compile=compile)
    seqs = out.sequences()
    completions = generator.decode(seqs)
    return [{"prompt": prompts[i // num_samples], "index": i % num_samples, "tokens": seq,
             "completion": completions[i], "finished": bool(out.finished[i]), "length": len(seq)}
            for i, seq in enumerate(seqs)]


def generate(checkpoint: str, prompts: list[str], gamma: float = 1.0, num_samples: int = 1,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             max_new_tokens: int | None = None, cfg_mode: str = "batched", device: str = "cpu",
             null_prompt: str | None = None) -> tuple[list[dict], dict]:
    """Load ``checkpoint`` (a divcfg checkpoint or ``hf:PATH``) and sample; ``(rows, its record)``."""
    _check_prompts(prompts)
    generator = load_generator_any(checkpoint, device, null_prompt=null_prompt)
    rows = generate_with(generator, prompts, gamma, num_samples, temperature, top_k, top_p, seed,
                         max_new_tokens, cfg_mode)
    return rows, {**generator.record, "_dir": str(generator.path)}


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", "--base", dest="checkpoint", required=True,
                        help="generator: a divcfg checkpoint or run folder, or hf:PATH (a local transformers folder)")
    parser.add_argument("--prompt", action="append", default=None,
                        help="text prompt (repeat for several), e.g. \"an Irish jig in D major, 6/8\"")
    parser.add_argument("--prompts", default=None, help="a prompt file instead: .txt one per line, .jsonl with a "
                        "'prompt' field (every prompt of the file)")
    parser.add_argument("--null-prompt", default=None, help="text models: the null prompt ∅ of CFG "
                        "(default: the one stored with a divcfg-fine-tuned folder, else the empty prompt)")
    parser.add_argument("--cfg", type=arg_type(float, ge=0, le=100), default=1.0, dest="gamma",
                        help="guidance scale γ (1 = plain conditional, 0 = unconditional, >1 = CFG)")
    parser.add_argument("--cfg-mode", choices=["batched", "two_pass"], default="batched",
                        help="CFG as one 2B batch (fast) or two passes (low memory)")
    parser.add_argument("--num-samples", type=arg_type(int, ge=1), default=1, help="generations per prompt")
    parser.add_argument("--temperature", type=arg_type(float, ge=0.01, le=100), default=1.0)
    parser.add_argument("--top-k", type=arg_type(int, ge=0), default=0, help="keep the k most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=arg_type(float, gt=0, le=1), default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--max-new-tokens", type=arg_type(int, ge=1), default=None)
    parser.add_argument("--seed", type=arg_type(int, ge=0), default=0)
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")
    parser.add_argument("--compile", action="store_true",
                        help="built-in transformer: run the decode step as a torch.compile'd graph (compiles "
                             "first, seconds; then faster per token on a CPU; same distribution, not the same bits)")
    parser.add_argument("--out", default="samples", help="output folder")


def run(args) -> None:
    from divcfg.domains.base import domain_for_output

    if args.prompts:
        from divcfg.domains.text import read_prompt_file
        texts = read_prompt_file(args.prompts) + list(args.prompt or [])
    elif args.prompt:
        texts = list(args.prompt)
    else:
        raise UserError("no prompt: pass --prompt TEXT (repeatable) or --prompts FILE")
    _check_prompts(texts)
    device = check_device(args.device)
    generator = load_generator_any(args.checkpoint, device, null_prompt=args.null_prompt)
    domain = domain_for_output(generator)
    rows = generate_with(generator, texts, args.gamma, args.num_samples, args.temperature, args.top_k, args.top_p,
                         args.seed, args.max_new_tokens, args.cfg_mode, compile=args.compile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = domain.write(out, rows, generator)
    meta = {"checkpoint": str(generator.path), "generator": generator.kind, "gamma": args.gamma,
            "cfg_mode": args.cfg_mode, "compile": args.compile, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "null_prompt": getattr(generator, "null_prompt", None), "device": str(device),
            "provenance": provenance(args.seed, stage="sample"),
            "samples": [{k: v for k, v in r.items() if k != "tokens"} | {"tokens": r["tokens"]} for r in rows]}
    if generator.kind != "hf":
        for s in meta["samples"]:
            s.pop("completion", None)    # the token ids again
    write_json_atomic(out / "samples.json", meta)
    kinds = sorted({Path(f).suffix.lstrip(".").upper() for f in files})
    print(f"wrote {len(files)} file(s) ({' + '.join(kinds) or 'none'}) to {out}/ "
          f"(γ={args.gamma}, mean length {sum(r['length'] for r in rows) / len(rows):.0f} tokens)")
    print(json.dumps([{"file": r.get("file"), "finished": r["finished"]} for r in rows]))
