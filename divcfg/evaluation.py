"""`divcfg evaluate`: the quality–diversity evaluation of systems on held-out prompts.

Systems (each one generator + a decoding rule):

- ``base``: the pre-trained model, plain conditional sampling (γ=1, τ=1);
- ``cfg``: the base model with classifier-free guidance at each γ of ``--cfg-gammas`` (2 passes/token);
- ``temperature``: the base model at each τ of ``--temperatures`` (the other cheap diversity knob);
- ``distilled`` (``--quality``, β=0) and ``diversity`` (``--diversity``, β=15): fine-tuned students;
- ``merge``: ``(1-λ)·A + λ·B`` for each λ of ``--lams`` (A, B default to the two students),
  evaluated in memory (``divcfg.merging.iter_merges``).

Protocol. K held-out prompts (``load_prompts(data_dir, "test", limit=K, seed)``, the same for every
system) × G generations each. Every system samples its K·G rows in the same order and the same
batches of ``batch_size`` rows, from a ``torch.Generator`` seeded with ``seed`` (common random
numbers: differences between systems are not drowned by sampling noise). Two systems with the same
weights and decoding rule (e.g. the merge at λ=0 and the β=0 student) are sampled once.

Per system, with ``q_kg`` the alignment score of generation g of prompt k (−1 for an empty
or undecodable generation) and ``d_k`` the mean of ``1 − cos(E(y_kg), E(y_kh))`` over the
G(G−1)/2 pairs of prompt k (0 for a pair with an empty member):

- ``quality = mean_k mean_g q_kg``; ``diversity = mean_k d_k``;
- 95 % confidence intervals: percentile bootstrap over prompts (``bootstrap`` resamples of the K
  per-prompt values; prompts are the independent unit, the G generations of one prompt are not);
- independent diversity figures (pitch-class and onset-histogram distances, melodic-interval
  n-gram distance, distinct token n-gram ratio; ``divcfg.music.metrics``), averaged over the same pairs;
- ``empty_rate`` (no notes / undecodable), ``valid_rate`` (decodes, has notes, stays in the prompt's
  meter), ``eos_rate`` (the sequence ended itself), ``mean_length`` (tokens, EOS included);
- the MusPy-style metrics and ``musical_distance = mean_m |mean(m) − ref_mean(m)| / ref_std(m)``
  against the held-out corpus reference (``metrics.corpus_reference``);
- ``forward_passes_per_token`` (1, or 2 with CFG) and measured ``tokens_per_s`` (generated tokens /
  wall time of sampling, same batch size for every system, after an untimed warm-up).

Fronts: for each family (``cfg`` = base + γ sweep, ``temperature`` = base + τ sweep, ``merge``,
``finetuned``) the Pareto front on (quality, diversity) and its hypervolume w.r.t. one shared
reference point (``divcfg.pareto.reference_point`` over all systems). ``merge`` vs ``cfg``: coverage
both ways, set dominance, and the hypervolume difference with a paired bootstrap CI over prompts
(the reference point fixed).

Outputs in ``--out``: ``results.json`` (everything, with provenance and seeds), ``results.csv``
(one row per system) and ``samples.jsonl`` (token ids per system / prompt / generation).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from divcfg.checkpoint import resolve_checkpoint_dir
from divcfg.config import add_config_arguments, field, resolve_config
from divcfg.errors import UserError
from divcfg.pareto import compare_fronts, hypervolume, pareto_front, reference_point
from divcfg.provenance import provenance, seed_everything, write_json_atomic

INDEPENDENT_FIGURES = ("pitch_class_distance", "onset_distance", "interval_ngram_distance",
                       "distinct_ngram_ratio")
FAMILY_ORDER = ("cfg", "temperature", "finetuned", "merge")
CSV_COLUMNS = ("name", "label", "family", "gamma", "temperature", "lam", "forward_passes_per_token",
               "quality", "quality_ci_low", "quality_ci_high", "diversity", "diversity_ci_low",
               "diversity_ci_high", *INDEPENDENT_FIGURES, "empty_rate", "valid_rate", "eos_rate",
               "mean_length", "musical_distance", "tokens_per_s", "sampling_s", "same_as")


@dataclass
class EvalConfig:
    base: str = field("runs/small/base", "base generator checkpoint")
    quality: str = field("", "distilled student (β=0) checkpoint; empty = not evaluated")
    diversity: str = field("", "diversity-rewarded student (β=15) checkpoint; empty = not evaluated")
    merge_a: str = field("", "merge endpoint A (λ=0); empty = --quality")
    merge_b: str = field("", "merge endpoint B (λ=1); empty = --diversity")
    lams: str = field("0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", "comma-separated merge weights λ")
    cfg_gammas: str = field("1.5,2,3,4,5", "comma-separated CFG scales γ for the base model (γ=1 is base)")
    temperatures: str = field("0.8,0.9,1.1,1.25,1.5", "comma-separated temperatures τ for the base model (τ=1 is base)")
    embedder: str = field("runs/small/embedder", "diversity embedder E checkpoint")
    scorer: str = field("runs/small/scorer", "alignment scorer checkpoint")
    data_dir: str = field("data/small", "data set folder written by `divcfg data` (prompts, reference)")
    split: str = field("test", "split the prompts come from (held out: test)", choices=("train", "val", "test"))
    num_prompts: int = field(48, "K: number of held-out prompts", ge=1)
    generations: int = field(4, "G: generations per prompt (≥ 2, diversity is measured within a prompt)", ge=2)
    max_new_tokens: int = field(0, "generation length limit in tokens (0 = the model's max_len - 1)", ge=0)
    batch_size: int = field(64, "rows per sampling batch (the same for every system, for tokens/s)", ge=1)
    seed: int = field(0, "seed of the prompt subset, the sampling generator and the bootstrap", ge=0)
    bootstrap: int = field(1000, "bootstrap resamples over prompts for the confidence intervals", ge=1)
    confidence: float = field(0.95, "confidence level of the intervals", gt=0, lt=1)
    reference_pieces: int = field(256, "held-out pieces for the corpus reference of the musical metrics", ge=1)
    bf16: bool = field(False, "bf16 autocast while sampling, where the CPU supports it (off: fp32 sampled "
                              "1.3-1.9x more tokens per CPU-second here)")
    threads: int = field(1, "torch CPU threads (0 = torch's default). 1 by default: on a shared 2-core machine "
                            "2 threads sampled up to 17x slower than 1 (OpenMP contention)", ge=0)
    out: str = field("runs/small/eval", "run folder for results.json, results.csv, samples.jsonl")
    preset: str = field("small", "preset this config came from (informational)")


PRESETS: dict[str, dict] = {
    "tiny": dict(data_dir="data/tiny", base="runs/tiny/base", embedder="runs/tiny/embedder",
                 scorer="runs/tiny/scorer", out="runs/tiny/eval", num_prompts=3, generations=2, max_new_tokens=48,
                 batch_size=6, cfg_gammas="2", temperatures="1.3", lams="0,0.5,1", bootstrap=200,
                 reference_pieces=16, preset="tiny"),
    # demo: 12 sampling runs (8 at one pass/token, 4 with CFG) of 48 rows up to 512 tokens (the data's
    # longest tune), so truncation does not hide natural endings
    "demo": dict(data_dir="data/small", base="runs/demo/base", embedder="runs/demo/embedder",
                 scorer="runs/demo/scorer", out="runs/demo/eval", num_prompts=12, generations=4, batch_size=48,
                 max_new_tokens=512, cfg_gammas="1.5,2,3,4", temperatures="0.85,1.2",
                 lams="0,0.25,0.5,0.75,1", reference_pieces=128, preset="demo"),
    "small": dict(),
    "full": dict(data_dir="data/full", base="runs/full/base", embedder="runs/full/embedder",
                 scorer="runs/full/scorer", out="runs/full/eval", num_prompts=200, generations=4, batch_size=96,
                 reference_pieces=1000, preset="full"),
}


@dataclass
class System:
    """One generator + decoding rule to evaluate."""
    name: str             # identifier (file-safe)
    label: str            # for tables and plots
    family: str           # base | cfg | temperature | finetuned | merge
    checkpoint: str       # weights (merges: A's folder)
    gamma: float = 1.0
    temperature: float = 1.0
    lam: float | None = None
    checkpoint_b: str | None = None

    def signature(self) -> tuple:
        """Systems with equal signatures sample identically (same weights and decoding rule)."""
        if self.lam is None:
            weights = self.checkpoint
        elif self.lam == 0.0:
            weights = self.checkpoint
        elif self.lam == 1.0:
            weights = self.checkpoint_b
        else:
            weights = (self.checkpoint, self.checkpoint_b, self.lam)
        return weights, self.gamma, self.temperature


# ---------------------------------------------------------------------------------------------
# configuration -> systems


def parse_floats(text: str, name: str) -> list[float]:
    from divcfg.config import parse_float_list
    return parse_float_list(text, name)  # finite numbers; the ranges are checked by build_systems


def _ckpt(path: str) -> str:
    return str(resolve_checkpoint_dir(path).resolve())


def _beta(path: str) -> float | None:
    try:
        config = json.loads((Path(path) / "config.json").read_text())
        beta = (config.get("finetune") or {}).get("beta")
        return None if beta is None else float(beta)
    except (OSError, json.JSONDecodeError, TypeError, ValueError):
        return None


def _fmt(x: float) -> str:
    return f"{x:g}"


def build_systems(cfg: EvalConfig) -> list[System]:
    """The systems of ``cfg`` in evaluation order (base-model systems first, merges last)."""
    if not cfg.base:
        raise UserError("--base is required: the pre-trained generator checkpoint (e.g. runs/small/base)")
    gammas = parse_floats(cfg.cfg_gammas, "cfg_gammas")
    temps = parse_floats(cfg.temperatures, "temperatures")
    lams = parse_floats(cfg.lams, "lams")
    if any(g < 0 for g in gammas):
        raise UserError(f"--cfg-gammas must be ≥ 0 (1 = no guidance), got {cfg.cfg_gammas}")
    if any(t <= 0 for t in temps):
        raise UserError(f"--temperatures must be > 0, got {cfg.temperatures}")
    if any(not 0 <= x <= 1 for x in lams):
        raise UserError(f"--lams must lie in [0, 1], got {cfg.lams}")
    base = _ckpt(cfg.base)
    systems = [System("base", "base (γ=1)", "base", base)]
    systems += [System(f"cfg_g{_fmt(g)}", f"CFG γ={_fmt(g)}", "cfg", base, gamma=g) for g in gammas if g != 1.0]
    systems += [System(f"temp_t{_fmt(t)}", f"τ={_fmt(t)}", "temperature", base, temperature=t)
                for t in temps if t != 1.0]
    for path, name, what, default_beta in ((cfg.quality, "distilled", "distilled", 0),
                                           (cfg.diversity, "diversity", "diversity", 15)):
        if path:
            ck = _ckpt(path)
            beta = _beta(ck)
            systems.append(System(name, f"{what} β={_fmt(beta if beta is not None else default_beta)}",
                                  "finetuned", ck))
    a, b = cfg.merge_a or cfg.quality, cfg.merge_b or cfg.diversity
    if lams and (cfg.merge_a or cfg.merge_b or (a and b)):
        if not (a and b):
            raise UserError("a merge sweep needs both endpoints: pass --merge-a and --merge-b "
                            "(or --quality and --diversity)")
        a, b = _ckpt(a), _ckpt(b)
        systems += [System(f"merge_l{_fmt(x)}", f"merge λ={_fmt(x)}", "merge", a, lam=x, checkpoint_b=b)
                    for x in lams]
    return systems


def families(systems: list[System]) -> dict[str, list[str]]:
    """Family name -> system names; the base system starts both the γ and the τ curves."""
    out: dict[str, list[str]] = {}
    base = [s.name for s in systems if s.family == "base"]
    for fam in FAMILY_ORDER:
        members = [s.name for s in systems if s.family == fam]
        if members:
            out[fam] = (base if fam in ("cfg", "temperature") else []) + members
    return out


# ---------------------------------------------------------------------------------------------
# sampling


def _models(systems: list[System]) -> Iterator[tuple[System, torch.nn.Module]]:
    """Yield each system with its model; merges are built in memory, each checkpoint loaded once."""
    from divcfg.merging import iter_merges
    from divcfg.models.generator import load_generator

    loaded: dict[str, torch.nn.Module] = {}
    merges = [s for s in systems if s.lam is not None]
    for s in systems:
        if s.lam is None:
            if s.checkpoint not in loaded:
                loaded = {s.checkpoint: load_generator(s.checkpoint)[0]}
            yield s, loaded[s.checkpoint]
    loaded.clear()
    by_pair: dict[tuple, list[System]] = {}
    for s in merges:
        by_pair.setdefault((s.checkpoint, s.checkpoint_b), []).append(s)
    for (a, b), group in by_pair.items():
        for s, (_, model, _) in zip(group, iter_merges(a, b, [s.lam for s in group])):
            yield s, model


def sample_system(model, cond: torch.Tensor, system: System, cfg: EvalConfig, autocast: bool,
                  bar=None) -> dict:
    """Sample all rows of one system in fixed batches; token ids, EOS flags and timing."""
    from divcfg.sampling import sample

    max_new = cfg.max_new_tokens or model.cfg.max_len - 1
    # untimed warm-up (first-call allocations and kernel selection), then the measured run
    sample(model, cond[:cfg.batch_size], max_new_tokens=min(4, max_new), gamma=system.gamma,
           temperature=system.temperature, generator=torch.Generator().manual_seed(cfg.seed), autocast=autocast)
    gen = torch.Generator().manual_seed(cfg.seed)
    seqs, finished, lengths = [], [], []
    elapsed, passes = 0.0, 1
    for start in range(0, cond.shape[0], cfg.batch_size):
        t0 = time.perf_counter()
        out = sample(model, cond[start:start + cfg.batch_size], max_new_tokens=max_new, gamma=system.gamma,
                     temperature=system.temperature, generator=gen, autocast=autocast)
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


# ---------------------------------------------------------------------------------------------
# statistics


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


def _nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


# ---------------------------------------------------------------------------------------------
# judging


def _meter(meta: dict) -> str | None:
    """The prompt's meter as 'n/d', or None when unknown (metrics then use the score's own)."""
    m = str(meta.get("meter") or "")
    return m if re.fullmatch(r"\d+/\d+", m) else None


class Judges:
    """The frozen judges and the decoding tools shared by every system."""

    def __init__(self, cfg: EvalConfig, tokenizer_file: Path):
        from divcfg.embedders.alignment import load_alignment_scorer
        from divcfg.embedders.diversity import load_diversity_embedder
        from divcfg.music.tokenizer import load_tokenizer

        if not cfg.embedder or not cfg.scorer:
            raise UserError("--embedder and --scorer are required: train them with `divcfg embedder train` "
                            "and `divcfg scorer train`")
        self.tok = load_tokenizer(tokenizer_file)
        self.E = load_diversity_embedder(cfg.embedder)
        self.scorer = load_alignment_scorer(cfg.scorer)
        if self.E.tokenizer is not None and len(self.E.tokenizer) != len(self.tok):
            raise UserError(f"the diversity embedder's vocabulary ({len(self.E.tokenizer)} tokens) is not the "
                            f"generator's ({len(self.tok)}): train the judges on the same data set")

    def judge(self, prompts, rows: dict, G: int) -> dict:
        """All per-system figures from the sampled rows (row r = prompt r // G, generation r % G)."""
        from divcfg.embedders.diversity import group_diversity
        from divcfg.music.metrics import (SCORE_METRICS, pair_diversity_figures, score_metrics,
                                          token_validity)
        from divcfg.music.tokenizer import tokens_to_score

        seqs = rows["sequences"]
        K = len(prompts)
        texts = [prompts.texts[r // G] for r in range(len(seqs))]
        with warnings.catch_warnings():  # empty generations are counted in empty_rate instead
            warnings.simplefilter("ignore")
            q = self.scorer.score(texts, seqs).float().cpu().numpy()
        d_prompt, _ = group_diversity(self.E, [seqs[k * G:(k + 1) * G] for k in range(K)])
        scores = [tokens_to_score(self.tok, s) for s in seqs]
        meters = [_meter(prompts.meta[r // G]) for r in range(len(seqs))]
        n_notes = [0 if sc is None else sum(len(t.notes) for t in sc.tracks) for sc in scores]
        valid = [token_validity(self.tok, s, m)["valid"] for s, m in zip(seqs, meters)]
        music = [score_metrics(sc, m) for sc, m in zip(scores, meters)]
        figures = {f: [] for f in INDEPENDENT_FIGURES}
        for k in range(K):
            pairs = [pair_diversity_figures(scores[k * G + i], scores[k * G + j], seqs[k * G + i],
                                            seqs[k * G + j], meters[k * G])
                     for i in range(G) for j in range(i + 1, G)]
            for f in INDEPENDENT_FIGURES:
                figures[f].append(_nanmean([p[f] for p in pairs]))
        q_prompt = q.reshape(K, G).mean(1)
        return {"per_generation": {"quality": q.tolist(), "n_notes": n_notes, "valid": valid},
                "per_prompt": {"quality": q_prompt.tolist(), "diversity": d_prompt.tolist(), **figures},
                "music": {m: _nanmean([x[m] for x in music]) for m in SCORE_METRICS}}


def _summary(system: System, rows: dict, judged: dict, cfg: EvalConfig, reference: dict) -> dict:
    from divcfg.music.metrics import SCORE_METRICS

    pp, pg = judged["per_prompt"], judged["per_generation"]
    q_lo, q_hi = bootstrap_ci(pp["quality"], cfg.bootstrap, cfg.confidence, cfg.seed)
    d_lo, d_hi = bootstrap_ci(pp["diversity"], cfg.bootstrap, cfg.confidence, cfg.seed)
    z = [abs(judged["music"][m] - reference[m]["mean"]) / reference[m]["std"] for m in SCORE_METRICS
         if reference.get(m, {}).get("std") and math.isfinite(judged["music"][m])]
    n = len(rows["sequences"])
    return {"name": system.name, "label": system.label, "family": system.family,
            "gamma": system.gamma, "temperature": system.temperature, "lam": system.lam,
            "checkpoint": system.checkpoint, "checkpoint_b": system.checkpoint_b,
            "forward_passes_per_token": rows["forward_passes_per_token"],
            "quality": _nanmean(pp["quality"]), "quality_ci_low": q_lo, "quality_ci_high": q_hi,
            "diversity": _nanmean(pp["diversity"]), "diversity_ci_low": d_lo, "diversity_ci_high": d_hi,
            **{f: _nanmean(pp[f]) for f in INDEPENDENT_FIGURES},
            "empty_rate": sum(x == 0 for x in pg["n_notes"]) / n, "valid_rate": sum(pg["valid"]) / n,
            "eos_rate": sum(rows["finished"]) / n, "mean_length": sum(rows["lengths"]) / n,
            "music": judged["music"], "musical_distance": _nanmean(z) if z else math.nan,
            "tokens_per_s": rows["tokens_per_s"], "sampling_s": rows["sampling_s"],
            "sampling_seed": rows["sampling_seed"], "same_as": None,
            "per_prompt": pp}


# ---------------------------------------------------------------------------------------------
# fronts


def front_analysis(rows: list[dict], fams: dict[str, list[str]], cfg: EvalConfig) -> dict:
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


# ---------------------------------------------------------------------------------------------
# the run


def _corpus(cfg: EvalConfig, prompts, judges: Judges) -> dict:
    """Reference figures of real held-out music: the musical metrics over ``reference_pieces``
    pieces; the alignment score of each prompt's own piece (a ceiling for quality); and the
    diversity of real pieces of *different* prompts (k, k+1), a scale for the diversity axis."""
    from divcfg.embedders.diversity import diversity
    from divcfg.music.corpus import load_split
    from divcfg.music.metrics import corpus_reference

    reference = corpus_reference(cfg.data_dir, cfg.split, max_pieces=cfg.reference_pieces, seed=cfg.seed)
    pieces = {p["id"]: p["tokens"] for p in load_split(cfg.data_dir, cfg.split)}
    real = [pieces[i] for i in prompts.ids]
    q = judges.scorer.score(list(prompts.texts), real).float()
    out = {"metrics": reference, "alignment_real": float(q.mean()), "diversity_between_pieces": math.nan}
    if len(real) >= 2:
        out["diversity_between_pieces"] = float(diversity(judges.E, real, real[1:] + real[:1]).mean())
    return out


def _training_logs(cfg: EvalConfig) -> dict[str, str]:
    """Fine-tuning logs (``<run>/metrics.jsonl`` beside ``<run>/checkpoint``) of the students."""
    logs = {}
    for name, path in (("distilled", cfg.quality), ("diversity", cfg.diversity)):
        if not path:
            continue
        d = resolve_checkpoint_dir(path).resolve()
        for cand in (d / "metrics.jsonl", d.parent / "metrics.jsonl"):
            if cand.exists():
                logs[name] = str(cand)
                break
    return logs


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def write_outputs(out: Path, results: dict, samples: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    with open(out / "results.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        metric_names = sorted(results["systems"][0]["music"]) if results["systems"] else []
        w.writerow(list(CSV_COLUMNS) + metric_names)
        for r in results["systems"]:
            w.writerow([_csv_value(r.get(c)) for c in CSV_COLUMNS] + [_csv_value(r["music"][m]) for m in metric_names])
    (out / "results.csv.tmp").replace(out / "results.csv")
    with open(out / "samples.jsonl.tmp", "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    (out / "samples.jsonl.tmp").replace(out / "samples.jsonl")


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation described by ``cfg``; writes ``cfg.out`` and returns ``results.json``'s dict.
    ``cfg.threads`` applies while it runs; the caller's torch thread count is restored afterwards."""
    threads_before = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return _evaluate(cfg)
    finally:
        torch.set_num_threads(threads_before)


def _evaluate(cfg: EvalConfig) -> dict:
    from divcfg.models.generator import TOKENIZER_FILE
    from divcfg.pretrain import bf16_supported
    from divcfg.prompts import load_prompts

    if cfg.generations < 2:
        raise UserError(f"--generations must be at least 2 (diversity is measured between generations of "
                        f"one prompt), got {cfg.generations}")
    if cfg.num_prompts < 1 or cfg.batch_size < 1:
        raise UserError("--num-prompts and --batch-size must be at least 1")
    if not 0 < cfg.confidence < 1:
        raise UserError(f"--confidence must lie in (0, 1), got {cfg.confidence}")
    t_start = time.time()
    seed_everything(cfg.seed)
    systems = build_systems(cfg)
    judges = Judges(cfg, resolve_checkpoint_dir(cfg.base) / TOKENIZER_FILE)
    prompts = load_prompts(cfg.data_dir, cfg.split, limit=cfg.num_prompts, seed=cfg.seed)
    if len(prompts) == 0:
        raise UserError(f"the '{cfg.split}' split of '{cfg.data_dir}' is empty: rebuild the data set")
    G = cfg.generations
    cond = prompts.cond.repeat_interleave(G, dim=0)
    autocast = cfg.bf16 and bf16_supported()
    n_batches = -(-cond.shape[0] // cfg.batch_size)

    done: dict[tuple, str] = {}
    sampled: dict[str, dict] = {}
    rows_out: list[dict] = []
    t_sampling = t_judging = 0.0
    bar = tqdm(total=len(systems) * n_batches, desc="evaluate", unit="batch", dynamic_ncols=True)
    reference = None
    for system, model in _models(systems):
        bar.set_postfix_str(system.label)
        sig = system.signature()
        if sig in done:
            twin = next(r for r in rows_out if r["name"] == done[sig])
            rows_out.append({**twin, **{k: getattr(system, k) for k in ("name", "label", "family", "lam")},
                             "checkpoint": system.checkpoint, "checkpoint_b": system.checkpoint_b,
                             "same_as": twin["name"]})
            sampled[system.name] = sampled[twin["name"]]
            bar.update(n_batches)
            continue
        t0 = time.time()
        rows = sample_system(model, cond, system, cfg, autocast, bar)
        t1 = time.time()
        judged = judges.judge(prompts, rows, G)
        if reference is None:
            corpus = _corpus(cfg, prompts, judges)
            reference = corpus["metrics"]
        t_sampling, t_judging = t_sampling + t1 - t0, t_judging + time.time() - t1
        rows_out.append(_summary(system, rows, judged, cfg, reference))
        sampled[system.name] = {**rows, **judged["per_generation"]}
        done[sig] = system.name
    bar.close()

    fams = families(systems)
    fronts = front_analysis(rows_out, fams, cfg)
    for r in rows_out:
        r["on_front"] = [f for f, info in fronts["families"].items() if r["name"] in info["front"]]
    samples = [{"system": name, "prompt_index": r // G, "prompt_id": prompts.ids[r // G], "generation": r % G,
                "tokens": rows["sequences"][r], "finished": bool(rows["finished"][r]),
                "n_notes": rows["n_notes"][r], "quality": rows["quality"][r]}
               for name, rows in sampled.items() for r in range(len(rows["sequences"]))]
    results = {
        "config": dataclasses.asdict(cfg),
        "provenance": provenance(cfg.seed, stage="evaluate"),
        "seeds": {"prompts": cfg.seed, "sampling": cfg.seed, "bootstrap": cfg.seed,
                  "note": "every system samples with torch.Generator().manual_seed(sampling) in the same batches"},
        "num_prompts": len(prompts), "generations": G, "batch_size": cfg.batch_size, "bf16": autocast,
        "prompts": [{"index": i, "id": prompts.ids[i], "text": prompts.texts[i], "meta": prompts.meta[i]}
                    for i in range(len(prompts))],
        "systems": rows_out,
        "families": fronts["families"],
        "reference_point": fronts["reference_point"],
        "merge_vs_cfg": fronts.get("merge_vs_cfg"),
        "corpus": corpus,
        "training_logs": _training_logs(cfg),
        "timings": {"sampling_s": t_sampling, "judging_s": t_judging, "total_s": time.time() - t_start},
    }
    write_outputs(Path(cfg.out), results, samples)
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
    results = evaluate(cfg)
    print(format_table(results))
    print(f"wrote {Path(cfg.out) / 'results.json'}, results.csv, samples.jsonl; render the page with "
          f"`divcfg report {cfg.out}`")
