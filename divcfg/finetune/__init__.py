"""`divcfg finetune`: on-policy CFG distillation with a diversity reward (DESIGN.md §1).

Any generator plug-in (``--base``: a divcfg checkpoint, or ``hf:PATH`` for a local transformers
causal LM) on any domain (the music testbed of ``--data-dir``, or ``--prompts FILE`` for text).
Modules: ``config`` (FinetuneConfig, presets), ``setup`` (device, teacher/student, resume, judges,
optimizer), ``loop`` (the algorithm box: rollout → teacher → reward → update), ``quick_eval``,
``lora`` (``--lora-r``: adapters through peft, the teacher = the same module with them disabled),
``distributed`` (data parallel through Accelerate: ``--num-processes N`` or ``accelerate launch -m
divcfg finetune``; effective batch = prompts × G × processes). See ``docs/scale_out.md``.

The student ``π_θ`` starts from the base checkpoint; a separate frozen copy of the base is the
CFG teacher ``π_γ`` (conditional and null passes mixed by ``divcfg.guidance``). One step:

1. ``P = prompts_per_step`` training prompts (music: a random caption variant each, embedded by
   MiniLM; text: prompt lines, tokenised as the model's own prompt);
2. the student samples ``G = group_size`` generations per prompt with the KV cache, at temperature
   1 and without CFG (on-policy; no gradient through sampling), at most ``max_new_tokens`` tokens;
3. the teacher's guided log-probs over the sampled sequences (teacher forcing, ``no_grad``);
4. the student's log-probs with gradient (eval mode: dropout off, so the distribution trained is
   the one sampled);
5. ``loss = D(π_θ ‖ π_γ) − β·S`` with ``D`` the token-level divergence averaged over generated
   tokens (``divcfg.objectives``) and ``S`` the REINFORCE surrogate of the pairwise diversity
   reward ``1 − cos(E(y_i), E(y_j))`` of the frozen diversity judge ``E`` (music: ``--embedder``;
   text: MiniLM; or ``--diversity-judge module:function``), plus ``w·quality`` with
   ``--quality-weight w`` (``divcfg.rewards``);
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

Outputs in ``--out``: ``checkpoint/`` (built-in: a generator checkpoint; ``hf:``: a ``save_pretrained``
folder + ``divcfg.json``, loadable by plain transformers; the record holds the
fine-tuning config, base checkpoint, γ, β, seed, commit, last evaluation; ``training_state.pt``
the optimizer, scheduler, RNG, baseline and step for ``--resume``), ``metrics.jsonl`` (TRL-like
names), ``summary.json``, and last ``DONE.json`` (the completion marker, ``divcfg.stages``;
``cut_short`` there, in ``summary.json`` and in the checkpoint's record when the ``max_minutes``
safety cap stopped the run before ``max_steps``). A non-finite loss or gradient stops the run with a
one-line error and leaves the last good checkpoint in place.
"""

from divcfg.finetune.config import KEY_FIELDS, PG_NORMALISATIONS, PRESETS, REWARD_GATES, FinetuneConfig
from divcfg.finetune.loop import finetune
from divcfg.finetune.quick_eval import VocabRestriction, check_finite, generated_mask, quick_eval

__all__ = ["KEY_FIELDS", "PG_NORMALISATIONS", "PRESETS", "REWARD_GATES", "FinetuneConfig", "finetune",
           "VocabRestriction", "check_finite", "generated_mask", "quick_eval", "add_arguments", "run"]


def add_arguments(parser) -> None:
    from divcfg.config import add_config_arguments
    add_config_arguments(parser, FinetuneConfig, PRESETS, skip=("preset",))
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> None:
    from divcfg.config import resolve_config
    cfg = resolve_config(FinetuneConfig, args, PRESETS, default_preset="small")
    from divcfg.finetune.distributed import launch, world_size_from_env
    if cfg.num_processes > 1 and world_size_from_env() == 1:
        cfg.validate()
        launch(cfg, resume=args.resume, progress=not args.no_progress)   # N processes (torch.distributed.run)
        return
    finetune(cfg, resume=args.resume, progress=not args.no_progress)
