"""The pieces of a step that the loop and the quick evaluation share, and the quick evaluation."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from divcfg.errors import UserError
from divcfg.guidance import guided_sequence_logprobs
from divcfg.objectives import distillation_loss, diversity_rewards
from divcfg.sampling import sample


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


def check_finite(loss: torch.Tensor, grad_norm: torch.Tensor, step: int, ckpt_dir: Path, saved_step: int | None):
    """The NaN/inf guard: a one-line error naming the last good checkpoint."""
    if torch.isfinite(loss) and torch.isfinite(grad_norm):
        return
    kept = (f"the last good checkpoint (step {saved_step}) is kept in '{ckpt_dir}'" if saved_step is not None
            else "no checkpoint was written yet")
    raise UserError(f"non-finite loss/gradient ({float(loss):.4g}/{float(grad_norm):.4g}) at step {step}: {kept}; "
                    f"lower --lr or --beta and rerun (with --resume to continue)")


@torch.no_grad()
def teacher_logprobs(teacher, x, cond, cfg, autocast: bool, restrict: VocabRestriction) -> torch.Tensor:
    """The CFG teacher's log-probs over the sampled sequences (teacher forcing), at its temperature τ_T."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        return restrict.logprobs(guided_sequence_logprobs(teacher.model, x, cond, cfg.gamma, cfg.cfg_mode,
                                                          cfg.teacher_temperature))


@torch.no_grad()
def quick_eval(student, teacher, prompts, cfg, judges, domain, restrict: VocabRestriction, autocast: bool,
               gamma: float = 1.0, prefix: str = "eval", temperature: float = 1.0) -> dict[str, float]:
    """Sample ``eval_samples`` generations per validation prompt from the plug-in ``student`` at
    guidance ``gamma`` (1 = no CFG) and ``temperature`` with a fixed seed; report the diversity (if a diversity judge and
    G ≥ 2), the domain's figures (music: in-key rate; text: distinct-2), the quality (if a quality
    judge: music alignment, text prompt similarity), the empty rate, lengths and — for γ=1 — the
    reverse KL of the samples' distribution to the teacher."""
    model = student.model
    G = cfg.eval_samples
    device = next(model.parameters()).device
    cond = prompts.cond.to(device).repeat_interleave(G, dim=0)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 12345)
    n_new = cfg.eval_max_new_tokens or cfg.max_new_tokens
    out = sample(model, cond, max_new_tokens=n_new, gamma=gamma, temperature=temperature, cfg_mode=cfg.cfg_mode,
                 generator=gen, autocast=autocast)
    seqs = out.sequences()
    completions = student.decode(seqs)
    res = {f"{prefix}/mean_length": float(out.lengths.float().mean()),
           f"{prefix}/eos_rate": float(out.finished.float().mean())}
    if gamma == 1.0:
        x = out.with_bos(model.cfg.bos_id)[:, :-1]
        mask = generated_mask(out.lengths, out.tokens.shape[1])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            s = restrict.logprobs(model(x, cond))
        t = teacher_logprobs(teacher, x, cond, cfg, autocast, restrict)
        res[f"{prefix}/kl_teacher"] = float(distillation_loss(s, t, mask, "reverse_kl"))
    if judges.diversity is not None and G >= 2:
        emb, valid = judges.diversity.embed_with_mask(completions)
        r = diversity_rewards(emb.float().cpu(), G, valid.cpu())
        res[f"{prefix}/diversity"] = float(r.mean())
        res[f"{prefix}/empty_rate"] = float((~valid).float().mean())
    for k, v in domain.quick_figures(completions, prompts, G, generator=student).items():
        res[f"{prefix}/{k}"] = v
    if judges.quality is not None:
        texts = [t for t in prompts.texts for _ in range(G)]
        res[f"{prefix}/{domain.quality_name}"] = float(torch.as_tensor(judges.quality.score(texts, completions))
                                                       .float().mean())
    return res
