"""Loading and saving the built-in generator as a checkpoint folder.

A generator checkpoint holds ``model.safetensors``, ``config.json`` (``kind: "generator"``,
``model``: the architecture, ``provenance``, and the stage's own record: pretrain config,
finetune γ/β, merge λ, ...) and ``tokenizer.json`` (so sampling needs no data folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from divcfg.checkpoint import load_checkpoint, resolve_checkpoint_dir, save_checkpoint
from divcfg.errors import UserError
from divcfg.models.transformer import ModelConfig, MusicTransformer

KIND = "generator"
TOKENIZER_FILE = "tokenizer.json"


def load_generator(path: str | os.PathLike, device: str = "cpu") -> tuple[MusicTransformer, dict]:
    """``(model in eval mode, config dict)``; ``config["_dir"]`` is the checkpoint folder."""
    state, config = load_checkpoint(path, kind=KIND)
    if config.get("lora"):  # a LoRA student (adapters only): the base with the adapters merged in
        from divcfg.finetune.lora import load_merged
        plugin = load_merged(resolve_checkpoint_dir(path), device)
        return plugin.model, plugin.record
    model = MusicTransformer(ModelConfig.from_dict(config["model"]))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"checkpoint '{path}' does not match its config.json ({str(e).splitlines()[0][:80]}): "
                        f"it is corrupt, retrain it") from None
    if unexpected or set(missing) - {"head.weight"}:
        raise UserError(f"checkpoint '{path}' has missing/unexpected tensors "
                        f"({sorted(set(missing) - {'head.weight'})[:3]}{unexpected[:3]}): it is corrupt, retrain it")
    config["_dir"] = str(resolve_checkpoint_dir(path))
    return model.to(device).eval(), config


def tokenizer_path(config: dict) -> Path:
    return Path(config["_dir"]) / TOKENIZER_FILE


def save_generator(path: str | os.PathLike, model: MusicTransformer, config: dict,
                   tokenizer_file: str | os.PathLike | None, training_state: dict | None = None) -> Path:
    """Atomic save; ``config`` gets ``kind`` and ``model`` filled in."""
    config = {k: v for k, v in config.items() if k != "_dir"}
    config["kind"] = KIND
    config["model"] = model.cfg.to_dict()
    extra = {TOKENIZER_FILE: tokenizer_file} if tokenizer_file else None
    return save_checkpoint(path, state_dict_for_saving(model), config, training_state, extra)


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without ``head.weight``, which is tied to ``tok_emb.weight``."""
    return {k: v for k, v in model.state_dict().items() if k != "head.weight"}
