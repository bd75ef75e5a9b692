"""A local MusicGen checkpoint (``--base hf:PATH`` whose ``config.json`` has ``model_type: musicgen``)
as a generator plug-in. ``divcfg.models.hf_plugin.load_hf_generator`` dispatches here.

- the module is :class:`divcfg.models.musicgen.MusicgenGenerator` (see its docstring for the
  flattened codebook stream, the delay pattern and the null condition);
- ``encode_prompts(texts)``: T5 ids from the folder's tokenizer, right-padded (``cond``);
- ``decode(seqs)``: float32 waveforms at ``sampling_rate`` (numpy arrays, (samples,) mono or
  (2, samples) stereo; None for a stream without a complete frame): what audio judges and the audio domain's WAV writer take;
- duration: ``max_len`` (stream positions: BOS + K·S codes + EOS) fixes S decoder steps, i.e.
  ``F = S − D`` audio frames (``F / frame_rate`` seconds). Default: the stored ``max_len`` of a
  divcfg-written folder, else the checkpoint's ``generation_config.max_length`` (M positions:
  ``F = M − 1 − D`` with D the largest codebook delay, the length transformers' ``generate``
  produces);
- ``save``: ``save_pretrained`` of model and tokenizer + ``divcfg.json`` (as for causal LMs), so a
  fine-tuned folder loads in plain transformers and generates with ``model.generate``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from divcfg.errors import UserError
from divcfg.models.hf_plugin import HFGenerator
from divcfg.models.musicgen import MusicgenGenerator, encode_texts, steps_for_max_len


def is_musicgen_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder/config.json`` is a MusicGen (``model_type`` musicgen) config."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type") == "musicgen"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


class MusicgenPlugin(HFGenerator):
    """``kind`` stays ``"hf"`` (the core treats every transformers-folder plug-in alike: ``max_len``
    from the run's lengths, ``plugin.lm``, ``save_pretrained``); ``family`` and ``completion_kind``
    say it is MusicGen and that completions are audio."""
    kind = "hf"
    family = "musicgen"
    completion_kind = "audio"

    def __init__(self, gen: MusicgenGenerator, tokenizer, path: Path, record: dict):
        super().__init__(gen, tokenizer, path, record, null_prompt="")
        self.max_prompt_tokens = None
        # the adapter itself, also when a stage wraps ``model`` (a LoRA teacher view disables the
        # adapters around the protocol calls): prompts, decoding and the layout do not change
        self.generator = gen

    @property
    def lm(self):
        return self.generator.lm

    @property
    def sampling_rate(self) -> int:
        return self.generator.sampling_rate

    def encode_prompts(self, texts: Sequence[str]) -> torch.Tensor:
        return encode_texts(self.tokenizer, list(texts), pad_id=self.generator.cfg.text_pad_id).to(self.device)

    def decode(self, seqs: list[list[int]]) -> list:
        return self.generator.audio(seqs)

    def save(self, path: str | os.PathLike, record: dict, training_state: dict | None = None) -> Path:
        c = self.generator.cfg
        extra = {"musicgen": {"frames": c.frames, "steps": c.steps, "num_codebooks": c.num_codebooks,
                              "sampling_rate": self.sampling_rate, "frame_rate": self.generator.frame_rate,
                              "seconds": c.frames / self.generator.frame_rate}}
        return super().save(path, {**record, **extra}, training_state)


def frames_for(model, K: int, D: int, max_len: int | None, record: dict) -> int:
    """Audio frames of one generation (see the module docstring); D = the largest codebook delay."""
    if max_len is None:
        max_len = record.get("max_len")
    if max_len is not None:
        return steps_for_max_len(int(max_len), K) - D
    M = getattr(getattr(model, "generation_config", None), "max_length", None)
    if not M:
        raise UserError("the MusicGen checkpoint has no generation_config.max_length: pass --max-new-tokens "
                        "(K·(frames + D) + 1 stream tokens, D = K − 1 mono, K/2 − 1 stereo)")
    return int(M) - 1 - D


def load_musicgen_generator(folder: Path, record: dict, device: str | torch.device = "cpu", *,
                            max_len: int | None = None) -> MusicgenPlugin:
    """Load a MusicGen folder (model + T5 tokenizer, offline) and wrap it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = MusicgenForConditionalGeneration.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load MusicGen and its tokenizer from '{folder}' "
                        f"({str(e).splitlines()[0][:120]}): pass a folder written by save_pretrained "
                        f"(config.json, weights, the T5 tokenizer files)") from None
    K = int(model.config.decoder.num_codebooks)
    D = K // int(getattr(model.config.decoder, "audio_channels", 1) or 1) - 1     # the largest codebook delay
    frames = frames_for(model, K, D, max_len, record)
    if frames < 1:
        raise UserError(f"max_len {max_len} leaves no audio frame for {K} codebooks: pass --max-new-tokens of at "
                        f"least {K * (D + 1) + 1} (K·(frames + {D}) + 1 stream tokens)")
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = getattr(model.config.text_encoder, "pad_token_id", None) or 0
    gen = MusicgenGenerator(model, frames=frames, text_pad_id=int(pad))
    record["_dir"] = str(folder)
    return MusicgenPlugin(gen.to(device).eval(), tokenizer, folder, record)
