"""Checkpoints: a folder holding ``model.safetensors`` + ``config.json`` (+ optional
``training_state.pt`` for resuming: tensors and plain data only, read with ``weights_only=True``),
written atomically.

Atomicity: everything is written into ``<dir>.tmp-<pid>``; the old folder (if any) is renamed
to ``<dir>.old`` and the new one renamed into place, then ``.old`` is removed. A crash at any
point leaves either the old or the new checkpoint loadable (``load_checkpoint`` falls back to
``<dir>.old`` when ``<dir>`` is missing).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from divcfg.errors import UserError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], config: dict,
                    training_state: dict | None = None,
                    extra_files: dict[str, str | os.PathLike] | None = None) -> Path:
    """Write a checkpoint folder atomically. ``config`` must be JSON-serialisable and should hold
    ``kind`` (e.g. "generator"), the architecture, and provenance. ``extra_files`` maps a name
    inside the folder to a file to copy there (e.g. the tokenizer's ``tokenizer.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(tmp / MODEL_FILE))
    with open(tmp / CONFIG_FILE, "w") as f:
        json.dump(config, f, indent=2, default=str)
    if training_state is not None:
        torch.save(training_state, tmp / STATE_FILE)
    for name, src in (extra_files or {}).items():
        shutil.copyfile(src, tmp / name)
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    return swap_into_place(tmp, path)


def swap_into_place(tmp: Path, path: Path) -> Path:
    """Rename the finished folder ``tmp`` to ``path``. The previous ``path`` (complete) is kept as
    ``<path>.old`` until the rename is done, and an existing ``.old`` is never deleted while
    ``path`` is missing (it is then the last good checkpoint), so a kill at any point leaves one
    loadable folder."""
    old = path.with_name(path.name + ".old")
    if path.exists():   # a complete checkpoint: it becomes the fallback (an older fallback goes)
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)   # (when ``path`` was missing, ``old`` is the last good one until here)
    if old.exists():
        shutil.rmtree(old)
    return path


RUN_SUBDIR = "checkpoint"


def _resolve(path: Path) -> Path:
    """A checkpoint folder, or a run folder holding one in ``checkpoint/``."""
    if (path / MODEL_FILE).exists():
        return path
    if (path / RUN_SUBDIR / MODEL_FILE).exists() or (path / (RUN_SUBDIR + ".old") / MODEL_FILE).exists():
        path = path / RUN_SUBDIR
        if (path / MODEL_FILE).exists():
            return path
    old = path.with_name(path.name + ".old")
    if not path.exists() and (old / MODEL_FILE).exists():
        return old
    if not path.exists():
        raise UserError(f"checkpoint '{path}' not found: check the path, or train it first "
                        f"(e.g. `divcfg pretrain`)")
    raise UserError(f"'{path}' is not a divcfg checkpoint (no {MODEL_FILE} inside): "
                    f"point --checkpoint at a folder written by divcfg")


def load_checkpoint(path: str | os.PathLike, kind: str | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``(state_dict, config)``; a missing or corrupt checkpoint raises a one-line UserError."""
    path = _resolve(Path(path))
    try:
        with open(path / CONFIG_FILE) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint '{path}' has an unreadable {CONFIG_FILE} ({e.__class__.__name__}): "
                        f"it is corrupt, retrain or restore it") from None
    if kind is not None and config.get("kind") != kind:
        raise UserError(f"checkpoint '{path}' holds a {config.get('kind')!r}, not a {kind!r}: "
                        f"pass the right checkpoint folder")
    try:
        state = load_file(str(path / MODEL_FILE))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint '{path}/{MODEL_FILE}' is corrupt ({str(e).splitlines()[0][:80]}): "
                        f"retrain it or resume from an earlier checkpoint") from None
    return state, config


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path, device: str = "cpu") -> torch.nn.Module:
    """``module`` with the checkpoint's weights ``state`` loaded strictly, moved to ``device``, in eval
    mode; a mismatch (the folder's weights do not fit its own config) is a one-line error."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"checkpoint '{path}' does not match its config ({str(e).splitlines()[0][:80]}): "
                        f"retrain it") from None
    return module.to(device).eval()


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The folder that actually holds the checkpoint files (one-line error if none)."""
    return _resolve(Path(path))


def load_training_state(path: str | os.PathLike) -> dict | None:
    """The optimizer/scheduler/RNG state saved beside a checkpoint, or None if there is none.

    Loaded with ``torch.load(weights_only=True)``: only tensors and plain data (dicts, lists,
    tuples, numbers, strings) are accepted, so a downloaded run cannot execute code on
    ``--resume``. A state holding anything else is refused with a one-line error."""
    return read_training_state(_resolve(Path(path)) / STATE_FILE)


def read_training_state(f: Path) -> dict | None:
    """The training-state file ``f`` (None if absent), loaded with ``torch.load(weights_only=True)``."""
    if not f.exists():
        return None
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"'{f}' holds objects other than tensors and plain data: refused (loading it could run "
                        f"code); delete it to restart from the weights, or retrain") from None
    except Exception as e:  # noqa: BLE001 - any other unpickling failure means a corrupt file
        raise UserError(f"'{f}' is corrupt ({e.__class__.__name__}): delete it to restart "
                        f"from the weights, or retrain") from None
    except Exception as e:  # noqa: BLE001 - any other unpickling failure means a corrupt file
        raise UserError(f"'{f}' is corrupt ({e.__class__.__name__}): delete it to restart "
                        f"from the weights, or retrain") from None
