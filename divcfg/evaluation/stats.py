"""Confidence intervals, per-system summaries and the Pareto-front analysis of `divcfg evaluate`."""

from __future__ import annotations

import math

import numpy as np

from divcfg.pareto import compare_fronts, hypervolume, pareto_front, reference_point


def bootstrap_ci(values, n_boot: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling the values; nan ignored)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 1:
        return float(v[0]), float(v[0])
    if len(v) == 0 or n_boot < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def summarise(system, rows: dict, judged: dict, cfg, figures: tuple[str, ...], extras: dict) -> dict:
    """One system's row of the table: quality and diversity with bootstrap CIs over prompts, the
    domain's independent figures (means over prompts), rates, speed; ``extras`` from the domain."""
    pp, pg = judged["per_prompt"], judged["per_generation"]
    q_lo, q_hi = bootstrap_ci(pp["quality"], cfg.bootstrap, cfg.confidence, cfg.seed)
    d_lo, d_hi = bootstrap_ci(pp["diversity"], cfg.bootstrap, cfg.confidence, cfg.seed)
    n = len(rows["sequences"])
    empty = pg.get("empty", [not v for v in pg["valid"]])
    return {"name": system.name, "label": system.label, "family": system.family,
            "gamma": system.gamma, "temperature": system.temperature, "lam": system.lam,
            "checkpoint": system.checkpoint, "checkpoint_b": system.checkpoint_b,
            "forward_passes_per_token": rows["forward_passes_per_token"],
            "quality": nanmean(pp["quality"]), "quality_ci_low": q_lo, "quality_ci_high": q_hi,
            "diversity": nanmean(pp["diversity"]), "diversity_ci_low": d_lo, "diversity_ci_high": d_hi,
            **{f: nanmean(pp[f]) for f in figures if f in pp},
            "empty_rate": sum(bool(e) for e in empty) / n, "valid_rate": sum(bool(v) for v in pg["valid"]) / n,
            "eos_rate": sum(rows["finished"]) / n, "mean_length": sum(rows["lengths"]) / n,
            **extras,
            "tokens_per_s": rows["tokens_per_s"], "sampling_s": rows["sampling_s"],
            "sampling_seed": rows["sampling_seed"], "same_as": None,
            "per_prompt": pp}


def front_analysis(rows: list[dict], fams: dict[str, list[str]], cfg) -> dict:
    """Pareto front and hypervolume of each family against one shared reference point, and the
    merge-vs-CFG comparison with a paired bootstrap over prompts of the hypervolume difference."""
    by_name = {r["name"]: r for r in rows}
    ref = reference_point([(r["quality"], r["diversity"]) for r in rows])
    out: dict = {"reference_point": {"quality": ref[0], "diversity": ref[1],
                                     "rule": "minimum over all systems minus 5% of each axis's range"},
                 "families": {}}
    for fam, names in fams.items():
        pts = [(by_name[n]["quality"], by_name[n]["diversity"]) for n in names]
        out["families"][fam] = {"systems": names, "front": [names[i] for i in pareto_front(pts)],
                                "hypervolume": hypervolume(pts, ref)}
    if "merge" in fams and "cfg" in fams:
        pts = {f: [(by_name[n]["quality"], by_name[n]["diversity"]) for n in fams[f]] for f in ("merge", "cfg")}
        comp = compare_fronts(pts["merge"], pts["cfg"], ref)
        K = len(rows[0]["per_prompt"]["quality"])
        rng = np.random.default_rng(cfg.seed + 1)
        diffs = []
        arrays = {n: (np.asarray(r["per_prompt"]["quality"]), np.asarray(r["per_prompt"]["diversity"]))
                  for n, r in by_name.items()}
        for _ in range(cfg.bootstrap):
            idx = rng.integers(0, K, K)
            hv = {f: hypervolume([(arrays[n][0][idx].mean(), arrays[n][1][idx].mean()) for n in fams[f]], ref)
                  for f in ("merge", "cfg")}
            diffs.append(hv["merge"] - hv["cfg"])
        alpha = (1 - cfg.confidence) / 2
        comp = {"coverage_merge_over_cfg": comp["coverage_a_over_b"],
                "coverage_cfg_over_merge": comp["coverage_b_over_a"],
                "merge_dominates_cfg": comp["a_dominates_b"], "cfg_dominates_merge": comp["b_dominates_a"],
                "hypervolume_merge": comp["hypervolume_a"], "hypervolume_cfg": comp["hypervolume_b"],
                "hypervolume_difference": comp["hypervolume_difference"]}
        if diffs:
            comp["hypervolume_difference_ci"] = [float(np.quantile(diffs, alpha)),
                                                 float(np.quantile(diffs, 1 - alpha))]
            comp["p_merge_hypervolume_greater"] = float(np.mean(np.asarray(diffs) > 0))
        out["merge_vs_cfg"] = comp
    return out
