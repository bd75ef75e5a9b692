"""Seeds as an axis of `divcfg evaluate`: several student checkpoints per role, one per training seed.

``--quality a,b,c --diversity x,y,z`` pairs the students by position (seed i = ``(a_i, x_i)``); the
merge sweep is formed within each pair. Seed i is evaluated as a run of its own in ``OUT/seed_<label>``
(the CFG and temperature sweeps only in the first: they do not depend on the student seed; every run
samples with the same seed, so the base rows are identical). ``OUT/results.json`` then holds

- the seed-independent rows (base, CFG γ-sweep, temperature sweep), ``seed: null``;
- one *aggregate* row per student or merge system (``aggregate: true``, its usual name): the mean over
  seeds of the per-seed means, ``q̄ = (1/S) Σ_s (1/K) Σ_k q_sk``, and a 95 % interval from the
  **two-way bootstrap** below; ``seeds_agree``: whether every seed puts the system on the same side of
  the base on both axes;
- one *per-seed* row per student or merge system and seed (``<name>_s<label>``, ``seed: label``,
  ``aggregate_of: name``).

Two-way bootstrap (prompts and seeds are crossed: every seed is judged on the same K prompts). A
replicate draws S seed indices s* and K prompt indices k* with replacement, once, and applies the same
draw to every system (paired comparisons): a student system's value is ``(1/S) Σ_{s∈s*} (1/K)
Σ_{k∈k*} x_sk``; a seed-independent system (base, CFG) is resampled by prompt only, ``(1/K) Σ_{k∈k*}
x_k``, with the same k*. Any statistic of the system means (a difference, a ratio, the merge-vs-CFG
hypervolume difference against the fixed reference point) gets its percentile interval from the same
replicates. With one seed this is the prompt bootstrap.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from divcfg.errors import UserError

STUDENT_FAMILIES = ("finetuned", "merge")


# ----------------------------------------------------------------------------- specs and labels

def split_specs(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``""`` -> ``[]``."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def seed_pairs(cfg) -> list[dict[str, str]]:
    """Per seed, the student specs ``{"quality", "diversity", "merge_a", "merge_b"}`` (paired by position;
    a list of one is used for every seed)."""
    lists = {k: split_specs(getattr(cfg, k)) for k in ("quality", "diversity", "merge_a", "merge_b")}
    n = max([len(v) for v in lists.values()] + [1])
    for k, v in lists.items():
        if len(v) not in (0, 1, n):
            raise UserError(f"--{k.replace('_', '-')} names {len(v)} checkpoints where another role names {n}: "
                            f"give one per seed, in the same order (or one for all seeds)")
    return [{k: (v[i] if len(v) == n else (v[0] if v else "")) for k, v in lists.items()} for i in range(n)]


def _training_seed(spec: str) -> int | None:
    from divcfg.models.base import is_hf_spec, spec_path
    path = spec_path(spec)
    if is_hf_spec(spec):
        files = (path / "divcfg.json",)
    else:
        from divcfg.checkpoint import resolve_checkpoint_dir
        try:
            path = resolve_checkpoint_dir(path)
        except Exception:  # noqa: BLE001 - unreadable here: evaluate reports it in its own words
            pass
        files = (path / "config.json",)
    for f in files:
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        seed = (rec.get("finetune") or {}).get("seed", rec.get("seed"))
        if isinstance(seed, int):
            return seed
    return None


def seed_labels(pairs: list[dict[str, str]]) -> list[str]:
    """Each pair's training seed (from its students' records) when they are known and distinct, else
    its position 0, 1, …"""
    seeds = []
    for p in pairs:
        found = {s for s in (_training_seed(p[k]) for k in ("quality", "diversity") if p[k]) if s is not None}
        seeds.append(found.pop() if len(found) == 1 else None)
    if None not in seeds and len(set(seeds)) == len(seeds):
        return [str(s) for s in seeds]
    return [str(i) for i in range(len(pairs))]


# ----------------------------------------------------------------------------- the bootstrap

def seed_arrays(results: dict) -> dict[str, dict]:
    """Aggregate system name -> ``{"quality": [S, K], "diversity": [S, K], "seeded": bool}``: the per-seed
    per-prompt values of a student system (from its per-seed rows), or ``[1, K]`` for a seed-independent
    system and for every system of a single-seed run."""
    labels = results.get("student_seeds") or []
    per_seed: dict[str, dict[str, dict]] = {}
    out = {}
    for r in results["systems"]:
        if r.get("aggregate_of"):
            per_seed.setdefault(r["aggregate_of"], {})[str(r["seed"])] = r
    for r in results["systems"]:
        if r.get("aggregate_of"):
            continue
        rows = [per_seed[r["name"]][s] for s in labels] if r["name"] in per_seed else [r]
        out[r["name"]] = {m: np.asarray([x["per_prompt"][m] for x in rows], np.float64)
                          for m in ("quality", "diversity")}
        out[r["name"]]["seeded"] = r["name"] in per_seed
    return out


class TwoWayBootstrap:
    """The replicates of every system's (quality, diversity) mean under one shared seed × prompt draw."""

    def __init__(self, results: dict, n_boot: int, confidence: float, seed: int):
        self.arrays = seed_arrays(results)
        shapes = {a["quality"].shape for a in self.arrays.values()}
        K = {s[1] for s in shapes}
        if len(K) != 1:
            raise UserError("systems were judged on different numbers of prompts: rerun `divcfg evaluate`")
        self.K = K.pop()
        self.S = max(s[0] for s in shapes)
        self.n_boot, self.confidence = max(1, int(n_boot)), confidence
        rng = np.random.default_rng(seed)
        self.seed_idx = rng.integers(0, self.S, (self.n_boot, self.S))
        self.prompt_idx = rng.integers(0, self.K, (self.n_boot, self.K))
        self.point = {n: {m: float(np.nanmean(a[m])) for m in ("quality", "diversity")}
                      for n, a in self.arrays.items()}
        self.reps = {n: {m: self._resample(a[m]) for m in ("quality", "diversity")} for n, a in self.arrays.items()}

    def _resample(self, x: np.ndarray) -> np.ndarray:
        by_seed = np.nanmean(x[:, self.prompt_idx], axis=2)      # [S_x, B]: each seed's prompt-resampled mean
        if x.shape[0] == 1:
            return by_seed[0]
        return np.nanmean(by_seed.T[np.arange(self.n_boot)[:, None], self.seed_idx], axis=1)

    def seed_point(self, name: str, s: int) -> dict[str, float]:
        """System ``name``'s point for seed index ``s`` (its only point if seed-independent)."""
        a = self.arrays[name]
        i = s if a["seeded"] else 0
        return {m: float(np.nanmean(a[m][i])) for m in ("quality", "diversity")}

    def interval(self, stat) -> tuple[float, float, float]:
        """``stat(means)`` -> (point, low, high); ``means[name]["quality" | "diversity"]`` are floats for
        the point and [B] arrays for the replicates (numpy arithmetic works on both)."""
        point = float(stat(self.point))
        reps = np.asarray(stat(self.reps), np.float64)
        return point, *self._quantiles(reps)

    def interval_loop(self, stat) -> tuple[float, float, float]:
        """As ``interval`` for a statistic of floats only (e.g. a hypervolume), one replicate at a time."""
        point = float(stat(self.point))
        reps = [stat({n: {m: float(v[m][b]) for m in v} for n, v in self.reps.items()}) for b in range(self.n_boot)]
        return point, *self._quantiles(np.asarray(reps, np.float64))

    def _quantiles(self, reps: np.ndarray) -> tuple[float, float]:
        reps = reps[np.isfinite(reps)]
        if len(reps) == 0:
            return math.nan, math.nan
        alpha = (1 - self.confidence) / 2
        return float(np.quantile(reps, alpha)), float(np.quantile(reps, 1 - alpha))


def hypervolume_difference(means: dict, fams: dict[str, list[str]], ref: tuple[float, float]) -> float:
    from divcfg.pareto import hypervolume
    hv = {f: hypervolume([(means[n]["quality"], means[n]["diversity"]) for n in fams[f]], ref) for f in ("merge", "cfg")}
    return hv["merge"] - hv["cfg"]


# ----------------------------------------------------------------------------- merging the seeds' runs

_MEAN_SKIP = {"gamma", "temperature", "lam", "forward_passes_per_token", "sampling_seed"}


def _mean_row(rows: list[dict]) -> dict:
    """Numeric fields averaged over seeds (nan ignored); the rest from the first seed."""
    out = copy.deepcopy(rows[0])
    for k, v in rows[0].items():
        if k in _MEAN_SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        vals = [r.get(k) for r in rows if isinstance(r.get(k), (int, float))]
        out[k] = float(np.nanmean(vals)) if vals and np.isfinite(vals).any() else math.nan
    if isinstance(rows[0].get("music"), dict):
        out["music"] = {m: float(np.nanmean([r["music"].get(m, math.nan) for r in rows])) for m in rows[0]["music"]}
    with warnings.catch_warnings():  # a figure undefined for a prompt in every seed stays nan
        warnings.simplefilter("ignore", RuntimeWarning)
        out["per_prompt"] = {m: np.nanmean(np.asarray([r["per_prompt"][m] for r in rows], np.float64), axis=0).tolist()
                             for m in rows[0]["per_prompt"]}
    return out


def merge_seed_runs(runs: list[dict], labels: list[str], cfg) -> dict:
    """One results dict from the per-seed runs (see the module docstring)."""
    from divcfg.evaluation.stats import front_analysis
    first = runs[0]
    fixed = [dict(r, seed=None) for r in first["systems"] if r["family"] not in STUDENT_FAMILIES]
    names = [r["name"] for r in first["systems"] if r["family"] in STUDENT_FAMILIES]
    per_seed, aggregates = [], []
    for name in names:
        rows = []
        for run, label in zip(runs, labels):
            r = next((x for x in run["systems"] if x["name"] == name), None)
            if r is None:
                raise UserError(f"seed {label} has no system '{name}': give every seed the same roles")
            rows.append(r)
            per_seed.append({**r, "name": f"{name}_s{label}", "label": f"{r['label']} (seed {label})",
                             "seed": label, "aggregate_of": name,
                             "same_as": f"{r['same_as']}_s{label}" if r.get("same_as") else None})
        agg = _mean_row(rows)
        agg.update(seed=None, aggregate=True, seeds=list(labels), checkpoint=[r["checkpoint"] for r in rows],
                   checkpoint_b=[r.get("checkpoint_b") for r in rows], tokens_per_s=agg["tokens_per_s"])
        aggregates.append(agg)
    results = copy.deepcopy({k: v for k, v in first.items() if k not in ("systems",)})
    results["systems"] = fixed + aggregates + per_seed
    results["student_seeds"] = list(labels)
    results["seed_runs"] = {label: str(Path(cfg.out) / f"seed_{label}") for label in labels}
    fams = {f: info["systems"] for f, info in first["families"].items()}
    fronts = front_analysis(fixed + aggregates, fams, cfg)
    for r in fixed + aggregates:
        r["on_front"] = [f for f, info in fronts["families"].items() if r["name"] in info["front"]]
    for r in per_seed:
        r["on_front"] = []
    results["families"], results["reference_point"] = fronts["families"], fronts["reference_point"]
    results["merge_vs_cfg"] = fronts.get("merge_vs_cfg")
    boot = TwoWayBootstrap(results, cfg.bootstrap, cfg.confidence, cfg.seed)
    for r in aggregates:
        for m in ("quality", "diversity"):
            _, lo, hi = boot.interval(lambda x, n=r["name"], m=m: x[n][m])
            r[f"{m}_ci_low"], r[f"{m}_ci_high"] = lo, hi
    if results["merge_vs_cfg"]:
        ref = (results["reference_point"]["quality"], results["reference_point"]["diversity"])
        point, lo, hi = boot.interval_loop(lambda x: hypervolume_difference(x, fams, ref))
        mv = results["merge_vs_cfg"]
        mv["hypervolume_difference_ci"] = [lo, hi]
        mv["ci_method"] = f"two-way bootstrap over {boot.K} prompts and {boot.S} seeds ({boot.n_boot} replicates)"
        mv["per_seed_hypervolume_difference"] = {
            label: hypervolume_difference({n: boot.seed_point(n, s) for n in boot.arrays}, fams, ref)
            for s, label in enumerate(labels)}
    annotate_seed_agreement(results)
    results["timings"] = {"total_s": sum(r.get("timings", {}).get("total_s", 0.0) for r in runs),
                          "per_seed": {lb: r.get("timings") for lb, r in zip(labels, runs)}}
    return results


def annotate_seed_agreement(results: dict) -> None:
    """``seeds_agree`` on every aggregate row: the sign of (q − q_base, d − d_base) is the same for all seeds."""
    base = next((r for r in results["systems"] if r["family"] == "base"), None)
    for r in results["systems"]:
        r.setdefault("seeds_agree", None)
        if not r.get("aggregate") or base is None:
            continue
        mine = [x for x in results["systems"] if x.get("aggregate_of") == r["name"]]
        signs = {(np.sign(x["quality"] - base["quality"]), np.sign(x["diversity"] - base["diversity"])) for x in mine}
        r["seeds_agree"] = len(signs) <= 1


# ----------------------------------------------------------------------------- the command

def training_status(cfg) -> dict[str, dict]:
    """Each evaluated model's training record: ``{spec: {"cut_short": None | {...}, "steps_done": n}}``
    from its ``DONE.json`` (the run folder or the checkpoint's parent) or its ``config.json``."""
    from divcfg.models.base import spec_path
    from divcfg.stages import read_marker
    specs = [cfg.base, cfg.embedder, cfg.scorer] + [s for p in seed_pairs(cfg) for s in p.values() if s]
    out = {}
    for spec in dict.fromkeys(s for s in specs if s):
        path = spec_path(spec)
        rec = None
        for d in (path, path.parent):
            rec = read_marker(d)
            if rec:
                break
        if not rec:
            try:
                rec = json.loads((path / "config.json").read_text())
            except (OSError, ValueError):
                rec = {}
        out[spec] = {"cut_short": rec.get("cut_short"), "steps_done": rec.get("steps_done", rec.get("step"))}
    return out


def write_merged(out: Path, results: dict, runs_dirs: list[Path], labels: list[str]) -> None:
    """``results.json``, ``results.csv`` (the first seed's columns + ``seed``, ``aggregate``,
    ``seeds_agree``) and ``samples.jsonl`` (seed-independent systems once, students per seed)."""
    from divcfg.evaluation.run import _csv_value
    from divcfg.provenance import write_json_atomic
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    with open(runs_dirs[0] / "results.csv") as f:
        header = next(csv.reader(f))
    columns = header + [c for c in ("seed", "aggregate", "seeds_agree") if c not in header]
    with open(out / "results.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in results["systems"]:
            w.writerow([_csv_value(r[c] if c in r else (r.get("music") or {}).get(c)) for c in columns])
    (out / "results.csv.tmp").replace(out / "results.csv")
    students = {r["name"] for r in results["systems"] if r.get("aggregate")}
    with open(out / "samples.jsonl.tmp", "w") as f:
        for i, (d, label) in enumerate(zip(runs_dirs, labels)):
            for line in (d / "samples.jsonl").read_text().splitlines():
                s = json.loads(line)
                if s["system"] in students:
                    s["system"] = f"{s['system']}_s{label}"
                elif i > 0:
                    continue
                f.write(json.dumps(s) + "\n")
    (out / "samples.jsonl.tmp").replace(out / "samples.jsonl")


def evaluate_seeds(cfg) -> dict:
    """`divcfg evaluate` with seeds: one run per seed pair when several are given (else the plain
    run), then the claims (``divcfg.evaluation.claims``) and each model's ``cut_short`` in results.json."""
    from divcfg.evaluation.claims import evaluate_claims
    from divcfg.evaluation.run import evaluate
    from divcfg.provenance import write_json_atomic
    pairs = seed_pairs(cfg)
    out = Path(cfg.out)
    if len(pairs) == 1:
        results = evaluate(dataclasses.replace(cfg, **pairs[0]))
    else:
        labels = seed_labels(pairs)
        runs, dirs, base_memo = [], [], {}   # the base is sampled once, in the first pass
        for i, (pair, label) in enumerate(zip(pairs, labels)):
            print(f"seed {label} ({i + 1}/{len(pairs)}): students {pair['quality'] or '-'}, {pair['diversity'] or '-'}",
                  flush=True)
            dirs.append(out / f"seed_{label}")
            extra = {} if i == 0 else {"cfg_gammas": "", "temperatures": ""}
            runs.append(evaluate(dataclasses.replace(cfg, **pair, **extra, out=str(dirs[-1])), base_memo))
        results = merge_seed_runs(runs, labels, cfg)
        results["config"] = dataclasses.asdict(cfg)
    results["training_status"] = training_status(cfg)
    for spec, info in results["training_status"].items():
        if info.get("cut_short"):
            cut = info["cut_short"]
            print(f"WARNING: '{spec}' was cut short by its time cap ({cut.get('steps_done')} of "
                  f"{cut.get('steps_planned')} planned steps): its figures are not the preset's", file=sys.stderr)
    results["claims"] = evaluate_claims(results, cfg.bootstrap, cfg.confidence, cfg.seed + 2)
    if len(pairs) == 1:
        write_json_atomic(out / "results.json", results)
    else:
        write_merged(out, results, dirs, labels)
    return results
