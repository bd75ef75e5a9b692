"""`divcfg select`: choose the diversity student's reward form and β on *validation* prompts.

Each candidate, a recipe ``form:β[:modifiers]`` (``additive:5``, ``additive:15:key``; the grammar is
`divcfg.recipe`'s), is trained exactly as ``divcfg demo`` trains its diversity student: the preset's
fine-tuning flags, the demo's shipped base and judges, its γ* (chosen on validation prompts by the demo's gamma stage), student
seed ``--seed``. Each is then evaluated with the base (and the demo's β=0 student, for reference) on
the validation split — never the test prompts the demo's report holds out. The rule, stated before
looking at the numbers (issue 11: "more diverse than the base and β=0, without falling below the
base's quality"). ``--rule keep`` (sessions 5–8, one seed):

    eligible = {c : q_val(c) ≥ q_val(base)}
    chosen   = argmax_{c ∈ eligible} d_val(c)        (none eligible: argmax_c q_val(c))

with q the alignment scorer's mean and d E's mean within-prompt pairwise distance, each averaged over
the student seeds ``--seeds``. That rule picks a candidate *at* the base's quality, so on fresh prompts
and seeds it falls below about half the time (the winner's curse: session 8's choice cleared the bar
by 0.004 on validation and missed it by 0.005 on test). ``--rule margin`` asks for a margin of one
standard error and for more diversity than the base's:

    Δ_c      = q_val(c) − q_val(base)
    SE_c²    = s²_prompts / P + s²_seeds / S   (s²_prompts: variance over the P prompts of the per-prompt
                                                Δ averaged over seeds and generations; s²_seeds: over
                                                the S seeds of the prompt-averaged Δ; 0 for S = 1)
    eligible = {c : Δ_c ≥ SE_c and d_val(c) > d_val(base)}
    chosen   = argmax_{c ∈ eligible} d_val(c)        (none eligible: argmax_c Δ_c − SE_c)

``--rule both`` (session 11) asks for the same margin on diversity: session 10's choice passed
``margin`` with diversity 0.0005 above the base's, while its three seeds spread over 0.05, and fell
0.019 below the base on test. With Δ^d_c, SE^d_c the same statistics of E's per-prompt diversity,

    eligible = {c : Δ_c ≥ SE_c and Δ^d_c ≥ SE^d_c}
    chosen   = argmax_{c ∈ eligible} d_val(c)        (none eligible: argmax_c min(Δ_c − SE_c, Δ^d_c − SE^d_c))

Seed 0's student lives in ``<out>/<name>``, seed s's in ``<out>/<name>_s<s>``. Candidates whose folder
holds a finished student (``DONE.json``) are not retrained; evaluations are cached in
``<out>/eval_<name>[_s<s>]``. The table goes to ``<out>/selection.json`` and ``<out>/selection.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from divcfg.errors import UserError
from divcfg.provenance import provenance, write_json_atomic
from divcfg.recipe import Candidate, parse_candidates

RULES = {"keep": "argmax validation diversity s.t. validation quality ≥ base's",
         "margin": "argmax validation diversity s.t. validation quality − base's ≥ one SE and diversity > base's",
         "both": "argmax validation diversity s.t. validation quality and diversity each beat the base's by one SE"}


def choose(rows: dict[str, dict], rule: str = "keep") -> tuple[str, str]:
    """(chosen candidate, why) from rows by name with 'quality', 'diversity' (and, for the margin rule,
    'quality_se': the standard error of the candidate's quality difference to the base); 'base' is the
    reference. The rules are the module docstring's."""
    base_q, base_d = rows["base"]["quality"], rows["base"]["diversity"]
    cands = {k: v for k, v in rows.items() if k not in ("base", "beta0")}
    if rule == "both":
        slack = {k: min(v["quality"] - base_q - v["quality_se"], v["diversity"] - base_d - v["diversity_se"])
                 for k, v in cands.items()}
        eligible = [k for k in cands if slack[k] >= 0]
        if eligible:
            best = max(eligible, key=lambda k: cands[k]["diversity"])
            return best, (f"most diverse of the {len(eligible)} candidate(s) whose validation quality and diversity each "
                          f"beat the base's ({base_q:.3f}, {base_d:.3f}) by at least one standard error")
        best = max(slack, key=slack.get)
        return best, (f"no candidate beat both the base's validation quality ({base_q:.3f}) and diversity ({base_d:.3f}) "
                      f"by one standard error: the one with the largest smaller margin minus its standard error")
    if rule == "margin":
        eligible = {k: v for k, v in cands.items()
                    if v["quality"] - base_q >= v["quality_se"] and v["diversity"] > base_d}
        if eligible:
            best = max(eligible, key=lambda k: eligible[k]["diversity"])
            return best, (f"most diverse of the {len(eligible)} candidate(s) more diverse than the base ({base_d:.3f}) "
                          f"whose validation quality beats the base's ({base_q:.3f}) by at least one standard error")
        best = max(cands, key=lambda k: cands[k]["quality"] - cands[k]["quality_se"])
        return best, (f"no candidate beat the base's validation quality ({base_q:.3f}) by one standard error while "
                      f"more diverse than it: the one with the largest quality margin minus its standard error")
    eligible = {k: v for k, v in cands.items() if v["quality"] >= base_q}
    if eligible:
        best = max(eligible, key=lambda k: eligible[k]["diversity"])
        return best, f"most diverse of the {len(eligible)} candidate(s) whose validation quality ≥ the base's ({base_q:.3f})"
    best = max(cands, key=lambda k: cands[k]["quality"])
    return best, f"no candidate kept the base's validation quality ({base_q:.3f}): the one with the best quality"


def difference_se(per_seed: list[list[float]], base: list[float]) -> tuple[float, float]:
    """(Δ, SE) of a candidate's metric against the base's: per_seed holds each student seed's mean
    quality (or diversity) per prompt (the evaluation's ``per_prompt["quality"]``), base the base's, on
    the same prompts in the same order; SE² = s²_prompts/P + s²_seeds/S (module docstring)."""
    import numpy as np
    if len(base) < 2 or any(len(q) != len(base) for q in per_seed):
        raise UserError("the selection's evaluations do not share the same 2 or more prompts: delete the --out "
                        "folder's eval_* folders and rerun `divcfg select`")
    diff = np.asarray(per_seed, np.float64) - np.asarray(base, np.float64)        # S × P
    s_p = diff.mean(axis=0).var(ddof=1) / diff.shape[1]
    s_s = diff.mean(axis=1).var(ddof=1) / diff.shape[0] if diff.shape[0] > 1 else 0.0
    return float(diff.mean()), float(np.sqrt(s_p + s_s))


def _systems(results_file: Path) -> dict[str, dict]:
    """An evaluation's results.json rows by system name."""
    return {r["name"]: r for r in json.loads(results_file.read_text())["systems"]}


def _row(r: dict) -> dict:
    keep = ("quality", "quality_ci_low", "quality_ci_high", "diversity", "diversity_ci_low", "diversity_ci_high",
            "valid_rate", "mean_length", "attr_key_relative", "attr_meter")
    return {k: r.get(k) for k in keep}


def _mean_rows(rows: list[dict]) -> dict:
    """Seed-averaged row: the mean of every numeric field (intervals too: a summary, not a new interval)."""
    return {k: (sum(r[k] for r in rows) / len(rows) if all(isinstance(r.get(k), (int, float)) for r in rows) else None)
            for k in rows[0]}


@dataclass
class SelectionRun:
    """Where one selection's pieces live and the commands that make them: the demo's γ*, shipped (or
    trained) checkpoints and data, the candidates' folders and their validation evaluations. Shared by
    `divcfg select` and `benchmarks/gpu_students.py` (which trains a candidate's step budgets as
    snapshots of one run)."""
    preset: str
    root: Path
    out: Path
    gamma: float
    ck: dict
    data_dir: Path
    num_prompts: int = 48
    generations: int = 4
    threads: int = 1
    device: str = "cpu"

    @classmethod
    def open(cls, preset: str, demo_root: str, out: str, **kw) -> "SelectionRun":
        from divcfg.demo import PRESETS
        p, root = PRESETS[preset], Path(demo_root)
        try:
            gamma = float(json.loads((root / "demo.json").read_text())["gamma_star"])
        except (OSError, ValueError, KeyError):
            raise UserError(f"'{root}/demo.json' has no γ*: run `divcfg demo --preset {preset} --root {root}` first "
                            f"(its gamma stage chooses γ* on validation prompts)") from None
        ck = {k: root / "shipped" / k for k in ("base", "embedder", "scorer")} if p.shipped else \
            {k: root / k for k in ("base", "embedder", "scorer")}
        Path(out).mkdir(parents=True, exist_ok=True)
        return cls(preset, root, Path(out), gamma, ck, Path("data") / p.data_preset, **kw)

    def student(self, cand: Candidate, seed: int) -> Path:
        return self.out / (cand.name + (f"_s{seed}" if seed else ""))

    def finetune_args(self, cand: Candidate, seed: int, out: Path | None = None) -> list[str]:
        """The ``divcfg finetune`` command that trains ``cand`` as the demo trains its diversity student."""
        from divcfg.demo import PRESETS, _flags, init_from_beta0
        init = init_from_beta0(self.root, seed, cand, self.preset)
        return ["finetune", *_flags(PRESETS[self.preset].finetune), "--base", str(self.ck["base"]),
                "--gamma", f"{cand.gamma(self.gamma):g}", "--beta", f"{cand.beta:g}", *cand.flags(),
                "--seed", str(seed), "--embedder", str(self.ck["embedder"]), "--scorer", str(self.ck["scorer"]),
                "--data-dir", str(self.data_dir), "--out", str(out or self.student(cand, seed)), "--resume",
                "--threads", str(self.threads), "--device", self.device, "--no-progress", *init]

    def _eval_args(self) -> list[str]:
        """Every evaluation's flags: the same validation prompts, sampling seed and judges; no CFG, τ or merges."""
        from divcfg.demo import PRESETS
        p = PRESETS[self.preset]
        return ["evaluate", "--preset", p.evaluate.get("preset", self.preset), "--split", "val",
                "--num-prompts", str(self.num_prompts), "--generations", str(self.generations), "--cfg-gammas", "",
                "--temperatures", "", "--lams", "", "--embedder", str(self.ck["embedder"]),
                "--scorer", str(self.ck["scorer"]), "--data-dir", str(self.data_dir), "--seed", "0",
                "--threads", str(self.threads), "--device", self.device]

    def reference(self) -> dict[str, dict]:
        """The base (and the demo's β=0 student, where its folder holds a finished one) on validation prompts."""
        from divcfg.cli import run_command
        from divcfg.stages import is_finished
        ref = self.out / "eval_reference"
        if not (ref / "results.json").exists():
            beta0 = self.root / "ft_beta0"
            with_beta0 = is_finished(beta0)
            print(f"evaluating the base{' and the β=0 student' if with_beta0 else ''} on {self.num_prompts} "
                  f"validation prompts …", flush=True)
            run_command([*self._eval_args(), "--base", str(self.ck["base"]),
                         *(["--quality", str(beta0)] if with_beta0 else []), "--out", str(ref)])
        return _systems(ref / "results.json")

    def candidate(self, cand: Candidate, seed: int) -> dict:
        """Train (unless finished) and evaluate (unless cached) one candidate seed; its validation row."""
        from divcfg.cli import run_command
        from divcfg.stages import is_finished
        sdir = self.student(cand, seed)
        edir = sdir.with_name(f"eval_{sdir.name}")
        if not is_finished(sdir):
            print(f"training candidate {sdir.name} …", flush=True)
            run_command(self.finetune_args(cand, seed))
        if not (edir / "results.json").exists():
            print(f"evaluating candidate {sdir.name} on validation prompts …", flush=True)
            # the candidate alone, in the base's slot: the same prompts and sampling seed as the
            # reference run's base, at half the cost of re-sampling the base
            run_command([*self._eval_args(), "--base", str(sdir / "checkpoint"), "--out", str(edir)])
        return _systems(edir / "results.json")["base"]


def run_selection(preset: str, demo_root: str, candidates: list[Candidate], out: str, seeds: tuple[int, ...] = (0,),
                  num_prompts: int = 48, generations: int = 4, threads: int = 1, rule: str = "keep",
                  device: str = "cpu") -> dict:
    run = SelectionRun.open(preset, demo_root, out, num_prompts=num_prompts, generations=generations,
                            threads=threads, device=device)
    reference = run.reference()
    base = reference["base"]
    rows: dict[str, dict] = {"base": _row(base)}
    if "distilled" in reference:   # the demo's β=0 student, for reference
        rows["beta0"] = _row(reference["distilled"])
    for cand in candidates:
        results = [run.candidate(cand, seed) for seed in seeds]
        per_seed = [_row(r) for r in results]
        delta, se = difference_se([r["per_prompt"]["quality"] for r in results], base["per_prompt"]["quality"])
        d_delta, d_se = difference_se([r["per_prompt"]["diversity"] for r in results], base["per_prompt"]["diversity"])
        rows[cand.name] = {"form": cand.form, "beta": cand.beta, "group_size": cand.group,
                           "divergence": cand.divergence, "teacher_gamma": cand.gamma(run.gamma),
                           "teacher_temperature": cand.teacher_temperature, "label": cand.label,
                           **_mean_rows(per_seed), "quality_delta": delta, "quality_se": se,
                           "diversity_delta": d_delta, "diversity_se": d_se,
                           "per_seed": {str(s): {k: r[k] for k in ("quality", "diversity")} for s, r in zip(seeds, per_seed)}}
    chosen, why = choose(rows, rule)
    result = {"preset": preset, "gamma_star": run.gamma, "seeds": list(seeds), "split": "val", "num_prompts": num_prompts,
              "generations": generations, "rule": rule, "rule_text": RULES[rule],
              "rows": rows, "chosen": chosen, "why": why, "provenance": provenance(seeds[0], stage="select")}
    write_json_atomic(run.out / "selection.json", result)
    (run.out / "selection.md").write_text(format_table(result) + "\n")
    plot_selection(result, run.out / "selection.png")
    print(format_table(result))
    return result


def plot_selection(result: dict, png: Path) -> None:
    """The validation plane: x = quality, y = diversity; the base and β=0, each candidate's seed points
    joined to its mean, the mean's ± SE of Δq as a horizontal bar; dashed lines at the base's quality
    and diversity (the rule's bar, upper right of both)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    base = rows["base"]
    ax.axvline(base["quality"], color="0.5", ls="--", lw=0.8)
    ax.axhline(base["diversity"], color="0.5", ls="--", lw=0.8)
    ax.plot(base["quality"], base["diversity"], "kX", ms=9, label="base")
    if "beta0" in rows:
        ax.plot(rows["beta0"]["quality"], rows["beta0"]["diversity"], "D", color="#2ca02c", ms=7, label="β=0")
    palette = [c for j, c in enumerate(plt.cm.tab10.colors) if j != 2]   # green is β=0's
    for i, (name, r) in enumerate((k, v) for k, v in rows.items() if k not in ("base", "beta0")):
        c = palette[(i + 1) % len(palette)]
        for s in (r.get("per_seed") or {}).values():
            ax.plot([s["quality"], r["quality"]], [s["diversity"], r["diversity"]], "-", color=c, lw=0.6, alpha=0.6)
            ax.plot(s["quality"], s["diversity"], ".", color=c, alpha=0.7)
        ax.errorbar(r["quality"], r["diversity"], xerr=r.get("quality_se") or 0, fmt="o", color=c, ms=7,
                    mfc="white" if name != result["chosen"] else c, capsize=3,
                    label=r.get("label", name) + (" (chosen)" if name == result["chosen"] else ""))
    seeds = result.get("seeds", [0])
    ax.set_xlabel("quality on validation prompts (alignment scorer)")
    ax.set_ylabel("diversity (1 − cos of E, within prompt)")
    ax.set_title(f"{result['num_prompts']} validation prompts × {result['generations']}, seeds "
                 f"{', '.join(map(str, seeds))}; bars: ± SE of Δq", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def format_table(result: dict) -> str:
    seeds = result.get("seeds", [result.get("seed", 0)])
    lines = [f"Validation ({result['num_prompts']} prompts × {result['generations']}, γ*={result['gamma_star']:g}, "
             f"student seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
             + (", means over seeds" if len(seeds) > 1 else "") + f"; rule: {result.get('rule', 'keep')})", "",
             "| system | quality [95% CI] | Δ quality vs base ± SE | diversity [95% CI] | Δ diversity vs base ± SE "
             "| valid | length |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        label = {"base": "base", "beta0": "β=0 (demo's)"}.get(name) or r.get("label") or f"{r['form']} β={r['beta']:g}"
        mark = " **chosen**" if name == result["chosen"] else ""
        delta, d_delta = ((f"{r[k + '_delta']:+.3f} ± {r[k + '_se']:.3f}" if r.get(k + "_se") is not None else "")
                          for k in ("quality", "diversity"))
        lines.append(f"| {label}{mark} | {r['quality']:.3f} [{r['quality_ci_low']:.3f}, {r['quality_ci_high']:.3f}] "
                     f"| {delta} | {r['diversity']:.3f} [{r['diversity_ci_low']:.3f}, {r['diversity_ci_high']:.3f}] "
                     f"| {d_delta} | {r['valid_rate']:.2f} | {r['mean_length']:.0f} |")
    lines += ["", f"Chosen: {result['chosen']}: {result['why']}."]
    if len(seeds) > 1:
        lines += ["", "Intervals are seed means of each seed's interval over prompts, a summary only; "
                  "Δ's SE covers prompts and seeds."]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    from divcfg.config import arg_type
    from divcfg.demo import PRESETS
    from divcfg.stages import seed_list
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="the demo preset whose students are compared")
    parser.add_argument("--demo-root", default=None, help="the demo's run folder (default runs/<preset>): its γ* and checkpoints")
    parser.add_argument("--candidates", default="additive:5,additive:10,additive:15,additive:20,additive:40,additive:10:g4,additive:10:t2,"
                        "additive:15:t2,multiplicative:20,multiplicative:40",
                        help="form:β[:gG][:fkl][:tγ][:hotτ][:nN][:sN][:meter|key][:fromb0] items (form: additive, multiplicative or length; gG: G generations "
                        "per prompt, leave-one-out baseline, 16/G prompts per step; fkl: forward KL to the teacher; "
                        "tγ: the CFG teacher at γ instead of the demo's γ*; hotτ: the teacher at temperature τ (β may then be 0); nN: training generations of up to N tokens; sN: N "
                        "training steps; meter/key: diversity paid only to generations keeping the prompt's meter / "
                        "also its key; fromb0: start from the demo's β=0 student of the same seed)")
    parser.add_argument("--out", default="runs/select", help="folder for the candidates, their evaluations and the table")
    parser.add_argument("--seeds", type=seed_list, default=(0,),
                        help="the candidates' training seeds, e.g. 0,1,2 (seed s > 0 in <out>/<name>_s<s>); the rule "
                        "uses means over seeds")
    parser.add_argument("--rule", choices=list(RULES), default="margin",
                        help="keep: most diverse with validation quality ≥ the base's (sessions 5–8); margin: most "
                        "diverse of those more diverse than the base whose quality beats it by one standard error; "
                        "both: most diverse of those whose quality and diversity each beat the base's by one "
                        "standard error")
    parser.add_argument("--num-prompts", type=arg_type(int, ge=1), default=48, help="validation prompts")
    parser.add_argument("--generations", type=arg_type(int, ge=2), default=4, help="generations per prompt")
    parser.add_argument("--threads", type=arg_type(int, ge=0), default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device of the students' training and sampling (cpu, cuda)")


def run(args) -> None:
    run_selection(args.preset, args.demo_root or f"runs/{args.preset}", parse_candidates(args.candidates), args.out,
                  args.seeds, args.num_prompts, args.generations, args.threads, args.rule, args.device)
