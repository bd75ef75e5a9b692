"""CFG sampled hotter, on the validation plane: does tempering CFG reach past the base (issue 11)?

    DIVCFG_CAPTIONS_FROM_CACHE=1 divcfg evaluate --preset demo --split val --num-prompts 128 --generations 4 \
        --cfg-gammas G --cfg-temperatures 1.15,1.3 --temperatures "" --lams "" --embedder runs/ship/embedder \
        --scorer runs/ship/scorer --data-dir data/small --seed 0 --threads 1 --base runs/ship/base \
        --out runs/cfg_tau/flag_gG                                  # G = 2 and 3 (two processes, ~11 min each)
    python docs/results/cfg_temperature/analyse.py runs/cfg_tau/flag_g2 runs/cfg_tau/flag_g3

(`runs/ship`: the shipped base, E and scorer, installed by `divcfg.pretrained.install`.) Writes, beside this
file, summary.json (every system's figures and its paired difference from the base), results.md and
plane.png, which also draws the base's τ curve and the diversity students from
../diagnosis/validation_plane.md (the same prompts, sampling seed and judges). With no argument it
redraws from summary.json.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PLANE = HERE.parent / "diagnosis" / "validation_plane.md"


def collect(runs: list[Path]) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for run in runs:
        systems = json.loads((run / "results.json").read_text())["systems"]
        base = next(s for s in systems if s["name"] == "base")
        for s in systems:
            row = {k: s[k] for k in ("label", "family", "gamma", "temperature", "quality", "diversity",
                                     "attr_key_relative", "mean_length")}
            if s["name"] != "base":
                for m in ("quality", "diversity"):
                    d = np.array(s["per_prompt"][m]) - np.array(base["per_prompt"][m])
                    bs = d[rng.integers(0, len(d), (4000, len(d)))].mean(1)
                    row[f"d_{m}"] = [float(d.mean()), float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))]
            out[s["name"]] = row
    return out


def plane_rows() -> tuple[list[tuple[float, float, str]], list[tuple[str, float, float]]]:
    """The base's τ curve and the CPU-trained students from validation_plane.md."""
    text = PLANE.read_text()
    tau = [(float(q), float(d), t) for t, q, d in re.findall(r"- base τ=([\d.]+): ([\d.]+) / ([\d.]+)", text)]
    students = [(label, float(q), float(d)) for label, q, d in
                re.findall(r"^\| (β=[^|]*?) \| ([\d.]+) \| ([\d.]+) \|", text, flags=re.M) if "GPU" not in label]
    return tau, students


def table(rows: dict) -> str:
    ci = lambda v: f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"  # noqa: E731
    lines = ["| system | quality | diversity | Δ quality vs base [95%] | Δ diversity vs base [95%] | key (rel.) | length |",
             "|---|---|---|---|---|---|---|"]
    for name, r in sorted(rows.items(), key=lambda kv: (kv[1]["gamma"], kv[1]["temperature"])):
        lines.append(f"| {r['label']} | {r['quality']:.3f} | {r['diversity']:.3f} | "
                     f"{ci(r['d_quality']) if 'd_quality' in r else ''} | {ci(r['d_diversity']) if 'd_diversity' in r else ''} | "
                     f"{r['attr_key_relative']:.0%} | {r['mean_length']:.0f} |")
    return "\n".join(lines) + "\n"


def students_table(rows: dict) -> str:
    """Each student's diversity minus the hot-CFG γ=2 curve's at the student's quality (linear between the
    curve's points, flat beyond its ends; the base's τ curve is validation_plane.md's "vs τ curve")."""
    _, students = plane_rows()
    hot = sorted((r["quality"], r["diversity"]) for r in rows.values() if r["gamma"] == 2.0)
    lines = ["| student (validation_plane.md, means over 3 seeds) | quality | diversity | vs hot CFG γ=2 |",
             "|---|---|---|---|"]
    for label, q, d in students:
        at = float(np.interp(q, [x for x, _ in hot], [y for _, y in hot]))
        lines.append(f"| {label} | {q:.3f} | {d:.3f} | {d - at:+.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tau, students = plane_rows()
    fig, ax = plt.subplots(figsize=(8.6, 5))
    t = sorted(tau)
    ax.plot([p[0] for p in t], [p[1] for p in t], "-o", color="#7f7f7f", label="base, τ = 0.8 … 1.2")
    for q, d, temp in t:
        ax.annotate(f"τ={temp}", (q, d), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for g, colour in ((2.0, "#1f77b4"), (3.0, "#d62728")):
        pts = sorted(((r["temperature"], r["quality"], r["diversity"]) for r in rows.values()
                      if r["gamma"] == g), reverse=True)
        base = rows["base"]
        xs, ys = [base["quality"]] + [p[1] for p in pts], [base["diversity"]] + [p[2] for p in pts]
        ax.plot(xs[1:], ys[1:], "-s", color=colour, label=f"CFG γ={g:g}, τ = 1.3, 1.15, 1")
        for temp, q, d in pts:
            ax.annotate(f"τ={temp:g}", (q, d), fontsize=7, xytext=(3, -9), textcoords="offset points", color=colour)
    palette = ["#2ca02c", "#ff7f0e", "#9467bd", "#e377c2", "#8c564b", "#bcbd22", "#17becf", "#000000", "#7fbf7f",
               "#c49c94", "#f7b6d2"]   # none of the curves' grey, blue or red
    for i, (label, q, d) in enumerate(students):
        ax.plot(q, d, "D", ms=6, color=palette[i % len(palette)], label=label)
    ax.set_xlabel("quality (alignment scorer)")
    ax.set_ylabel("diversity (1 − cos E)")
    ax.set_title("Validation, 128 prompts × 4: CFG sampled hotter returns to the base", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    if len(sys.argv) > 1:
        (HERE / "summary.json").write_text(json.dumps(collect([Path(a) for a in sys.argv[1:]]), indent=1))
    rows = json.loads((HERE / "summary.json").read_text())
    text = table(rows) + "\n" + students_table(rows)
    (HERE / "results.md").write_text("Validation, 128 prompts × 4, sampling seed 0, the shipped base and judges "
                                     "(CPU); paired bootstrap over prompts.\n\n" + text)
    plot(rows, HERE / "plane.png")
    print(text)


if __name__ == "__main__":
    main()
