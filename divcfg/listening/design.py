"""The study design: which systems, which trials, and which rater answers which trial.

A study is built from a *manifest* (clips of an evaluation run, see ``divcfg.listening.media``) and
a :class:`StudyConfig`. It has two trial pools:

- **quality** trials: one prompt and one clip, rated 1–5 on acoustic quality, text adherence and
  musicality. Pool: every (system, prompt, generation g < ``generations``) clip.
- **diversity** trials: one prompt, two pairs of clips from two systems (each pair = two
  generations of that system for the prompt): "which pair is more varied?". Pool: every unordered
  system pair × prompt × disjoint generation pair ((0,1), (2,3), … below ``generations``).

Balance. Each pool is laid out as a cyclic list that visits the systems (or system pairs) in turn,
``L = [s₀p_{π(0)}, s₁p_{π(1)}, …, s_{S-1}p_{π(S-1)}, s₀p_{π(1)}, …]`` with one shuffled prompt
order π rotated per system, so any S consecutive entries hold every system once with distinct
prompts. Rater k (numbered in order of arrival) answers the window ``L[k·n mod |L| …]`` of n
trials: with n a multiple of S each rater hears every system equally often, and over raters the
windows tile the pool, so every trial is answered ⌊·⌋/⌈·⌉-equally often. Which system of a pair is
shown as "A" alternates along that pair's trials (each is A half the time). Each rater's trials are then shuffled
with the seed ``(seed, k)``. Trial ids are opaque (``q0007``, ``d0003``); the page never sees a
system name, and clip files are named by a hash of their content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from itertools import combinations

from divcfg.config import field
from divcfg.errors import UserError

KINDS = ("quality", "diversity")
QUALITY_SCALES = ("acoustic", "adherence", "musicality")


@dataclass
class StudyConfig:
    systems: str = field("", "comma-separated systems to compare (default: base, the CFG system with the "
                             "distilled student's γ or else the best-quality γ, and the merge nearest λ=0.5)")
    prompts: int = field(0, "held-out prompts used (the first N of the run; 0 = all)", ge=0)
    generations: int = field(2, "generations per prompt and system used (diversity pairs need 2)", ge=1)
    quality_trials: int = field(12, "quality trials (one clip, three 1-5 ratings) per rater", ge=0)
    diversity_trials: int = field(6, "diversity trials (two pairs of clips: which is more varied?) per rater",
                                  ge=0)
    seed: int = field(0, "seed of the trial layout and of each rater's trial order", ge=0)
    clip_beats: int = field(32, "audio clips play the first N quarter notes of a generation", ge=1)
    sample_rate: int = field(16000, "sample rate of the rendered WAV clips", ge=8000, le=48000)

    def validate(self) -> None:
        if self.quality_trials + self.diversity_trials == 0:
            raise UserError("a study needs trials: pass --quality-trials N and/or --diversity-trials N (N ≥ 1)")

    def system_list(self) -> list[str]:
        return [s.strip() for s in self.systems.split(",") if s.strip()]


def default_systems(results: dict) -> list[str]:
    """base, the CFG system used as the distillation teacher (else the best-quality CFG system) and
    the merge nearest λ = 0.5; all systems when the run has no CFG or no merge family."""
    rows = results["systems"]
    cfg_rows = [r for r in rows if r["family"] == "cfg"]
    merges = [r for r in rows if r["family"] == "merge"]
    if not cfg_rows or not merges:
        return [r["name"] for r in rows]
    teacher = _teacher_gamma(results)
    chosen_cfg = next((r for r in cfg_rows if teacher is not None and abs(r["gamma"] - teacher) < 1e-9),
                      max(cfg_rows, key=lambda r: r["quality"]))
    merge = min(merges, key=lambda r: (abs(r["lam"] - 0.5), r["lam"]))
    base = [r["name"] for r in rows if r["family"] == "base"]
    return base + [chosen_cfg["name"], merge["name"]]


def _teacher_gamma(results: dict) -> float | None:
    from pathlib import Path

    path = (results.get("config") or {}).get("quality")
    if not path:
        return None
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
        return float(cfg["finetune"]["gamma"])
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError):
        return None


def design_key(cfg: StudyConfig, systems: list[str]) -> str:
    """A short hash of everything that fixes the trials (a study must not change under its raters)."""
    blob = json.dumps({**dataclasses.asdict(cfg), "systems": systems}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _rotated(order: list[int], shift: int, reps: int) -> list[tuple[int, int]]:
    """[(rep, prompt)] visiting ``order`` rotated by ``shift``, once per rep."""
    n = len(order)
    return [(r, order[(i + shift) % n]) for r in range(reps) for i in range(n)]


def build_study(manifest: dict, cfg: StudyConfig, systems: list[str]) -> dict:
    """The study dict written to ``study.json``: prompts, clips, the two balanced pools."""
    clip_of = {(c["system"], c["prompt_index"], c["generation"]): c["id"] for c in manifest["clips"]}
    file_of = {c["id"]: c["file"] for c in manifest["clips"]}
    systems_missing = [s for s in systems if s not in manifest["systems"]]
    if systems_missing:
        raise UserError(f"no clips of {systems_missing} were prepared: rerun `divcfg listen` with these --systems")
    prompts = sorted({p for (_, p, _) in clip_of})
    rng = random.Random(cfg.seed)
    order = prompts[:]
    rng.shuffle(order)
    G = cfg.generations

    def clips(s, p, gens):
        ids = [clip_of.get((s, p, g)) for g in gens]
        if None in ids:
            raise UserError(f"system {s!r} has no clip for prompt {p}, generation(s) {list(gens)}: "
                            f"lower --generations (the run has fewer) or rerun `divcfg evaluate`")
        return ids

    quality: list[dict] = []
    per_system = [_rotated(order, j, G) for j in range(len(systems))]
    for i in range(len(order) * G):
        for j, s in enumerate(systems):
            g, p = per_system[j][i]
            quality.append({"kind": "quality", "prompt_index": p, "system": s, "clips": clips(s, p, [g])})
    diversity: list[dict] = []
    pairs = list(combinations(systems, 2))
    if G >= 2:
        per_pair = [_rotated(order, j, G // 2) for j in range(len(pairs))]
        for i in range(len(order) * (G // 2)):
            for j, (a, b) in enumerate(pairs):
                r, p = per_pair[j][i]
                gens = (2 * r, 2 * r + 1)
                sides = [(a, clips(a, p, gens)), (b, clips(b, p, gens))]
                if (i + j) % 2:  # each pair alternates which system is shown as "A"
                    sides.reverse()
                diversity.append({"kind": "diversity", "prompt_index": p,
                                  "A": {"system": sides[0][0], "clips": sides[0][1]},
                                  "B": {"system": sides[1][0], "clips": sides[1][1]}})
    for k, t in enumerate(quality):
        t["id"] = f"q{k:04d}"
    for k, t in enumerate(diversity):
        t["id"] = f"d{k:04d}"
    if cfg.quality_trials and not quality:
        raise UserError("no quality trials: the run has no clips for these systems and prompts")
    if cfg.diversity_trials and not diversity:
        raise UserError("no diversity trials: they need ≥ 2 systems and --generations ≥ 2 "
                        "(or pass --diversity-trials 0)")
    used = {c for t in quality for c in t["clips"]} | {c for t in diversity for s in "AB" for c in t[s]["clips"]}
    return {
        "design": dataclasses.asdict(cfg), "design_key": design_key(cfg, systems), "systems": systems,
        "prompts": {str(p): manifest["prompts"][str(p)] for p in prompts},
        "clips": {cid: file_of[cid] for cid in sorted(used)},
        "trials": {t["id"]: t for t in quality + diversity},
        "pools": {"quality": [t["id"] for t in quality], "diversity": [t["id"] for t in diversity]},
        "per_rater": {"quality": min(cfg.quality_trials, len(quality)),
                      "diversity": min(cfg.diversity_trials, len(diversity))},
    }


def assign(study: dict, rater_index: int) -> list[str]:
    """The trial ids of rater number ``rater_index`` (0, 1, …) in the order they are asked."""
    chosen: list[str] = []
    for kind in KINDS:
        pool, n = study["pools"][kind], study["per_rater"][kind]
        if n:
            start = rater_index * n
            chosen += [pool[(start + i) % len(pool)] for i in range(n)]
    random.Random(f"{study['design']['seed']}:{rater_index}").shuffle(chosen)
    return chosen
