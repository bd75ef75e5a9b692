"""Which generations the report shows: the first ``n_prompts`` evaluation prompts, and for each one
row per system with its first ``n_generations`` generations (``samples.jsonl`` rows). By default
every system, and of the fine-tuned students evaluated over several seeds only the first seed's;
``systems`` names the systems to show instead. Domain sections turn these rows into pictures,
players or text (:mod:`divcfg.report.section`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from divcfg.errors import UserError


@dataclass
class SystemSamples:
    name: str
    label: str
    samples: list[dict]          # samples.jsonl rows, generation 0, 1, ...


@dataclass
class PromptSamples:
    index: int
    id: str
    text: str
    meta: dict
    rows: list[SystemSamples] = field(default_factory=list)


def select_samples(results: dict, samples: list[dict], n_prompts: int, n_generations: int,
                   systems: tuple[str, ...] | list[str] | None = None) -> list[PromptSamples]:
    """The prompts and rows to show (empty when the run has no samples or ``n_prompts`` ≤ 0); an
    unknown name in ``systems`` is a :class:`UserError` listing the run's systems."""
    if not samples or n_prompts <= 0:
        return []
    known = [r["name"] for r in results["systems"]]
    unknown = sorted(set(systems or []) - set(known))
    if unknown:
        raise UserError(f"unknown system(s) {unknown}: choose among {', '.join(known)}")
    index = {(s["system"], s["prompt_index"], s["generation"]): s for s in samples}
    first_seed = (results.get("student_seeds") or [None])[0]
    out = []
    for p in results["prompts"][:n_prompts]:
        shown = PromptSamples(p["index"], p.get("id", ""), p["text"], p.get("meta") or {})
        for r in results["systems"]:
            if systems and r["name"] not in systems:
                continue
            if not systems and r.get("seed") not in (None, first_seed):  # by default one seed's students
                continue
            rows = [index[key] for g in range(n_generations) if (key := (r["name"], p["index"], g)) in index]
            if rows:
                shown.rows.append(SystemSamples(r["name"], r["label"], rows))
        out.append(shown)
    return out
