"""Setting a fine-tuning run up: device, domain, teacher and student (fresh or resumed), judges,
optimizer, and the training state of a resumed run. Each piece is one small function; the loop
(``divcfg.finetune.loop``) only calls them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from divcfg.checkpoint import STATE_FILE, read_training_state
from divcfg.errors import UserError
from divcfg.finetune.config import KEY_FIELDS
from divcfg.models.base import GeneratorPlugin, check_device, is_hf_spec, load_generator_any
from divcfg.objectives import RewardBaseline
from divcfg.stages import set_python_rng_state


def autocast_supported(enabled: bool, device: torch.device) -> bool:
    """bf16 autocast where the device supports it (CPU: AVX512-BF16/AMX; CUDA: Ampere or newer)."""
    from divcfg.sampling import bf16_supported
    return bool(enabled) and bf16_supported(device.type)


def max_len_for(cfg) -> int:
    """BOS + the longest generation (training or quick evaluation) + EOS, for Hugging Face models."""
    return max(cfg.max_new_tokens, cfg.eval_max_new_tokens or cfg.max_new_tokens) + 1


def load_base(cfg, device: torch.device) -> GeneratorPlugin:
    """The frozen CFG teacher: the base generator, no gradients."""
    teacher = load_generator_any(cfg.base, device, null_prompt=cfg.null_prompt or None,
                                 max_len=max_len_for(cfg) if is_hf_spec(cfg.base) else None)
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    return teacher


def _has_checkpoint(out: Path) -> bool:
    return any((d / name).exists() for d in (out / "checkpoint", out / "checkpoint.old")
               for name in ("model.safetensors", "divcfg.json", "config.json"))


def load_training_state(ckpt_dir: Path) -> dict | None:
    """The optimizer/scheduler/RNG state beside a checkpoint (``torch.load(weights_only=True)``);
    any generator's run folder, HF ones included (no ``model.safetensors`` needed)."""
    return read_training_state(ckpt_dir / STATE_FILE)


def _check_resumable(cfg, stored: dict, ckpt_dir: Path) -> None:
    old = stored.get("finetune", {})
    diff = [k for k in KEY_FIELDS if k in old and old[k] != getattr(cfg, k)]
    if diff:
        k = diff[0]
        raise UserError(f"--resume with a different {k} ({getattr(cfg, k)!r}) than the run in '{ckpt_dir}' "
                        f"({old[k]!r}): pass the same value, or start a new run with another --out")


def load_student(cfg, teacher: GeneratorPlugin, out: Path, resume: bool,
                 device: torch.device) -> tuple[GeneratorPlugin, dict | None]:
    """``(student, training state or None)``: the run's last checkpoint with ``resume``, else a
    fresh copy of the base. The student is in eval mode (dropout off: the distribution trained is
    the one sampled)."""
    ckpt_dir = out / "checkpoint"
    state = None
    if resume and _has_checkpoint(out):
        spec = teacher.spec(ckpt_dir)
        student = load_generator_any(spec, device, null_prompt=cfg.null_prompt or None,
                                     max_len=max_len_for(cfg) if teacher.kind == "hf" else None)
        _check_resumable(cfg, student.record, ckpt_dir)
        state = load_training_state(student.path)
        if state is None:
            raise UserError(f"'{ckpt_dir}' has no training state to resume from: start a new run with another --out")
        if (student.model.cfg.to_dict() != teacher.model.cfg.to_dict()
                or student.architecture() != teacher.architecture()):
            raise UserError(f"the checkpoint in '{ckpt_dir}' does not have the base's architecture: "
                            f"resume with the --base the run was started from")
    else:
        if _has_checkpoint(out):
            raise UserError(f"'{out}' already holds a fine-tuning checkpoint: pass --resume to continue it, "
                            f"or choose another --out")
        if resume:
            print(f"no checkpoint in '{ckpt_dir}' yet: starting from {'--init' if cfg.init else 'the base'}")
        student = load_generator_any(cfg.init or cfg.base, device, null_prompt=cfg.null_prompt or None,
                                     max_len=max_len_for(cfg) if teacher.kind == "hf" else None)
        if cfg.init and (student.model.cfg.to_dict() != teacher.model.cfg.to_dict()
                         or student.architecture() != teacher.architecture()):
            raise UserError(f"--init '{cfg.init}' does not have the base's architecture: pass a fine-tuning run "
                            f"of the same --base")
    student.model.eval()
    return student, state


def load_models(cfg, out: Path, resume: bool, device: torch.device):
    """``(student, teacher, training state or None)``. Full fine-tuning: a frozen teacher copy of the
    base (``--teacher-dtype``) and a student (fresh or resumed). LoRA (``--lora-r``): the base is
    loaded once; the student is it with adapters, the teacher the same module with them disabled."""
    if cfg.init and cfg.lora_r:
        raise UserError("--init starts full fine-tuning from other weights; LoRA adapters always start from the "
                        "base: drop --init or --lora-r")
    teacher = load_base(cfg, device)
    if not cfg.lora_r:
        student, state = load_student(cfg, teacher, out, resume, device)
        if cfg.teacher_dtype == "bf16":
            teacher.model.to(torch.bfloat16)
    else:
        from divcfg.finetune import lora
        ckpt_dir, state = out / "checkpoint", None
        if resume and _has_checkpoint(out):
            found = lora.read_lora_record(ckpt_dir)
            if found is None:
                raise UserError(f"'{ckpt_dir}' is not a LoRA checkpoint: resume without --lora-r, or use another --out")
            _check_resumable(cfg, found[0], ckpt_dir)
            state = load_training_state(ckpt_dir)
            if state is None:
                raise UserError(f"'{ckpt_dir}' has no training state to resume from: start a new run with another --out")
        elif _has_checkpoint(out):
            raise UserError(f"'{out}' already holds a fine-tuning checkpoint: pass --resume to continue it, "
                            f"or choose another --out")
        student, teacher = lora.make_lora_student(teacher, lora.lora_settings(cfg, teacher), cfg.base)
        if state is not None:
            lora.load_adapters(student, ckpt_dir)
        student.model.eval()
    if cfg.gradient_checkpointing:
        checkpoint_blocks(student.model)
    return student, teacher, state


def checkpoint_blocks(model: torch.nn.Module) -> int:
    """Gradient checkpointing: each block of the model's layer list (the built-in ``blocks``, a
    transformers model's ``h``/``layers``: the ``ModuleList`` holding most parameters) recomputes
    its activations in the backward pass (``torch.utils.checkpoint``, non-reentrant) whenever it
    runs with gradients and without a KV cache, i.e. in the training forward only. Returns the
    number of blocks wrapped."""
    from torch.utils.checkpoint import checkpoint
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        return 0
    blocks = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))

    def wrap(orig):
        def forward(*a, **kw):
            maybe_caches = [a[1] if len(a) > 1 else None] + [kw.get(k) for k in ("cache", "past_key_values", "layer_past")]
            cached = any(v is not None and not torch.is_tensor(v) and not isinstance(v, (bool, int, float))
                         for v in maybe_caches)   # a KV cache object (tensors are masks/positions)
            if torch.is_grad_enabled() and not cached:
                return checkpoint(orig, *a, use_reentrant=False, **kw)
            return orig(*a, **kw)
        return forward

    for blk in blocks:
        blk.forward = wrap(blk.forward)
    return len(blocks)


def load_judges(cfg, domain, student: GeneratorPlugin):
    """The domain's judges (or the user's ``module:function`` ones) on ``--judge-device``."""
    return domain.judges(embedder=cfg.embedder, scorer=cfg.scorer, diversity_judge=cfg.diversity_judge,
                         quality_judge=cfg.quality_judge, device=cfg.judge_device or cfg.device, generator=student)


def make_optimizer(model: torch.nn.Module, cfg):
    """AdamW (weight decay on matrices only), linear warm-up then a constant rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    return opt, sched


@dataclass
class Progress:
    """What the loop carries from step to step (and a checkpoint stores)."""
    step: int = 0
    elapsed: float = 0.0
    saved_step: int | None = None
    last_eval: dict = field(default_factory=dict)
    first_eval: dict = field(default_factory=dict)
    length_ref: float | None = None     # the length reward's L_ref: the first step's mean sample length


def restore(state: dict | None, opt, sched, baseline: RewardBaseline, rng: random.Random,
            gen: torch.Generator, rank: int = 0, world: int = 1) -> Progress:
    """Put a resumed run's optimizer, schedule, baseline and random streams (this rank's) back."""
    if state is None:
        return Progress()
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise UserError(f"the run was trained with {saved_world} process(es), this resume has {world}: resume with "
                        f"--num-processes {saved_world}")
    if world > 1:
        state = {**state, **state["rank_rng"][rank]}
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    baseline.load_state_dict(state["baseline"])
    set_python_rng_state(rng, state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    gen.set_state(state["sample_rng"].cpu() if torch.is_tensor(state["sample_rng"]) else state["sample_rng"])
    p = Progress(state["step"], state["elapsed"], state["step"], state.get("last_eval", {}), state.get("first_eval", {}),
                 state.get("length_ref"))
    if rank == 0:
        print(f"resuming from step {p.step} ({p.elapsed / 60:.1f} min done)")
    return p


def device_of(cfg) -> torch.device:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return check_device(cfg.device)
