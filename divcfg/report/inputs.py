"""What the report reads from an evaluation run folder (``divcfg evaluate --out RUN``):
``results.json`` (systems, fronts, claims, the domain, training logs and status), ``samples.jsonl``
(one line per generation: system, prompt index, generation index, tokens, and where the domain
records it the completion), and the students' fine-tuning ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from divcfg.errors import UserError

ASSETS = "report_assets"   # the page's files, beside report.html (relative links only)


def load_run(run_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(results.json, samples.jsonl rows)`` of an evaluation run; a missing or broken
    ``results.json`` is a :class:`UserError` naming the command that writes it."""
    run_dir = Path(run_dir)
    f = run_dir / "results.json"
    if not f.exists():
        raise UserError(f"no results.json in '{run_dir}': run `divcfg evaluate --out {run_dir}` first")
    try:
        results = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"'{f}' is not valid JSON ({e.msg}): rerun `divcfg evaluate`") from None
    if not results.get("systems"):
        raise UserError(f"'{f}' has no systems: rerun `divcfg evaluate`")
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
