"""Condition-dropout bases (PLAN.md): the rule, the table and the plot from the device call's files.

    python docs/results/cond_dropout/analyse.py DIR   # DIR: gpu_pretrain.tgz unpacked (eval_*.results.json, base_*.DONE.json)

Writes, beside this file, summary.json (each base's validation NLL and, per system, its figures and per-prompt
quality and diversity), results.md (the table and the rule's verdict) and plane.png. With no DIR it
rebuilds results.md and plane.png from summary.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KEEP = ("quality", "quality_ci_low", "quality_ci_high", "diversity", "diversity_ci_low", "diversity_ci_high",
        "attr_key_relative", "attr_meter", "valid_rate", "mean_length")
MARGIN = 0.02   # PLAN.md: G must beat the control's and the shipped base's by at least this


def collect(src: Path) -> dict:
    bases = {}
    for f in sorted(src.glob("eval_*.results.json")):
        name = f.name[len("eval_"):-len(".results.json")]
        systems = json.loads(f.read_text())["systems"]
        done = src / f"base_{name}.DONE.json"
        val = {}
        for line in (src / f"base_{name}.metrics.jsonl").read_text().splitlines() if done.exists() else []:
            row = json.loads(line)
            if "val/nll_cond" in row:
                val = {k: row[k] for k in ("step", "val/nll_cond", "val/nll_uncond", "val/cond_gain")}
        bases[name] = {"cond_dropout": 0.2 if name == "shipped" else float(name.split("_cd")[1]), "val": val,
                       "systems": {s["name"]: {**{k: s[k] for k in KEEP},
                                               "per_prompt": {m: s["per_prompt"][m] for m in ("quality", "diversity")}}
                                   for s in systems}}
    return bases


def gain(b: dict) -> tuple[str, np.ndarray]:
    """The CFG gain per prompt at the γ with the highest mean quality: q(CFG γ) − q(base)."""
    s = b["systems"]
    best = max((n for n in s if n.startswith("cfg_")), key=lambda n: s[n]["quality"])
    return best, np.array(s[best]["per_prompt"]["quality"]) - np.array(s["base"]["per_prompt"]["quality"])


def table(bases: dict) -> str:
    rng = np.random.default_rng(0)
    g = {n: gain(b) for n, b in bases.items()}
    n = len(next(iter(g.values()))[1])
    idx = rng.integers(0, n, (4000, n))
    lines = ["| base | val NLL with / without prompt | base q / d | CFG γ=2 q / d | CFG γ=3 q / d | key (rel.) base → best γ "
             "| CFG gain G ± SE | G − control [95%] | G − shipped [95%] |", "|" + "---|" * 9]
    verdict = []
    for name, b in bases.items():
        s, (best, gn) = b["systems"], g[name]
        v = b["val"]
        cells = [f"cond_dropout {b['cond_dropout']:g}" + (" (shipped)" if name == "shipped" else
                                                             " (control)" if b["cond_dropout"] == 0.2 else ""),
                 f"{v['val/nll_cond']:.3f} / {v['val/nll_uncond']:.3f}" if v else "0.560 / 0.590 (MANIFEST)",
                 *(f"{s[k]['quality']:.3f} / {s[k]['diversity']:.3f}" for k in ("base", "cfg_g2", "cfg_g3")),
                 f"{s['base']['attr_key_relative']:.0%} → {s[best]['attr_key_relative']:.0%}",
                 f"{gn.mean():+.3f} ± {gn.std(ddof=1) / np.sqrt(n):.3f} (γ={best[5:]})"]
        passes = name not in ("shipped", "10560_cd0.2")
        for ref in ("10560_cd0.2", "shipped"):
            if name == ref or ref not in g:
                cells.append("")
                continue
            d = gn - g[ref][1]
            bs = d[idx].mean(1)
            cells.append(f"{d.mean():+.3f} [{np.percentile(bs, 2.5):+.3f}, {np.percentile(bs, 97.5):+.3f}]")
            passes = passes and d.mean() >= MARGIN
        if passes:
            verdict.append((gn.mean(), name))
        lines.append("| " + " | ".join(cells) + " |")
    rule = (f"**Rule (PLAN.md): adopted: {max(verdict)[1]}.**" if verdict else
            f"**Rule (PLAN.md): no variant beats both the control's and the shipped base's G by ≥ {MARGIN}; "
            "the shipped base stays.**")
    return "\n".join(lines) + "\n\n" + rule + "\n"


def plot(bases: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (name, b) in enumerate(bases.items()):
        s = b["systems"]
        pts = [(s[k]["quality"], s[k]["diversity"]) for k in ("base", "cfg_g2", "cfg_g3")]
        label = f"cond_dropout {b['cond_dropout']:g}" + (" (shipped)" if name == "shipped" else
                                                         " (control)" if b["cond_dropout"] == 0.2 else "")
        line, = ax.plot(*zip(*pts), marker="o", color=plt.cm.viridis(i / max(1, len(bases) - 1)) if name != "shipped"
                        else "black", ls="--" if name == "shipped" else "-", label=label)
        ax.annotate("γ=1", pts[0], fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.annotate("γ=3", pts[2], fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel("quality (alignment scorer)")
    ax.set_ylabel("diversity (1 − cos E)")
    ax.set_title("Bases by condition dropout: γ = 1, 2, 3 on 128 validation prompts × 4", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    if len(sys.argv) > 1:
        (HERE / "summary.json").write_text(json.dumps(collect(Path(sys.argv[1])), indent=1))
    bases = json.loads((HERE / "summary.json").read_text())
    text = table(bases)
    (HERE / "results.md").write_text("Validation, 128 prompts × 4 (sampling seed 0), evaluated on the GPU "
                                     "(NVIDIA H200); paired bootstrap over prompts.\n\n" + text)
    plot(bases, HERE / "plane.png")
    print(text)


if __name__ == "__main__":
    main()
