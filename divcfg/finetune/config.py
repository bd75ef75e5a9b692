"""`divcfg finetune`'s configuration: every field with help text and its range (TRL-style), presets."""

from __future__ import annotations

from dataclasses import dataclass

from divcfg.config import field
from divcfg.errors import UserError
from divcfg.guidance import CFG_MODES
from divcfg.objectives import BASELINES, DIVERGENCES
from divcfg.rewards import REWARD_FORMS

PG_NORMALISATIONS = ("token", "sequence")
REWARD_GATES = ("empty", "meter", "key")
TEACHER_DTYPES = ("fp32", "bf16")
# fields a --resume must not change (the run would silently become another experiment)
KEY_FIELDS = ("base", "init", "gamma", "teacher_temperature", "beta", "divergence", "jsd_beta", "group_size", "baseline", "pg_normalise", "reward_gate",
              "prompts_per_step", "max_new_tokens", "seed", "embedder", "prompts", "null_prompt", "diversity_judge",
              "quality_judge", "quality_weight", "reward_form", "lora_r", "lora_alpha", "lora_target_modules")


@dataclass
class FinetuneConfig:
    base: str = field("runs/small/base", "base generator (student init and frozen CFG teacher): a divcfg "
                      "checkpoint, or hf:PATH for a local transformers folder (then pass --prompts)")
    init: str = field("", "the student's starting weights: a fine-tuning run or checkpoint of the same --base (e.g. the "
                      "β=0 student, to train the diversity student from the quality model); empty = the base")
    embedder: str = field("runs/small/embedder", "music: diversity embedder checkpoint (needed when beta > 0; "
                          "'' = none, then no reward is computed)")
    scorer: str = field("", "music: alignment scorer checkpoint for the quick evaluation ('' = none)")
    prompts: str = field("", "text domain: prompt file (.txt one per line, .jsonl with a 'prompt' field), split "
                         "train/val/test by a hash of each prompt; empty = the music testbed of --data-dir")
    null_prompt: str = field("", "text domain: the null prompt ∅ of the CFG teacher (a negative prompt; "
                             "empty = the empty prompt)")
    diversity_judge: str = field("", "diversity judge module:function in the embedder form f(completions) -> "
                                 "embeddings (empty = the domain's: --embedder for music, MiniLM for text)")
    quality_judge: str = field("", "quality judge module:function with TRL's reward signature f(prompts, "
                               "completions, **kw) -> list[float] (empty = --scorer for music, prompt-completion "
                               "similarity for text); used by the quick evaluation and --quality-weight")
    quality_weight: float = field(0.0, "weight w of the quality judge in the reward r_i = diversity_i + w·quality_i "
                                  "(0 = the paper's diversity-only reward)", ge=0)
    reward_form: str = field("additive", "how the diversity reward meets quality: 'additive' r = d + w·q (the "
                             "paper's when w = 0); 'multiplicative' r = d·clip(q, 0, 1) + w·q (DARLING-style: "
                             "diversity pays in proportion to prompt alignment; needs a quality judge); 'length' "
                             "r = d·min(1, L/L_ref) + w·q (L_ref: the first step's mean sample length, so "
                             "shortening does not buy diversity)",
                             choices=REWARD_FORMS)
    data_dir: str = field("data/small", "data set folder (train captions for training, val for evaluation)")
    out: str = field("runs/small/ft", "run folder (checkpoint/, metrics.jsonl, summary.json)")
    seed: int = field(0, "random seed (prompts, sampling)", ge=0)
    gamma: float = field(2.0, "the CFG teacher's guidance scale γ (1 = plain conditional)", ge=0, le=100)
    teacher_temperature: float = field(1.0, "the CFG teacher's temperature τ_T: the student distils "
                                       "softmax(((1-γ)·l(∅) + γ·l(x))/τ_T) (1 = the paper's teacher)", ge=0.05, le=20)
    beta: float = field(0.0, "weight β of the diversity term: loss = KL - β·surrogate", ge=0)
    divergence: str = field("reverse_kl", f"token divergence to the teacher: {', '.join(DIVERGENCES)}", choices=DIVERGENCES)
    jsd_beta: float = field(0.5, "β of the generalised JSD (TRL convention: 0 = forward KL, 1 = reverse KL)", ge=0, le=1)
    group_size: int = field(2, "generations G per prompt (≥ 2 for the pairwise diversity reward)", ge=2)
    baseline: str = field("batch", f"reward baseline: {', '.join(BASELINES)} (loo needs G ≥ 3)", choices=BASELINES)
    ema_decay: float = field(0.9, "decay of the 'ema' baseline", ge=0, le=1)
    reward_gate: str = field("empty", "which generations earn diversity reward: 'empty' = all that decode to "
                             "notes (the paper); 'meter' = also only those whose bars keep the prompt's meter; 'key' = also, "
                             "where the caption names a key, only those whose estimated key is it or its relative "
                             "major/minor", choices=REWARD_GATES)
    pg_normalise: str = field("token", "surrogate scale: 'token' divides it by the mean generated length "
                              "(β per token, like the KL), 'sequence' keeps sequence log-prob sums", choices=PG_NORMALISATIONS)
    prompts_per_step: int = field(16, "prompts per step (the batch is prompts_per_step × group_size samples)", ge=1)
    max_new_tokens: int = field(192, "cap on the generated tokens per sample during training", ge=1)
    temperature: float = field(1.0, "student sampling temperature (1 = on-policy)", ge=0.01, le=100)
    cfg_mode: str = field("batched", f"teacher CFG passes: {', '.join(CFG_MODES)}", choices=CFG_MODES)
    updates_per_batch: int = field(2, "optimizer steps per sampled batch (>1 reuses the samples, slightly "
                                   "off-policy: cheaper than sampling, which dominates the step time)", ge=1)
    lr: float = field(1e-4, "peak learning rate (AdamW)", gt=0)
    weight_decay: float = field(0.0, "AdamW weight decay on matrices", ge=0)
    warmup_steps: int = field(10, "linear warm-up steps, then a constant rate", ge=0)
    max_steps: int = field(1000, "stop after this many steps", ge=0)
    max_minutes: float = field(11.0, "stop after this much training time (0 = no limit; evaluation excluded)", ge=0)
    grad_clip: float = field(1.0, "gradient-norm clip", gt=0)
    eval_every: int = field(0, "quick evaluation every N steps (0 = only at start and end)", ge=0)
    eval_prompts: int = field(32, "validation prompts in the quick evaluation", ge=1)
    eval_samples: int = field(2, "generations per validation prompt (pairs for diversity)", ge=1)
    eval_max_new_tokens: int = field(384, "generation cap in the quick evaluation (0 = max_new_tokens)", ge=0)
    eval_teacher: bool = field(True, "at the start of a run, also evaluate the teacher (base + CFG γ)")
    ckpt_every: int = field(10, "checkpoint every N steps", ge=1)
    bf16: bool = field(True, "bf16 autocast where the CPU/GPU supports it")
    device: str = field("cpu", "torch device for the generators (cpu, cuda, cuda:1, mps)")
    judge_device: str = field("", "device of the text judges (empty = --device); music checkpoints' judges run on the CPU")
    threads: int = field(1, "torch CPU threads (0 = torch's default). On a shared 2-core machine 1 is "
                         "much faster: 2 threads that wait on each other slow sampling down ~30x under load", ge=0)
    lora_r: int = field(0, "LoRA rank R (0 = full fine-tuning); the teacher is then the same module with the "
                        "adapters disabled (one copy of the base weights)", ge=0)
    lora_alpha: float = field(16.0, "LoRA scale numerator: ΔW = (alpha/R)·B·A", gt=0)
    lora_dropout: float = field(0.0, "dropout on the LoRA branch's input", ge=0, le=1)
    lora_target_modules: str = field("", "comma-separated module-name suffixes that get adapters (empty = every "
                                     "block linear of the built-in model; peft's default for a Hugging Face one)")
    merge_lora: bool = field(False, "at the end, also write <out>/merged: the LoRA student as a plain full checkpoint")
    gradient_checkpointing: bool = field(False, "recompute each block's activations in the backward pass "
                                         "(less memory for long generations, ~30%% more update time)")
    teacher_dtype: str = field("fp32", "dtype of the frozen teacher copy (bf16 halves its memory; full "
                               "fine-tuning only: with LoRA the teacher shares the student's weights)",
                               choices=TEACHER_DTYPES)
    num_processes: int = field(1, "data-parallel processes (launches them with torch.distributed, gloo on CPU); "
                               "the effective batch is prompts_per_step × group_size × processes", ge=1)
    preset: str = field("small", "preset this config came from (informational)")

    def validate(self) -> None:
        from divcfg.config import validate_config
        validate_config(self)  # every field's type and declared range (choices, >= 0, ...)
        checks = [  # cross-field checks
            (self.baseline != "loo" or self.group_size >= 3,
             "--baseline loo needs --group-size >= 3 (with G=2 use batch or ema)"),
            (self.baseline != "batch" or self.prompts_per_step >= 2,
             "--baseline batch needs --prompts-per-step >= 2 (it averages the other prompts)"),
            (self.beta == 0 or bool(self.embedder or self.diversity_judge or self.prompts),
             "--beta > 0 needs a diversity judge: pass --embedder CKPT or --diversity-judge module:function"),
            (self.eval_samples >= 2 or not (self.embedder or self.diversity_judge or self.prompts),
             "--eval-samples must be at least 2 to measure diversity"),
            (not (self.lora_r and self.teacher_dtype != "fp32"),
             "--teacher-dtype bf16 with --lora-r: the teacher shares the student's base weights; use --bf16 "
             "(autocast) instead, or full fine-tuning"),
            (not self.merge_lora or self.lora_r > 0, "--merge-lora needs --lora-r R > 0"),
            (self.reward_form == "additive" or self.beta == 0 or bool(self.scorer or self.quality_judge or self.prompts),
             "--reward-form multiplicative needs a quality judge: pass --scorer CKPT (music) or --quality-judge"),
            (self.quality_weight == 0 or bool(self.scorer or self.quality_judge or self.prompts),
             "--quality-weight > 0 needs a quality judge: pass --scorer CKPT or --quality-judge module:function"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)


PRESETS: dict[str, dict] = {
    "tiny": dict(base="runs/tiny/base", embedder="runs/tiny/embedder", data_dir="data/tiny", out="runs/tiny/ft",
                 prompts_per_step=4, max_new_tokens=48, lr=1e-4, warmup_steps=2, max_steps=20, max_minutes=0.0,
                 eval_every=10, eval_prompts=4, eval_max_new_tokens=0, ckpt_every=10, updates_per_batch=1,
                 preset="tiny"),
    "demo": dict(data_dir="data/small", base="runs/demo/base", embedder="runs/demo/embedder", out="runs/demo/ft",
                 prompts_per_step=8, max_new_tokens=160, max_steps=80, max_minutes=60.0, eval_every=0,
                 eval_prompts=8, eval_max_new_tokens=256, ckpt_every=20, preset="demo"),
    # step-bounded: 290 steps is what the README's 11-minute students reached on the idle machine;
    # max_minutes is only a safety cap (a run it stops is recorded as cut_short)
    "small": dict(max_steps=290, max_minutes=40.0),
    # the paper's batch: 128 generations per step (64 prompts × 2); other values are our choice
    "paper": dict(data_dir="data/full", base="runs/full/base", embedder="runs/full/embedder", out="runs/full/ft",
                  prompts_per_step=64, group_size=2, max_new_tokens=639, lr=3e-5, warmup_steps=100,
                  max_steps=5000, max_minutes=0.0, eval_every=250, eval_prompts=128, ckpt_every=250,
                  updates_per_batch=1, eval_max_new_tokens=0, threads=0, device="cuda", preset="paper"),
}
