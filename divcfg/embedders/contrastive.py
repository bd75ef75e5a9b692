"""The contrastive training loop both diversity embedders share (the symbolic E over piano rolls,
``diversity_cli``, and the audio E over log-mels, ``audio_cli``).

Each step draws ``batch_size`` positive pairs (two views of one piece or recording, rows 2b and
2b+1) and minimises NT-Xent (InfoNCE with in-batch negatives):

    ℓ = −(1/2B) Σ_i log  exp(z_i·z_{p(i)}/τ) / Σ_{j≠i} exp(z_i·z_j/τ)

with unit embeddings ``z`` and ``p(i)`` the partner of row i; AdamW (weight decay 0.05), gradients
clipped at norm 1, and a learning rate that is a function of the step only (warm-up then cosine
over ``step / steps``, ``divcfg.stages.cosine_lr``). ``steps`` bounds the run; ``minutes`` is a
safety cap summed over resumes (``TimeCap``: a run it stops is recorded as cut short). Every
``ckpt_every`` steps ``on_checkpoint(E, training_state)`` is called, and ``resume_from = (weights,
training_state)`` continues such a checkpoint exactly (weights, optimiser, torch RNG, the sampler's
own state). A non-finite loss stops with a one-line error naming the last checkpoint.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


def info_nce(z: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over ``z[2B, D]`` (unit rows, partners 2b/2b+1). Returns (loss, pair accuracy)."""
    n = z.shape[0]
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.arange(n, device=z.device) ^ 1
    return F.cross_entropy(sim, target), (sim.argmax(1) == target).float().mean()


def fit_contrastive(E: torch.nn.Module, sampler, *, name: str, steps: int, minutes: float, batch_size: int,
                    lr: float, tau: float, device: str = "cpu", warmup: int | None = None,
                    features: Callable[[torch.Tensor], torch.Tensor] | None = None, autocast: bool = False,
                    sampler_state: Callable[[], dict] | None = None,
                    load_sampler_state: Callable[[dict], None] | None = None, progress: bool = True,
                    resume_from: tuple[dict, dict] | None = None, ckpt_every: int = 0, on_checkpoint=None,
                    out: str = "the output folder") -> tuple[torch.nn.Module, dict]:
    """Train ``E`` (freshly built, on the CPU) on ``sampler.batch(batch_size)`` pairs; ``features``
    maps a batch to E's input (default: as is); ``sampler_state()`` / ``load_sampler_state(state)``
    save and restore the sampler's random state in the training state (default: ``sampler.rng``, a
    numpy Generator, as ``sampler_rng``). Returns (E in eval mode, history: loss, acc, steps,
    seconds, cpu_seconds, cut_short, training_state)."""
    from divcfg.models.base import check_device
    from divcfg.stages import TimeCap, cosine_lr, non_finite_error, restore_training
    if sampler_state is None:
        def sampler_state() -> dict:
            return {"sampler_rng": json.dumps(sampler.rng.bit_generator.state)}
    if load_sampler_state is None:
        def load_sampler_state(state: dict) -> None:
            sampler.rng.bit_generator.state = json.loads(state["sampler_rng"])
    dev = check_device(device)
    opt = torch.optim.AdamW(E.parameters(), lr=lr, weight_decay=0.05)
    step, elapsed, saved_step, hist = restore_training(E, resume_from, load_sampler_state, ("loss", "acc"))
    E.to(dev)
    if resume_from is not None:
        opt.load_state_dict(resume_from[1]["optimizer"])
    cap = TimeCap(minutes)
    cpu0 = time.process_time()
    schedule = {} if warmup is None else {"warmup": warmup}

    def training_state() -> dict:
        return {"optimizer": opt.state_dict(), "step": step, "elapsed": elapsed, "torch_rng": torch.get_rng_state(),
                **sampler_state(), "loss": hist["loss"], "acc": hist["acc"], "steps_planned": steps}

    bar = tqdm(total=steps, initial=step, desc=name, disable=not progress, mininterval=2.0)
    E.train()
    while step < steps and not cap.reached(elapsed):
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = cosine_lr(lr, step, steps, **schedule)
        x = sampler.batch(batch_size).to(dev)
        x = features(x) if features is not None else x
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss, acc = info_nce(E(x), tau)
        if not torch.isfinite(loss):
            raise non_finite_error(name, loss.item(), step, out, saved_step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(E.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed += time.time() - t0
        hist["loss"].append(loss.item())
        hist["acc"].append(acc.item())
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(hist['loss'][-10:]):.3f}", acc=f"{np.mean(hist['acc'][-10:]):.2f}",
                            refresh=False)
        if on_checkpoint is not None and ckpt_every and step % ckpt_every == 0 and step < steps:
            on_checkpoint(E, training_state())
            saved_step = step
    bar.close()
    hist.update(steps=step, seconds=elapsed, cpu_seconds=time.process_time() - cpu0,
                cut_short=cap.cut_short(name, step, steps), training_state=training_state())
    return E.eval(), hist
