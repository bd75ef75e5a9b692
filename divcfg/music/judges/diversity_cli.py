"""``divcfg embedder train|eval``: train the diversity embedder ``E`` and measure it.

Training objective (NT-Xent / InfoNCE with in-batch negatives, SimCLR's form). A batch holds B
pieces; each gives two non-overlapping chunks, independently augmented, embedded to unit vectors
``z_1..z_2B`` (views 2b and 2b+1 from piece b). With ``s_ij = z_i·z_j / τ``:

    L = -(1/2B) Σ_i log( exp(s_{i,p(i)}) / Σ_{j≠i} exp(s_ij) )

``p(i)`` the other view of i's piece: each view must pick its partner out of the 2B-1 others.

Chunks: with ``canonical_key`` each piece is first transposed to its canonical key (as
``DiversityEmbedder.piece_rolls`` does), so both chunks of a piece share one transposition. A view
of stretch factor f reads ``chunk_beats / f`` quarters of the piece and is stretched
to ``chunk_beats``; the two source windows do not overlap and start on a beat. Pieces shorter than
the two windows are skipped in training.

Held-out retrieval (``retrieval``): N test pieces long enough for two chunks, two non-overlapping
un-augmented chunks each; a chunk scores a hit when its nearest neighbour (cosine) among the other
2N-1 chunks is its partner. Chance = 1/(2N-1). ``half_retrieval`` does the same with the two
halves of each piece embedded whole, as E embeds generations.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from divcfg.music.judges.diversity import (DiversityEmbedder, EmbedderConfig, load_diversity_embedder,
                                        pair_diversity, save_diversity_embedder)
from divcfg.errors import UserError
from divcfg.embedders.contrastive import info_nce  # noqa: F401  (re-exported for the tests)
from divcfg.stages import judge_resume_state
from divcfg.music import pianoroll as pr

# named training presets: the ViT size plus how long to train
# (the pitch window C2..B6 holds the key-canonicalised melodies; outliers fold by octaves)
# Training is bounded by ``steps`` (the result does not depend on the machine's speed); ``minutes`` is a
# safety cap whose cut is recorded as cut_short. small: 1,650 steps is what the README's 15-minute E
# reached on the idle 2-core machine (1,654 steps); its cap is 3x that time.
PRESETS = {
    "tiny": dict(vit="tiny", chunk_steps=32, pitch_low=36, n_pitches=60, out_dim=64, batch_size=64, lr=2e-3,
                 minutes=10.0, steps=300),
    "small": dict(vit="small", chunk_steps=64, pitch_low=36, n_pitches=60, out_dim=128, batch_size=128, lr=1e-3,
                  minutes=45.0, steps=1650),
    "paper": dict(vit="paper", chunk_steps=64, pitch_low=21, n_pitches=88, out_dim=128, batch_size=256, lr=3e-4,
                  minutes=0.0, steps=20_000),
}


# ---------------------------------------------------------------------------------------------
# data


def load_piece_notes(data_dir, split: str, max_pieces: int | None = None, seed: int = 0,
                     progress: bool = True) -> tuple[list[np.ndarray], list[dict]]:
    """Decode a split of the data cache into note arrays (quarters). Returns (notes, pieces); each
    returned piece dict also has ``bar_beats``, its bar length in quarters (first time signature)."""
    from divcfg.music.dataset import load_split
    from divcfg.music.tokenizer import load_tokenizer, tokens_to_score
    tok = load_tokenizer(data_dir)
    pieces = load_split(data_dir, split)
    if max_pieces is not None and len(pieces) > max_pieces:
        idx = np.random.default_rng(seed).choice(len(pieces), max_pieces, replace=False)
        pieces = [pieces[i] for i in sorted(idx)]
    notes, kept = [], []
    for p in tqdm(pieces, desc=f"decode {split}", disable=not progress, leave=False):
        score = tokens_to_score(tok, p["tokens"])
        n = pr.score_notes(score)
        if len(n):
            ts = score.time_signatures[0] if len(score.time_signatures) else None
            notes.append(n)
            kept.append({**p, "bar_beats": 4.0 * ts.numerator / ts.denominator if ts else 4.0})
    return notes, kept


class PairSampler:
    """Positive pairs of augmented, non-overlapping chunks (see the module docstring)."""

    def __init__(self, pieces: list[np.ndarray], cfg: EmbedderConfig, augment: pr.Augment | None, seed: int = 0,
                 bar_beats: list[float] | None = None):
        self.cfg, self.augment = cfg, augment
        self.rng = np.random.default_rng(seed)
        need = 2 * cfg.chunk_beats * (augment.max_stretch if augment else 1.0)
        units = bar_beats if bar_beats is not None else [1.0] * len(pieces)
        keep = [i for i, n in enumerate(pieces) if pr.length_beats(n) >= need]
        self.pieces = [pr.canonical_key(pieces[i]) if cfg.canonical_key else pieces[i] for i in keep]
        self.units = [float(units[i]) if units[i] > 0 else 1.0 for i in keep]
        if len(self.pieces) < 2:
            raise UserError(f"only {len(self.pieces)} pieces are long enough for two {cfg.chunk_beats:g}-beat "
                            f"chunks: use a shorter --chunk-steps or more data")

    def _view(self, notes: np.ndarray, start: float, src_len: float, factor: float) -> np.ndarray:
        w = pr.window(notes, start, src_len)
        if self.augment is not None:
            w = pr.time_stretch(w, factor)
            if self.augment.max_transpose:
                w = pr.transpose(w, int(self.rng.integers(-self.augment.max_transpose, self.augment.max_transpose + 1)))
            a = self.augment
            w = pr.note_noise(w, self.rng, p_drop=a.p_drop, p_insert=a.p_insert, jitter_steps=a.jitter_steps,
                              spec=self.cfg.spec)
        return pr.rasterize(w, 0, self.cfg.chunk_steps, self.cfg.spec)

    def batch(self, batch_size: int) -> torch.Tensor:
        """``[2B, 2, P, T]`` with rows 2b, 2b+1 the two views of piece b."""
        cfg, a = self.cfg, self.augment
        idx = self.rng.choice(len(self.pieces), size=min(batch_size, len(self.pieces)), replace=False)
        rolls = []
        for i in idx:
            notes, u = self.pieces[i], self.units[i]
            total = pr.length_beats(notes)
            if a is not None and a.max_stretch > 1:
                f = np.exp(self.rng.uniform(-1, 1, 2) * math.log(a.max_stretch))
            else:
                f = np.ones(2)
            w = cfg.chunk_beats / f
            # window starts on the grid of u quarters (a bar, or a beat), the second after the first
            first = u * math.floor(self.rng.uniform(0, max(total - w.sum(), 0) / u + 1e-9))
            gap = u * math.ceil(w[0] / u - 1e-9)
            if first + gap + w[1] > total:
                gap = w[0]
            second = first + gap + u * math.floor(self.rng.uniform(0, max(total - first - gap - w[1], 0) / u + 1e-9))
            if self.rng.random() < 0.5:   # either order: the earlier chunk is not always view 1
                first, second, f, w = second, first, f[::-1], w[::-1]
            rolls.append(self._view(notes, first, w[0], f[0]))
            rolls.append(self._view(notes, second, w[1], f[1]))
        return torch.from_numpy(np.stack(rolls))


# ---------------------------------------------------------------------------------------------
# evaluation


def retrieval_chunks(pieces: list[np.ndarray], cfg: EmbedderConfig, n_pieces: int = 100, seed: int = 0,
                     bar_beats: list[float] | None = None) -> np.ndarray:
    """Two non-overlapping, un-augmented chunks of ``n_pieces`` long-enough pieces:
    ``[2N, 2, P, T]`` (rows 2b, 2b+1 from piece b), starting on bar lines when ``bar_beats`` is
    given (else on beats). Deterministic given ``seed``."""
    sampler = PairSampler(pieces, cfg, augment=None, seed=seed, bar_beats=bar_beats)
    if len(sampler.pieces) < n_pieces:
        print(f"note: only {len(sampler.pieces)} held-out pieces are long enough for two chunks; "
              f"retrieval uses all of them instead of {n_pieces}")
        n_pieces = len(sampler.pieces)
    pick = np.random.default_rng(seed).choice(len(sampler.pieces), n_pieces, replace=False)
    sampler.pieces = [sampler.pieces[i] for i in pick]
    sampler.units = [sampler.units[i] for i in pick]
    return sampler.batch(n_pieces).numpy()


@torch.no_grad()
def retrieval(E: DiversityEmbedder, pieces: list[np.ndarray], n_pieces: int = 100, seed: int = 0,
              bar_beats: list[float] | None = None) -> dict:
    """Top-1 same-piece retrieval among ``2N`` held-out chunks (see the module docstring)."""
    E.eval()
    rolls = torch.from_numpy(retrieval_chunks(pieces, E.cfg, n_pieces, seed, bar_beats)).to(E.device)
    n_pieces = len(rolls) // 2
    z = torch.cat([E(rolls[i:i + 256]) for i in range(0, len(rolls), 256)]).float().cpu()
    sim = (z @ z.T).fill_diagonal_(-2.0)
    target = torch.arange(len(z)) ^ 1
    top1 = (sim.argmax(1) == target).float().mean().item()
    rank = (sim > sim[torch.arange(len(z)), target][:, None]).sum(1)
    return {"top1": top1, "top5": (rank < 5).float().mean().item(), "chance": 1 / (len(z) - 1),
            "n_pieces": n_pieces, "n_chunks": len(z)}


@torch.no_grad()
def half_retrieval(E: DiversityEmbedder, pieces: list[np.ndarray], n_pieces: int = 100, seed: int = 0) -> dict:
    """E as it is used, on whole generations: each of N held-out pieces (at least two chunks long)
    is cut at its middle (rounded down to a beat) into two halves, each embedded whole (``embed_notes``:
    chunks averaged); top-1 = how often a half's nearest neighbour among the other 2N-1 halves is
    its other half. Chance = 1/(2N-1)."""
    long = [n for n in pieces if pr.length_beats(n) >= 2 * E.cfg.chunk_beats]
    rng = np.random.default_rng(seed)
    sel = [long[i] for i in rng.choice(len(long), min(n_pieces, len(long)), replace=False)]
    halves = []
    for n in sel:
        mid = math.floor(pr.length_beats(n) / 2)
        halves += [pr.window(n, 0, mid), pr.window(n, mid, 1e9)]
    z = E.embed_notes(halves)
    sim = (z @ z.T).fill_diagonal_(-2.0)
    target = torch.arange(len(z)) ^ 1
    return {"top1": (sim.argmax(1) == target).float().mean().item(), "chance": 1 / (len(z) - 1),
            "n_pieces": len(sel)}


@torch.no_grad()
def invariance(E: DiversityEmbedder, pieces: list[np.ndarray], n_pieces: int = 100, seed: int = 0) -> dict:
    """Mean ``1 - cos`` of whole-piece embeddings under each transformation, against the mean
    between different pieces: how much E sees key, tempo and small noise relative to identity."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pieces), min(n_pieces, len(pieces)), replace=False)
    base = [pieces[i] for i in idx]
    e0 = E.embed_notes(base)
    out = {}
    for k in (1, 2, 5, 6):
        out[f"transpose_{k:+d}"] = pair_diversity(e0, E.embed_notes([pr.transpose(n, k) for n in base])).mean().item()
    for f in (0.8, 1.25):
        out[f"stretch_{f:g}"] = pair_diversity(e0, E.embed_notes([pr.time_stretch(n, f) for n in base])).mean().item()
    noisy = [pr.note_noise(n, rng) for n in base]
    out["note_noise"] = pair_diversity(e0, E.embed_notes(noisy)).mean().item()
    out["other_piece"] = pair_diversity(e0, e0.roll(1, 0)).mean().item()
    return out


# ---------------------------------------------------------------------------------------------
# training


def train_embedder(train_pieces: list[np.ndarray], cfg: EmbedderConfig, *, augment: pr.Augment | None,
                   steps: int, minutes: float, batch_size: int, lr: float, tau: float = 0.1,
                   seed: int = 0, progress: bool = True, bar_beats: list[float] | None = None,
                   device: str = "cpu", resume_from: tuple[dict, dict] | None = None, ckpt_every: int = 0,
                   on_checkpoint=None, out: str = "the output folder") -> tuple[DiversityEmbedder, dict]:
    """Train ``E`` for ``steps`` steps with the shared contrastive loop
    (``divcfg.embedders.contrastive.fit_contrastive``: NT-Xent, step-only schedule, time cap,
    checkpoint callback, exact resume, NaN guard). Chunks start on bar lines when ``bar_beats`` (per
    piece) is given, else on beats. bf16 autocast on CUDA only (CPU: float32). Returns (E in eval
    mode, history with the final ``training_state``)."""
    from divcfg.embedders.contrastive import fit_contrastive
    from divcfg.models.base import check_device
    from divcfg.pretrain import autocast_bf16
    dev = check_device(device)
    torch.manual_seed(seed)
    E = DiversityEmbedder(cfg)
    sampler = PairSampler(train_pieces, cfg, augment, seed=seed, bar_beats=bar_beats)
    E, hist = fit_contrastive(E, sampler, name="embedder", steps=steps, minutes=minutes, batch_size=batch_size,
                              lr=lr, tau=tau, device=device, autocast=dev.type == "cuda" and autocast_bf16(True, dev),
                              progress=progress, resume_from=resume_from, ckpt_every=ckpt_every,
                              on_checkpoint=on_checkpoint, out=out)
    hist["n_train_pieces"] = len(sampler.pieces)
    return E, hist


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    from divcfg.config import arg_type
    from divcfg.embedders import judge_args
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train E on a data cache and print held-out retrieval")
    judge_args.add_train_run(t, out="runs/small/embedder", presets=PRESETS,
                             preset_help="named size: tiny (tests, <1 min), small (default, ~15 min on 2 CPU "
                                         "cores), paper (12 layers, 6 heads)")
    t.add_argument("--batch-size", type=arg_type(int, ge=2), help="pieces per batch (2 views each)")
    t.add_argument("--lr", type=arg_type(float, gt=0), help="peak AdamW learning rate")
    t.add_argument("--tau", type=arg_type(float, gt=0), default=0.1, help="InfoNCE temperature")
    t.add_argument("--chunk-steps", type=arg_type(int, ge=1), help="chunk length in 16th-note steps")
    t.add_argument("--max-transpose", type=arg_type(int, ge=0, le=12), default=0,
                   help="random transposition of each view in ±semitones (the paper's pitch-shift "
                        "augmentation; not needed with the default key canonicalisation)")
    t.add_argument("--no-canonical-key", action="store_true",
                   help="do not transpose pieces to a canonical key (E then sees key unless "
                        "--max-transpose teaches it not to)")
    t.add_argument("--max-stretch", type=arg_type(float, ge=1), default=1.0,
                   help="time-stretch factor range [1/x, x] (1: off; see pianoroll.Augment)")
    t.add_argument("--p-drop", type=arg_type(float, ge=0, lt=1), default=0.1, help="note-drop probability")
    t.add_argument("--p-insert", type=arg_type(float, ge=0), default=0.05, help="inserted notes per note")
    t.add_argument("--jitter-steps", type=arg_type(float, ge=0), default=0.5, help="onset jitter std in 16th steps")
    t.add_argument("--no-augment", action="store_true", help="train without any augmentation")
    judge_args.add_train_seeds(t, eval_help="N held-out pieces for retrieval", threads=2,
                               threads_help="torch CPU threads (on a busy shared machine 1 is often faster)")
    e = sub.add_parser("eval", help="held-out retrieval and invariance figures of a trained E")
    judge_args.add_eval(e, checkpoint="runs/small/embedder", threads=2)
    from divcfg.music.judges.audio_cli import add_audio_arguments
    add_audio_arguments(t, e)


def evaluate(E: DiversityEmbedder, pieces: list[np.ndarray], n_pieces: int, seed: int = 0) -> dict:
    return {"retrieval": retrieval(E, pieces, n_pieces, seed),
            "retrieval_halves": half_retrieval(E, pieces, n_pieces, seed),
            "invariance": invariance(E, pieces, n_pieces, seed)}


def _print_eval(res: dict) -> None:
    r = res["retrieval"]
    print(f"held-out retrieval: top-1 {r['top1']:.3f}, top-5 {r['top5']:.3f} among {r['n_chunks']} chunks "
          f"of {r['n_pieces']} pieces (chance {r['chance']:.4f})")
    h = res["retrieval_halves"]
    print(f"held-out half-piece retrieval (whole halves, chunks averaged): top-1 {h['top1']:.3f} among "
          f"{2 * h['n_pieces']} halves (chance {h['chance']:.4f})")
    print("invariance (mean 1-cos to the original): " +
          ", ".join(f"{k} {v:.3f}" for k, v in res["invariance"].items()))




def run(args: argparse.Namespace) -> None:
    from divcfg.music.judges import audio_cli
    if audio_cli.wants_audio(args):   # (it runs --seeds itself, after choosing its own --out default)
        return audio_cli.run(args)
    from divcfg.stages import run_per_seed
    if getattr(args, "action", None) == "train" and run_per_seed(args, run):
        return
    from divcfg.embedders.finish import JudgeRun
    from divcfg.provenance import seed_everything
    from divcfg.stages import clear_finished
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    data_dir = Path(args.data_dir)
    if args.action == "eval":
        from divcfg.models.base import check_device
        E = load_diversity_embedder(args.checkpoint, device=str(check_device(args.device)))
        pieces, _ = load_piece_notes(data_dir, args.split)
        res = evaluate(E, pieces, args.eval_pieces, args.seed)
        _print_eval(res)
        return
    preset = PRESETS[args.preset]
    cfg = EmbedderConfig(vit=preset["vit"], chunk_steps=args.chunk_steps or preset["chunk_steps"],
                         pitch_low=preset["pitch_low"], n_pitches=preset["n_pitches"], out_dim=preset["out_dim"],
                         canonical_key=not args.no_canonical_key)
    augment = None if args.no_augment else pr.Augment(args.max_transpose, args.max_stretch, args.p_drop,
                                                        args.p_insert, args.jitter_steps)
    out = Path(args.out)
    steps = args.steps or preset["steps"]
    resume_from = judge_resume_state(out, args.resume, "diversity_embedder", "embedder", asdict(cfg),
                                     "--preset and size flags")
    clear_finished(out)
    t_load = time.time()
    train, train_meta = load_piece_notes(data_dir, "train", args.max_train_pieces, args.seed)
    test, _ = load_piece_notes(data_dir, "test")
    t_load = time.time() - t_load
    tok_path = data_dir / "tokenizer.json"
    tok_path = tok_path if tok_path.exists() else None
    base_info = {"preset": args.preset, "augment": asdict(augment) if augment else None, "tau": args.tau,
                 "threads": args.threads, "device": args.device, "steps_planned": steps}
    judge_run = JudgeRun(args.out, functools.partial(save_diversity_embedder, tokenizer_path=tok_path), "embedder",
                         data_dir, args.seed, base_info)
    E, hist = train_embedder(train, cfg, augment=augment, steps=steps,
                             minutes=args.minutes if args.minutes is not None else preset["minutes"],
                             batch_size=args.batch_size or preset["batch_size"], lr=args.lr or preset["lr"],
                             tau=args.tau, seed=args.seed, bar_beats=[p["bar_beats"] for p in train_meta],
                             device=args.device, resume_from=resume_from, ckpt_every=args.ckpt_every,
                             on_checkpoint=judge_run.on_checkpoint, out=str(out))
    res = evaluate(E, test, args.eval_pieces, args.seed)
    judge_run.finish(E, hist, res,
                     figures={"decode_seconds": round(t_load, 1), "n_train_pieces": hist["n_train_pieces"]},
                     done_eval={"top1": res["retrieval"]["top1"]}, trained_on=f"on {hist['n_train_pieces']} pieces")
    _print_eval(res)
    print(json.dumps({"top1": res["retrieval"]["top1"], "chance": res["retrieval"]["chance"]}))
