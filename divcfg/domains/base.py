"""The domain protocol: where prompts come from, how a generator is conditioned on them, how its
completions are judged and written. The core (fine-tuning loop, evaluation, sampling CLI) talks to a
domain only through this interface, so the music21 testbed (``domains.music``) and prompt files for
text LMs (``domains.text``) — and later audio — plug in without touching it.

A domain provides:

- ``train_pool()``: training prompts, ``draw(n, rng) -> (texts, infos)`` (``infos[i]``: what the
  domain needs later about prompt i, e.g. the meter a caption asks for; None when nothing);
- ``prompts(split, generator, limit, seed)``: a :class:`divcfg.prompts.Prompts` of ``val``/``test``
  (texts, the generator's conditions, metadata, ids), the same subset for every system;
- ``condition(generator, texts)``: the conditions of free texts for that generator;
- ``prepare_generator(generator)``: check the generator suits the domain, give it what it lacks;
- ``judges(...)``: the diversity embedder and the quality scorer (``divcfg.judges.base``), with the
  user's ``module:function`` judges in place of the defaults where given;
- ``reward_gates`` and ``reward_valid(gate, completions, infos, embedded)``: which generations may earn
  diversity reward (``"empty"``: those the embedder could embed; a domain may add stricter gates);
- ``quick_figures(completions, prompts, G)``: extra figures for fine-tuning's quick evaluation;
- ``judge(prompts, completions, rows, G, judges)``, ``summary_extras`` and ``reference(prompts, judges)``:
  the per-system and corpus figures of ``divcfg evaluate`` (see ``divcfg.evaluation``): ``judge``
  returns ``per_generation`` (``quality``, ``valid``, ``empty``, ...), ``per_prompt`` (``quality``,
  ``diversity`` and each of ``eval_figures``) and ``summary``;
- ``write(out, rows)``: output files of ``divcfg sample`` (MIDI/WAV, text files).

Optional, where a domain has them (the music testbed does):

- pre-training data for the built-in generator (``divcfg pretrain``): ``data_dir``,
  ``load_split(split)`` (rows with ``tokens`` and ``captions``), ``tokenizer()``, ``special_ids()``;
- audio for the listening study: ``run_tokenizer(results)`` and ``render_clip(tokenizer, tokens, path,
  beats, sample_rate) -> empty``.

The domain of a finished run is found by the name it recorded (``domain_named``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from divcfg.judges.base import DiversityEmbedder, QualityScorer


@dataclass
class Judges:
    diversity: DiversityEmbedder | None
    quality: QualityScorer | None
    names: dict[str, str] | None = None   # what each judge is, for records ("diversity", "quality")


class PromptPool(Protocol):
    def draw(self, n: int, rng: random.Random) -> tuple[list[str], list[Any]]: ...


class Domain(Protocol):
    name: str
    reward_gates: tuple[str, ...]
    quality_name: str                    # the quality figure's name in metrics ("alignment", "quality")
    eval_figures: tuple[str, ...]        # independent diversity figures (per-prompt means) in the table
    eval_extra_columns: tuple[str, ...]  # further per-system columns (from ``summary_extras``)

    def train_pool(self) -> PromptPool: ...

    def prompts(self, split: str, generator, limit: int | None = None, seed: int = 0): ...

    def condition(self, generator, texts: Sequence[str]) -> torch.Tensor: ...

    def prepare_generator(self, generator) -> None: ...

    def judges(self, *, embedder: str = "", scorer: str = "", diversity_judge: str = "",
               quality_judge: str = "", device: str = "cpu", need: tuple[str, ...] = ("diversity", "quality"),
               generator=None) -> Judges: ...

    def reward_valid(self, gate: str, completions: list, infos: list, embedded: torch.Tensor) -> torch.Tensor: ...

    def quick_figures(self, completions: list, prompts, G: int) -> dict[str, float]: ...

    def judge(self, prompts, completions: list, rows: dict, G: int, judges: Judges, generator=None) -> dict: ...

    def summary_extras(self, judged: dict, reference: dict) -> dict: ...

    def reference(self, prompts, judges: Judges, **kw) -> dict: ...

    def write(self, out: Path, rows: list[dict], generator) -> list[str]: ...


def user_or_default_judges(diversity_judge: str, quality_judge: str, default_diversity, default_quality,
                           need: tuple[str, ...]) -> Judges:
    """The user's ``module:function`` judges where given, else the domain's defaults (callables
    returning a judge, called only when that role is needed)."""
    from divcfg.judges.base import user_diversity_judge, user_quality_judge
    div = qual = None
    names = {}
    if "diversity" in need:
        div = user_diversity_judge(diversity_judge) if diversity_judge else default_diversity()
        names["diversity"] = diversity_judge or getattr(div, "name", type(div).__name__) if div is not None else ""
    if "quality" in need:
        qual = user_quality_judge(quality_judge) if quality_judge else default_quality()
        names["quality"] = quality_judge or getattr(qual, "name", type(qual).__name__) if qual is not None else ""
    return Judges(div, qual, names)


def load_domain(prompts_file: str = "", data_dir: str = "", generator_spec: str = "") -> Domain:
    """``--prompts FILE`` -> the text domain; otherwise the music testbed on ``--data-dir``.
    A Hugging Face generator needs a prompt file (its completions are text)."""
    from divcfg.errors import UserError
    from divcfg.models.base import is_hf_spec
    if prompts_file:
        if generator_spec and is_hf_spec(generator_spec) and _is_musicgen(generator_spec):
            from divcfg.domains.audio import AudioDomain
            return AudioDomain(prompts_file)
        from divcfg.domains.text import TextDomain
        return TextDomain(prompts_file)
    if generator_spec and is_hf_spec(generator_spec):
        raise UserError("a Hugging Face generator (hf:PATH) needs text prompts: pass --prompts FILE "
                        "(.txt one prompt per line, or .jsonl with a 'prompt' field)")
    from divcfg.domains.music import MusicDomain
    return MusicDomain(data_dir)


def _is_musicgen(generator_spec: str) -> bool:
    """Whether an ``hf:PATH`` spec is a MusicGen folder (its completions are audio)."""
    from divcfg.models.base import spec_path
    from divcfg.models.hf_plugin import resolve_hf_dir
    from divcfg.models.musicgen_plugin import is_musicgen_folder
    return is_musicgen_folder(resolve_hf_dir(spec_path(generator_spec)))


def domain_for_output(generator) -> Domain:
    """The domain whose writer suits a generator's completions, without prompts or judges
    (``divcfg sample``): WAV files for audio generators (MusicGen), text files for text LMs,
    MIDI/WAV for the built-in music model."""
    kind = getattr(generator, "completion_kind", "tokens")
    return domain_named(kind if kind in ("audio", "text") else "music")


# the built-in plug-ins: name → (module, class); importing a module also registers its rewards
BUILTIN_DOMAINS = {"music": ("divcfg.domains.music", "MusicDomain"), "text": ("divcfg.domains.text", "TextDomain"),
                   "audio": ("divcfg.domains.audio", "AudioDomain")}


def domain_named(name: str) -> Domain:
    """The domain a run recorded by name (``results.json``'s ``domain``), without prompts or data: what
    a finished run needs of it (rendering its generations, loading its judges' checkpoints)."""
    import importlib

    from divcfg.errors import UserError
    if name not in BUILTIN_DOMAINS:
        raise UserError(f"unknown domain {name!r}: choose one of {', '.join(BUILTIN_DOMAINS)}")
    module, cls = BUILTIN_DOMAINS[name]
    return getattr(importlib.import_module(module), cls)(None)


def import_builtin_domains() -> None:
    """Import every built-in domain plug-in whose dependencies are installed, so that the rewards they
    register (e.g. music's ``validity``) can be found by name."""
    import importlib
    for module, _ in BUILTIN_DOMAINS.values():
        try:
            importlib.import_module(module)
        except ImportError:
            pass
