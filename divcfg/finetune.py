"""`divcfg finetune`: on-policy CFG distillation with a diversity reward (DESIGN.md §1).

The student ``π_θ`` starts from the base checkpoint; a separate frozen copy of the base is the
CFG teacher ``π_γ`` (conditional and null passes mixed by ``divcfg.guidance``). One step:

1. ``P = prompts_per_step`` training prompts (a random caption variant each), embedded by MiniLM;
2. the student samples ``G = group_size`` generations per prompt with the KV cache, at temperature
   1 and without CFG (on-policy; no gradient through sampling), at most ``max_new_tokens`` tokens;
3. the teacher's guided log-probs over the sampled sequences (teacher forcing, ``no_grad``);
4. the student's log-probs with gradient (eval mode: dropout off, so the distribution trained is
   the one sampled);
5. ``loss = D(π_θ ‖ π_γ) − β·S`` with ``D`` the token-level divergence averaged over generated
   tokens (``divcfg.objectives``) and ``S`` the REINFORCE surrogate of the pairwise diversity
   reward ``1 − cos(E(y_i), E(y_j))`` of the frozen diversity embedder ``E``;
6. AdamW with linear warm-up then a constant rate, gradient-norm clipping, bf16 autocast where
   the CPU supports it.

**What β means here.** ``D`` is in nats per generated token. ``S`` is built on sequence
log-probs (sums over tokens), so its gradient grows with the generation length L. With
``pg_normalise = "token"`` (the default) S is divided by the batch's mean generated length, so
β weighs "diversity reward per token of log-likelihood" against "KL per token": both gradients are
then per-token averages. This is the same *relative* weighting as DESIGN.md §1's
``Σ_t KL_t − β·(r−b)(log π(y1) + log π(y2))`` with the KL summed over tokens (divide both by L),
so β here is directly comparable to the paper's β — up to the scale of the reward, which depends
on the embedder. ``pg_normalise = "sequence"`` keeps the raw sequence-level surrogate against the
per-token KL, i.e. β is effectively multiplied by L. Sweep β rather than trusting the paper's 15:
on the small testbed β=15 bought diversity by ignoring the prompt's meter, β=5 did not.

**Which generations earn reward** (``reward_gate``): ``empty`` (default, the paper's reward) pays
every generation that decodes to notes; ``meter`` also requires the bars to keep the meter the
prompt asks for (``reward_valid``) — E is key-blind by construction because the prompt fixes the
key, and this is the same idea for the meter, which a piano-roll embedder cannot be blind to.

Sampling and the distributions: PAD and BOS are never valid continuations (``divcfg.sampling``
gives them probability zero), so student and teacher log-probs are both renormalised over the
other tokens before the divergence; the KL is exact over that vocabulary.

Outputs in ``--out``: ``checkpoint/`` (a generator checkpoint; ``config.json`` records the
fine-tuning config, base checkpoint, γ, β, seed, commit, last evaluation; ``training_state.pt``
the optimizer, scheduler, RNG, baseline and step for ``--resume``), ``metrics.jsonl`` (TRL-like
names), ``summary.json``, and last ``DONE.json`` (the completion marker, ``divcfg.stages``;
``cut_short`` there, in ``summary.json`` and in ``config.json`` when the ``max_minutes`` safety cap
stopped the run before ``max_steps``). A non-finite loss or gradient stops the run with a one-line
error and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from divcfg.checkpoint import load_training_state
from divcfg.config import add_config_arguments, field, resolve_config
from divcfg.errors import UserError
from divcfg.guidance import CFG_MODES, guided_sequence_logprobs
from divcfg.models.generator import load_generator, save_generator, tokenizer_path
from divcfg.objectives import (BASELINES, DIVERGENCES, RewardBaseline, distillation_loss, diversity_rewards,
                               masked_token_mean, reinforce_surrogate, sequence_logprobs, token_divergence,
                               token_entropy)
from divcfg.pretrain import bf16_supported
from divcfg.prompts import check_data_dir, embed_texts, load_prompts
from divcfg.provenance import provenance, seed_everything, write_json_atomic
from divcfg.sampling import sample
from divcfg.stages import (TimeCap, clear_finished, mark_finished, metrics_size, python_rng_state,
                            set_python_rng_state, truncate_metrics)

PG_NORMALISATIONS = ("token", "sequence")
REWARD_GATES = ("empty", "meter")


@dataclass
class FinetuneConfig:
    base: str = field("runs/small/base", "base generator checkpoint (student init and frozen CFG teacher)")
    embedder: str = field("runs/small/embedder", "diversity embedder checkpoint (needed when beta > 0; "
                          "'' = none, then no reward is computed)")
    scorer: str = field("", "alignment scorer checkpoint for the quick evaluation ('' = none)")
    data_dir: str = field("data/small", "data set folder (train captions for training, val for evaluation)")
    out: str = field("runs/small/ft", "run folder (checkpoint/, metrics.jsonl, summary.json)")
    seed: int = field(0, "random seed (prompts, sampling)", ge=0)
    gamma: float = field(2.0, "the CFG teacher's guidance scale γ (1 = plain conditional)", ge=0, le=100)
    beta: float = field(0.0, "weight β of the diversity term: loss = KL - β·surrogate", ge=0)
    divergence: str = field("reverse_kl", f"token divergence to the teacher: {', '.join(DIVERGENCES)}", choices=DIVERGENCES)
    jsd_beta: float = field(0.5, "β of the generalised JSD (TRL convention: 0 = forward KL, 1 = reverse KL)", ge=0, le=1)
    group_size: int = field(2, "generations G per prompt (≥ 2 for the pairwise diversity reward)", ge=2)
    baseline: str = field("batch", f"reward baseline: {', '.join(BASELINES)} (loo needs G ≥ 3)", choices=BASELINES)
    ema_decay: float = field(0.9, "decay of the 'ema' baseline", ge=0, le=1)
    reward_gate: str = field("empty", "which generations earn diversity reward: 'empty' = all that decode to "
                             "notes (the paper); 'meter' = also only those whose bars keep the prompt's meter", choices=REWARD_GATES)
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
    device: str = field("cpu", "torch device for the generator (cpu, cuda, cuda:1, ...); judges run on the CPU")
    threads: int = field(1, "torch CPU threads (0 = torch's default). On a shared 2-core machine 1 is "
                         "much faster: 2 threads that wait on each other slow sampling down ~30x under load", ge=0)
    preset: str = field("small", "preset this config came from (informational)")

    def validate(self) -> None:
        from divcfg.config import validate_config
        validate_config(self)  # every field's type and declared range (choices, >= 0, ...)
        checks = [  # cross-field checks
            (self.baseline != "loo" or self.group_size >= 3,
             "--baseline loo needs --group-size >= 3 (with G=2 use batch or ema)"),
            (self.baseline != "batch" or self.prompts_per_step >= 2,
             "--baseline batch needs --prompts-per-step >= 2 (it averages the other prompts)"),
            (self.beta == 0 or bool(self.embedder), "--beta > 0 needs a diversity embedder: pass --embedder CKPT"),
            (self.eval_samples >= 2 or not self.embedder, "--eval-samples must be at least 2 to measure diversity"),
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
                 prompts_per_step=8, max_new_tokens=160, max_steps=80, max_minutes=10.0, eval_every=0,
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


# --------------------------------------------------------------------------- pieces of a step

class VocabRestriction:
    """Log-probs renormalised without PAD and BOS (as the sampler does), and the map from token
    ids to columns of the restricted vocabulary."""

    def __init__(self, vocab_size: int, never: list[int], device: str | torch.device = "cpu"):
        keep = [i for i in range(vocab_size) if i not in set(never)]
        self.keep = torch.tensor(keep, dtype=torch.long, device=device)
        self.column = torch.zeros(vocab_size, dtype=torch.long, device=device)
        self.column[self.keep] = torch.arange(len(keep), device=device)

    def logprobs(self, logits_or_logp: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits_or_logp.float().index_select(-1, self.keep), dim=-1)

    def columns(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.column[tokens]


def generated_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) True at the first ``lengths[b]`` positions (the generated tokens, EOS included)."""
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class TrainPrompts:
    """Training captions (every variant of every training piece), drawn at random per step."""

    def __init__(self, data_dir: Path):
        from divcfg.music.corpus import load_split
        pieces = [p for p in load_split(data_dir, "train") if p.get("captions")]
        self.captions = [p["captions"] for p in pieces]
        self.meters = [p.get("meta", {}).get("meter") for p in pieces]
        if not self.captions:
            raise UserError(f"data set '{data_dir}' has no training captions: rebuild it with `divcfg data --force`")

    def draw(self, n: int, rng: random.Random) -> tuple[list[str], torch.Tensor, list[str | None]]:
        """``n`` captions (a random variant of a random piece), their embeddings, and the meter
        each caption's piece is in (the meter the caption asks for)."""
        idx, texts = [], []
        for _ in range(n):  # piece, then variant: the random stream of runs made before meters were returned
            idx.append(rng.randrange(len(self.captions)))
            texts.append(rng.choice(self.captions[idx[-1]]))
        return texts, embed_texts(texts), [self.meters[i] for i in idx]


def reward_valid(embed_valid: torch.Tensor, seqs: list[list[int]], meters: list[str | None], gate: str,
                 tokenizer) -> torch.Tensor:
    """Which generations may earn diversity reward. ``empty``: those E could embed (decodes, has
    notes) — the paper's reward with degenerate output earning nothing. ``meter``: additionally,
    the bars keep the meter the prompt asks for (``metrics.bars_consistent``, token_validity's
    ``meter_ok``): E is key-blind by construction because the prompt fixes the key; it cannot be
    made meter-blind, so the reward instead refuses to pay for diversity bought by ignoring the
    prompt's meter."""
    if gate == "empty":
        return embed_valid
    from divcfg.music.metrics import bars_consistent
    ok = torch.tensor([bars_consistent(tokenizer, ids, m) for ids, m in zip(seqs, meters)])
    return embed_valid & ok.to(embed_valid.device)


def load_judges(cfg: FinetuneConfig):
    """(diversity embedder or None, alignment scorer or None)."""
    embedder = scorer = None
    if cfg.embedder:
        from divcfg.embedders.diversity import load_diversity_embedder
        embedder = load_diversity_embedder(cfg.embedder)
    if cfg.scorer:
        from divcfg.embedders.alignment import load_alignment_scorer
        scorer = load_alignment_scorer(cfg.scorer)
    return embedder, scorer


def key_pitch_class(key: str | None) -> tuple[int, str] | None:
    """``"F# minor"`` -> ``(6, "minor")``; None for missing or unparsable keys."""
    from divcfg.music.captions import FLAT_NAMES, SHARP_NAMES
    parts = (key or "").split()
    if len(parts) != 2 or parts[1] not in ("major", "minor"):
        return None
    name = parts[0].replace("-", "b")
    for names in (SHARP_NAMES, FLAT_NAMES):
        if name in names:
            return names.index(name), parts[1]
    return None


def in_key_rate(tokenizer, seqs: list[list[int]], requested: list[str | None]) -> float:
    """Fraction of generations whose Krumhansl-Schmuckler key estimate (``captions.estimate_key``)
    is the requested key (same tonic pitch class and mode), over prompts that name a key; an
    empty or undecodable generation counts as a miss. NaN when no prompt names a key."""
    from divcfg.music.captions import estimate_key
    from divcfg.music.pianoroll import score_notes
    from divcfg.music.tokenizer import tokens_to_score
    hits, n = 0, 0
    for ids, key in zip(seqs, requested):
        want = key_pitch_class(key)
        if want is None:
            continue
        n += 1
        notes = score_notes(tokens_to_score(tokenizer, ids))
        got = estimate_key([(o, p, d) for o, d, p in notes.tolist()]) if len(notes) else None
        hits += int(key_pitch_class(got) == want)
    return hits / n if n else float("nan")


@torch.no_grad()
def quick_eval(model, teacher, prompts, cfg: FinetuneConfig, embedder, scorer, restrict: VocabRestriction,
               autocast: bool, gamma: float = 1.0, prefix: str = "eval", tokenizer=None) -> dict[str, float]:
    """Sample ``eval_samples`` generations per validation prompt from ``model`` at guidance ``gamma``
    (1 = no CFG) with a fixed seed; report alignment (if a scorer), diversity (if an embedder), the
    in-key rate (if a tokenizer), the empty rate, lengths and — for γ=1 — the reverse KL of the
    samples' distribution to the teacher."""
    G = cfg.eval_samples
    device = next(model.parameters()).device
    cond = prompts.cond.to(device).repeat_interleave(G, dim=0)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 12345)
    n_new = cfg.eval_max_new_tokens or cfg.max_new_tokens
    out = sample(model, cond, max_new_tokens=n_new, gamma=gamma, cfg_mode=cfg.cfg_mode, generator=gen,
                 autocast=autocast)
    seqs = out.sequences()
    res = {f"{prefix}/mean_length": float(out.lengths.float().mean()),
           f"{prefix}/eos_rate": float(out.finished.float().mean())}
    if gamma == 1.0:
        x = out.with_bos(model.cfg.bos_id)[:, :-1]
        mask = generated_mask(out.lengths, out.tokens.shape[1])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            s = restrict.logprobs(model(x, cond))
            t = restrict.logprobs(guided_sequence_logprobs(teacher, x, cond, cfg.gamma, cfg.cfg_mode))
        res[f"{prefix}/kl_teacher"] = float(distillation_loss(s, t, mask, "reverse_kl"))
    if embedder is not None:
        emb, valid = embedder.embed_with_mask(seqs)
        r = diversity_rewards(emb, G, valid)
        res[f"{prefix}/diversity"] = float(r.mean())
        res[f"{prefix}/empty_rate"] = float((~valid).float().mean())
    if tokenizer is not None:
        res[f"{prefix}/in_key_rate"] = in_key_rate(tokenizer, seqs, [m.get("key") for m in prompts.meta for _ in range(G)])
    if scorer is not None:
        texts = [t for t in prompts.texts for _ in range(G)]
        res[f"{prefix}/alignment"] = float(torch.as_tensor(scorer.score(texts, seqs)).float().mean())
    return res


# --------------------------------------------------------------------------- the run

KEY_FIELDS = ("base", "gamma", "beta", "divergence", "jsd_beta", "group_size", "baseline", "pg_normalise", "reward_gate",
              "prompts_per_step", "max_new_tokens", "seed", "embedder")


def _check_resumable(cfg: FinetuneConfig, stored: dict, ckpt_dir: Path) -> None:
    old = stored.get("finetune", {})
    diff = [k for k in KEY_FIELDS if k in old and old[k] != getattr(cfg, k)]
    if diff:
        k = diff[0]
        raise UserError(f"--resume with a different {k} ({getattr(cfg, k)!r}) than the run in '{ckpt_dir}' "
                        f"({old[k]!r}): pass the same value, or start a new run with another --out")


def check_finite(loss: torch.Tensor, grad_norm: torch.Tensor, step: int, ckpt_dir: Path, saved_step: int | None):
    """The NaN/inf guard: a one-line error naming the last good checkpoint."""
    if torch.isfinite(loss) and torch.isfinite(grad_norm):
        return
    kept = (f"the last good checkpoint (step {saved_step}) is kept in '{ckpt_dir}'" if saved_step is not None
            else "no checkpoint was written yet")
    raise UserError(f"non-finite loss/gradient ({float(loss):.4g}/{float(grad_norm):.4g}) at step {step}: {kept}; "
                    f"lower --lr or --beta and rerun (with --resume to continue)")


def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run (or, with ``resume``, continue) a fine-tuning run; returns the checkpoint folder."""
    cfg.validate()
    data_dir = check_data_dir(cfg.data_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoint"
    seed_everything(cfg.seed)

    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise UserError(f"--device {cfg.device!r} is not a torch device: use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible: pass --device cpu")
    teacher, base_config = load_generator(cfg.base, device=cfg.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    base_dir = Path(base_config["_dir"])
    tok_file = tokenizer_path(base_config)
    if not tok_file.exists():
        tok_file = data_dir / "tokenizer.json"
    out.mkdir(parents=True, exist_ok=True)
    run_tok_file = out / "tokenizer.json"   # a copy: every checkpoint of the run gets the base's tokenizer
    if not run_tok_file.exists():
        shutil.copyfile(tok_file, run_tok_file)
    tok_file = run_tok_file

    state = None
    has_ckpt = (ckpt_dir / "model.safetensors").exists() or (out / "checkpoint.old" / "model.safetensors").exists()
    if resume and has_ckpt:
        student, stored = load_generator(ckpt_dir, device=cfg.device)
        _check_resumable(cfg, stored, ckpt_dir)
        state = load_training_state(ckpt_dir)
        if state is None:
            raise UserError(f"'{ckpt_dir}' has no training state to resume from: start a new run with another --out")
        if student.cfg.to_dict() != teacher.cfg.to_dict():
            raise UserError(f"the checkpoint in '{ckpt_dir}' does not have the base's architecture: "
                            f"resume with the --base the run was started from")
    else:
        if has_ckpt:
            raise UserError(f"'{out}' already holds a fine-tuning checkpoint: pass --resume to continue it, "
                            f"or choose another --out")
        if resume:
            print(f"no checkpoint in '{ckpt_dir}' yet: starting from the base")
        student, _ = load_generator(cfg.base, device=cfg.device)
    student.eval()  # dropout off: the distribution trained is the one sampled

    embedder, scorer = load_judges(cfg)
    from divcfg.music.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(tok_file)
    train_prompts = TrainPrompts(data_dir)
    val_prompts = load_prompts(data_dir, "val", limit=cfg.eval_prompts, seed=cfg.seed)
    restrict = VocabRestriction(student.cfg.vocab_size, [student.cfg.pad_id, student.cfg.bos_id], device)

    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    baseline = RewardBaseline(cfg.baseline, cfg.ema_decay)
    rng = random.Random(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    step, elapsed, saved_step, last_eval, first_eval = 0, 0.0, None, {}, {}
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        baseline.load_state_dict(state["baseline"])
        set_python_rng_state(rng, state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["sample_rng"])
        step, elapsed, saved_step = state["step"], state["elapsed"], state["step"]
        last_eval, first_eval = state.get("last_eval", {}), state.get("first_eval", {})
        print(f"resuming from step {step} ({elapsed / 60:.1f} min done)")

    autocast = cfg.bf16 and (bf16_supported() if device.type == "cpu" else torch.cuda.is_bf16_supported())
    record = {"finetune": dataclasses.asdict(cfg), "base_checkpoint": str(base_dir), "gamma": cfg.gamma,
              "beta": cfg.beta, "bf16": autocast, "data_dir": str(data_dir),
              "base_provenance": base_config.get("provenance"), "parameters": student.num_parameters()}
    out.mkdir(parents=True, exist_ok=True)
    clear_finished(out)  # training (again): not a finished result until the marker is rewritten
    # a fresh run starts an empty log; a resume drops the rows logged after its checkpoint
    truncate_metrics(out / "metrics.jsonl", step, state.get("metrics_bytes") if state is not None else 0)
    metrics_f = open(out / "metrics.jsonl", "a")
    time_cap = TimeCap(cfg.max_minutes)

    def log(row: dict) -> None:
        metrics_f.write(json.dumps(row) + "\n")
        metrics_f.flush()

    def save(metrics_bytes: int | None = None, cut_short: dict | None = None) -> None:
        nonlocal saved_step
        metrics_f.flush()
        conf = {**record, "step": step, "elapsed_s": elapsed, "eval": last_eval, "first_eval": first_eval,
                "cut_short": cut_short,
                "provenance": provenance(cfg.seed, stage="finetune", base=str(base_dir), gamma=cfg.gamma,
                                         beta=cfg.beta)}
        ts = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "baseline": baseline.state_dict(),
              "step": step, "elapsed": elapsed, "python_rng": python_rng_state(rng), "torch_rng": torch.get_rng_state(),
              "sample_rng": gen.get_state(), "last_eval": last_eval, "first_eval": first_eval,
              "metrics_bytes": metrics_size(out / "metrics.jsonl") if metrics_bytes is None else metrics_bytes}
        save_generator(ckpt_dir, student, conf, tok_file, ts)
        saved_step = step

    def evaluate(tag: str) -> dict:
        t0 = time.time()
        res = quick_eval(student, teacher, val_prompts, cfg, embedder, scorer, restrict, autocast, tokenizer=tokenizer)
        res["eval/seconds"] = time.time() - t0
        log({"step": step, **res})
        return res

    print(f"finetune: γ={cfg.gamma} β={cfg.beta} {cfg.divergence}, {cfg.prompts_per_step}×{cfg.group_size} samples "
          f"of ≤{cfg.max_new_tokens} tokens per step, bf16={autocast}, base '{base_dir}'")
    if state is None:
        first_eval = evaluate("start")
        if cfg.eval_teacher:
            first_eval.update(quick_eval(teacher, teacher, val_prompts, cfg, embedder, scorer, restrict, autocast,
                                         gamma=cfg.gamma, prefix="eval_teacher", tokenizer=tokenizer))
            log({"step": step, **{k: v for k, v in first_eval.items() if k.startswith("eval_teacher")}})
        last_eval = first_eval
        tqdm.write("start: " + _fmt(first_eval))

    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"finetune β={cfg.beta:g}", dynamic_ncols=True,
               disable=not progress)
    G, P = cfg.group_size, cfg.prompts_per_step
    while step < cfg.max_steps and not time_cap.reached(elapsed):
        t_start = time.time()
        texts, cond_p, meters = train_prompts.draw(P, rng)
        cond = cond_p.to(device).repeat_interleave(G, dim=0)
        t0 = time.time()
        out_s = sample(student, cond, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       generator=gen, autocast=autocast)
        x = out_s.with_bos(student.cfg.bos_id)[:, :-1]          # inputs [BOS, y_1..y_{L-1}]
        targets = restrict.columns(out_s.tokens)                 # y_1..y_L as restricted columns
        mask = generated_mask(out_s.lengths, out_s.tokens.shape[1])
        t_sample = time.time() - t0

        t0 = time.time()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            teacher_lp = restrict.logprobs(guided_sequence_logprobs(teacher, x, cond, cfg.gamma, cfg.cfg_mode))
        t_teacher = time.time() - t0

        t0 = time.time()
        reward_stats: dict[str, float] = {}
        adv = None
        if embedder is not None:
            seqs = out_s.sequences()
            emb, embedded = embedder.embed_with_mask(seqs)
            valid = reward_valid(embedded, seqs, [m for m in meters for _ in range(G)], cfg.reward_gate, tokenizer)
            rewards = diversity_rewards(emb, G, valid)
            adv = baseline.advantages(rewards, emb, valid).to(device)
            reward_stats = {"reward/diversity/mean": float(rewards.mean()), "reward/diversity/std": float(rewards.std()),
                            "reward/empty_rate": float((~embedded).float().mean()),
                            "reward/unpaid_rate": float((~valid).float().mean()),
                            "advantage/abs_mean": float(adv.abs().mean())}
        t_reward = time.time() - t0

        t0 = time.time()
        n_gen = mask.sum()
        first = None
        for _ in range(cfg.updates_per_batch):  # passes after the first reuse the batch (slightly off-policy)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                student_lp = restrict.logprobs(student(x, cond))
            kl = masked_token_mean(token_divergence(student_lp, teacher_lp, cfg.divergence, cfg.jsd_beta), mask)
            loss = kl
            surrogate = torch.zeros((), device=device)
            if adv is not None and cfg.beta > 0:
                seq_lp = sequence_logprobs(student_lp, targets, mask)
                surrogate = reinforce_surrogate(seq_lp, adv)
                if cfg.pg_normalise == "token":
                    surrogate = surrogate / (n_gen.float() / mask.shape[0]).clamp(min=1.0)
                loss = kl - cfg.beta * surrogate
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
            check_finite(loss, gnorm, step, ckpt_dir, saved_step)
            opt.step()
            sched.step()
            if first is None:  # metrics of the on-policy pass
                first = (loss.detach(), kl.detach(), surrogate.detach(), student_lp.detach(), gnorm)
        loss, kl, surrogate, student_lp, gnorm = first
        t_update = time.time() - t0

        step += 1
        step_time = time.time() - t_start
        elapsed += step_time
        with torch.no_grad():
            ent = float(masked_token_mean(token_entropy(student_lp.detach()), mask))
            rev_kl = float(masked_token_mean(token_divergence(student_lp.detach(), teacher_lp, "reverse_kl"), mask))
        row = {"step": step, "loss": float(loss), f"loss/{cfg.divergence}": float(kl),
               "kl/teacher": rev_kl, "pg/surrogate": float(surrogate), **reward_stats, "entropy": ent,
               "completions/mean_length": float(out_s.lengths.float().mean()),
               "completions/eos_rate": float(out_s.finished.float().mean()),
               "tokens_per_s": float(n_gen) / step_time, "grad_norm": float(gnorm), "lr": sched.get_last_lr()[0],
               "time/sampling": t_sample, "time/teacher": t_teacher, "time/reward": t_reward,
               "time/update": t_update, "time/step": step_time, "elapsed_s": elapsed}
        log(row)
        bar.set_postfix(kl=f"{rev_kl:.3f}", r=f"{reward_stats.get('reward/diversity/mean', float('nan')):.3f}",
                        tok_s=f"{row['tokens_per_s']:.0f}")
        bar.update(1)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
            last_eval = evaluate("step")
            bar.write(f"step {step}: " + _fmt(last_eval))
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            save()
    bar.close()
    cut_short = time_cap.cut_short("finetune", step, cfg.max_steps)
    before_end_eval = metrics_size(out / "metrics.jsonl")  # a resume after the final save redoes the end row
    last_eval = evaluate("end")
    save(metrics_bytes=before_end_eval, cut_short=cut_short)
    metrics_f.close()
    summary = {"step": step, "elapsed_s": elapsed, "gamma": cfg.gamma, "beta": cfg.beta,
               "base_checkpoint": str(base_dir), "start": first_eval, "end": last_eval,
               "last_train": _last_train_means(out / "metrics.jsonl"), "cut_short": cut_short}
    write_json_atomic(out / "summary.json", summary)
    mark_finished(out, "finetune", step, cfg.max_steps, cut_short, seed=cfg.seed, elapsed_s=elapsed,
                  checkpoint=str(ckpt_dir))
    print(f"done: step {step}, {elapsed / 60:.1f} min; end: {_fmt(last_eval)} -> {ckpt_dir}")
    return ckpt_dir


def _fmt(res: dict) -> str:
    return ", ".join(f"{k.split('/', 1)[-1] if k.startswith('eval/') else k} {v:.3f}" for k, v in res.items()
                     if isinstance(v, float) and not k.endswith("seconds"))


def _last_train_means(path: Path, n: int = 20) -> dict[str, float]:
    """Means of the last ``n`` training rows' main figures (a less noisy 'final' value)."""
    rows = [json.loads(line) for line in open(path) if '"kl/teacher"' in line][-n:]
    keys = ("kl/teacher", "reward/diversity/mean", "entropy", "completions/mean_length", "completions/eos_rate",
            "tokens_per_s")
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys if rows and all(k in r for r in rows)}


def add_arguments(parser) -> None:
    add_config_arguments(parser, FinetuneConfig, PRESETS, skip=("preset",))
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> None:
    cfg = resolve_config(FinetuneConfig, args, PRESETS, default_preset="small")
    finetune(cfg, resume=args.resume, progress=not args.no_progress)
