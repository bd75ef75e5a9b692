"""The report's figures, domain-free: the quality–diversity plane and the fine-tuning curves.

**The plane** (``quality_diversity.png`` / ``.svg``): x = the domain's quality judge, y = mean
within-prompt diversity ``1 − cos(E(y₁), E(y₂))``; the CFG γ-curve (from base, γ=1), the temperature
τ-curve and the merge λ-curve, the fine-tuned students, 95 % CI bars, each family's Pareto front
ringed, the shared hypervolume reference point (×), each curve's inference cost in the legend (forward
passes per token and measured tokens/s), each student seed's point joined to its mean over seeds, and
the domain's reference lines (:class:`divcfg.report.section.ReferenceLine`). The axis labels come
from the domain's section.

**Training curves** (``training_curves.png``): KL to the CFG teacher and the diversity reward per
fine-tuning step, from the students' ``metrics.jsonl``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from divcfg.report.inputs import read_training_log
from divcfg.report.section import finite, section_for

FAMILY_STYLE = {  # family -> (colour, marker, legend name)
    "cfg": ("#d62728", "s", "CFG γ-sweep"),
    "temperature": ("#7f7f7f", "^", "temperature τ-sweep"),
    "cfg_temperature": ("#ff7f0e", "v", "CFG at τ≠1"),
    "merge": ("#1f77b4", "o", "merge λ-sweep"),
    "finetuned": ("#2ca02c", "D", "fine-tuned students"),
}


def _curve(results: dict, family: str) -> list[dict]:
    by_name = {r["name"]: r for r in results["systems"]}
    names = results["families"].get(family, {}).get("systems", [])
    keys = {"cfg": ("gamma",), "temperature": ("temperature",), "cfg_temperature": ("gamma", "temperature"),
            "merge": ("lam",)}.get(family)
    rows = [by_name[n] for n in names if n in by_name]
    return sorted(rows, key=lambda r: tuple(r[k] for k in keys)) if keys else rows


def _point_label(r: dict) -> str:
    if r["family"] == "base":
        return "base"
    if r["family"] == "cfg":
        return f"γ={r['gamma']:g}"
    if r["family"] == "temperature":
        return f"τ={r['temperature']:g}"
    if r["family"] == "cfg_temperature":
        return f"γ={r['gamma']:g} τ={r['temperature']:g}"
    if r["family"] == "merge":
        return f"λ={r['lam']:g}"
    return r["label"].split()[-1] if "β" in r["label"] else r["label"]


def _cost(rows: list[dict]) -> str:
    passes = sorted({r["forward_passes_per_token"] for r in rows if r["family"] != "base"} or
                    {r["forward_passes_per_token"] for r in rows})
    tps = [r["tokens_per_s"] for r in rows if r["family"] != "base"] or [r["tokens_per_s"] for r in rows]
    p = "/".join(str(x) for x in passes)
    return f"{p} pass{'es' if passes != [1] else ''}/token, ~{np.median(tps):,.0f} tok/s"


def plot_quality_diversity(results: dict, png: Path, svg: Path, section=None) -> None:
    """Draw the plane of ``results`` to ``png`` and ``svg``; ``section`` (the domain's report section,
    default: the one ``results["domain"]`` names) gives the axis labels and reference lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    section = section if section is not None else section_for(results)

    fig, ax = plt.subplots(figsize=(8, 5.6), dpi=110)
    fronts = {f: set(info["front"]) for f, info in results["families"].items()}
    by_name = {r["name"]: r for r in results["systems"]}
    twins_shown = {r["same_as"] for r in results["systems"] if r.get("same_as")}
    for fam, (colour, marker, name) in FAMILY_STYLE.items():
        rows = _curve(results, fam)
        if not rows:
            continue
        hv = results["families"][fam]["hypervolume"]
        xs, ys = [r["quality"] for r in rows], [r["diversity"] for r in rows]
        xerr = [[r["quality"] - r["quality_ci_low"] for r in rows], [r["quality_ci_high"] - r["quality"] for r in rows]]
        yerr = [[r["diversity"] - r["diversity_ci_low"] for r in rows],
                [r["diversity_ci_high"] - r["diversity"] for r in rows]]
        ax.errorbar(xs, ys, xerr=np.clip(xerr, 0, None), yerr=np.clip(yerr, 0, None), fmt="none",
                    ecolor=colour, alpha=0.18, lw=1)
        line = "none" if fam in ("finetuned", "cfg_temperature") else "-"
        ax.plot(xs, ys, linestyle=line, color=colour, marker=marker, ms=6,
                label=f"{name} — {_cost(rows)}; hypervolume {hv:.3g}")
        on_front = [(x, y) for r, x, y in zip(rows, xs, ys) if r["name"] in fronts[fam]]
        if on_front:
            ax.scatter(*zip(*on_front), s=130, facecolors="none", edgecolors=colour, linewidths=1.2)
        for r, x, y in zip(rows, xs, ys):
            if fam in ("temperature", "finetuned", "merge") and r["family"] == "base":
                continue
            if r["name"] in twins_shown:  # a merge endpoint already labelled as "λ=0 = β=0"
                continue
            label = _point_label(r)
            if r.get("same_as") in by_name:
                label += f" = {_point_label(by_name[r['same_as']])}"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8, color=colour)
    _plot_seed_points(ax, results)
    ref = results["reference_point"]
    ax.scatter([ref["quality"]], [ref["diversity"]], marker="x", color="black", s=30,
               label="hypervolume reference point")
    for line in section.reference_lines(results):
        if finite(line.value):
            draw = ax.axvline if line.axis == "x" else ax.axhline
            draw(line.value, color="black", ls=":", lw=1, label=line.label)
    ax.set_xlabel(section.quality_axis)
    ax.set_ylabel(section.diversity_axis)
    ax.set_title(f"Quality–diversity trade-off ({results['num_prompts']} held-out prompts × "
                 f"{results['generations']} generations; ring = Pareto front)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="best", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(png)
    fig.savefig(svg)
    plt.close(fig)


def _plot_seed_points(ax, results: dict) -> None:
    """Each student seed's point (small, faint) joined to its system's mean over seeds."""
    by_name = {r["name"]: r for r in results["systems"]}
    drawn = False
    for r in results["systems"]:
        agg = by_name.get(r.get("aggregate_of") or "")
        if agg is None or r.get("same_as"):
            continue
        colour = FAMILY_STYLE.get(agg["family"], ("#333333",))[0]
        ax.plot([agg["quality"], r["quality"]], [agg["diversity"], r["diversity"]], color=colour, lw=0.6, alpha=0.35)
        ax.scatter([r["quality"]], [r["diversity"]], s=9, color=colour, alpha=0.55,
                   label=None if drawn else f"one student seed ({len(results.get('student_seeds', []))} seeds; "
                                            "large points: mean over seeds)")
        drawn = True


def plot_training_curves(logs: dict[str, str], png: Path) -> bool:
    """KL and diversity reward per step for each run; False when no log has either."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {name: read_training_log(p) for name, p in logs.items()}
    if not any(v for d in data.values() for v in d.values()):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for ax, key, title in ((axes[0], "kl/teacher", "KL(student ‖ CFG teacher) per token"),
                           (axes[1], "reward/diversity/mean", "diversity reward (1 − cos)")):
        for name, d in data.items():
            if d[key]:
                s, v = zip(*d[key])
                ax.plot(s, v, label=name, lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True
