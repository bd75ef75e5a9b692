"""A local Hugging Face transformers checkpoint (``--base hf:PATH``) as a generator plug-in.
(A MusicGen folder, ``model_type: musicgen``, goes to ``divcfg.models.musicgen_plugin`` instead.)

``PATH`` is a folder that ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
read (any causal LM: GPT-2, Llama, ...), or a divcfg run folder holding one in ``checkpoint/``.
The module is ``HFCausalLMGenerator`` (``divcfg.models.hf_causal_lm``): the condition is the prompt's
own token ids, left-padded; ∅ is the null prompt (empty by default, ``--null-prompt TEXT`` for a
negative prompt). A row is ``[prompt or ∅] [BOS] y_1 … y_L [EOS]``.

**Special tokens.** The sampler needs three distinct ids: BOS (starts the generated part after the
prompt), EOS (ends it) and PAD. Where the tokenizer lacks one, or shares one id for several
(GPT-2's single ``<|endoftext|>``), ``ensure_special_tokens`` adds ``<|divcfg_bos|>``,
``<|divcfg_eos|>`` or ``<|divcfg_pad|>`` as special tokens and grows the embedding matrix (new rows
from a fixed seed, so every load of one base gets the same rows); the model config and generation
config get the three ids. A fine-tuned folder therefore loads in plain transformers; to generate
from it without divcfg, feed ``prompt ids + [bos_token_id]`` (the layout it was trained on).

**Saving.** ``save_pretrained`` of model and tokenizer, plus ``divcfg.json`` (the stage record: γ, β,
λ, provenance, the null prompt, ``max_len``) and, for ``--resume``, ``training_state.pt``; written
into a temporary folder and renamed into place (a crash leaves the old or the new folder).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from divcfg.checkpoint import swap_into_place
from divcfg.errors import UserError
from divcfg.models.base import HF_PREFIX, GeneratorPlugin
from divcfg.models.hf_causal_lm import HFCausalLMGenerator, encode_prompts

RECORD_FILE = "divcfg.json"
STATE_FILE = "training_state.pt"
ADDED_TOKENS = {"bos": "<|divcfg_bos|>", "eos": "<|divcfg_eos|>", "pad": "<|divcfg_pad|>"}
# config keys that do not change what the weights mean (for the merge check)
_NOT_ARCHITECTURE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash",
                     "architectures", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache")


def ensure_special_tokens(tokenizer, lm) -> list[str]:
    """Give ``tokenizer`` distinct BOS, EOS and PAD tokens (adding what is missing), grow ``lm``'s
    embeddings to fit, and write the ids into its configs. Returns the names of the added tokens."""
    added: list[str] = []
    eos = tokenizer.eos_token_id
    if eos is None:
        tokenizer.add_special_tokens({"eos_token": ADDED_TOKENS["eos"]})
        added.append("eos")
    if tokenizer.bos_token_id is None or tokenizer.bos_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"bos_token": ADDED_TOKENS["bos"]})
        added.append("bos")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        tokenizer.add_special_tokens({"pad_token": ADDED_TOKENS["pad"]})
        added.append("pad")
    if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)      # the same new rows on every load of one base
            lm.resize_token_embeddings(len(tokenizer))
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    for conf in (lm.config, getattr(lm, "generation_config", None)):
        if conf is not None:
            for k, v in ids.items():
                setattr(conf, k, v)
    return added


def _positions(lm) -> int | None:
    c = lm.config
    return getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)


def resolve_hf_dir(path: str | os.PathLike) -> Path:
    """The folder holding ``config.json``: ``path`` itself, its ``checkpoint/`` (a divcfg run folder),
    or ``<path>.old`` left by an interrupted save."""
    path = Path(path)
    for cand in (path, path / "checkpoint", path.with_name(path.name + ".old"),
                 path / "checkpoint.old"):
        if (cand / "config.json").exists():
            return cand
    if not path.exists():
        raise UserError(f"Hugging Face model folder '{path}' not found: pass hf:PATH with a folder written by "
                        f"save_pretrained (config.json, weights, tokenizer files)")
    raise UserError(f"'{path}' has no config.json: pass hf:PATH with a transformers checkpoint folder")


class HFGenerator(GeneratorPlugin):
    kind = "hf"
    completion_kind = "text"

    def __init__(self, gen: HFCausalLMGenerator, tokenizer, path: Path, record: dict, null_prompt: str):
        super().__init__(gen, path, record)
        self.tokenizer = tokenizer
        self.null_prompt = null_prompt
        pos = _positions(gen.lm)
        self.max_prompt_tokens = None if pos is None else max(pos - gen.cfg.max_len, 0)

    @property
    def lm(self):
        return self.model.lm

    def encode_prompts(self, texts: Sequence[str]) -> torch.Tensor:
        return encode_prompts(self.tokenizer, list(texts), pad_id=self.model.cfg.prompt_pad_id,
                              max_length=self.max_prompt_tokens)

    def decode(self, seqs: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(seqs, skip_special_tokens=True)

    def spec(self, path: str | os.PathLike) -> str:
        return HF_PREFIX + str(path)

    def save(self, path: str | os.PathLike, record: dict, training_state: dict | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.lm.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        full = {**{k: v for k, v in record.items() if k != "_dir"}, "kind": "generator", "format": "transformers",
                "null_prompt": self.null_prompt, "max_len": self.model.cfg.max_len,
                "special_ids": {"bos": self.model.cfg.bos_id, "eos": self.model.cfg.eos_id,
                                "pad": self.model.cfg.pad_id}}
        (tmp / RECORD_FILE).write_text(json.dumps(full, indent=2, default=str))
        if training_state is not None:
            torch.save(training_state, tmp / STATE_FILE)
        return swap_into_place(tmp, path)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.lm.state_dict().items()}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.lm.load_state_dict(state, strict=False)

    def architecture(self) -> dict:
        return {k: v for k, v in self.lm.config.to_dict().items() if k not in _NOT_ARCHITECTURE}

    def vocabulary(self):
        return sorted(self.tokenizer.get_vocab().items())


def load_hf_generator(path: str | os.PathLike, device: str | torch.device = "cpu", *,
                      null_prompt: str | None = None, max_len: int | None = None) -> HFGenerator:
    """Load model + tokenizer from a local folder (offline), add missing special tokens, wrap."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_hf_dir(path)
    record = {}
    if (folder / RECORD_FILE).exists():
        try:
            record = json.loads((folder / RECORD_FILE).read_text())
        except json.JSONDecodeError:
            raise UserError(f"'{folder / RECORD_FILE}' is unreadable: the checkpoint is corrupt") from None
    from divcfg.models.musicgen_plugin import is_musicgen_folder, load_musicgen_generator
    if is_musicgen_folder(folder):    # text-to-audio: its own adapter (divcfg.models.musicgen)
        return load_musicgen_generator(folder, record, device=device, max_len=max_len)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        lm = AutoModelForCausalLM.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load a causal LM and its tokenizer from '{folder}' "
                        f"({str(e).splitlines()[0][:120]}): pass a folder written by save_pretrained") from None
    ensure_special_tokens(tokenizer, lm)
    pos = _positions(lm)
    if max_len is None:
        max_len = int(record.get("max_len") or (min(512, pos // 2) if pos else 512))
    if pos is not None and max_len >= pos:
        raise UserError(f"max_len {max_len} does not fit the model's {pos} positions with a prompt: "
                        f"pass a smaller --max-new-tokens")
    if null_prompt is None:
        null_prompt = record.get("null_prompt", "")
    gen = HFCausalLMGenerator.from_tokenizer(lm, tokenizer, max_len=max_len, null_prompt=null_prompt)
    record["_dir"] = str(folder)
    return HFGenerator(gen.to(device).eval(), tokenizer, folder, record, null_prompt)
