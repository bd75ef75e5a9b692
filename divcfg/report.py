"""`divcfg report RUN`: the HTML page of an evaluation run (``divcfg evaluate --out RUN``).

Writes ``RUN/report.html`` and ``RUN/report_assets/``:

- ``quality_diversity.png`` / ``.svg``: the quality–diversity plane (x = alignment quality,
  y = diversity 1 − cos under E), with the CFG γ-curve (from base, γ=1), the temperature τ-curve
  and the merge λ-curve, the fine-tuned students, 95 % CI bars, each family's Pareto front ringed,
  the shared hypervolume reference point, and each curve's inference cost in the legend
  (forward passes per token and measured tokens/s);
- ``training_curves.png``: KL to the CFG teacher and the diversity reward per fine-tuning step, from
  the students' ``metrics.jsonl`` (recorded by ``evaluate``, or given with ``--training-log``);
- for a handful of prompts, each system's first generations side by side: a piano roll, an
  ``<audio>`` player (WAV of the first ``AUDIO_BEATS`` quarter notes, when a General MIDI soundfont
  is installed) and a download of the whole generation as MIDI. Identical generations (e.g. the
  merge at λ=0 and the β=0 student) share their files.

The page references only files under ``report_assets/`` (relative links), so the run folder can be
copied or served as it is. Plots are also embedded as data URIs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
from pathlib import Path

import numpy as np

from divcfg.errors import UserError

ASSETS = "report_assets"
AUDIO_BEATS = 40           # WAV players play the first 40 quarter notes (~20 s at 120 qpm); MIDI is whole
AUDIO_SAMPLE_RATE = 16000  # keeps a report with ~80 players under ~50 MB
FAMILY_STYLE = {  # family -> (colour, marker, legend name)
    "cfg": ("#d62728", "s", "CFG γ-sweep"),
    "temperature": ("#7f7f7f", "^", "temperature τ-sweep"),
    "merge": ("#1f77b4", "o", "merge λ-sweep"),
    "finetuned": ("#2ca02c", "D", "fine-tuned students"),
}


# ---------------------------------------------------------------------------------------------
# inputs


def load_run(run_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
    run_dir = Path(run_dir)
    f = run_dir / "results.json"
    if not f.exists():
        raise UserError(f"no results.json in '{run_dir}': run `divcfg evaluate --out {run_dir}` first")
    try:
        results = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"'{f}' is not valid JSON ({e.msg}): rerun `divcfg evaluate`") from None
    samples = []
    sf = run_dir / "samples.jsonl"
    if sf.exists():
        samples = [json.loads(line) for line in sf.read_text().splitlines() if line.strip()]
    return results, samples


def read_training_log(path: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """``{metric: [(step, value), ...]}`` for ``kl/teacher`` and ``reward/diversity/mean``."""
    out: dict[str, list[tuple[float, float]]] = {"kl/teacher": [], "reward/diversity/mean": []}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for k in out:
            v = row.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v) and "step" in row:
                out[k].append((float(row["step"]), float(v)))
    return out


# ---------------------------------------------------------------------------------------------
# plots


def _curve(results: dict, family: str) -> list[dict]:
    by_name = {r["name"]: r for r in results["systems"]}
    names = results["families"].get(family, {}).get("systems", [])
    key = {"cfg": "gamma", "temperature": "temperature", "merge": "lam"}.get(family)
    rows = [by_name[n] for n in names if n in by_name]
    return sorted(rows, key=lambda r: r[key]) if key else rows


def _point_label(r: dict) -> str:
    if r["family"] == "base":
        return "base"
    if r["family"] == "cfg":
        return f"γ={r['gamma']:g}"
    if r["family"] == "temperature":
        return f"τ={r['temperature']:g}"
    if r["family"] == "merge":
        return f"λ={r['lam']:g}"
    return r["label"].split()[-1] if "β" in r["label"] else r["label"]


def _cost(rows: list[dict]) -> str:
    passes = sorted({r["forward_passes_per_token"] for r in rows if r["family"] != "base"} or
                    {r["forward_passes_per_token"] for r in rows})
    tps = [r["tokens_per_s"] for r in rows if r["family"] != "base"] or [r["tokens_per_s"] for r in rows]
    p = "/".join(str(x) for x in passes)
    return f"{p} pass{'es' if passes != [1] else ''}/token, ~{np.median(tps):,.0f} tok/s"


def plot_quality_diversity(results: dict, png: Path, svg: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        ax.plot(xs, ys, linestyle="-" if fam != "finetuned" else "none", color=colour, marker=marker, ms=6,
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
    real = results.get("corpus", {}).get("alignment_real")
    if real is not None and math.isfinite(real):
        ax.axvline(real, color="black", ls=":", lw=1, label="quality of the real held-out pieces")
    ax.set_xlabel("quality: text–music alignment score (higher is better)")
    ax.set_ylabel("diversity: mean 1 − cos(E(y₁), E(y₂)) within a prompt")
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


def piano_roll_png(notes: np.ndarray, path: Path, steps_per_beat: int = 4, max_beats: int = 64) -> None:
    """A small piano-roll picture (pitch up, time right) of ``notes[n, 3]`` = (onset, duration, pitch)
    in quarter notes, cropped to ``max_beats``; written without a figure (fast)."""
    from matplotlib.image import imsave

    lo, hi = int(notes[:, 2].min()) - 2, int(notes[:, 2].max()) + 2
    width = max(8, min(int(math.ceil(float((notes[:, 0] + notes[:, 1]).max()) * steps_per_beat)),
                       max_beats * steps_per_beat))
    img = np.ones((hi - lo + 1, width, 3), np.float32)
    img[:, ::steps_per_beat * 4] = 0.88  # a faint line every 4 beats
    for on, dur, pitch in notes:
        a = int(round(on * steps_per_beat))
        b = max(a + 1, int(round((on + dur) * steps_per_beat)))
        if a >= width:
            continue
        row = hi - int(pitch)
        img[row, a:min(b, width)] = (0.12, 0.35, 0.75)
        img[row, a] = (0.02, 0.15, 0.45)
    img = np.repeat(np.repeat(img, 3, axis=0), 2, axis=1)
    imsave(path, img)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# ---------------------------------------------------------------------------------------------
# listening section


class _Renderer:
    """Writes MIDI / WAV / piano roll of a token sequence once (files named by its hash)."""

    def __init__(self, assets: Path, tokenizer, audio: bool, audio_beats: int = AUDIO_BEATS):
        self.assets, self.tok, self.audio, self.audio_beats = assets, tokenizer, audio, audio_beats
        self.wav_ok: bool | None = None if audio else False
        self.cache: dict[str, dict] = {}

    def files(self, tokens: list[int]) -> dict:
        from divcfg.music.pianoroll import score_notes
        from divcfg.music.tokenizer import tokens_to_score

        key = hashlib.sha1(json.dumps(tokens).encode()).hexdigest()[:16]
        if key in self.cache:
            return self.cache[key]
        score = tokens_to_score(self.tok, tokens)
        notes = score_notes(score)
        entry: dict = {"n_notes": len(notes)}
        if len(notes):
            stem = self.assets / f"gen_{key}"
            _write_midi(score, stem.with_suffix(".mid"))
            entry["midi"] = f"{ASSETS}/{stem.name}.mid"
            piano_roll_png(notes, stem.with_suffix(".png"))
            entry["roll"] = f"{ASSETS}/{stem.name}.png"
            if self.wav_ok is not False:
                clip = score.clip(0, self.audio_beats * score.ticks_per_quarter, clip_end=True)
                ok = _write_wav(clip, stem.with_suffix(".wav"))
                self.wav_ok = bool(ok) if self.wav_ok is None else self.wav_ok
                if ok:
                    entry["wav"] = f"{ASSETS}/{stem.name}.wav"
        self.cache[key] = entry
        return entry


def _write_midi(score, path: Path) -> None:
    try:
        from divcfg.music.render import write_midi
    except ImportError:  # the renderer module is optional here: symusic writes MIDI by itself
        score.dump_midi(str(path))
        return
    write_midi(score, path)


def _write_wav(score, path: Path) -> bool:
    try:
        from divcfg.music.render import write_wav
    except ImportError:
        return False
    return bool(write_wav(score, path, sample_rate=AUDIO_SAMPLE_RATE))


def _tokenizer_for(results: dict):
    from divcfg.music.tokenizer import load_tokenizer
    for r in results["systems"]:
        f = Path(r["checkpoint"]) / "tokenizer.json"
        if f.exists():
            return load_tokenizer(f)
    return load_tokenizer(results["config"]["data_dir"])


def listening_section(results: dict, samples: list[dict], assets: Path, n_prompts: int, n_generations: int,
                      audio: bool, systems: list[str] | None = None) -> tuple[list[dict], bool | None]:
    """For the first ``n_prompts`` prompts: one row per system (all, or those named in ``systems``)
    with its first ``n_generations`` generations."""
    if not samples or n_prompts <= 0:
        return [], None
    known = [r["name"] for r in results["systems"]]
    unknown = sorted(set(systems or []) - set(known))
    if unknown:
        raise UserError(f"unknown system(s) {unknown}: choose among {', '.join(known)}")
    renderer = _Renderer(assets, _tokenizer_for(results), audio)
    index = {(s["system"], s["prompt_index"], s["generation"]): s for s in samples}
    out = []
    for p in results["prompts"][:n_prompts]:
        rows = []
        first_seed = (results.get("student_seeds") or [None])[0]
        for r in results["systems"]:
            if systems and r["name"] not in systems:
                continue
            if not systems and r.get("seed") not in (None, first_seed):  # by default one seed's students
                continue
            cells = []
            for g in range(n_generations):
                s = index.get((r["name"], p["index"], g))
                if s is None:
                    continue
                cells.append({**renderer.files(s["tokens"]), "quality": s.get("quality"),
                              "length": len(s["tokens"]), "finished": s.get("finished")})
            if cells:
                rows.append({"label": r["label"], "cells": cells})
        out.append({"text": p["text"], "id": p["id"], "rows": rows})
    return out, renderer.wav_ok


# ---------------------------------------------------------------------------------------------
# the page


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{digits}f}"
    return html.escape(str(v))


def _fmtg(v, digits: int = 4) -> str:
    """Significant digits (hypervolumes span orders of magnitude)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}g}"


def table_rows(results: dict) -> list[dict]:
    rows = []
    for r in results["systems"]:
        rows.append({
            "label": r["label"], "passes": r["forward_passes_per_token"], "tps": f"{r['tokens_per_s']:,.0f}",
            "quality": f"{_fmt(r['quality'])} [{_fmt(r['quality_ci_low'], 2)}, {_fmt(r['quality_ci_high'], 2)}]",
            "diversity": f"{_fmt(r['diversity'])} [{_fmt(r['diversity_ci_low'], 2)}, {_fmt(r['diversity_ci_high'], 2)}]",
            "pcd": _fmt(r.get("pitch_class_distance")), "ngram": _fmt(r.get("interval_ngram_distance")),
            "distinct": _fmt(r.get("distinct_ngram_ratio")),
            "empty": f"{r['empty_rate']:.0%}", "valid": f"{r['valid_rate']:.0%}", "eos": f"{r['eos_rate']:.0%}",
            "length": f"{r['mean_length']:.0f}", "musical": _fmt(r.get("musical_distance"), 2),
            "front": ", ".join(r.get("on_front", [])) or "", "same_as": r.get("same_as") or "",
            "seed": r.get("seed"), "aggregate": bool(r.get("aggregate")),
            "seeds_agree": "" if r.get("seeds_agree") is None else ("yes" if r["seeds_agree"] else "NO: flips"),
            "domain": [_fmt(r.get(c), 2) for c in domain_columns(results)]})
    return rows


def domain_columns(results: dict) -> list[str]:
    """The domain figures present in the rows (music: attribute accuracy against the captions)."""
    from divcfg.music.attributes import ATTRIBUTE_COLUMNS
    return [c for c in ATTRIBUTE_COLUMNS if any(c in r for r in results["systems"])]


def cut_short_lines(results: dict) -> list[str]:
    """One loud line per evaluated model whose training its time cap stopped before its planned steps."""
    out = []
    for spec, info in (results.get("training_status") or {}).items():
        cut = (info or {}).get("cut_short")
        if cut:
            out.append(f"{spec} was CUT SHORT by its time cap: {cut.get('steps_done')} of "
                       f"{cut.get('steps_planned')} planned steps (cap {cut.get('cap_minutes')} min); "
                       "its figures are not those of the preset")
    return out


def render_report(run_dir: str | os.PathLike, *, n_prompts: int = 3, n_generations: int = 2,
                  training_logs: dict[str, str] | None = None, audio: bool = True,
                  systems: list[str] | None = None) -> Path:
    """Write ``RUN/report.html`` (+ ``RUN/report_assets/``) and return its path.

    ``n_prompts`` × ``n_generations`` generations of each system (or of ``systems``) get players;
    ``training_logs`` (name -> metrics.jsonl) add to the logs ``evaluate`` recorded."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    run_dir = Path(run_dir)
    results, samples = load_run(run_dir)
    if not results.get("systems"):
        raise UserError(f"'{run_dir}/results.json' has no systems: rerun `divcfg evaluate`")
    assets = run_dir / ASSETS
    assets.mkdir(exist_ok=True)
    for old in assets.glob("gen_*"):  # generations of an earlier rendering
        old.unlink()
    plot_png, plot_svg = assets / "quality_diversity.png", assets / "quality_diversity.svg"
    plot_quality_diversity(results, plot_png, plot_svg)
    logs = {**results.get("training_logs", {}), **(training_logs or {})}
    curves_png = assets / "training_curves.png"
    has_curves = bool(logs) and plot_training_curves(logs, curves_png)
    listening, wav_ok = listening_section(results, samples, assets, n_prompts, n_generations, audio, systems)

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(
        results=results, rows=table_rows(results), plot_uri=_data_uri(plot_png),
        plot_svg=f"{ASSETS}/{plot_svg.name}", plot_png=f"{ASSETS}/{plot_png.name}",
        curves_uri=_data_uri(curves_png) if has_curves else None, training_logs=logs,
        listening=listening, wav_ok=wav_ok, audio_requested=audio, mv=results.get("merge_vs_cfg"), fmt=_fmt, fmtg=_fmtg,
        claims=results.get("claims"), cut_short=cut_short_lines(results), domain_columns=domain_columns(results))
    if (run_dir / "listening" / "analysis.json").is_file():  # `divcfg listen RUN --analyse` was run
        from divcfg.listening.analysis import add_section_to_page
        page = add_section_to_page(page, run_dir)
    out = run_dir / "report.html"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def add_arguments(parser) -> None:
    parser.add_argument("run", help="evaluation run folder (written by `divcfg evaluate --out RUN`)")
    from divcfg.config import arg_type
    parser.add_argument("--prompts", type=arg_type(int, ge=1), default=3, help="prompts shown in the listening section")
    parser.add_argument("--generations", type=arg_type(int, ge=1), default=2, help="generations shown per system and prompt")
    parser.add_argument("--training-log", action="append", default=[], metavar="NAME=PATH",
                        help="a fine-tuning metrics.jsonl to plot (repeatable), e.g. β=15=runs/small/ft15/metrics.jsonl")
    parser.add_argument("--systems", default="", help="comma-separated system names for the listening section "
                                                      "(default: all), e.g. base,cfg_g3,distilled,merge_l0.5")
    parser.add_argument("--no-audio", action="store_true", help="skip WAV rendering (MIDI and piano rolls only)")


def run(args) -> None:
    logs = {}
    for item in args.training_log:
        name, sep, path = item.rpartition("=")
        if not sep or not name:
            raise UserError(f"--training-log expects NAME=PATH, got {item!r}")
        if not Path(path).exists():
            raise UserError(f"training log '{path}' not found: point at a fine-tuning run's metrics.jsonl")
        logs[name] = path
    out = render_report(args.run, n_prompts=args.prompts, n_generations=args.generations, training_logs=logs,
                        audio=not args.no_audio, systems=[x.strip() for x in args.systems.split(",") if x.strip()] or None)
    print(f"wrote {out}")
