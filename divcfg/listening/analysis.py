"""Analysis of a listening study: CSV export, per-system scores, pairwise diversity win rates, and
the verdict on the paper's claim (the λ-merge beats base + CFG on quality–diversity).

Quality. For system s and scale k ∈ {acoustic, adherence, musicality, overall} (overall = the mean
of the three ratings of an answer), the score is the mean rating ``q̄_s = (1/n_s) Σ_i r_i``.

Diversity. For systems a, b the win rate of a is ``w_ab = #(a's pair judged more varied) / #(a-vs-b
trials)``; ``w_ba = 1 − w_ab``.

Intervals. Percentile bootstrap, ``n_boot`` resamples, at ``confidence``. Answers of one rater are
not independent, so with ≥ ``MIN_RATERS_FOR_CLUSTER`` raters the bootstrap resamples *raters*
(cluster bootstrap: all answers of each drawn rater); with fewer it resamples answers (and says so:
``bootstrap_unit``). Differences (merge − CFG) use the same resampled raters for both systems.

Verdict (merge family vs CFG family, pooled over the systems of each family in the study): the
merge is *better* on an axis when the interval of its quality difference lies above 0, or that of
its diversity win rate above ½; *worse* when below. ``confirm``: better on one axis and not worse on
the other; ``contradict``: worse on one and better on neither; ``mixed``: better on one and worse on
the other; ``inconclusive``: neither; ``not tested``: the study lacks a merge or a CFG system or
answers.
"""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path

import numpy as np

from divcfg.listening.design import QUALITY_SCALES
from divcfg.listening.store import ANSWER_COLUMNS, Store

MIN_RATERS_FOR_CLUSTER = 5
SECTION_START, SECTION_END = "<!-- human-evaluation -->", "<!-- /human-evaluation -->"


def load(study_dir: Path) -> tuple[dict, dict, list[dict]]:
    study = json.loads((study_dir / "study.json").read_text())
    manifest = json.loads((study_dir / "manifest.json").read_text())
    return study, manifest, Store(study_dir / "answers.sqlite").answers()


def unblinded_rows(study: dict, answers: list[dict]) -> list[dict]:
    """Answers joined with their trials: system(s), prompt, the system chosen as more varied."""
    rows = []
    for a in answers:
        t = study["trials"][a["trial_id"]]
        row = {**a, "prompt_index": t["prompt_index"], "prompt": study["prompts"][str(t["prompt_index"])]}
        if t["kind"] == "quality":
            row.update(system=t["system"], clip=t["clips"][0], overall=float(np.mean(
                [a[k] for k in QUALITY_SCALES])))
        else:
            row.update(system_A=t["A"]["system"], system_B=t["B"]["system"],
                       chosen_system=t[a["choice"]]["system"])
        rows.append(row)
    return rows


def spreadsheet_safe(value):
    """A text cell that a spreadsheet would run as a formula (it starts with =, +, -, @, tab or CR:
    OWASP's CSV injection list) gets a leading apostrophe; numbers and other text pass unchanged.
    Rater ids and prompts come from outside, so the export defuses them."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def export_csv(study_dir: Path, out: Path) -> int:
    study, _, answers = load(study_dir)
    rows = unblinded_rows(study, answers)
    cols = list(ANSWER_COLUMNS) + ["prompt_index", "prompt", "system", "clip", "overall", "system_A", "system_B",
                                   "chosen_system"]
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows([{k: spreadsheet_safe(v) for k, v in r.items()} for r in rows])
    os.replace(tmp, out)
    return len(rows)


class _Bootstrap:
    """Resamples units (raters or answers) once per replicate, shared by every statistic."""

    def __init__(self, raters: list[str], n_boot: int, seed: int, cluster: bool):
        self.cluster, self.n_boot = cluster, n_boot
        self.raters = sorted(set(raters))
        rng = np.random.default_rng(seed)
        self.draws = rng.integers(0, max(len(self.raters), 1), (n_boot, len(self.raters)))
        self.rng = rng

    def means(self, pairs: list[tuple[str, float]]) -> np.ndarray:
        """Bootstrap replicates of the mean of ``pairs`` = [(rater, value)] (NaN when empty)."""
        if not pairs:
            return np.full(self.n_boot, np.nan)
        if not self.cluster:
            v = np.asarray([x for _, x in pairs], float)
            return v[self.rng.integers(0, len(v), (self.n_boot, len(v)))].mean(axis=1)
        idx = {r: i for i, r in enumerate(self.raters)}
        sums, counts = np.zeros(len(self.raters)), np.zeros(len(self.raters))
        for r, x in pairs:
            sums[idx[r]] += x
            counts[idx[r]] += 1
        s, c = sums[self.draws].sum(axis=1), counts[self.draws].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def _ci(reps: np.ndarray, confidence: float) -> list[float] | None:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return None
    a = (1 - confidence) / 2
    return [float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))]


def _stat(pairs, boot, confidence) -> dict:
    return {"mean": float(np.mean([x for _, x in pairs])) if pairs else None,
            "ci": _ci(boot.means(pairs), confidence) if pairs else None, "n": len(pairs),
            "raters": len({r for r, _ in pairs})}


def analyse(study_dir: str | Path, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """The analysis dict (written to ``<run>/listening/analysis.json`` by the CLI)."""
    from divcfg.provenance import provenance

    study_dir = Path(study_dir)
    study, manifest, answers = load(study_dir)
    rows = unblinded_rows(study, answers)
    raters = [r["rater_id"] for r in rows]
    cluster = len(set(raters)) >= MIN_RATERS_FOR_CLUSTER
    boot = _Bootstrap(raters, n_boot, seed, cluster)
    systems = study["systems"]
    info = manifest["systems"]
    quality = {}
    for s in systems:
        q = [r for r in rows if r["kind"] == "quality" and r["system"] == s]
        quality[s] = {"label": info[s]["label"], "family": info[s]["family"],
                      **{k: _stat([(r["rater_id"], float(r[k])) for r in q], boot, confidence)
                         for k in (*QUALITY_SCALES, "overall")}}
    div_rows = [r for r in rows if r["kind"] == "diversity"]
    diversity = []
    for i, a in enumerate(systems):
        for b in systems[i + 1:]:
            pairs = [(r["rater_id"], float(r["chosen_system"] == a)) for r in div_rows
                     if {r["system_A"], r["system_B"]} == {a, b}]
            diversity.append({"a": a, "b": b, "win_rate_a": _stat(pairs, boot, confidence)})
    out = {"answers": len(rows), "raters": len(set(raters)), "bootstrap_unit": "rater" if cluster else "answer",
           "n_boot": n_boot, "confidence": confidence, "systems": systems, "quality": quality,
           "diversity": diversity, "design": study["design"],
           "provenance": provenance(seed, stage="listen-analyse")}
    out["merge_vs_cfg"] = merge_vs_cfg(rows, info, boot, confidence)
    return out


def merge_vs_cfg(rows: list[dict], info: dict, boot: _Bootstrap, confidence: float) -> dict:
    fam = {s: v["family"] for s, v in info.items()}
    merge = [s for s, f in fam.items() if f == "merge"]
    cfg = [s for s, f in fam.items() if f == "cfg"]
    out: dict = {"merge_systems": merge, "cfg_systems": cfg}
    q = {g: [(r["rater_id"], r["overall"]) for r in rows if r["kind"] == "quality" and r["system"] in members]
         for g, members in (("merge", merge), ("cfg", cfg))}
    d = [(r["rater_id"], float(fam[r["chosen_system"]] == "merge")) for r in rows if r["kind"] == "diversity"
         and {fam[r["system_A"]], fam[r["system_B"]]} == {"merge", "cfg"}]
    if not rows:
        out.update(verdict="not tested", sentence="The listening study has no answers yet, so it neither confirms "
                   "nor refutes the merge-vs-CFG claim.")
        return out
    if not merge or not cfg or (not (q["merge"] and q["cfg"]) and not d):
        out.update(verdict="not tested", sentence="The listening study did not compare a merge with a CFG system, "
                   "so it neither confirms nor refutes the merge-vs-CFG claim.")
        return out
    qd = None
    if q["merge"] and q["cfg"]:
        diff = float(np.mean([x for _, x in q["merge"]]) - np.mean([x for _, x in q["cfg"]]))
        qd = {"mean": diff, "ci": _ci(boot.means(q["merge"]) - boot.means(q["cfg"]), confidence),
              "n_merge": len(q["merge"]), "n_cfg": len(q["cfg"])}
    dw = _stat(d, boot, confidence) if d else None
    better = [qd and qd["ci"] and qd["ci"][0] > 0, dw and dw["ci"] and dw["ci"][0] > 0.5]
    worse = [qd and qd["ci"] and qd["ci"][1] < 0, dw and dw["ci"] and dw["ci"][1] < 0.5]
    if any(better) and not any(worse):
        verdict = "confirm"
    elif any(better):
        verdict = "mixed"
    elif any(worse):
        verdict = "contradict"
    else:
        verdict = "inconclusive"
    out.update(quality_difference=qd, diversity_win_rate=dw, verdict=verdict)
    out["sentence"] = _sentence(verdict, qd, dw, confidence, [info[s]["label"] for s in merge],
                                [info[s]["label"] for s in cfg])
    return out


def _sentence(verdict, qd, dw, confidence, merge_labels, cfg_labels) -> str:
    pct = f"{100 * confidence:.0f} %"
    parts = []
    if dw:
        ci = f" [{pct} CI {100 * dw['ci'][0]:.0f}–{100 * dw['ci'][1]:.0f} %]" if dw["ci"] else ""
        parts.append(f"raters found the merge's pair more varied in {100 * dw['mean']:.0f} % of {dw['n']} "
                     f"comparisons with CFG{ci}")
    if qd:
        ci = f" [{qd['ci'][0]:+.2f}, {qd['ci'][1]:+.2f}]" if qd["ci"] else ""
        parts.append(f"its mean quality rating differed from CFG's by {qd['mean']:+.2f}{ci} on the 1–5 scale")
    head = {"confirm": "Raters confirm the claim that the merge beats base + CFG on quality–diversity",
            "contradict": "Raters contradict the claim that the merge beats base + CFG on quality–diversity",
            "mixed": "Raters give a mixed answer on the claim that the merge beats base + CFG",
            "inconclusive": "Raters neither confirm nor refute the claim that the merge beats base + CFG"}[verdict]
    who = f" ({', '.join(merge_labels)} vs {', '.join(cfg_labels)})"
    tail = "; each interval includes the no-difference value" if verdict == "inconclusive" else ""
    return f"{head}{who}: " + " and ".join(parts) + tail + "."


# ---------------------------------------------------------------------------------------------
# the report section


def _ci_text(stat: dict, pct: bool = False) -> str:
    if stat["mean"] is None:
        return "–"
    f = (lambda x: f"{100 * x:.0f} %") if pct else (lambda x: f"{x:.2f}")
    ci = f" [{f(stat['ci'][0])}, {f(stat['ci'][1])}]" if stat["ci"] else ""
    return f"{f(stat['mean'])}{ci}"


def section_html(analysis: dict) -> str:
    """The report's "Human evaluation" section (every value escaped)."""
    e = html.escape
    pct = f"{100 * analysis['confidence']:.0f} %"
    mv = analysis["merge_vs_cfg"]
    out = [SECTION_START, '<h2 id="human">Human evaluation</h2>',
           f'<div class="headline" id="human-verdict">{e(mv["sentence"])}</div>',
           f'<p class="muted">{analysis["answers"]} answers from {analysis["raters"]} raters in a blinded listening '
           f'study (<code>divcfg listen</code>); {pct} bootstrap intervals over '
           f'{e(analysis["bootstrap_unit"])}s.</p>',
           '<table id="human-quality"><thead><tr><th class="name">system</th><th>acoustic</th><th>adherence</th>'
           '<th>musicality</th><th>overall</th><th>answers</th></tr></thead><tbody>']
    for s in analysis["systems"]:
        q = analysis["quality"][s]
        cells = "".join(f"<td>{e(_ci_text(q[k]))}</td>" for k in (*QUALITY_SCALES, "overall"))
        out.append(f'<tr><td class="name">{e(q["label"])}</td>{cells}<td>{q["overall"]["n"]}</td></tr>')
    out.append('</tbody></table><table id="human-diversity"><thead><tr><th class="name">more varied: A vs B</th>'
               '<th>A wins</th><th>trials</th></tr></thead><tbody>')
    labels = {s: analysis["quality"][s]["label"] for s in analysis["systems"]}
    for d in analysis["diversity"]:
        w = d["win_rate_a"]
        out.append(f'<tr><td class="name">{e(labels[d["a"]])} vs {e(labels[d["b"]])}</td>'
                   f'<td>{e(_ci_text(w, pct=True))}</td><td>{w["n"]}</td></tr>')
    out += ["</tbody></table>", SECTION_END]
    return "\n".join(out) + "\n"


def add_section_to_page(page: str, run_dir: str | Path) -> str:
    """``page`` with the "Human evaluation" section from ``<run>/listening/analysis.json`` replacing an
    earlier one, or inserted before the provenance section (or before ``</body>``)."""
    analysis = json.loads((Path(run_dir) / "listening" / "analysis.json").read_text())
    section = section_html(analysis)
    if SECTION_START in page and SECTION_END in page:
        head, rest = page.split(SECTION_START, 1)
        return head + section + rest.split(SECTION_END, 1)[1].lstrip("\n")
    for anchor in ('<h2 id="provenance">', "</body>"):
        if anchor in page:
            return page.replace(anchor, section + anchor, 1)
    return page + section
