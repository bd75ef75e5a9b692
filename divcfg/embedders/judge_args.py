"""The command-line flags the judge trainers share (`divcfg embedder` for E, `divcfg scorer` for the
alignment scorer): a train action's data, output folder, size, step bound, time cap, resume, device
and seeds, and an eval action's checkpoint, split and sample size. Each trainer adds its own flags
(learning rate, batch, augmentations) between :func:`add_train_run` and :func:`add_train_seeds`."""

from __future__ import annotations

import argparse


def add_train_run(t: argparse.ArgumentParser, *, out: str, presets, preset_help: str) -> None:
    """Where the run reads and writes, how big it is and how long it may run."""
    from divcfg.config import arg_type
    t.add_argument("--data-dir", default="data/small", help="data cache (from `divcfg data`)")
    t.add_argument("--out", default=out, help="checkpoint folder to write")
    t.add_argument("--preset", default="small", choices=sorted(presets), help=preset_help)
    t.add_argument("--minutes", type=arg_type(float, ge=0),
                   help="safety cap on training minutes; a run it stops is recorded as cut_short (default: the "
                        "preset's; 0 = none)")
    t.add_argument("--steps", type=arg_type(int, ge=1), help="optimiser steps to train (default: the preset's)")
    t.add_argument("--ckpt-every", type=arg_type(int, ge=1), default=100,
                   help="checkpoint every N steps (for --resume)")
    t.add_argument("--resume", action="store_true", help="continue the unfinished run in --out from its checkpoint")
    t.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")


def add_train_seeds(t: argparse.ArgumentParser, *, eval_help: str, threads: int, threads_help: str) -> None:
    """The training subset, the held-out sample, threads and seeds."""
    from divcfg.config import arg_type
    from divcfg.stages import seed_list
    t.add_argument("--max-train-pieces", type=arg_type(int, ge=2), help="use a random subset of the training split")
    t.add_argument("--eval-pieces", type=arg_type(int, ge=2), default=100, help=eval_help)
    t.add_argument("--threads", type=arg_type(int, ge=1), default=threads, help=threads_help)
    t.add_argument("--seed", type=arg_type(int, ge=0), default=0)
    t.add_argument("--seeds", type=seed_list, default=None,
                   help="train one model per seed, e.g. 0,1,2: seed 0 in --out, seed s in <out>_s<s> (overrides --seed)")


def add_eval(e: argparse.ArgumentParser, *, checkpoint: str, threads: int) -> None:
    """The eval action: a trained checkpoint judged on held-out pieces."""
    from divcfg.config import arg_type
    e.add_argument("--checkpoint", default=checkpoint)
    e.add_argument("--data-dir", default="data/small")
    e.add_argument("--split", default="test", choices=["val", "test"])
    e.add_argument("--eval-pieces", type=arg_type(int, ge=2), default=100)
    e.add_argument("--threads", type=arg_type(int, ge=1), default=threads)
    e.add_argument("--seed", type=arg_type(int, ge=0), default=0)
    e.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
