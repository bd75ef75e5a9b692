"""`divcfg reproduce NAME`: regenerate a published table and figure from nothing, then diff them.

A *recipe* is the list of divcfg commands that produced a published result, with the seeds it states.
``divcfg reproduce NAME`` runs them in a run folder of its own (``runs/reproduce/NAME``; ``--fresh``
deletes it first, otherwise finished stages are kept and unfinished ones resumed), writes the new
figures next to the published ones (``docs/results/reproduced/NAME/``: ``results.csv``,
``claims.json``, ``quality_diversity.png`` / ``.svg``, ``recipe.json`` with each command and its wall
time, ``diff.txt``), and prints the diff against the published table value by value: the published
value and interval, the new value, and whether the new value lies within the published interval.

Recipes (the seeds are the students' training seeds; every evaluation samples with seed 0):

- ``demo``: what ``make demo`` produces (``divcfg demo --preset demo``), published in
  ``docs/results/demo/results.csv``;
- ``small``: the significance run of the README's Results (``divcfg demo --preset small``: the demo's
  students for three seeds, 128 held-out prompts, intervals over prompts and seeds), published in
  ``docs/results/small/results.csv``;
- ``small_fkl``: the exploratory significance run of the forward-KL diversity student
  (``divcfg demo --preset small --recipe additive:5:g4:fkl``), published in
  ``docs/results/small_fkl/results.csv``;
- ``demo_beta5`` / ``small_beta5``: the same two runs with the former diversity recipe (additive β=5,
  the teacher at γ*), published in ``docs/results/beta5/{demo,small}/results.csv``;
- ``demo_beta10t2`` / ``small_beta10t2``: the same two runs with session 8's recipe (additive β=10, the
  teacher at γ=2), published in ``docs/results/beta10t2/{demo,small}/results.csv``;
- ``demo_beta15`` / ``small_beta15``: the same two runs with sessions 9–10's recipe (additive β=15, the
  diversity student started from the base), published in ``docs/results/beta15/{demo,small}/results.csv``;
- ``tiny``: the test suite's (tiny data, few steps, two seeds); nothing is published for it.

The demo command is itself the sequence data → pretrain → embedder E → alignment scorer → γ sweep on
validation prompts → a β=0 and a β>0 student per seed → evaluate (aggregated over seeds) → report; each
stage's command and wall time is recorded in the run's ``demo.json``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from divcfg.errors import UserError

DIFF_METRICS = ("quality", "diversity")          # the published intervals are theirs
EXTRA_METRICS = ("valid_rate", "empty_rate", "attr_key_exact", "attr_key_relative", "attr_meter")


@dataclass(frozen=True)
class Recipe:
    description: str
    steps: tuple[tuple[str, ...], ...]     # divcfg argv; {root}, {data} are filled in
    published: str                         # the published results.csv (relative to the repository)
    seeds: tuple[int, ...]
    eval_dir: str = "{root}/eval"
    extra: dict = field(default_factory=dict)


def _demo_steps(preset: str, seeds: tuple[int, ...], *extra: str) -> tuple[tuple[str, ...], ...]:
    return (("demo", "--preset", preset, "--seeds", ",".join(map(str, seeds)), *extra, "--root", "{root}",
             "--data-root", "{data}"),)


RECIPES: dict[str, Recipe] = {
    "demo": Recipe("what `make demo` produces", _demo_steps("demo", (0,)), "docs/results/demo/results.csv", (0,)),
    "small": Recipe("the README's significance run: the demo's students for three seeds, 128 held-out prompts",
                    _demo_steps("small", (0, 1, 2)), "docs/results/small/results.csv", (0, 1, 2)),
    "small_fkl": Recipe("the exploratory significance run of the forward-KL diversity student (β=5, G=4)",
                        _demo_steps("small", (0, 1, 2), "--recipe", "additive:5:g4:fkl"),
                        "docs/results/small_fkl/results.csv", (0, 1, 2)),
    "tiny": Recipe("the test suite's tiny run (tiny data, few steps, two student seeds)",
                   _demo_steps("tiny", (0, 1)), "docs/results/tiny/results.csv", (0, 1)),
}


def _former_recipe(folder: str, what: str, recipe: str) -> dict[str, Recipe]:
    """``demo_<folder>`` and ``small_<folder>``: `make demo` and the significance run with a former
    diversity recipe (``--recipe``), published in ``docs/results/<folder>/{demo,small}/results.csv``."""
    return {f"demo_{folder}": Recipe(f"`make demo` with {what}", _demo_steps("demo", (0,), "--recipe", recipe),
                                     f"docs/results/{folder}/demo/results.csv", (0,)),
            f"small_{folder}": Recipe(f"the significance run with {what}", _demo_steps("small", (0, 1, 2), "--recipe", recipe),
                                      f"docs/results/{folder}/small/results.csv", (0, 1, 2))}


RECIPES.update({**_former_recipe("beta5", "the former diversity recipe (additive β=5, the teacher at γ*)", "additive:5"),
                **_former_recipe("beta10t2", "session 8's diversity recipe (additive β=10, the teacher at γ=2)",
                                 "additive:10:t2"),
                **_former_recipe("beta15", "sessions 9–10's diversity recipe (additive β=15 from the base)", "additive:15")})


def _fill(argv: tuple[str, ...], root: Path, data: Path) -> list[str]:
    return [a.replace("{root}", str(root)).replace("{data}", str(data)) for a in argv]


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def read_table(path: Path) -> dict[str, dict]:
    """``results.csv`` rows by system name (the per-seed rows of a seeded run left out)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["name"]: r for r in rows if not r.get("seed") or r.get("aggregate") == "True"}


def diff_tables(published: dict[str, dict], new: dict[str, dict]) -> list[dict]:
    """One entry per (system, metric) present in both: published value and interval, new value, and
    ``within`` (the new value lies in the published interval; None where none was published)."""
    out = []
    for name, pub in published.items():
        if name not in new:
            continue
        for m in DIFF_METRICS + EXTRA_METRICS:
            p, n = _float(pub.get(m)), _float(new[name].get(m))
            if math.isnan(p) or math.isnan(n):
                continue
            lo, hi = _float(pub.get(f"{m}_ci_low")), _float(pub.get(f"{m}_ci_high"))
            within = None if math.isnan(lo) or math.isnan(hi) else bool(lo - 1e-12 <= n <= hi + 1e-12)
            out.append({"system": name, "metric": m, "published": p, "published_ci": [lo, hi], "new": n,
                        "delta": n - p, "within": within})
    return out


def format_diff(rows: list[dict], missing: list[str], added: list[str]) -> str:
    lines = [f"{'system':<16} {'metric':<18} {'published [interval]':>28} {'new':>8} {'Δ':>8}  within?"]
    for r in rows:
        lo, hi = r["published_ci"]
        interval = f"[{lo:.3f}, {hi:.3f}]" if not math.isnan(lo) else ""
        verdict = {True: "yes", False: "NO", None: "–"}[r["within"]]
        lines.append(f"{r['system']:<16} {r['metric']:<18} {r['published']:>8.3f} {interval:>19} {r['new']:>8.3f} "
                     f"{r['delta']:>+8.3f}  {verdict}")
    checked = [r for r in rows if r["within"] is not None]
    inside = sum(r["within"] for r in checked)
    lines.append(f"{inside} of {len(checked)} values with a published interval lie within it")
    if missing:
        lines.append(f"published systems not reproduced: {', '.join(missing)}")
    if added:
        lines.append(f"new systems, not published: {', '.join(added)}")
    return "\n".join(lines)


def reproduce(name: str, root: str | None = None, data_root: str | None = None, out_dir: str | None = None,
              published: str | None = None, fresh: bool = False) -> dict:
    """Run recipe ``name`` and write its figures and diff; returns ``{"diff", "claims", "out", ...}``."""
    from divcfg.cli import run_command
    from divcfg.provenance import provenance, write_json_atomic
    from divcfg.report import plot_quality_diversity

    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}': choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    root_dir = Path(root or f"runs/reproduce/{name}")
    data_dir = Path(data_root or "data")
    out = Path(out_dir or f"docs/results/reproduced/{name}")
    pub = Path(published or recipe.published)
    if fresh and root_dir.exists():
        print(f"--fresh: removing '{root_dir}'")
        shutil.rmtree(root_dir)
    record = {"recipe": name, "description": recipe.description, "seeds": list(recipe.seeds), "steps": []}
    for argv in recipe.steps:
        cmd = _fill(argv, root_dir, data_dir)
        print(f"$ divcfg {' '.join(cmd)}", flush=True)
        t0 = time.time()
        run_command(cmd)
        record["steps"].append({"command": "divcfg " + " ".join(cmd), "wall_s": round(time.time() - t0, 1)})
    eval_dir = Path(recipe.eval_dir.replace("{root}", str(root_dir)))
    results = json.loads((eval_dir / "results.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(eval_dir / "results.csv", out / "results.csv")
    write_json_atomic(out / "claims.json", results.get("claims") or {})
    plot_quality_diversity(results, out / "quality_diversity.png", out / "quality_diversity.svg")
    new = read_table(out / "results.csv")
    if pub.exists():
        old = read_table(pub)
        rows = diff_tables(old, new)
        text = (f"reproduction of '{name}' vs the published {pub}:\n"
                + format_diff(rows, sorted(set(old) - set(new)), sorted(set(new) - set(old))))
    else:
        rows = []
        text = (f"nothing published at {pub} yet: the new figures in {out} are the candidates "
                f"(copy results.csv there once reviewed)")
    claims = results.get("claims") or {}
    if claims:
        from divcfg.evaluation.claims import format_claims
        text += "\n" + format_claims(claims)
    (out / "diff.txt").write_text(text + "\n")
    record.update(published=str(pub), eval_dir=str(eval_dir), total_wall_s=round(sum(s["wall_s"] for s in record["steps"]), 1),
                  provenance=provenance(None, stage="reproduce"))
    write_json_atomic(out / "recipe.json", record)
    print(text)
    print(f"wrote {out}/results.csv, claims.json, quality_diversity.png/.svg, diff.txt, recipe.json")
    return {"diff": rows, "claims": claims, "out": str(out), "text": text, "record": record}


def add_arguments(parser) -> None:
    parser.add_argument("name", choices=sorted(RECIPES),
                        help="; ".join(f"{k}: {r.description}" for k, r in RECIPES.items()))
    parser.add_argument("--root", default=None, help="run folder (default: runs/reproduce/NAME)")
    parser.add_argument("--data-root", default=None, help="folder for data sets (default: data)")
    parser.add_argument("--out-dir", default=None, help="where the new figures go (default: docs/results/reproduced/NAME)")
    parser.add_argument("--published", default=None, help="the published results.csv to diff against "
                                                          "(default: the recipe's)")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first (from nothing)")


def run(args) -> None:
    reproduce(args.name, args.root, args.data_root, args.out_dir, args.published, args.fresh)
