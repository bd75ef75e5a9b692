"""The fine-tuning loop, as the paper's algorithm box::

    for each step:
        x_1..x_P ~ training prompts;  c = condition(x)                       (domain, generator)
        y_{p,1..G} ~ π_θ(·|x_p)                                     rollout   (student, no grad)
        log π_γ(·|x, y<t) = CFG(π(·|x, y<t), π(·|∅, y<t), γ)       teacher   (frozen base, no grad)
        r_i = mean_j (1 − cos(E(y_i), E(y_j))) [+ w·q_i];  A = r − b reward    (judges, divcfg.rewards)
        θ ← AdamW(∇[ KL(π_θ ‖ π_γ) − β·S(A) ])                      update

Set-up (loading, resume, judges) is in ``divcfg.finetune.setup``; the quick evaluation in
``divcfg.finetune.quick_eval``; the maths in ``divcfg.guidance`` / ``divcfg.objectives`` /
``divcfg.rewards``. Nothing here knows the domain (music, text) or the generator family.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from divcfg.errors import UserError
from divcfg.finetune.config import FinetuneConfig
from divcfg.finetune.quick_eval import (VocabRestriction, check_finite, generated_mask, quick_eval,
                                       teacher_logprobs)
from divcfg.finetune.distributed import DataParallel, gather_step_rewards, rank_seed
from divcfg.finetune.setup import autocast_supported, device_of, load_judges, load_models, make_optimizer, restore
from divcfg.objectives import (RewardBaseline, masked_token_mean, reinforce_surrogate, sequence_logprobs,
                               token_divergence, token_entropy)
from divcfg.provenance import provenance, seed_everything, write_json_atomic
from divcfg.rewards import advantages, step_rewards
from divcfg.sampling import sample
from divcfg.stages import TimeCap, clear_finished, mark_finished, metrics_size, python_rng_state, truncate_metrics


# --------------------------------------------------------------------------- the four parts of a step

def rollout(student, cond, cfg, gen: torch.Generator, autocast: bool, restrict: VocabRestriction):
    """G samples per prompt from the student (temperature τ, no CFG, no gradient)."""
    out = sample(student.model, cond, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                 generator=gen, autocast=autocast)
    x = out.with_bos(student.model.cfg.bos_id)[:, :-1]        # inputs [BOS, y_1..y_{L-1}]
    targets = restrict.columns(out.tokens)                    # y_1..y_L as restricted columns
    mask = generated_mask(out.lengths, out.tokens.shape[1])
    return out, x, targets, mask


def reward(judges, domain, student, out_s, texts: list[str], infos: list, cfg, baseline: RewardBaseline,
           device, dp: DataParallel | None = None, length_ref: float | None = None) -> tuple[torch.Tensor | None, dict]:
    """Advantages (P, G) of the pairwise diversity reward (+ w·quality), or None without a judge.
    Data parallel: the baseline and the statistics use every rank's rewards (``dp``)."""
    if judges.diversity is None:
        return None, {}
    G = cfg.group_size
    completions = student.decode(out_s.sequences())
    row_infos = [i for i in infos for _ in range(G)]

    def gate(embedded):
        return domain.reward_valid(cfg.reward_gate, completions, row_infos, embedded, generator=student)

    sr = step_rewards(judges.diversity, completions, G, gate, judges.quality, [t for t in texts for _ in range(G)],
                      cfg.quality_weight, cfg.reward_form, out_s.lengths, length_ref)
    if dp is not None and dp.world > 1:
        sr_all = gather_step_rewards(dp, sr)
        adv_all = advantages(baseline, sr_all, cfg.quality_weight)
        return adv_all[dp.rows(adv_all, cfg.prompts_per_step)].to(device), sr_all.stats(adv_all)
    adv = advantages(baseline, sr, cfg.quality_weight)
    return adv.to(device), sr.stats(adv)


def update(student, x, cond, targets, mask, teacher_lp, adv, cfg, opt, sched, autocast, restrict, guard,
           train_model=None, dp: DataParallel | None = None):
    """``updates_per_batch`` AdamW steps on ``D(π_θ‖π_γ) − β·S``; metrics of the first (on-policy) pass.

    Data parallel (``dp``, ``train_model`` = the DDP-wrapped module): the token mean and the
    surrogate's length normaliser use the counts of all ranks, so the all-reduced gradient is the
    union batch's (``divcfg.finetune.distributed``)."""
    train_model = student.model if train_model is None else train_model
    world = 1 if dp is None else dp.world
    n_gen = mask.sum()
    n_all = n_gen if world == 1 else dp.sum(n_gen).to(n_gen.device)
    share = 1.0 if world == 1 else n_gen.float() * world / n_all   # this rank's tokens / the mean per rank
    first = None
    for _ in range(cfg.updates_per_batch):  # passes after the first reuse the batch (slightly off-policy)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            student_lp = restrict.logprobs(train_model(x, cond))
        kl = masked_token_mean(token_divergence(student_lp, teacher_lp, cfg.divergence, cfg.jsd_beta), mask)
        loss = kl * share if world > 1 else kl
        surrogate = torch.zeros((), device=x.device)
        if adv is not None and cfg.beta > 0:
            seq_lp = sequence_logprobs(student_lp, targets, mask)
            surrogate = reinforce_surrogate(seq_lp, adv)
            if cfg.pg_normalise == "token":
                surrogate = surrogate / (n_all.float() / (mask.shape[0] * world)).clamp(min=1.0)
            loss = loss - cfg.beta * surrogate
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(student.model.parameters(), cfg.grad_clip)
        guard(loss, gnorm)
        opt.step()
        sched.step()
        if first is None:  # metrics of the on-policy pass
            first = (loss.detach(), kl.detach(), surrogate.detach(), student_lp.detach(), gnorm)
    return first


# --------------------------------------------------------------------------- the run

def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run (or, with ``resume``, continue) a fine-tuning run; returns the checkpoint folder."""
    from divcfg.domains.base import load_domain

    cfg.validate()
    domain = load_domain(cfg.prompts, cfg.data_dir, cfg.base)
    device = device_of(cfg)
    dp = DataParallel(device, find_unused=not cfg.lora_r)
    device = dp.local_device(device)
    if cfg.num_processes > 1 and dp.world != cfg.num_processes:
        raise UserError(f"--num-processes {cfg.num_processes} but {dp.world} process(es) were launched: use "
                        f"`divcfg finetune --num-processes N` alone, or a launcher with the same count")
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoint"
    seed_everything(cfg.seed)

    student, teacher, state = load_models(cfg, out, resume, device)
    domain.prepare_generator(student)
    if dp.is_main:
        student.prepare_run(out)
    dp.barrier()
    if not dp.is_main:
        student.prepare_run(out)
    train_model = dp.wrap(student.model)
    judges = load_judges(cfg, domain, student)
    pool = domain.train_pool()
    val_prompts = domain.prompts("val", student, limit=cfg.eval_prompts, seed=cfg.seed)
    restrict = VocabRestriction(student.model.cfg.vocab_size, [student.model.cfg.pad_id, student.model.cfg.bos_id],
                                device)
    opt, sched = make_optimizer(student.model, cfg)
    baseline = RewardBaseline(cfg.baseline, cfg.ema_decay)
    rng = random.Random(rank_seed(cfg.seed, dp.rank))   # each rank draws its own prompts
    gen = torch.Generator(device=device).manual_seed(rank_seed(cfg.seed, dp.rank))
    run = restore(state, opt, sched, baseline, rng, gen, dp.rank, dp.world)
    effective = cfg.prompts_per_step * cfg.group_size * dp.world

    autocast = autocast_supported(cfg.bf16, device)
    record = {"finetune": dataclasses.asdict(cfg), "base_checkpoint": str(teacher.path), "gamma": cfg.gamma,
              "beta": cfg.beta, "bf16": autocast, "domain": domain.name,
              "data_dir": str(getattr(domain, "data_dir", "")) or None, "prompts_file": cfg.prompts or None,
              "judges": judges.names, "base_provenance": teacher.record.get("provenance"),
              "parameters": student.num_parameters(),
              "trainable_parameters": sum(p.numel() for p in student.model.parameters() if p.requires_grad),
              **({"lora": student.lora_record} if cfg.lora_r else {}), "num_processes": dp.world,
              "effective_batch": {"prompts": cfg.prompts_per_step, "group_size": cfg.group_size,
                                  "processes": dp.world, "generations": effective}}
    metrics_f = None
    if dp.is_main:
        out.mkdir(parents=True, exist_ok=True)
        clear_finished(out)  # training (again): not a finished result until the marker is rewritten
        # a fresh run starts an empty log; a resume drops the rows logged after its checkpoint
        truncate_metrics(out / "metrics.jsonl", run.step, state.get("metrics_bytes") if state is not None else 0)
        metrics_f = open(out / "metrics.jsonl", "a")
    time_cap = TimeCap(cfg.max_minutes)

    def log(row: dict) -> None:
        if metrics_f is not None:
            metrics_f.write(json.dumps(row) + "\n")
            metrics_f.flush()

    def save(metrics_bytes: int | None = None, cut_short: dict | None = None) -> None:
        rank_rng = dp.objects({"python_rng": python_rng_state(rng), "torch_rng": torch.get_rng_state(),
                               "sample_rng": gen.get_state()})
        if not dp.is_main:
            dp.barrier()
            return
        metrics_f.flush()
        conf = {**record, "step": run.step, "elapsed_s": run.elapsed, "eval": run.last_eval,
                "first_eval": run.first_eval, "cut_short": cut_short,
                "provenance": provenance(cfg.seed, stage="finetune", base=str(teacher.path), gamma=cfg.gamma,
                                         beta=cfg.beta)}
        ts = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "baseline": baseline.state_dict(),
              "step": run.step, "elapsed": run.elapsed, "python_rng": python_rng_state(rng),
              "torch_rng": torch.get_rng_state(), "sample_rng": gen.get_state(), "last_eval": run.last_eval,
              "first_eval": run.first_eval, "length_ref": run.length_ref,
              "metrics_bytes": metrics_size(out / "metrics.jsonl") if metrics_bytes is None else metrics_bytes,
              "world_size": dp.world, "rank_rng": rank_rng}
        student.save(ckpt_dir, conf, ts)
        run.saved_step = run.step
        dp.barrier()

    def evaluate(model=student, gamma: float = 1.0, prefix: str = "eval", temperature: float = 1.0) -> dict:
        t0 = time.time()
        res = quick_eval(model, teacher, val_prompts, cfg, judges, domain, restrict, autocast, gamma, prefix,
                         temperature)
        if prefix == "eval":
            res["eval/seconds"] = time.time() - t0
        log({"step": run.step, **res})
        return res

    def guard(loss, gnorm) -> None:
        check_finite(loss, gnorm, run.step, ckpt_dir, run.saved_step)

    if dp.is_main:
        print(f"finetune: γ={cfg.gamma} β={cfg.beta} {cfg.divergence}, {cfg.prompts_per_step}×{cfg.group_size} samples "
              f"of ≤{cfg.max_new_tokens} tokens per step, bf16={autocast}, {domain.name} domain, base '{teacher.path}'"
              + (f", LoRA r={cfg.lora_r}" if cfg.lora_r else ""))
        print(f"effective batch: {cfg.prompts_per_step} prompts × {cfg.group_size} generations × {dp.world} "
              f"process(es) = {effective} generations per step")
    if state is None and dp.is_main:
        run.first_eval = evaluate()
        if cfg.eval_teacher:
            run.first_eval.update(evaluate(teacher, cfg.gamma, "eval_teacher", cfg.teacher_temperature))
        run.last_eval = run.first_eval
        tqdm.write("start: " + _fmt(run.first_eval))

    bar = tqdm(total=cfg.max_steps, initial=run.step, desc=f"finetune β={cfg.beta:g}", dynamic_ncols=True,
               disable=not progress or not dp.is_main)
    G, P = cfg.group_size, cfg.prompts_per_step
    while run.step < cfg.max_steps and not time_cap.reached(run.elapsed):
        t_start = time.time()
        texts, infos = pool.draw(P, rng)
        cond = domain.condition(student, texts).to(device).repeat_interleave(G, dim=0)
        t0 = time.time()
        out_s, x, targets, mask = rollout(student, cond, cfg, gen, autocast, restrict)
        t_sample, t0 = time.time() - t0, time.time()
        teacher_lp = teacher_logprobs(teacher, x, cond, cfg, autocast, restrict)
        t_teacher, t0 = time.time() - t0, time.time()
        if cfg.reward_form == "length" and run.length_ref is None:   # the starting policy's mean length
            run.length_ref = dp.mean_row({"L": float(out_s.lengths.float().mean())})["L"]
        adv, reward_stats = reward(judges, domain, student, out_s, texts, infos, cfg, baseline, device, dp,
                                   run.length_ref)
        t_reward, t0 = time.time() - t0, time.time()
        loss, kl, surrogate, student_lp, gnorm = update(student, x, cond, targets, mask, teacher_lp, adv, cfg, opt,
                                                        sched, autocast, restrict, guard, train_model, dp)
        t_update = time.time() - t0

        run.step += 1
        step_time = dp.max(time.time() - t_start)   # one clock for all ranks (the time cap must agree)
        run.elapsed += step_time
        with torch.no_grad():
            ent = float(masked_token_mean(token_entropy(student_lp), mask))
            rev_kl = float(masked_token_mean(token_divergence(student_lp, teacher_lp, "reverse_kl"), mask))
        row = {"step": run.step, "loss": float(loss), f"loss/{cfg.divergence}": float(kl),
               "kl/teacher": rev_kl, "pg/surrogate": float(surrogate), **reward_stats, "entropy": ent,
               "completions/mean_length": float(out_s.lengths.float().mean()),
               "completions/eos_rate": float(out_s.finished.float().mean()),
               "tokens_per_s": float(mask.sum()) / step_time, "grad_norm": float(gnorm), "lr": sched.get_last_lr()[0],
               "time/sampling": t_sample, "time/teacher": t_teacher, "time/reward": t_reward,
               "time/update": t_update, "time/step": step_time, "elapsed_s": run.elapsed}
        row = dp.mean_row(row)
        log(row)
        bar.set_postfix(kl=f"{rev_kl:.3f}", r=f"{reward_stats.get('reward/diversity/mean', float('nan')):.3f}",
                        tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
        bar.update(1)
        if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.max_steps and dp.is_main:
            run.last_eval = evaluate()
            bar.write(f"step {run.step}: " + _fmt(run.last_eval))
        if cfg.ckpt_every and run.step % cfg.ckpt_every == 0:
            save()
    bar.close()
    cut_short = time_cap.cut_short("finetune", run.step, cfg.max_steps)
    before_end_eval = metrics_size(out / "metrics.jsonl")  # a resume after the final save redoes the end row
    if dp.is_main:
        run.last_eval = evaluate()
    save(metrics_bytes=before_end_eval, cut_short=cut_short)
    if not dp.is_main:
        dp.close()
        return ckpt_dir
    metrics_f.close()
    if cfg.merge_lora:
        from divcfg.finetune.lora import merge_lora_checkpoint
        print(f"merged LoRA student (plain full checkpoint) -> {merge_lora_checkpoint(ckpt_dir, out / 'merged')}")
    summary = {"step": run.step, "elapsed_s": run.elapsed, "gamma": cfg.gamma, "beta": cfg.beta,
               "base_checkpoint": str(teacher.path), "start": run.first_eval, "end": run.last_eval,
               "last_train": _last_train_means(out / "metrics.jsonl"), "cut_short": cut_short}
    write_json_atomic(out / "summary.json", summary)
    mark_finished(out, "finetune", run.step, cfg.max_steps, cut_short, seed=cfg.seed, elapsed_s=run.elapsed,
                  checkpoint=str(ckpt_dir))
    print(f"done: step {run.step}, {run.elapsed / 60:.1f} min; end: {_fmt(run.last_eval)} -> {ckpt_dir}")
    dp.close()
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
