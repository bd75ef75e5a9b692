"""Every diversity recipe tried since session 8, against the base's own trade-off curves, on the
*validation* plane (128 prompts × 4, sampling seed 0, the shipped base and judges).

The base's curves come from one evaluation (`runs/val_curves`):

    DIVCFG_CAPTIONS_FROM_CACHE=1 divcfg evaluate --preset demo --split val --num-prompts 128 --generations 4 --cfg-gammas 1.5,2,3 \
        --temperatures 0.8,0.9,1.1,1.2 --lams "" --embedder runs/demo/shipped/embedder \
        --scorer runs/demo/shipped/scorer --data-dir data/small --seed 0 --threads 2 \
        --base runs/demo/shipped/base --out runs/val_curves

the candidates (means over seeds 0, 1, 2) from `runs/select_margin` (sessions 9–11's `divcfg select` runs, on
the CPU) and `runs/gpu_students_h200` (the GPU run, sampled on the GPU: drawn shifted by the difference
between its own base and the CPU base, and marked). For each candidate, "vs τ curve" is its diversity
minus the base's temperature curve at the same quality (linear between the curve's points): positive
means the recipe reaches a point that sampling the base hotter or colder does not ("vs CFG curve": the same
against the front of the base and its CFG points).

    python docs/results/diagnosis/validation_plane.py   → validation_plane.png, validation_plane.md
"""

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
CPU, GPU, CURVES = Path("runs/select_margin"), Path("runs/gpu_students_h200"), Path("runs/val_curves")
CANDIDATES = {  # folder stem -> label
    "add_b10_t2": "β=10, teacher γ=2 (session 8's)", "add_b15": "β=15 from the base (sessions 9–10's)", "add_b20": "β=20",
    "add_b15_n512": "β=15, ≤512 tokens", "add_b15_key": "β=15, key-gated", "add_b20_key": "β=20, key-gated",
    "add_b15_fromb0": "β=15, from the β=0 student (the presets')", "add_b20_fromb0": "β=20, from the β=0 student",
    "add_b30_fromb0": "β=30, from the β=0 student",
}
GPU_CANDIDATES = {"add_b15_steps120": "β=15, 120 steps (GPU)", "add_b15_steps240": "β=15, 240 steps (GPU)", "add_b15_steps480": "β=15, 480 steps (GPU)"}


def qd(results: Path, name: str = "base") -> tuple[float, float]:
    s = next(s for s in json.loads(results.read_text())["systems"] if s["name"] == name)
    return s["quality"], s["diversity"]


def seeds_mean(root: Path, stem: str) -> np.ndarray:
    return np.mean([qd(root / f"eval_{stem}{sfx}" / "results.json") for sfx in ("", "_s1", "_s2")], axis=0)


def curve_at(points: list[tuple[float, float]], q: float) -> float:
    """Diversity of the front of ``points`` (those no other point beats on both axes, joined by straight
    lines, as the evaluation's fronts are) at quality ``q``; flat beyond its ends."""
    pts = sorted(p for p in points if not any(o[0] >= p[0] and o[1] >= p[1] and o != p for o in points))
    return float(np.interp(q, [p[0] for p in pts], [p[1] for p in pts]))


def main() -> None:
    curves = json.loads((CURVES / "results.json").read_text())["systems"]
    base = qd(CURVES / "results.json")
    tau = [(s["quality"], s["diversity"], s["temperature"]) for s in curves
           if s["family"] in ("base", "temperature")]
    cfg = [(s["quality"], s["diversity"], s["gamma"]) for s in curves if s["family"] in ("base", "cfg")]
    beta0 = qd(CPU / "eval_reference" / "results.json", "distilled")
    shift = np.subtract(qd(CPU / "eval_reference" / "results.json"), qd(GPU / "eval_reference" / "results.json"))
    rows = [(label, seeds_mean(CPU, stem), False) for stem, label in CANDIDATES.items()]
    rows += [(label, seeds_mean(GPU, stem) + shift, True) for stem, label in GPU_CANDIDATES.items()]

    fig, ax = plt.subplots(figsize=(10, 5.5))
    t = sorted(tau)
    ax.plot([p[0] for p in t], [p[1] for p in t], "-o", color="#7f7f7f", label="base, τ = 0.8 … 1.2")
    for q, d, temp in t:
        ax.annotate(f"τ={temp:g}", (q, d), fontsize=7, xytext=(3, 3), textcoords="offset points")
    c = sorted(cfg, key=lambda p: p[2])
    ax.plot([p[0] for p in c], [p[1] for p in c], "-s", color="#1f77b4", label="base + CFG, γ = 1 … 3")
    for q, d, g in c[1:]:
        ax.annotate(f"γ={g:g}", (q, d), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.plot(*beta0, "D", color="#2ca02c", ms=8, label="β=0 (distils CFG γ*=3)")
    lines = ["| recipe (means over 3 seeds) | quality | diversity | vs τ curve | vs CFG curve |", "|---|---|---|---|---|"]
    palette = [c for j, c in enumerate(plt.cm.tab20.colors) if j not in (0, 1, 4, 5, 14, 15)]  # not the curves' or β=0's
    for i, (label, (q, d), on_gpu) in enumerate(rows):
        ax.plot(q, d, "^" if on_gpu else "o", ms=7, color=(palette[0::2] + palette[1::2])[i % len(palette)], label=label)
        lines.append(f"| {label} | {q:.3f} | {d:.3f} | {d - curve_at([p[:2] for p in tau], q):+.3f} | "
                     f"{d - curve_at([p[:2] for p in cfg], q):+.3f} |")
    lines.append(f"| β=0 | {beta0[0]:.3f} | {beta0[1]:.3f} | {beta0[1] - curve_at([p[:2] for p in tau], beta0[0]):+.3f} | "
                 f"{beta0[1] - curve_at([p[:2] for p in cfg], beta0[0]):+.3f} |")
    ax.axvline(base[0], color="grey", ls=":", lw=0.8)
    ax.axhline(base[1], color="grey", ls=":", lw=0.8)
    ax.set_xlabel("quality (alignment scorer)")
    ax.set_ylabel("diversity (1 − cos of E)")
    ax.set_title("Validation plane: the recipes against the base's own curves", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(HERE / "validation_plane.png", dpi=120)
    table = "\n".join(lines)
    (HERE / "validation_plane.md").write_text(
        "Validation, 128 prompts × 4 (sampling seed 0). \"vs τ curve\" / \"vs CFG curve\": the recipe's diversity "
        "minus the front's at the same quality (the points no other beats on both axes, joined by straight lines; "
        "flat beyond its ends; CFG's front is the base and γ=2, which beats γ=1.5 and γ=3 on both axes). GPU rows are shifted by their "
        f"base's offset from the CPU base ({shift[0]:+.3f} quality, {shift[1]:+.3f} diversity).\n\n"
        + "\n".join(f"- base τ={temp:g}: {q:.3f} / {d:.3f}" for q, d, temp in t) + "\n"
        + "\n".join(f"- CFG γ={g:g}: {q:.3f} / {d:.3f}" for q, d, g in c[1:]) + "\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
