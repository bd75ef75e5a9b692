"""The domain's part of the report: a plug-in that the domain-agnostic page asks for its words,
columns, reference lines and sample section.

**Discovery.** ``results.json`` records the evaluated domain (``"domain": "music" | "text" |
"audio" | ...``, :attr:`divcfg.domains.base.Domain.name`). The section of domain ``NAME`` is
``divcfg.domains.NAME_report.section()``; a domain without such a module gets :class:`ReportSection`
itself (plot, table, claims and curves, and no samples). A ``results.json`` without the field
predates it, when every evaluation was of the default domain :data:`LEGACY_DOMAIN`.

**What a section provides** (every method has a domain-free default here):

- ``quality_axis`` / ``diversity_axis``: the plot's axis labels; ``quality_words`` /
  ``diversity_words``: what right and up mean, in the plot's caption;
- ``figure_columns(results)``: the domain's independent diversity figures, shown after the
  diversity column; ``extra_columns(results)``: further per-system figures, after the length (the
  order of ``results.csv``: ``eval_figures`` after the head, ``eval_extra_columns`` after the rates);
- ``reference_lines(results)``: lines on the plane (``x``: a quality value, ``y``: a diversity value),
  e.g. the quality of real data for the same prompts;
- ``plane_note`` / ``table_note`` / ``extra_tables``: HTML (``Markup``) under the plot, under the
  table, and after the fronts table;
- ``samples_html(results, shown, assets, options)``: the sample section (its own ``<h2>``), given the
  generations the user chose (:func:`divcfg.report.samples.select_samples`); files it writes go to
  ``assets`` (``RUN/report_assets``) and are linked relatively (``report_assets/NAME``);
- ``css``: extra style rules for that section (``Markup``: printed as they are, inside ``<style>``).

Fragments are rendered with :func:`divcfg.report.html.render_fragment`, which escapes every value.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from divcfg.report.html import render_fragment

LEGACY_DOMAIN = "music"


@dataclass(frozen=True)
class Column:
    """A per-system table column: ``results["systems"][i][key]``, ``digits`` decimals."""
    key: str
    header: str
    digits: int = 3


@dataclass(frozen=True)
class ReferenceLine:
    axis: str      # "x": a quality value (vertical line); "y": a diversity value (horizontal line)
    value: float
    label: str


@dataclass(frozen=True)
class SampleOptions:
    """What the user asked the sample section for (``divcfg report --prompts/--generations/...``)."""
    n_prompts: int = 3
    n_generations: int = 2
    audio: bool = True
    systems: tuple[str, ...] | None = None


def judge_name(results: dict, role: str, default: str) -> str:
    return (results.get("judges") or {}).get(role) or default


class ReportSection:
    """The domain-free section: no domain figures, no samples. Domain sections subclass it."""

    domain = ""
    quality_axis = "quality (higher is better)"
    diversity_axis = "diversity: mean 1 − cos within a prompt"
    quality_words = "the quality judge's score"
    diversity_words = "generations of one prompt further apart under the diversity judge"
    css = Markup("")

    def figure_columns(self, results: dict) -> list[Column]:
        return []

    def extra_columns(self, results: dict) -> list[Column]:
        return []

    def reference_lines(self, results: dict) -> list[ReferenceLine]:
        return []

    def plane_note(self, results: dict) -> Markup:
        return Markup("")

    def table_note(self, results: dict) -> Markup:
        return render_fragment(
            "Quality: mean score of the quality judge ({{ q }}). Diversity: mean pairwise 1 − cos under the diversity "
            "judge ({{ d }}) within a prompt. Empty: no usable output; valid: as the domain defines it; EOS: ended "
            "by itself; length in tokens.",
            q=judge_name(results, "quality", "unnamed"), d=judge_name(results, "diversity", "unnamed"))

    def extra_tables(self, results: dict) -> Markup:
        return Markup("")

    def samples_html(self, results: dict, shown: list, assets: Path, options: SampleOptions) -> Markup:
        return render_fragment(
            '<h2 id="samples">Samples</h2>\n<p class="muted">The report has no sample section for the '
            '{{ domain }} domain; the generations are in <code>samples.jsonl</code>.</p>\n',
            domain=results.get("domain") or "unnamed")


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def domain_of(results: dict) -> str:
    return results.get("domain") or LEGACY_DOMAIN


def section_for(results: dict) -> ReportSection:
    """The section of the run's domain: ``divcfg.domains.<domain>_report.section()``, else the
    domain-free :class:`ReportSection`."""
    name = domain_of(results)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        return ReportSection()
    module_name = f"divcfg.domains.{name}_report"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return ReportSection()
        raise
    return module.section()
