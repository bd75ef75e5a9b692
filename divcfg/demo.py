"""`divcfg demo`: the whole pipeline on the embedded music21 testbed.

    data → base model → diversity embedder E → alignment scorer → γ* (CFG sweep on validation
    prompts) → distilled student β=0 → diversity student β>0 → evaluation of base, CFG γ-sweep,
    temperature sweep, both students and the merge λ-sweep on held-out prompts → HTML report

Every stage is cached, and a cached training stage means a *finished* one: pretraining, the
embedder, the scorer and the students are skipped only when their folder holds the completion
marker ``DONE.json`` (``divcfg.stages``), written as each stage's very last act. A stage without
it (interrupted, even by ``kill -9``) is rerun with ``--resume`` and continues from its last
checkpoint. ``--force STAGE`` deletes the stage's folder and redoes it from scratch.

Every training stage is bounded by steps (the presets below), so the demo's results do not depend
on the machine's speed; wall time is only a safety cap. A stage that the cap cut short says so on
stderr, and ``<root>/demo.json`` records it under ``stages.<name>.cut_short`` (null when the stage
reached its planned steps). Wall times of every stage and the chosen γ* are written there too;
the last line names the report.

γ* is chosen on *validation* prompts (never the held-out test prompts the evaluation reports):
the γ with the highest mean alignment score, where an empty or note-less generation scores −1.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from divcfg.cli import run_command
from divcfg.errors import UserError
from divcfg.provenance import git_commit, provenance, write_json_atomic
from divcfg.recipe import FORMS, Candidate
from divcfg.stages import is_finished, read_marker


@dataclass(frozen=True)
class DemoPreset:
    data_preset: str
    pretrain: dict
    embedder: dict
    scorer: dict
    gamma_sweep: dict
    finetune: dict
    evaluate: dict
    recipe: Candidate       # the diversity student's recipe (divcfg.recipe: reward form, β, G, divergence, teacher γ,
                            # token cap, steps, reward gate, start from β=0); β=0 trains without a reward, reverse KL,
                            # distilling γ*, from the base
    seeds: tuple[int, ...] = (0,)   # the students' training seeds (--seeds overrides)
    threads: int = 2
    shipped: bool = False   # base, E and scorer from divcfg.pretrained (the three stages above: --from-scratch)


# Every stage is bounded by steps; "minutes" / the presets' max_minutes are only safety caps.
# "demo" and "small" start from the shipped base, E and scorer (the small preset's architecture and
# commands; the base trained for 10,560 steps on a GPU, E with 2,000 steps:
# divcfg/weights/music21_small/MANIFEST.json); --from-scratch trains them on the CPU (660-step base).
# The diversity student: additive reward, β=15, distilling CFG at γ* like the β=0 student. Session 8's
# `divcfg select` (48 *validation* prompts, seed 0, rule "the most diverse student whose validation quality
# is not below the base's") chose additive β=10 with the teacher at γ=2 among additive β ∈ {5, 10, 15,
# 20, 40}, β=10 with G=4, β ∈ {10, 15} with a γ=2 teacher and multiplicative β ∈ {20, 40}
# (docs/results/selection/selection.md). It fell below the base's quality on the test prompts, so
# session 9 rechecked the three candidates more diverse than the base and within 0.01 of its quality
# with three seeds, 128 validation prompts and a margin of one standard error, by a plan committed
# before the runs (docs/results/selection_margin/): none cleared the margin, and its fallback (the
# largest Δq − SE) chose additive β=15. Session 10 tried 2× and 4× the training steps (on a lent GPU) and a
# key-gated reward the same way (docs/results/gpu_students/, docs/results/key_gate/): neither cleared the margin.
# The diversity student trained from its seed's β=0 student (`additive:15:fromb0`) did, by +0.016 ± 0.012
# of quality and 0.0005 of diversity (docs/results/from_beta0/), and is the presets' recipe since session 11
# (from_beta0=True below; the earlier recipe's results: docs/results/beta15/). With the former 660-step
# base the first rule chose additive β=5 (docs/results/base660/selection/).
PRESETS: dict[str, DemoPreset] = {
    # `make demo`: students of 120 steps, 32 held-out prompts × 4 (≤ 15 min with set-up, 2 idle cores)
    "demo": DemoPreset(
        data_preset="small",
        pretrain={"preset": "small"},                             # with --from-scratch only (else shipped)
        embedder={"preset": "small", "steps": "2000"},
        scorer={"preset": "small"},
        gamma_sweep={"cfg-gammas": "1.5,2,3", "num-prompts": "24", "generations": "2", "max-new-tokens": "256"},
        finetune={"preset": "demo", "max-steps": "120"},
        evaluate={"preset": "demo", "num-prompts": "32", "cfg-gammas": "1.5,2,3", "temperatures": "1.2",
                  "lams": "0,0.25,0.5,0.75,1"},
        recipe=Candidate("additive", 15.0, from_beta0=True), shipped=True),
    # minutes: for the test suite
    "tiny": DemoPreset(
        data_preset="tiny",
        pretrain={"preset": "tiny", "max-steps": "60"},
        embedder={"preset": "tiny", "steps": "20", "eval-pieces": "6"},
        scorer={"preset": "tiny", "steps": "20", "eval-pieces": "6"},
        gamma_sweep={"preset": "tiny", "cfg-gammas": "1.5,2", "num-prompts": "3", "generations": "2",
                     "max-new-tokens": "48", "temperatures": "", "quality": "", "diversity": ""},
        finetune={"preset": "tiny"},
        evaluate={"preset": "tiny"},
        recipe=Candidate("additive", 15.0), threads=2),
}

# the significance run: the demo's students for three seeds, 128 held-out prompts × 4, intervals
# over prompts and seeds (the demo's students, not the finetune "small" preset's, which cost 5× as much each)
PRESETS["small"] = dataclasses.replace(PRESETS["demo"], evaluate={**PRESETS["demo"].evaluate, "num-prompts": "128"},
                                       seeds=(0, 1, 2))


STAGES = ("data", "pretrain", "embedder", "scorer", "gamma", "finetune_beta0", "finetune_beta", "evaluate",
          "report")


def _flags(d: dict) -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        out += [f"--{k}", str(v)]
    return out


def _call(argv: list[str]) -> None:
    try:
        run_command(argv)
    except UserError as e:  # one line: the stage and its cause
        raise UserError(f"stage `divcfg {' '.join(argv[:2])}` failed: {e} (then rerun `divcfg demo`; "
                        f"finished stages are kept)") from None


def _finished(path: Path) -> bool:
    """A training stage is cached only when it ran to its end (its DONE.json marker)."""
    return is_finished(path)


def _evaluated(eval_dir: Path, students: dict[str, list[str]]) -> bool:
    """The evaluation is cached when it exists for the same students (seeds and recipes)."""
    try:
        config = json.loads((eval_dir / "results.json").read_text())["config"]
        return all(config[role] == ",".join(paths) for role, paths in students.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def choose_gamma(results_file: Path) -> tuple[float, dict[float, float]]:
    """γ with the best mean validation alignment among the CFG sweep (ties → the smaller γ)."""
    res = json.loads(results_file.read_text())
    by_gamma = {float(r["gamma"]): float(r["quality"]) for r in res["systems"]
                if r["family"] in ("base", "cfg") and float(r.get("temperature", 1.0)) == 1.0}
    best = max(sorted(by_gamma), key=lambda g: by_gamma[g])
    return best, by_gamma


def student_dir(root: Path, beta: float, seed: int, recipe: Candidate | None = None) -> Path:
    """A student's folder: ``ft_beta{β}`` for seed 0 (as a single-seed demo writes it), ``ft_beta{β}_s{seed}``;
    a diversity student (β > 0, or a β=0 recipe with a hotter teacher) of another ``recipe`` than the paper's
    (additive, G=2, reverse KL, the preset's teacher, tokens and steps) carries its suffixes, e.g. ``ft_beta5_mult``,
    ``ft_beta5_g4_fkl_t3_s1``, ``ft_beta0_hot1.3`` (never mistaken for a cached student of another recipe,
    nor a hot β=0 recipe for the β=0 student)."""
    name = f"ft_beta{beta:g}"
    if recipe is not None and (beta > 0 or recipe.teacher_temperature != 1.0):  # a hot β=0 recipe: not ft_beta0
        name += ("" if recipe.form == "additive" else f"_{FORMS[recipe.form]}") + recipe.modifiers
    return root / (name if seed == 0 else f"{name}_s{seed}")


def init_from_beta0(root: Path, seed: int, recipe: Candidate, preset: str) -> list[str]:
    """``--init`` of seed ``seed``'s β=0 student in ``root`` for a recipe that starts from it (``fromb0``), else
    nothing; a one-line error when that student has not finished (`divcfg demo` trains it first)."""
    if not recipe.from_beta0:
        return []
    beta0 = student_dir(root, 0.0, seed)
    if not is_finished(beta0):
        raise UserError(f"{recipe.name} starts from the β=0 student of seed {seed}, and '{beta0}' holds no finished "
                        f"one: run `divcfg demo --preset {preset} --root {root} --seeds {seed}` first")
    return ["--init", str(beta0)]


def _check_same_shipped(record: dict, root_dir: Path) -> None:
    """Cached stages are only reused with the shipped checkpoints they were made with: a run folder
    whose later stages (γ sweep, students, evaluation) came from other shipped files (another divcfg
    version, or a folder from before the files were recorded) is refused, never silently mixed."""
    from divcfg.pretrained import manifest
    files = manifest()["files"]
    later = [s for s in record["stages"] if s not in STAGES[:4]]
    if later and record.get("shipped_files") != files:
        raise UserError(f"'{root_dir}' holds stages ({', '.join(later[:3])}) made with other shipped checkpoints "
                        f"than this divcfg's: pass a new --root, or delete '{root_dir}' to rerun them")
    record["shipped_files"] = files


def run_demo(preset: str = "demo", root: str | None = None, data_root: str = "data",
             force: tuple[str, ...] = (), beta: float | None = None, seeds: tuple[int, ...] | None = None,
             from_scratch: bool = False, recipe: str | None = None) -> Path:
    p = PRESETS[preset]
    if recipe is not None:  # the diversity student's recipe in `divcfg select`'s syntax, e.g. additive:5:g4:fkl
        from divcfg.recipe import parse_candidates
        cands = parse_candidates(recipe, "--recipe")
        if len(cands) != 1:
            raise UserError(f"--recipe takes one form:β[:gG][:fkl][:tγ][:hotτ][:nN][:sN][:meter|key][:fromb0] item, e.g. additive:5:g4:fkl: got {recipe!r}")
        p = dataclasses.replace(p, recipe=cands[0])
    seeds = tuple(seeds) if seeds else p.seeds
    if beta is not None:
        if beta <= 0:
            raise UserError(f"--beta must be > 0 (the diversity student; β=0 is always trained): got {beta:g}")
        p = dataclasses.replace(p, recipe=dataclasses.replace(p.recipe, beta=beta))
    root_dir = Path(root or f"runs/{preset}" + ("-scratch" if p.shipped and from_scratch else ""))
    root_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_root) / p.data_preset
    ck = {name: root_dir / name for name in ("base", "embedder", "scorer", "gamma_sweep", "eval")}
    record_file = root_dir / "demo.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {"stages": {}}
    record["preset"] = preset
    started_at = git_commit()   # the stages run this commit's code; provenance below is taken at the end
    threads = ["--threads", str(p.threads)]
    shipped = p.shipped and not from_scratch
    record["shipped_checkpoints"] = shipped
    if shipped:  # the shipped base, E and scorer: verified (sha256) and installed, not trained
        _check_same_shipped(record, root_dir)
        ck.update(base=root_dir / "shipped" / "base", embedder=root_dir / "shipped" / "embedder",
                  scorer=root_dir / "shipped" / "scorer")

    def stage(name: str, done: bool, argv_fn, run_dir: Path | None = None) -> None:
        """Run a stage unless cached; ``run_dir``: a training stage's folder (resumed when
        unfinished, deleted first under ``--force``, its marker's ``cut_short`` recorded)."""
        i = STAGES.index(name.split("_s")[0]) + 1   # finetune_beta0_s1: seed 1 of finetune_beta0
        if done and name not in force and name.split("_s")[0] not in force:
            print(f"[{i}/{len(STAGES)}] {name}: cached, skipped")
            return
        if run_dir is not None and (name in force or name.split("_s")[0] in force) and run_dir.exists():
            print(f"[{i}/{len(STAGES)}] {name}: --force, removing '{run_dir}'")
            shutil.rmtree(run_dir)
        how = "resuming" if run_dir is not None and run_dir.exists() else "running"
        print(f"[{i}/{len(STAGES)}] {name}: {how} `divcfg {' '.join(argv_fn()[:1])}` …", flush=True)
        t0 = time.time()
        _call(argv_fn())
        record["stages"][name] = {"wall_s": round(time.time() - t0, 1)}
        if run_dir is not None:
            marker = read_marker(run_dir) or {}
            record["stages"][name].update(steps_done=marker.get("steps_done"), cut_short=marker.get("cut_short"))
        write_json_atomic(record_file, record)
        print(f"[{i}/{len(STAGES)}] {name}: done in {time.time() - t0:.0f} s", flush=True)

    stage("data", (data_dir / "manifest.json").exists(),
          lambda: ["data", "--preset", p.data_preset, "--data-dir", data_root])
    if shipped:
        from divcfg.pretrained import install
        for name, comp in (("pretrain", "base"), ("embedder", "embedder"), ("scorer", "scorer")):
            t0 = time.time()
            install(ck[comp] / "checkpoint" if comp == "base" else ck[comp], comp)
            record["stages"][name] = {"wall_s": round(time.time() - t0, 1), "shipped": True}
            print(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}: shipped checkpoint, sha256 verified → "
                  f"'{ck[comp]}' (--from-scratch trains it)")
    else:
        stage("pretrain", _finished(ck["base"]),
              lambda: ["pretrain", *_flags(p.pretrain), "--data-dir", str(data_dir), "--out", str(ck["base"]),
                       "--resume", *threads], ck["base"])
        stage("embedder", _finished(ck["embedder"]),
              lambda: ["embedder", "train", *_flags(p.embedder), "--data-dir", str(data_dir),
                       "--out", str(ck["embedder"]), "--resume", *threads], ck["embedder"])
        stage("scorer", _finished(ck["scorer"]),
              lambda: ["scorer", "train", *_flags(p.scorer), "--data-dir", str(data_dir),
                       "--out", str(ck["scorer"]), "--resume", *threads], ck["scorer"])
    stage("gamma", (ck["gamma_sweep"] / "results.json").exists(),
          lambda: ["evaluate", *_flags({"temperatures": "", "quality": "", "diversity": "", "lams": "",
                                        **p.gamma_sweep}),
                   "--split", "val", "--base", str(ck["base"]), "--embedder", str(ck["embedder"]),
                   "--scorer", str(ck["scorer"]), "--data-dir", str(data_dir), "--out", str(ck["gamma_sweep"]),
                   *threads])
    gamma, by_gamma = choose_gamma(ck["gamma_sweep"] / "results.json")
    record["gamma_star"] = gamma
    record["gamma_sweep_val_quality"] = {f"{g:g}": q for g, q in by_gamma.items()}
    write_json_atomic(record_file, record)
    print(f"γ* = {gamma:g} (validation alignment by γ: "
          + ", ".join(f"{g:g}: {q:.3f}" for g, q in sorted(by_gamma.items())) + ")")
    students = {"quality": [], "diversity": []}   # one β=0 and one β>0 student per seed
    for seed, (role, name, beta) in ((s, x) for s in seeds for x in (("quality", "finetune_beta0", 0.0),
                                                                      ("diversity", "finetune_beta", p.recipe.beta))):
        recipe = p.recipe if role == "diversity" else None   # the β=0 student is the paper's, whatever the recipe
        out = student_dir(root_dir, beta, seed, recipe)
        students[role].append(str(out))
        stage(name if seed == 0 else f"{name}_s{seed}", _finished(out),
              lambda beta=beta, out=out, seed=seed, r=recipe: ["finetune", *_flags(p.finetune), "--base", str(ck["base"]),
                                                     "--gamma", f"{r.gamma(gamma) if r else gamma:g}",
                                                     "--beta", f"{beta:g}",
                                                     *(r.flags() if r else []),
                                                     *(init_from_beta0(root_dir, seed, r, preset) if r else []),
                                                     "--seed", str(seed), "--embedder", str(ck["embedder"]),
                                                     "--scorer", str(ck["scorer"]), "--data-dir", str(data_dir),
                                                     "--out", str(out), "--resume", *threads], out)
    record["student_seeds"] = list(seeds)
    r = p.recipe
    record["diversity_recipe"] = {"form": r.form, "beta": r.beta, "group_size": r.group, "divergence": r.divergence,
                                  "teacher_gamma": r.gamma(gamma), "train_tokens": r.max_new_tokens,
                                  "train_steps": r.steps, "reward_gate": r.gate, "from_beta0": r.from_beta0,
                                  "teacher_temperature": r.teacher_temperature}
    stage("evaluate", _evaluated(ck["eval"], students),
          lambda: ["evaluate", *_flags(p.evaluate), "--base", str(ck["base"]),
                   "--quality", ",".join(students["quality"]), "--diversity", ",".join(students["diversity"]),
                   "--embedder", str(ck["embedder"]), "--scorer", str(ck["scorer"]),
                   "--data-dir", str(data_dir), "--out", str(ck["eval"]), *threads])
    stage("report", False,
          lambda: ["report", str(ck["eval"]),
                   "--training-log", f"β=0={Path(students['quality'][0]) / 'metrics.jsonl'}",
                   "--training-log", f"β={p.recipe.beta:g}={Path(students['diversity'][0]) / 'metrics.jsonl'}"])
    record["total_wall_s"] = round(sum(s["wall_s"] for s in record["stages"].values()), 1)
    record["provenance"] = provenance(0, stage="demo", started_at_commit=started_at)
    if record["provenance"]["git_commit"] != started_at:
        print(f"warning: the source tree changed during the run (from {started_at} to "
              f"{record['provenance']['git_commit']}); each stage's own provenance records the code it ran")
    write_json_atomic(record_file, record)
    report = ck["eval"] / "report.html"
    print(f"report: {report.resolve()}")
    return report


def add_arguments(parser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="demo: `make demo`, ≤ 15 min on 2 cores; small: the paper-scale CPU run; tiny: tests")
    parser.add_argument("--root", default=None, help="folder for all runs (default: runs/<preset>)")
    parser.add_argument("--data-root", default="data", help="folder for data sets")
    from divcfg.config import arg_type
    from divcfg.stages import seed_list
    parser.add_argument("--beta", type=arg_type(float, gt=0), default=None,
                        help="β of the diversity student (default: the preset's: 15 for demo and small, chosen on validation "
                             "prompts by `divcfg select`, see README Results); the rest of the preset's recipe stays "
                             "(demo and small: started from the β=0 student); --recipe sets all of it")
    parser.add_argument("--recipe", default=None,
                        help="the diversity student's recipe in `divcfg select`'s syntax, form:β[:gG][:fkl][:tγ][:hotτ][:nN][:sN][:meter|key][:fromb0] (e.g. "
                             "additive:5:g4:fkl; default: the preset's, additive:15:fromb0 for demo and small); --beta then overrides its β")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the base, E and the scorer instead of installing the shipped checkpoints "
                             "(divcfg/weights; the small preset's commands made them)")
    parser.add_argument("--seeds", type=seed_list, default=None,
                        help="training seeds of the students, e.g. 0,1,2: a β=0 and a β>0 student per seed "
                             "(ft_beta0, ft_beta0_s1, …); the evaluation aggregates over them (default: the preset's, "
                             "0 for demo, 0,1,2 for small)")
    parser.add_argument("--force", action="append", default=[],
                        help="redo a stage even if cached (repeatable): data, pretrain, embedder, scorer, "
                             "gamma, finetune_beta0, finetune_beta, evaluate")


def run(args) -> None:
    run_demo(args.preset, args.root, args.data_root, tuple(args.force), args.beta, args.seeds,
             args.from_scratch, args.recipe)
