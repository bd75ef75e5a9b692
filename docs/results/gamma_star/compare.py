"""β=0 students distilling CFG γ=2 against those distilling γ=3, on validation (PLAN.md beside this file).

Reads runs/gamma2/eval_g2_s{0,1,2} and eval_g3_s{1,2} (seed 0 of γ=3: runs/select_margin/eval_reference's
β=0 student) and runs/val_curves (the base's CFG curve); writes compare.md beside this file.

Δ = mean over seeds of γ=2 minus γ=3, paired by prompt; SE² = s²_prompts/P + (s²_seeds(γ=2) + s²_seeds(γ=3))/S.
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
R = Path("runs")


def system(path: Path, name: str = "base") -> dict:
    return next(s for s in json.loads(path.read_text())["systems"] if s["name"] == name)


g2 = [system(R / "gamma2" / f"eval_g2_s{s}" / "results.json") for s in (0, 1, 2)]
g3 = [system(R / "select_margin" / "eval_reference" / "results.json", "distilled")] + \
    [system(R / "gamma2" / f"eval_g3_s{s}" / "results.json") for s in (1, 2)]
curves = {(s["family"], s["gamma"]): s for s in json.loads((R / "val_curves" / "results.json").read_text())["systems"]}
points = [(s["quality"], s["diversity"]) for (f, g), s in curves.items() if f in ("base", "cfg")]
cfg = sorted(p for p in points if not any(o[0] >= p[0] and o[1] >= p[1] and o != p for o in points))  # CFG's front


def delta(key: str) -> tuple[float, float]:
    a = np.array([r["per_prompt"][key] for r in g2]) if key in g2[0]["per_prompt"] else None
    b = np.array([r["per_prompt"][key] for r in g3]) if a is not None else None
    if a is None:   # no per-prompt figure: seeds only
        x, y = [r[key] for r in g2], [r[key] for r in g3]
        return float(np.mean(x) - np.mean(y)), float(np.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 3))
    d = a.mean(0) - b.mean(0)
    se2 = d.var(ddof=1) / d.size + (a.mean(1).var(ddof=1) + b.mean(1).var(ddof=1)) / 3
    return float(d.mean()), float(np.sqrt(se2))


rows = ["| β=0 student (means over seeds 0, 1, 2) | quality | diversity | key (relative) | length | diversity vs CFG front |",
        "|---|---|---|---|---|---|"]
for label, runs in (("distils CFG γ=3 (the presets')", g3), ("distils CFG γ=2", g2)):
    q, d = np.mean([r["quality"] for r in runs]), np.mean([r["diversity"] for r in runs])
    rows.append(f"| {label} | {q:.3f} | {d:.3f} | {np.mean([r['attr_key_relative'] for r in runs]):.0%} | "
                f"{np.mean([r['mean_length'] for r in runs]):.0f} | {d - np.interp(q, *zip(*cfg)):+.3f} |")
per_seed = "; ".join(f"γ={g}: " + ", ".join(f"{r['quality']:.3f}/{r['diversity']:.3f}" for r in runs)
                     for g, runs in ((3, g3), (2, g2)))
dq, sq = delta("quality")
dd, sd = delta("diversity")
text = ("Validation, 128 prompts × 4, sampling seed 0.\n\n" + "\n".join(rows) +
        f"\n\nγ=2 minus γ=3: quality {dq:+.3f} ± {sq:.3f}, diversity {dd:+.3f} ± {sd:.3f} (± one SE over prompts and seeds).\n\n"
        f"Per seed (quality/diversity): {per_seed}.\n\nCFG on the same prompts: " +
        ", ".join(f"γ={g:g} {s['quality']:.3f}/{s['diversity']:.3f}" for (f, g), s in sorted(curves.items(), key=lambda x: x[0][1])
                  if f in ("base", "cfg")) + ".\n")
(HERE / "compare.md").write_text(text)
print(text)
