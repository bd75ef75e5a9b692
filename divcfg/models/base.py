"""Generator plug-ins: the protocol the core (sampling, guidance, objectives, the fine-tuning loop,
merging, evaluation) uses, and ``load_generator_any(spec)``, which picks the plug-in from the spec.

A **generator module** (what ``divcfg.sampling.sample`` and ``divcfg.guidance`` call) has
``cfg.{bos_id, eos_id, pad_id, max_len, vocab_size}``, ``forward(tokens, cond, null_mask)``,
``new_cache(batch)`` and ``forward_step(tokens, cache, cond, null_mask)`` (see
``docs/bring_your_own_model.md``). A **plug-in** (:class:`GeneratorPlugin`) wraps such a module
with what the stages need besides the maths:

- ``encode_prompts(texts) -> cond``: the condition of each prompt text (the null condition ∅ is
  the module's own business: ``cond=None`` / ``null_mask``);
- ``decode(seqs) -> completions``: generated token ids -> what judges and output writers take
  (token lists for the built-in music model, strings for a text LM);
- ``save(path, record, training_state)``: the checkpoint in the plug-in's native format;
- ``weights()`` / ``with_weights(state)``: the tensors that ``divcfg merge`` interpolates.

Specs: ``hf:PATH`` is a local Hugging Face transformers folder (``divcfg.models.hf_plugin``), and so
is a folder divcfg wrote in that format (it holds ``divcfg.json``, so the prefix may be left out);
anything else is a divcfg checkpoint of the built-in transformer (``divcfg.models.builtin``).
An ``hf:PATH`` whose ``config.json`` is a MusicGen config loads ``divcfg.models.musicgen_plugin``
(text-to-audio; ``completion_kind = "audio"``). Adding a generator family means a new plug-in and
one more prefix or config check here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

HF_PREFIX = "hf:"


@runtime_checkable
class Generator(Protocol):
    """The module protocol of ``divcfg.sampling`` / ``divcfg.guidance`` / ``divcfg.objectives``."""
    cfg: Any

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                null_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def new_cache(self, batch: int, dtype: torch.dtype | None = None) -> Any: ...

    def forward_step(self, tokens: torch.Tensor, cache: Any, cond: torch.Tensor | None = None,
                     null_mask: torch.Tensor | None = None) -> torch.Tensor: ...


class GeneratorPlugin:
    """A loaded generator: ``model`` (the protocol module) plus prompt encoding, decoding and saving.

    ``path`` is the folder it was loaded from; ``record`` the divcfg record stored with it (the
    stage that wrote it: pretrain / finetune γ, β / merge λ, provenance), ``{}`` when none."""

    kind = "generator"
    completion_kind = "tokens"   # what ``decode`` returns: "tokens" (id lists) or "text"

    def __init__(self, model: torch.nn.Module, path: Path, record: dict):
        self.model = model
        self.path = Path(path)
        self.record = record

    # -- conditions and outputs
    def encode_prompts(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, seqs: list[list[int]]) -> list:
        raise NotImplementedError

    # -- files
    def save(self, path: str | os.PathLike, record: dict, training_state: dict | None = None) -> Path:
        raise NotImplementedError

    def spec(self, path: str | os.PathLike) -> str:
        """How a later stage refers to a folder this plug-in wrote."""
        return str(path)

    def prepare_run(self, out: Path) -> None:
        """Called once by a stage that will write checkpoints into ``out`` (default: nothing)."""

    # -- merging
    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors that a merge interpolates (name -> tensor)."""
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=False)

    def architecture(self) -> dict:
        """What two mergeable models must agree on."""
        return {}

    def vocabulary(self) -> Any:
        """The token vocabulary (two mergeable models must have the same)."""
        return None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def is_hf_spec(spec: str | os.PathLike) -> bool:
    """``hf:PATH``, or a folder (or run folder) that divcfg wrote in transformers format."""
    s = str(spec)
    if s.startswith(HF_PREFIX):
        return True
    p = Path(s)
    return bool(s) and ((p / "divcfg.json").exists() or (p / "checkpoint" / "divcfg.json").exists())


def spec_path(spec: str | os.PathLike) -> Path:
    """The folder of a spec (``hf:`` removed)."""
    s = str(spec)
    return Path(s[len(HF_PREFIX):] if s.startswith(HF_PREFIX) else s)


def load_generator_any(spec: str | os.PathLike, device: str | torch.device = "cpu", *,
                       null_prompt: str | None = None, max_len: int | None = None) -> GeneratorPlugin:
    """``hf:PATH`` -> the Hugging Face plug-in (``null_prompt``: the text of ∅, default the one
    stored with a divcfg-fine-tuned folder, else the empty prompt; ``max_len``: BOS + generated
    tokens + EOS); anything else -> the built-in generator checkpoint (both options ignored)."""
    if is_hf_spec(spec):
        from divcfg.models.hf_plugin import load_hf_generator
        return load_hf_generator(spec_path(spec), device=device, null_prompt=null_prompt, max_len=max_len)
    from divcfg.models.builtin import load_builtin_generator
    return load_builtin_generator(spec, device=device)


def check_device(device: str) -> torch.device:
    """A torch device from ``--device`` (one-line error when unknown or absent)."""
    from divcfg.errors import UserError
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} but no CUDA GPU is visible: pass --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device} but MPS is not available: pass --device cpu")
    return dev
