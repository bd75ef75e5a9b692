"""``divcfg scorer train|eval``: train the text–music alignment scorer and measure it.

Loss (CLIP, symmetric, with multiple positives). For a batch of B pieces with captions
``c_1..c_B`` (a random variant per piece and step), ``S_ij = exp(s)·t_i·m_j`` with the learned
logit scale ``s``. Pieces whose sampled captions are the same string are all positives for each
other: ``P_ij = [c_i = c_j] / #{k: c_k = c_i}``, and

    L = ½ [ CE(S, P) + CE(Sᵀ, Pᵀ) ]     (soft-target cross-entropy, rows text→music / music→text)

Held-out figures (``evaluate``), on N test pieces with their canonical caption ``captions[0]``:
- text→music recall@1 / @10: the rank of piece i among the N pieces for caption i;
- AUC: P(score(own caption, piece) > score(other piece's caption, piece)), over all
  (matched, mismatched) pairs (Mann–Whitney), 0.5 = chance;
- own-above-other rate: for each piece, the fraction of the other N-1 captions that score below its
  own caption, averaged (the AUC restricted to one piece at a time).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from divcfg.music.judges.alignment import (SCORER_SIZES, AlignmentScorer, ScorerConfig, load_alignment_scorer,
                                        save_alignment_scorer)
from divcfg.errors import UserError
from divcfg.stages import judge_resume_state

# training length: ``steps`` optimiser steps (the result does not depend on the machine's speed);
# ``minutes`` is a safety cap whose cut is recorded as cut_short. small: the README's scorer was
# time-boxed at about 8 minutes; a step costs ~0.8 CPU-s with 1 thread (1.06 s measured on the busy
# machine), so 600 steps is that run's size.
PRESETS = {
    "tiny": dict(batch_size=64, lr=2e-3, minutes=10.0, steps=200),
    "small": dict(batch_size=128, lr=1e-3, minutes=30.0, steps=600),
}


def make_config(tok, size: str, **overrides) -> ScorerConfig:
    from divcfg.music.tokenizer import special_ids
    if size not in SCORER_SIZES:
        raise UserError(f"unknown scorer size '{size}': choose one of {', '.join(SCORER_SIZES)}")
    return ScorerConfig(vocab_size=len(tok), pad_id=special_ids(tok)["pad"], bar_id=tok["Bar_None"],
                        **{**SCORER_SIZES[size], **overrides})


def caption_embeddings(pieces: list[dict], progress: bool = True, data_dir=None
                       ) -> tuple[list[list[int]], torch.Tensor, list[str]]:
    """MiniLM embeddings of every caption of every piece: (per-piece caption row indices,
    ``[n_unique, 384]``, the unique caption strings). With ``data_dir`` they are read from / added
    to the data set's caption-embedding cache (``divcfg.prompts.embed_texts``)."""
    from divcfg.prompts import embed_texts
    unique = sorted({c for p in pieces for c in p["captions"]})
    if not unique:
        raise UserError("the pieces have no captions: rebuild the data cache with `divcfg data`")
    index = {c: i for i, c in enumerate(unique)}
    if data_dir is not None:
        emb = embed_texts(unique, data_dir)
    else:
        chunks = [unique[i:i + 1024] for i in range(0, len(unique), 1024)]
        emb = torch.cat([embed_texts(c) for c in tqdm(chunks, desc="caption embeddings", disable=not progress,
                                                      leave=False)])
    return [[index[c] for c in p["captions"]] for p in pieces], emb, unique


def clip_loss(t: torch.Tensor, m: torch.Tensor, scale: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with same-caption pieces as extra positives (module docstring)."""
    logits = scale.exp().clamp(max=100) * t @ m.T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))


def train_scorer(pieces: list[dict], tok, cfg: ScorerConfig, *, steps: int, minutes: float, batch_size: int,
                 lr: float, seed: int = 0, progress: bool = True, data_dir=None, device: str = "cpu",
                 resume_from: tuple[dict, dict] | None = None, ckpt_every: int = 0, on_checkpoint=None,
                 out: str = "the output folder") -> tuple[AlignmentScorer, dict]:
    """Train on (caption variant, piece) pairs for ``steps`` steps (warm-up, then cosine over
    ``step / steps``: the schedule is a function of the step only); ``minutes`` is a safety cap on
    the training time, summed over resumes (0 = none). ``data_dir``: use that data set's
    caption-embedding cache. Every ``ckpt_every`` steps ``on_checkpoint(scorer, training_state)``
    is called; ``resume_from = (weights, training_state)`` continues such a checkpoint exactly. A
    non-finite loss stops with a one-line error (the last checkpoint is kept)."""
    from divcfg.models.base import check_device
    from divcfg.pretrain import autocast_bf16
    from divcfg.stages import TimeCap, cosine_lr, non_finite_error, restore_training
    dev = check_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scorer = AlignmentScorer(cfg, tok)
    t_text = time.time()
    cap_rows, cap_emb, _ = caption_embeddings(pieces, progress, data_dir)
    t_text = time.time() - t_text
    def load_sampler_state(state: dict) -> None:
        rng.bit_generator.state = json.loads(state["sampler_rng"])

    step, elapsed, saved_step, hist = restore_training(scorer, resume_from, load_sampler_state, ("loss",))
    scorer.to(dev)
    cap_emb = cap_emb.to(dev)
    params = [p for n, p in scorer.named_parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if resume_from is not None:
        opt.load_state_dict(resume_from[1]["optimizer"])
    autocast = dev.type == "cuda" and autocast_bf16(True, dev)   # CPU: float32, as before
    cap, cpu0 = TimeCap(minutes), time.process_time()

    def training_state() -> dict:
        return {"optimizer": opt.state_dict(), "step": step, "elapsed": elapsed, "torch_rng": torch.get_rng_state(),
                "sampler_rng": json.dumps(rng.bit_generator.state), "loss": hist["loss"], "steps_planned": steps}

    bar = tqdm(total=steps, initial=step, desc="scorer", disable=not progress, mininterval=2.0)
    scorer.train()
    while step < steps and not cap.reached(elapsed):
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = cosine_lr(lr, step, steps)
        idx = rng.choice(len(pieces), size=min(batch_size, len(pieces)), replace=False)
        cid = torch.tensor([cap_rows[i][rng.integers(len(cap_rows[i]))] for i in idx], device=dev)
        ids = scorer.pad_batch([pieces[i]["tokens"] for i in idx])
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss = clip_loss(scorer.text_embed(cap_emb[cid]), scorer.music_embed(ids), scorer.logit_scale, cid)
        if not torch.isfinite(loss):
            raise non_finite_error("scorer", loss.item(), step, out, saved_step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        elapsed += time.time() - t0
        hist["loss"].append(loss.item())
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(hist['loss'][-10:]):.3f}", refresh=False)
        if on_checkpoint is not None and ckpt_every and step % ckpt_every == 0 and step < steps:
            on_checkpoint(scorer, training_state())
            saved_step = step
    bar.close()
    hist.update(steps=step, seconds=elapsed, cpu_seconds=time.process_time() - cpu0, text_seconds=t_text,
                cut_short=cap.cut_short("scorer", step, steps), training_state=training_state())
    return scorer.eval(), hist


@torch.no_grad()
def evaluate(scorer: AlignmentScorer, pieces: list[dict], n_pieces: int = 100, seed: int = 0) -> dict:
    """Held-out recall@1/@10 among ``n_pieces`` candidates and matched-vs-mismatched AUC."""
    if len(pieces) < n_pieces:
        raise UserError(f"only {len(pieces)} held-out pieces for {n_pieces} candidates: lower --eval-pieces")
    idx = np.random.default_rng(seed).choice(len(pieces), n_pieces, replace=False)
    sel = [pieces[i] for i in idx]
    scorer.eval()
    t = scorer.encode_text([p["captions"][0] for p in sel])
    m = torch.cat([scorer.music_embed(scorer.pad_batch([p["tokens"] for p in sel[i:i + 128]]))
                   for i in range(0, n_pieces, 128)])
    S = (t @ m.T).cpu()                                   # S[caption i, piece j]
    own = S.diag()
    rank = (S > own[:, None]).sum(1)                      # text -> music
    off = ~torch.eye(n_pieces, dtype=torch.bool)
    mism = S[off]
    auc = ((own[:, None] > mism[None, :]).float().mean() + 0.5 * (own[:, None] == mism[None, :]).float().mean()).item()
    own_above = ((own[None, :] > S) & off).sum(0).float() / (n_pieces - 1)   # per piece (column)
    return {"recall@1": (rank < 1).float().mean().item(), "recall@10": (rank < 10).float().mean().item(),
            "auc": auc, "own_above_other": own_above.mean().item(), "n_pieces": n_pieces,
            "chance_recall@1": 1 / n_pieces, "chance_recall@10": 10 / n_pieces,
            "mean_matched": own.mean().item(), "mean_mismatched": mism.mean().item()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from divcfg.config import arg_type
    from divcfg.embedders import judge_args
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train the scorer on a data cache and print held-out figures")
    judge_args.add_train_run(t, out="runs/small/scorer", presets=PRESETS, preset_help="named size (tiny: tests)")
    t.add_argument("--batch-size", type=arg_type(int, ge=2), help="(caption, piece) pairs per batch")
    t.add_argument("--lr", type=arg_type(float, gt=0), help="peak AdamW learning rate")
    judge_args.add_train_seeds(t, eval_help="N held-out candidates", threads=1,
                               threads_help="torch CPU threads (the machine is shared)")
    e = sub.add_parser("eval", help="held-out recall and AUC of a trained scorer")
    judge_args.add_eval(e, checkpoint="runs/small/scorer", threads=1)


def _print_eval(r: dict) -> None:
    print(f"held-out ({r['n_pieces']} candidates): text->music recall@1 {r['recall@1']:.3f} "
          f"(chance {r['chance_recall@1']:.3f}), recall@10 {r['recall@10']:.3f} (chance {r['chance_recall@10']:.2f}), "
          f"AUC matched vs mismatched {r['auc']:.3f}, own caption above another {r['own_above_other']:.3f}")




def run(args: argparse.Namespace) -> None:
    from divcfg.stages import run_per_seed
    if getattr(args, "action", None) == "train" and run_per_seed(args, run):
        return
    from divcfg.music.dataset import load_split
    from divcfg.music.tokenizer import load_tokenizer
    from divcfg.models.base import check_device
    from divcfg.embedders.finish import JudgeRun
    from divcfg.provenance import seed_everything
    from divcfg.stages import clear_finished
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    data_dir = Path(args.data_dir)
    test = load_split(data_dir, args.split if args.action == "eval" else "test")
    if args.action == "eval":
        scorer = load_alignment_scorer(args.checkpoint, device=str(check_device(args.device)))
        _print_eval(evaluate(scorer, test, args.eval_pieces, args.seed))
        return
    preset = PRESETS[args.preset]
    tok = load_tokenizer(data_dir)
    train = load_split(data_dir, "train")
    if args.max_train_pieces and len(train) > args.max_train_pieces:
        keep = np.random.default_rng(args.seed).choice(len(train), args.max_train_pieces, replace=False)
        train = [train[i] for i in sorted(keep)]
    cfg = make_config(tok, args.preset)
    out = Path(args.out)
    steps = args.steps or preset["steps"]
    resume_from = judge_resume_state(out, args.resume, "alignment_scorer", "scorer", asdict(cfg), "--preset")
    clear_finished(out)
    base_info = {"preset": args.preset, "threads": args.threads, "device": args.device, "steps_planned": steps,
                 "n_train_pieces": len(train)}
    save = functools.partial(save_alignment_scorer, tokenizer_path=data_dir / "tokenizer.json")
    judge_run = JudgeRun(args.out, save, "scorer", data_dir, args.seed, base_info)
    scorer, hist = train_scorer(train, tok, cfg, steps=steps,
                                minutes=args.minutes if args.minutes is not None else preset["minutes"],
                                batch_size=args.batch_size or preset["batch_size"], lr=args.lr or preset["lr"],
                                seed=args.seed, data_dir=data_dir, device=args.device, resume_from=resume_from,
                                ckpt_every=args.ckpt_every, on_checkpoint=judge_run.on_checkpoint, out=str(out))
    res = evaluate(scorer, test, args.eval_pieces, args.seed)
    judge_run.finish(scorer, hist, res, figures={"caption_embedding_seconds": round(hist["text_seconds"], 1)},
                     done_eval={k: res[k] for k in ("recall@1", "recall@10", "auc")},
                     trained_on=f"(+{hist['text_seconds']:.0f} s caption embeddings) on {len(train)} pieces")
    _print_eval(res)
    print(json.dumps({k: res[k] for k in ("recall@1", "recall@10", "auc")}))
