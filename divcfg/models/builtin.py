"""The built-in text-conditioned transformer (``divcfg.models.transformer``) as a generator plug-in.

Condition: the prompt's frozen MiniLM sentence embedding (B, 384); ∅ is the model's learned null
embedding. Completions are the generated token-id lists (the music domain decodes them to scores).
Checkpoints: ``model.safetensors`` + ``config.json`` + ``tokenizer.json`` (``divcfg.models.generator``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from divcfg.models.base import GeneratorPlugin
from divcfg.models.generator import (TOKENIZER_FILE, load_generator, save_generator, state_dict_for_saving,
                                     tokenizer_path)


class BuiltinGenerator(GeneratorPlugin):
    kind = "builtin"

    def __init__(self, model, path: Path, record: dict):
        super().__init__(model, path, record)
        tok = tokenizer_path(record)
        self.tokenizer_file: Path | None = tok if tok.exists() else None
        self.caption_cache: Path | None = None   # a domain may set a persistent embedding cache

    def encode_prompts(self, texts: Sequence[str]) -> torch.Tensor:
        from divcfg.prompts import embed_texts
        return embed_texts(list(texts), self.caption_cache)

    def decode(self, seqs: list[list[int]]) -> list[list[int]]:
        return [list(s) for s in seqs]

    def prepare_run(self, out: Path) -> None:
        """Copy the tokenizer into the run folder: every checkpoint of the run gets the base's
        vocabulary even if the base folder changes later."""
        if self.tokenizer_file is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        dst = out / TOKENIZER_FILE
        if not dst.exists():
            shutil.copyfile(self.tokenizer_file, dst)
        self.tokenizer_file = dst

    def save(self, path: str | os.PathLike, record: dict, training_state: dict | None = None) -> Path:
        return save_generator(path, self.model, record, self.tokenizer_file, training_state)

    def weights(self) -> dict[str, torch.Tensor]:
        return state_dict_for_saving(self.model)

    def architecture(self) -> dict:
        return {k: v for k, v in self.model.cfg.to_dict().items() if k != "dropout"}

    def vocabulary(self):
        if self.tokenizer_file is None:
            return None
        import json
        data = json.loads(Path(self.tokenizer_file).read_text())
        return {k: v for k, v in data.items() if not k.endswith("_version")} if isinstance(data, dict) else data

    def num_parameters(self) -> int:
        return self.model.num_parameters()


def load_builtin_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> BuiltinGenerator:
    model, config = load_generator(path, device=str(device))
    return BuiltinGenerator(model, Path(config["_dir"]), config)
