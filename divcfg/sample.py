"""`divcfg sample`: generate music from a checkpoint for free-text prompts, with or without CFG.

Writes ``<out>/<prompt-slug>_<i>.mid`` (always) and ``.wav`` (when a General MIDI soundfont is
installed), plus ``samples.json`` with the prompt, γ, seed, lengths and provenance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from divcfg.config import arg_type
from divcfg.errors import UserError
from divcfg.models.generator import load_generator, tokenizer_path
from divcfg.prompts import prompts_from_texts
from divcfg.provenance import provenance, write_json_atomic
from divcfg.sampling import sample


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "prompt"


def generate(checkpoint: str, prompts: list[str], gamma: float = 1.0, num_samples: int = 1,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             max_new_tokens: int | None = None, cfg_mode: str = "batched") -> tuple[list[dict], dict]:
    """Sample ``num_samples`` generations per prompt; returns rows with prompt and token ids."""
    if num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {num_samples}")
    if gamma < 0:
        raise UserError(f"--cfg must be >= 0 (1 = no guidance), got {gamma}")
    model, config = load_generator(checkpoint)
    p = prompts_from_texts(prompts)
    cond = p.cond.repeat_interleave(num_samples, dim=0)
    gen = torch.Generator().manual_seed(seed)
    out = sample(model, cond, max_new_tokens=max_new_tokens or model.cfg.max_len - 1, gamma=gamma,
                 temperature=temperature, top_k=top_k, top_p=top_p, cfg_mode=cfg_mode, generator=gen)
    rows = []
    for i, seq in enumerate(out.sequences()):
        rows.append({"prompt": p.texts[i // num_samples], "index": i % num_samples, "tokens": seq,
                     "finished": bool(out.finished[i]), "length": len(seq)})
    return rows, config


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="generator checkpoint or run folder")
    parser.add_argument("--prompt", action="append", required=True,
                        help="text prompt (repeat for several), e.g. \"an Irish jig in D major, 6/8\"")
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
    parser.add_argument("--out", default="samples", help="output folder")


def run(args) -> None:
    from divcfg.music.render import write_midi, write_wav
    from divcfg.music.tokenizer import load_tokenizer, tokens_to_score

    rows, config = generate(args.checkpoint, args.prompt, args.gamma, args.num_samples, args.temperature,
                            args.top_k, args.top_p, args.seed, args.max_new_tokens, args.cfg_mode)
    tok = load_tokenizer(tokenizer_path(config))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wav_ok = None
    for r in rows:
        stem = out / f"{slug(r['prompt'])}_{r['index']}"
        score = tokens_to_score(tok, r["tokens"])
        r["n_notes"] = 0 if score is None else sum(len(t.notes) for t in score.tracks)
        if score is None or r["n_notes"] == 0:
            print(f"warning: {stem.name} has no notes (undecodable or empty); no files written for it")
            continue
        write_midi(score, stem.with_suffix(".mid"))
        r["midi"] = str(stem.with_suffix(".mid"))
        if wav_ok is not False:
            wav_ok = write_wav(score, stem.with_suffix(".wav"))
            if wav_ok:
                r["wav"] = str(stem.with_suffix(".wav"))
    meta = {"checkpoint": config["_dir"], "gamma": args.gamma, "cfg_mode": args.cfg_mode,
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "provenance": provenance(args.seed, stage="sample"),
            "samples": [{k: v for k, v in r.items() if k != "tokens"} | {"tokens": r["tokens"]} for r in rows]}
    write_json_atomic(out / "samples.json", meta)
    n_files = sum(1 for r in rows if "midi" in r)
    print(f"wrote {n_files} MIDI{' + WAV' if wav_ok else ''} file(s) to {out}/ "
          f"(γ={args.gamma}, mean length {sum(r['length'] for r in rows) / len(rows):.0f} tokens)")
    print(json.dumps([{"file": r.get("midi"), "notes": r["n_notes"], "finished": r["finished"]} for r in rows]))
