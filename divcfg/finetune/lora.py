"""LoRA fine-tuning through peft, with a zero-copy teacher.

With ``--lora-r R`` every targeted linear layer ``W`` of the base becomes ``W + s·B·A`` with
``A ∈ R^{R×in}``, ``B ∈ R^{out×R}`` (B starts at zero, so the student starts as the base) and
``s = lora_alpha / R``; only A and B train. The frozen CFG teacher is **the same module with the
adapters disabled** (``with peft_model.disable_adapter():``): its log-probs are the base's exactly,
and the base weights exist once in memory.

Targets (``--lora-target-modules``, comma-separated suffixes of module names; empty = defaults):
the built-in ``MusicTransformer``: every linear of every block (``qkv``, ``proj``, ``mlp.0``,
``mlp.2``); a Hugging Face model: peft's default for its architecture (GPT-2 ``c_attn``, Llama
``q_proj,v_proj``, ...), else every linear layer (``all-linear``).

Checkpoints hold the adapters only. Built-in: ``model.safetensors`` holds the adapter tensors and
``config.json`` the usual record plus ``lora = {base, base_abs, r, alpha, dropout, target_modules}``;
loading such a checkpoint anywhere else (sample, evaluate, merge) gives the **merged** plain model
``W + s·B·A``. Hugging Face: peft's ``save_pretrained`` adapter folder + tokenizer + ``divcfg.json``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import types
from pathlib import Path

import torch
from torch import nn

from divcfg.checkpoint import swap_into_place
from divcfg.errors import UserError

BUILTIN_TARGETS = ("qkv", "proj", "mlp.0", "mlp.2")
ADAPTER_KEY = "lora"


def target_modules(cfg, plugin) -> list[str] | str:
    """The module-name suffixes that get adapters (see the module doc)."""
    if cfg.lora_target_modules:
        return [t.strip() for t in cfg.lora_target_modules.split(",") if t.strip()]
    if plugin.kind == "builtin":
        return list(BUILTIN_TARGETS)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults
    return list(defaults.get(getattr(plugin.lm.config, "model_type", ""), [])) or "all-linear"


def lora_settings(cfg, plugin) -> dict:
    return {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
            "target_modules": target_modules(cfg, plugin)}


def _inner(plugin) -> nn.Module:
    """The module peft wraps: the built-in transformer, or the transformers model of an HF plug-in."""
    return plugin.lm if plugin.kind == "hf" else plugin.model


def inject(plugin, settings: dict):
    """Add adapters to ``plugin``'s module in place; returns the ``PeftModel`` handle (the plug-in's
    ``model`` stays the protocol module, now with LoRA layers inside). Base weights are frozen."""
    from peft import LoraConfig, get_peft_model
    module = _inner(plugin)
    fan_in_fan_out = False   # GPT-2-style Conv1D layers store W transposed
    if plugin.kind == "hf":
        from transformers.pytorch_utils import Conv1D
        fan_in_fan_out = any(isinstance(m, Conv1D) for m in module.modules())
    conf = LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                      target_modules=settings["target_modules"], bias="none", fan_in_fan_out=fan_in_fan_out)
    try:
        return get_peft_model(module, conf)
    except ValueError as e:
        raise UserError(f"--lora-target-modules: {str(e).splitlines()[0][:160]}; pass names of linear layers "
                        f"of the model (e.g. {', '.join(BUILTIN_TARGETS)} for the built-in one)") from None


class AdapterDisabled(nn.Module):
    """The teacher's view of a LoRA student: the same module, every call under ``disable_adapter()``."""

    def __init__(self, module: nn.Module, peft_model):
        super().__init__()
        self.module = module
        object.__setattr__(self, "_peft", peft_model)   # not a sub-module (no second registration)

    @property
    def cfg(self):
        return self.module.cfg

    def forward(self, *a, **kw):
        with self._peft.disable_adapter():
            return self.module(*a, **kw)

    def forward_step(self, *a, **kw):
        with self._peft.disable_adapter():
            return self.module.forward_step(*a, **kw)

    def new_cache(self, *a, **kw):
        return self.module.new_cache(*a, **kw)


def teacher_view(student, base_path: Path, base_record: dict):
    """A plug-in sharing ``student``'s objects whose ``model`` runs with the adapters disabled."""
    teacher = copy.copy(student)
    teacher.model = AdapterDisabled(student.model, student.peft)
    teacher.path, teacher.record = Path(base_path), base_record
    return teacher


def _adapter_state(plugin) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict
    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(plugin.peft).items()}


def _save_builtin(plugin, path, record: dict, training_state: dict | None = None) -> Path:
    from divcfg.checkpoint import save_checkpoint
    from divcfg.models.generator import KIND, TOKENIZER_FILE
    config = {**{k: v for k, v in record.items() if k != "_dir"}, "kind": KIND,
              "model": plugin.model.cfg.to_dict(), ADAPTER_KEY: plugin.lora_record}
    extra = {TOKENIZER_FILE: plugin.tokenizer_file} if plugin.tokenizer_file else None
    return save_checkpoint(path, _adapter_state(plugin), config, training_state, extra)


def _save_hf(plugin, path, record: dict, training_state: dict | None = None) -> Path:
    from divcfg.models.hf_plugin import RECORD_FILE
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    plugin.peft.save_pretrained(str(tmp))
    plugin.tokenizer.save_pretrained(str(tmp))
    full = {**{k: v for k, v in record.items() if k != "_dir"}, "kind": "generator", "format": "peft",
            "null_prompt": plugin.null_prompt, "max_len": plugin.model.cfg.max_len, ADAPTER_KEY: plugin.lora_record}
    (tmp / RECORD_FILE).write_text(json.dumps(full, indent=2, default=str))
    if training_state is not None:
        torch.save(training_state, tmp / "training_state.pt")
    return swap_into_place(tmp, path)


def make_lora_student(base, settings: dict, base_spec: str):
    """Turn the loaded base plug-in into the LoRA student (adapters added in place); returns
    ``(student, teacher)`` where the teacher is the adapter-disabled view of the same module."""
    base_path, base_record = base.path, dict(base.record)
    base.peft = inject(base, settings)
    base.lora_record = {"base": str(base_spec), "base_abs": str(Path(str(base_spec).removeprefix("hf:")).resolve()),
                        **settings}
    base.save = types.MethodType(_save_hf if base.kind == "hf" else _save_builtin, base)
    base.num_parameters = types.MethodType(lambda self: sum(p.numel() for p in self.model.parameters()), base)
    return base, teacher_view(base, base_path, base_record)


def read_lora_record(ckpt_dir: Path) -> tuple[dict, dict] | None:
    """``(record, lora record)`` of a LoRA checkpoint folder, else None."""
    for name in ("config.json", "divcfg.json"):
        f = Path(ckpt_dir) / name
        if f.exists():
            try:
                rec = json.loads(f.read_text())
            except json.JSONDecodeError:
                return None
            return (rec, rec[ADAPTER_KEY]) if isinstance(rec, dict) and rec.get(ADAPTER_KEY) else None
    return None


def load_adapters(plugin, ckpt_dir: Path) -> None:
    """Load a LoRA checkpoint's adapter tensors into ``plugin.peft`` (same settings)."""
    from peft import set_peft_model_state_dict
    ckpt_dir = Path(ckpt_dir)
    if plugin.kind == "hf":
        from safetensors.torch import load_file
        state = load_file(str(ckpt_dir / "adapter_model.safetensors"))
    else:
        from divcfg.checkpoint import load_checkpoint
        state, _ = load_checkpoint(ckpt_dir)
    res = set_peft_model_state_dict(plugin.peft, state)
    unexpected = getattr(res, "unexpected_keys", [])
    if unexpected:
        raise UserError(f"'{ckpt_dir}' holds adapters the model does not have ({unexpected[:2]}): resume with the "
                        f"same --lora-target-modules")


def base_of(lora: dict) -> str:
    """The base spec a LoRA checkpoint refers to (its absolute path if the relative one moved)."""
    rel, absolute = lora["base"], lora.get("base_abs", lora["base"])
    prefix = "hf:" if rel.startswith("hf:") else ""
    return rel if Path(rel.removeprefix("hf:")).exists() else prefix + absolute


def load_merged(ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu", **kw):
    """A LoRA checkpoint as a plain plug-in with merged weights ``W + s·B·A`` (adapters folded in)."""
    from divcfg.models.base import load_generator_any
    rec, lora = read_lora_record(Path(ckpt_dir))
    if lora["base"].startswith("hf:"):
        kw = {"max_len": rec.get("max_len"), "null_prompt": rec.get("null_prompt"), **kw}
    plugin = load_generator_any(base_of(lora), device, **kw)
    plugin.peft = inject(plugin, lora)
    load_adapters(plugin, Path(ckpt_dir))
    merged = plugin.peft.merge_and_unload()
    if plugin.kind == "hf":
        plugin.model.lm = merged
    else:
        plugin.model = merged.eval()
    del plugin.peft
    plugin.path, plugin.record = Path(ckpt_dir), {**rec, "_dir": str(ckpt_dir)}
    return plugin


def is_lora_checkpoint(spec: str | os.PathLike) -> bool:
    from divcfg.models.base import spec_path
    p = spec_path(spec)
    return any(read_lora_record(d) is not None for d in (p, p / "checkpoint") if d.is_dir())


def lora_dir(spec: str | os.PathLike) -> Path:
    from divcfg.models.base import spec_path
    p = spec_path(spec)
    return p if read_lora_record(p) is not None else p / "checkpoint"


def merge_lora_checkpoint(ckpt_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """``--merge-lora``: write the LoRA checkpoint as a plain full one (built-in format, or
    ``save_pretrained`` for Hugging Face models)."""
    plugin = load_merged(ckpt_dir)
    record = {k: v for k, v in plugin.record.items() if k not in ("_dir", ADAPTER_KEY, "format")}
    record["merged_lora"] = read_lora_record(Path(ckpt_dir))[1]
    return plugin.save(out, record)
