"""Data-parallel fine-tuning through Accelerate (DDP; the gloo backend on CPU).

Each of the W processes draws its own P prompts from a per-rank random stream and samples the G
generations of each of them itself, so a prompt's group (its pairwise diversity reward and the
``loo`` baseline) never crosses processes. What does cross them:

- the rewards (P, G) of every rank are gathered into (W·P, G) before the baseline, so the
  ``batch`` baseline and the ``ema`` update see the whole step's batch, exactly as one process
  with W·P prompts would (each rank keeps the advantages of its own rows);
- the loss is normalised by the *global* token count and mean length, so that DDP's gradient
  average over ranks equals the gradient of the loss on the union batch:
  ``(1/W) Σ_r Σ_{t∈r} ℓ_t · W/N = Σ_t ℓ_t / N`` with N the generated tokens of all ranks;
- the logged metrics are means over ranks; only the main process writes metrics, checkpoints and
  the summary; the training state stores every rank's random streams (``--resume`` needs the
  same number of processes).

Effective batch per step: ``prompts_per_step × group_size × W`` generations.

``launch(cfg, resume)`` (``--num-processes N``) starts N processes with ``torch.distributed.run``
(``python -m divcfg.finetune.worker CONFIG.json``); ``accelerate launch -m divcfg finetune ...``
works as well (any launcher that sets ``WORLD_SIZE``/``RANK``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from divcfg.errors import UserError


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class DataParallel:
    """The process group of a run, or a one-process stand-in with the same methods."""

    def __init__(self, device: torch.device, find_unused: bool = True):
        self.world = world_size_from_env()
        self.rank = 0
        self.acc = None
        if self.world > 1:
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs
            # find_unused: full fine-tuning (the null prefix gets no gradient from conditional rows)
            self.acc = Accelerator(cpu=device.type == "cpu", device_placement=False,
                                   kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])
            self.rank = self.acc.process_index

    def local_device(self, device: torch.device) -> torch.device:
        """``--device cuda`` under W processes: each rank on its own GPU (``cuda:LOCAL_RANK``)."""
        if self.acc is None or device.type != "cuda" or device.index is not None:
            return device
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
        torch.cuda.set_device(dev)
        return dev

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training forward calls (DDP: gradients all-reduced in ``backward``)."""
        return self.acc.prepare_model(model, device_placement=False) if self.acc is not None else model

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def close(self) -> None:
        """Wait for every rank, then take the process group down. A rank that exits while gloo's
        threads still run can abort in teardown ("terminate called without an active exception")."""
        if self.acc is not None and torch.distributed.is_initialized():
            self.acc.wait_for_everyone()
            torch.distributed.destroy_process_group()

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.acc is None:
            return x
        x = x.detach().clone().float()
        torch.distributed.all_reduce(x)
        return x

    def max(self, v: float) -> float:
        if self.acc is None:
            return v
        t = torch.tensor([float(v)])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t)

    def cat(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's tensor (same shape on all ranks) along dim 0, rank order."""
        if self.acc is None:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    def objects(self, obj) -> list:
        if self.acc is None:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def mean_row(self, row: dict) -> dict:
        """Mean over ranks of a metrics row's numbers (keys must be the same on every rank)."""
        if self.acc is None:
            return row
        keys = [k for k, v in row.items() if isinstance(v, (int, float)) and k != "step"]
        t = self.sum(torch.tensor([float(row[k]) for k in keys], dtype=torch.float64)) / self.world
        return {**row, **{k: float(v) for k, v in zip(keys, t.tolist())}}

    def rows(self, x: torch.Tensor, n_local: int) -> slice:
        """This rank's rows of a gathered tensor."""
        return slice(self.rank * n_local, (self.rank + 1) * n_local)


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the run's seed (a 1-process run is unchanged); other ranks get their own stream."""
    return seed + 1_000_003 * rank


def gather_step_rewards(dp: DataParallel, sr):
    """The rewards of every rank's prompts as one StepRewards (rank order)."""
    if dp.acc is None:
        return sr
    from divcfg.rewards import StepRewards
    g = {f.name: (dp.cat(getattr(sr, f.name)) if getattr(sr, f.name) is not None else None)
         for f in dataclasses.fields(StepRewards)}
    return StepRewards(**g)


def preflight(cfg) -> None:
    """The checks that are cheap in the launching process (one error line instead of N failing ranks)."""
    from divcfg.domains.base import load_domain
    from divcfg.models.base import check_device, is_hf_spec, spec_path
    device = check_device(cfg.device)
    slots = torch.cuda.device_count() if device.type == "cuda" else (os.cpu_count() or 1)
    if cfg.num_processes > slots:
        raise UserError(f"--num-processes {cfg.num_processes} exceeds the {slots} "
                        f"{'GPUs' if device.type == 'cuda' else 'CPU cores'} of this machine: pass at most {slots}")
    if is_hf_spec(cfg.base):
        from divcfg.models.hf_plugin import resolve_hf_dir
        resolve_hf_dir(spec_path(cfg.base))
    else:
        from divcfg.checkpoint import resolve_checkpoint_dir
        resolve_checkpoint_dir(cfg.base)
    load_domain(cfg.prompts, cfg.data_dir, cfg.base)


def launch(cfg, resume: bool, progress: bool) -> None:
    """Run ``cfg`` in ``cfg.num_processes`` processes (torch.distributed.run, standalone rendezvous)."""
    preflight(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    conf = out / "launch_config.json"
    conf.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.num_processes}",
           "-m", "divcfg.finetune.worker", str(conf)] + (["--resume"] if resume else []) \
        + ([] if progress else ["--no-progress"])
    env = {**os.environ, "OMP_NUM_THREADS": str(max(cfg.threads, 1))}
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise UserError(f"a data-parallel process failed (exit {rc}): see its error above; rerun with --resume "
                        f"to continue from the last checkpoint")
