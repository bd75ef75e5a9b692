"""The evaluation run: load each system's generator, sample all rows with common random numbers,
judge them through the domain, summarise, analyse the fronts, write the outputs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from divcfg.config import add_config_arguments, resolve_config
from divcfg.errors import UserError
from divcfg.evaluation.config import PRESETS, EvalConfig, System, build_systems, families, training_logs
from divcfg.evaluation.stats import front_analysis, summarise
from divcfg.provenance import provenance, seed_everything, write_json_atomic

HEAD_COLUMNS = ("name", "label", "family", "gamma", "temperature", "lam", "forward_passes_per_token",
                "quality", "quality_ci_low", "quality_ci_high", "diversity", "diversity_ci_low",
                "diversity_ci_high")
RATE_COLUMNS = ("empty_rate", "valid_rate", "eos_rate", "mean_length")
TAIL_COLUMNS = ("tokens_per_s", "sampling_s", "same_as")


def csv_columns(domain) -> tuple[str, ...]:
    return (*HEAD_COLUMNS, *domain.eval_figures, *RATE_COLUMNS, *domain.eval_extra_columns, *TAIL_COLUMNS)


def _models(systems: list[System], cfg: EvalConfig) -> Iterator[tuple[System, object]]:
    """Yield each system with its generator plug-in; merges are built in memory, each checkpoint
    loaded once."""
    from divcfg.merging import iter_merged_generators
    from divcfg.models.base import load_generator_any

    null = cfg.null_prompt or None
    # --max-new-tokens N: Hugging Face systems are loaded for BOS + N + EOS, as fine-tuning does, so a
    # MusicGen system ends with its own end pattern at equal length instead of being truncated
    max_len = cfg.max_new_tokens + 1 if cfg.max_new_tokens else None
    loaded: dict[str, object] = {}
    merges = [s for s in systems if s.lam is not None]
    for s in systems:
        if s.lam is None:
            if s.checkpoint not in loaded:
                loaded = {s.checkpoint: load_generator_any(s.checkpoint, cfg.device, null_prompt=null,
                                                                 max_len=max_len)}
            yield s, loaded[s.checkpoint]
    loaded.clear()
    by_pair: dict[tuple, list[System]] = {}
    for s in merges:
        by_pair.setdefault((s.checkpoint, s.checkpoint_b), []).append(s)
    for (a, b), group in by_pair.items():
        for s, (_, gen) in zip(group, iter_merged_generators(a, b, [s.lam for s in group], cfg.device, null,
                                                                          max_len)):
            yield s, gen


def sample_system(model, cond: torch.Tensor, system: System, cfg: EvalConfig, autocast: bool,
                  bar=None) -> dict:
    """Sample all rows of one system in fixed batches; token ids, EOS flags and timing."""
    from divcfg.sampling import sample

    device = next(model.parameters()).device
    cond = cond.to(device)
    max_new = cfg.max_new_tokens or model.cfg.max_len - 1
    # untimed warm-up (first-call allocations and kernel selection), then the measured run
    sample(model, cond[:cfg.batch_size], max_new_tokens=min(4, max_new), gamma=system.gamma,
           temperature=system.temperature, generator=torch.Generator(device=device).manual_seed(cfg.seed),
           autocast=autocast)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    seqs, finished, lengths = [], [], []
    elapsed, passes = 0.0, 1
    for start in range(0, cond.shape[0], cfg.batch_size):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = sample(model, cond[start:start + cfg.batch_size], max_new_tokens=max_new, gamma=system.gamma,
                     temperature=system.temperature, generator=gen, autocast=autocast)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed += time.perf_counter() - t0
        seqs += out.sequences()
        finished += out.finished.tolist()
        lengths += out.lengths.tolist()
        passes = out.forward_passes_per_token
        if bar is not None:
            bar.update(1)
    return {"sequences": seqs, "finished": finished, "lengths": lengths, "sampling_s": elapsed,
            "tokens_per_s": sum(lengths) / max(elapsed, 1e-9), "forward_passes_per_token": passes,
            "sampling_seed": cfg.seed}


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def write_outputs(out: Path, results: dict, samples: list[dict], columns: tuple[str, ...]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    with open(out / "results.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        metric_names = sorted(results["systems"][0].get("music", {})) if results["systems"] else []
        w.writerow(list(columns) + metric_names)
        for r in results["systems"]:
            w.writerow([_csv_value(r.get(c)) for c in columns] + [_csv_value(r["music"][m]) for m in metric_names])
    (out / "results.csv.tmp").replace(out / "results.csv")
    with open(out / "samples.jsonl.tmp", "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    (out / "samples.jsonl.tmp").replace(out / "samples.jsonl")


def evaluate(cfg: EvalConfig, base_memo: dict | None = None) -> dict:
    """Run the evaluation described by ``cfg``; writes ``cfg.out`` and returns ``results.json``'s dict.
    ``cfg.threads`` applies while it runs; the caller's torch thread count is restored afterwards.

    ``base_memo``: a dict shared by runs that differ only in their students (one per seed pair). The
    first run stores the base's row and samples in it and later runs reuse them instead of sampling
    the base again: every system samples with its own ``Generator().manual_seed(cfg.seed)``, so a
    second pass would reproduce them exactly."""
    threads_before = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return _evaluate(cfg, base_memo)
    finally:
        torch.set_num_threads(threads_before)


def _autocast_ok(cfg: EvalConfig, device: torch.device) -> bool:
    from divcfg.sampling import bf16_supported
    return bool(cfg.bf16) and bf16_supported(device.type)


def _evaluate(cfg: EvalConfig, base_memo: dict | None = None) -> dict:
    from divcfg.domains.base import load_domain
    from divcfg.models.base import check_device

    if cfg.generations < 2:
        raise UserError(f"--generations must be at least 2 (diversity is measured between generations of "
                        f"one prompt), got {cfg.generations}")
    if cfg.num_prompts < 1 or cfg.batch_size < 1:
        raise UserError("--num-prompts and --batch-size must be at least 1")
    if not 0 < cfg.confidence < 1:
        raise UserError(f"--confidence must lie in (0, 1), got {cfg.confidence}")
    device = check_device(cfg.device)
    t_start = time.time()
    seed_everything(cfg.seed)
    domain = load_domain(cfg.prompts, cfg.data_dir, cfg.base)
    systems = build_systems(cfg)
    G = cfg.generations
    autocast = _autocast_ok(cfg, device)
    columns = csv_columns(domain)
    judges = prompts = cond = reference = None
    done: dict[tuple, str] = {}
    sampled: dict[str, dict] = {}
    rows_out: list[dict] = []
    t_sampling = t_judging = 0.0
    bar = None
    for system, gen in _models(systems, cfg):
        if judges is None:   # the first system is the base model: it fixes the prompts' conditions
            judges = domain.judges(embedder=cfg.embedder, scorer=cfg.scorer, diversity_judge=cfg.diversity_judge,
                                   quality_judge=cfg.quality_judge, device=cfg.judge_device or cfg.device,
                                   generator=gen, required=True)
            prompts = domain.prompts(cfg.split, gen, limit=cfg.num_prompts, seed=cfg.seed)
            if len(prompts) == 0:
                raise UserError(f"the '{cfg.split}' split is empty: rebuild the data set or add prompts")
            cond = prompts.cond.repeat_interleave(G, dim=0)
            n_batches = -(-cond.shape[0] // cfg.batch_size)
            bar = tqdm(total=len(systems) * n_batches, desc="evaluate", unit="batch", dynamic_ncols=True)
        bar.set_postfix_str(system.label, refresh=False)
        sig = system.signature()
        if sig in done:
            twin = next(r for r in rows_out if r["name"] == done[sig])
            rows_out.append({**twin, **{k: getattr(system, k) for k in ("name", "label", "family", "lam")},
                             "checkpoint": system.checkpoint, "checkpoint_b": system.checkpoint_b,
                             "same_as": twin["name"]})
            sampled[system.name] = sampled[twin["name"]]
            bar.update(n_batches)
            continue
        if base_memo and system is systems[0]:   # the base, as an earlier seed pass sampled and judged it
            rows_out.append({**base_memo["row"], "reused_from_earlier_pass": True})
            sampled[system.name], reference, done[sig] = base_memo["sampled"], base_memo["reference"], system.name
            bar.update(n_batches)
            continue
        t0 = time.time()
        rows = sample_system(gen.model, cond, system, cfg, autocast, bar)
        t1 = time.time()
        completions = gen.decode(rows["sequences"])
        judged = domain.judge(prompts, completions, rows, G, judges, generator=gen)
        if reference is None:
            reference = domain.reference(prompts, judges, split=cfg.split, max_pieces=cfg.reference_pieces,
                                         seed=cfg.seed)
        t_sampling, t_judging = t_sampling + t1 - t0, t_judging + time.time() - t1
        rows_out.append(summarise(system, rows, judged, cfg, domain.eval_figures,
                                  domain.summary_extras(judged, reference)))
        sampled[system.name] = {**rows, **judged["per_generation"]}
        done[sig] = system.name
        if base_memo is not None and system is systems[0]:
            base_memo.update(row=rows_out[-1], sampled=sampled[system.name], reference=reference)
    bar.close()

    fams = families(systems)
    fronts = front_analysis(rows_out, fams, cfg)
    for r in rows_out:
        r["on_front"] = [f for f, info in fronts["families"].items() if r["name"] in info["front"]]
    samples = []
    for name, rows in sampled.items():
        for r in range(len(rows["sequences"])):
            s = {"system": name, "prompt_index": r // G, "prompt_id": prompts.ids[r // G], "generation": r % G,
                 "tokens": rows["sequences"][r], "finished": bool(rows["finished"][r]),
                 "n_notes": rows["n_notes"][r], "quality": rows["quality"][r]}
            if "completion" in rows:
                s["completion"] = rows["completion"][r]
            samples.append(s)
    results = {
        "config": dataclasses.asdict(cfg),
        "domain": domain.name,
        "judges": judges.names,
        "provenance": provenance(cfg.seed, stage="evaluate"),
        "seeds": {"prompts": cfg.seed, "sampling": cfg.seed, "bootstrap": cfg.seed,
                  "note": "every system samples with torch.Generator().manual_seed(sampling) in the same batches"},
        "num_prompts": len(prompts), "generations": G, "batch_size": cfg.batch_size, "bf16": autocast,
        "device": str(device),
        "prompts": [{"index": i, "id": prompts.ids[i], "text": prompts.texts[i], "meta": prompts.meta[i]}
                    for i in range(len(prompts))],
        "systems": rows_out,
        "families": fronts["families"],
        "reference_point": fronts["reference_point"],
        "merge_vs_cfg": fronts.get("merge_vs_cfg"),
        "corpus": reference,
        "training_logs": training_logs(cfg),
        "timings": {"sampling_s": t_sampling, "judging_s": t_judging, "total_s": time.time() - t_start},
    }
    write_outputs(Path(cfg.out), results, samples, columns)
    return results


def format_table(results: dict) -> str:
    """A plain-text summary of the results (one line per system)."""
    lines = [f"{'system':<18} {'quality':>16} {'diversity':>16} {'empty':>6} {'EOS':>5} {'pass/tok':>8} {'tok/s':>7}"]
    for r in results["systems"]:
        lines.append(f"{r['label']:<18} {r['quality']:6.3f} [{r['quality_ci_low']:5.2f},{r['quality_ci_high']:5.2f}]"
                     f" {r['diversity']:6.3f} [{r['diversity_ci_low']:5.2f},{r['diversity_ci_high']:5.2f}]"
                     f" {r['empty_rate']:6.1%} {r['eos_rate']:5.0%} {r['forward_passes_per_token']:8d}"
                     f" {r['tokens_per_s']:7.0f}")
    for fam, info in results["families"].items():
        lines.append(f"{fam} front: {', '.join(info['front'])}; hypervolume {info['hypervolume']:.4g}")
    mv = results.get("merge_vs_cfg")
    if mv:
        ci = mv.get("hypervolume_difference_ci", [math.nan, math.nan])
        lines.append(f"merge vs CFG: hypervolume {mv['hypervolume_merge']:.4g} vs {mv['hypervolume_cfg']:.4g} "
                     f"(difference CI [{ci[0]:.3g}, {ci[1]:.3g}]); merge front covers "
                     f"{mv['coverage_merge_over_cfg']:.0%} of the CFG front, dominates: {mv['merge_dominates_cfg']}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    add_config_arguments(parser, EvalConfig, PRESETS, skip=("preset",))


def run(args) -> None:
    cfg = resolve_config(EvalConfig, args, PRESETS, default_preset="small")
    from divcfg.evaluation.claims import format_claims
    from divcfg.evaluation.seeds import evaluate_seeds
    results = evaluate_seeds(cfg)  # one run, or one per student seed (--quality a,b --diversity x,y)
    print(format_table(results))
    print(format_claims(results["claims"]))
    print(f"wrote {Path(cfg.out) / 'results.json'}, results.csv, samples.jsonl; render the page with "
          f"`divcfg report {cfg.out}`")
