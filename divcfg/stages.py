"""What every training stage shares: *finished* means a completion marker, resumes drop the
metric rows a killed run wrote after its last checkpoint, and wall time is only a safety cap.

**Completion marker.** A stage's run folder ``out`` is finished iff ``out/DONE.json`` exists and
holds ``"finished": true``. It is written atomically (``write_json_atomic``: temp file, fsync,
rename) as the very last act of the stage, after the final checkpoint, so a kill at any moment
leaves either no marker (the stage resumes) or a complete one. A run that starts or resumes
training removes the marker first. Its fields::

    {"finished": true, "stage": "pretrain", "steps_done": 660, "steps_planned": 660,
     "cut_short": null | {"steps_done": n, "steps_planned": m, "cap_minutes": x},
     "elapsed_s": ..., "provenance": {...}, ...stage extras}

**Step bound, time cap.** Presets are bounded by steps (``max_steps``) so a result does not depend
on the machine's speed or load. ``max_minutes`` is a safety cap on the training time (summed over
resumes): when it stops a run before ``max_steps`` the run is *cut short* — one loud line on
stderr, and ``cut_short`` (above) recorded in the marker and in the checkpoint's ``config.json``.

**Metric rows.** A checkpoint records the byte length of ``metrics.jsonl`` when it was written
(``metrics_bytes`` in the training state); a resume truncates the file to that length, so no row
logged after the checkpoint survives to be logged again. Older states without it fall back to
dropping rows whose ``step`` exceeds the checkpoint's.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from pathlib import Path

from divcfg.errors import UserError
from divcfg.provenance import provenance, write_json_atomic

MARKER_FILE = "DONE.json"


# --------------------------------------------------------------------------- completion marker

def marker_path(out: str | os.PathLike) -> Path:
    return Path(out) / MARKER_FILE


def is_finished(out: str | os.PathLike) -> bool:
    """True iff the stage in ``out`` ran to its end (a readable marker with ``finished: true``)."""
    try:
        return json.loads(marker_path(out).read_text()).get("finished") is True
    except (OSError, ValueError, AttributeError):
        return False


def read_marker(out: str | os.PathLike) -> dict | None:
    try:
        return json.loads(marker_path(out).read_text())
    except (OSError, ValueError):
        return None


def clear_finished(out: str | os.PathLike) -> None:
    """Called when a stage (re)starts training: its folder no longer holds a finished result."""
    try:
        marker_path(out).unlink()
    except FileNotFoundError:
        pass


def mark_finished(out: str | os.PathLike, stage: str, steps_done: int, steps_planned: int,
                  cut_short: dict | None = None, seed: int | None = None, **extra) -> dict:
    """Write ``out/DONE.json`` atomically (the stage's very last act); returns what was written."""
    record = {"finished": True, "stage": stage, "steps_done": int(steps_done), "steps_planned": int(steps_planned),
              "cut_short": cut_short, **extra, "provenance": provenance(seed, stage=stage)}
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker_path(out), record)
    return record


# --------------------------------------------------------------------------- time cap

class TimeCap:
    """``max_minutes`` as a safety cap on a step-bounded loop (0 = none). ``elapsed`` is the
    training time in seconds, summed over resumes."""

    def __init__(self, max_minutes: float):
        self.max_minutes = float(max_minutes or 0.0)

    def reached(self, elapsed: float) -> bool:
        return self.max_minutes > 0 and elapsed >= self.max_minutes * 60

    def cut_short(self, stage: str, steps_done: int, steps_planned: int) -> dict | None:
        """None when the run reached ``steps_planned``; otherwise the shortfall record, announced
        with one line on stderr."""
        if steps_done >= steps_planned:
            return None
        record = {"steps_done": int(steps_done), "steps_planned": int(steps_planned), "cap_minutes": self.max_minutes}
        print(f"WARNING: {stage} was CUT SHORT by the {self.max_minutes:g}-minute time cap at step {steps_done} of "
              f"{steps_planned}: its result depends on this machine's speed; rerun with --resume and a larger "
              f"--max-minutes (or 0) to finish it", file=sys.stderr, flush=True)
        return record


# --------------------------------------------------------------------------- metric rows

def metrics_size(path: str | os.PathLike) -> int:
    """Byte length of the metrics file (0 if absent): store it in the training state."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def truncate_metrics(path: str | os.PathLike, step: int, size: int | None = None) -> None:
    """Drop the rows a killed run logged after the checkpoint a resume restarts from: cut the file
    to ``size`` bytes when the checkpoint recorded it, else keep rows with ``step`` ≤ ``step``."""
    path = Path(path)
    if not path.exists():
        return
    if size is not None:
        if path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if line.strip() and json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:  # a half-written last line
            continue
    path.write_text("".join(line + "\n" for line in keep))


# --------------------------------------------------------------------------- RNG state without pickle

def python_rng_state(rng: random.Random) -> list:
    """``random.Random`` state as plain lists (loadable with ``torch.load(weights_only=True)``)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(rng: random.Random, state) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------- judge trainers

def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write ``rows`` as JSON lines, atomically (the judge trainers rewrite their log at each
    checkpoint from the history kept in the training state, so it never holds a duplicate)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cosine_lr(lr: float, step: int, steps: int, warmup: int = 50, floor: float = 0.05) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``lr`` to ``floor·lr`` over
    ``step / steps``: a function of the step only (the judges' schedule)."""
    warm = min(1.0, (step + 1) / warmup)
    frac = min(step / max(steps, 1), 1.0)
    return lr * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def non_finite_error(stage: str, loss: float, step: int, out, saved_step: int | None) -> UserError:
    """The NaN guard's one-line error, naming the last good checkpoint that is kept."""
    kept = (f"the last good checkpoint (step {saved_step}) is kept in '{out}'" if saved_step is not None
            else "no checkpoint was written yet")
    return UserError(f"{stage}: non-finite loss ({loss:.4g}) at step {step}: {kept}; lower --lr and rerun "
                     f"(with --resume to continue)")


def restore_training(model, resume_from, load_sampler_state,
                     hist_keys: tuple[str, ...]) -> tuple[int, float, int | None, dict]:
    """A judge trainer's start: ``(step, elapsed, saved_step, hist)``, zero, no saved step and empty
    lists for a new run, or, with ``resume_from = (weights, training_state)``, the checkpoint's weights
    loaded into ``model``, the torch RNG and the sampler's state (``load_sampler_state(state)``)
    restored, and its step (also the last saved one), training seconds and history lists
    ``hist_keys``. The optimizer is restored by the caller once it exists."""
    if resume_from is None:
        return 0, 0.0, None, {k: [] for k in hist_keys}
    import torch
    weights, state = resume_from
    model.load_state_dict(weights)
    step, elapsed = int(state["step"]), float(state["elapsed"])
    print(f"resuming from step {step} ({elapsed / 60:.1f} min done)")
    torch.set_rng_state(state["torch_rng"])
    load_sampler_state(state)
    return step, elapsed, step, {k: list(state[k]) for k in hist_keys}


def judge_resume_state(out: Path, resume: bool, kind: str, key: str, cfg: dict, same_flags: str
                       ) -> tuple[dict, dict] | None:
    """(weights, training state) of the unfinished judge run (embedder or scorer) in ``out`` when
    ``--resume`` finds one; a run whose stored ``config[key]`` differs from ``cfg`` is refused
    (``same_flags`` names the flags that fix it)."""
    from divcfg.checkpoint import MODEL_FILE, STATE_FILE, load_checkpoint, load_training_state
    if not resume:
        return None
    old = out.with_name(out.name + ".old")   # a kill during the atomic swap leaves only <out>.old
    if not any((d / MODEL_FILE).exists() and (d / STATE_FILE).exists() for d in (out, old)):
        print(f"no checkpoint in '{out}' yet: starting from scratch")
        return None
    weights, stored = load_checkpoint(out, kind=kind)
    if stored.get(key) != cfg:
        raise UserError(f"--resume with a different {key} configuration than the run in '{out}': pass the same "
                        f"{same_flags}, or start a new run with another --out")
    return weights, load_training_state(out)


def seed_out_dir(out: str | os.PathLike, seed: int) -> str:
    """The run folder of training seed ``seed``: ``out`` itself for seed 0, ``out_s{seed}`` otherwise
    (the convention of the demo's students, ``ft_beta0`` / ``ft_beta0_s1``)."""
    return str(out) if seed == 0 else f"{out}_s{seed}"


def run_per_seed(args, run_one) -> bool:
    """``--seeds a,b,c`` on a training command: run ``run_one(args)`` once per seed, with ``args.seed``
    set and ``args.out`` moved to :func:`seed_out_dir`. False (nothing done) when ``--seeds`` is not given,
    so a command's ``run`` starts with ``if run_per_seed(args, run): return``."""
    import copy
    seeds = getattr(args, "seeds", None)
    if not seeds:
        return False
    for s in seeds:
        one = copy.copy(args)
        one.seeds, one.seed, one.out = None, s, seed_out_dir(args.out, s)
        print(f"— training seed {s} → '{one.out}'", flush=True)
        run_one(one)
    return True


def seed_list(text: str) -> tuple[int, ...]:
    """argparse type of ``--seeds``: distinct comma-separated integers ≥ 0."""
    import argparse
    try:
        seeds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers ≥ 0, e.g. 0,1,2: got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds takes distinct integers ≥ 0, e.g. 0,1,2: got {text!r}")
    return seeds
