"""The text domain's part of ``divcfg report`` (a :class:`divcfg.report.section.ReportSection`).

- Plane: x = the quality judge's score (by default the prompt–completion MiniLM similarity, a
  topical-relatedness proxy), y = ``1 − cos`` of two completions of one prompt under the diversity
  judge (by default MiniLM); a dotted line at the diversity between the texts of *different* prompts
  (``reference()["diversity_between_prompts"]``), a scale for the diversity axis.
- Table: ``distinct_2`` (distinct word bigrams of a prompt's G completions over their total) after
  diversity.
- Samples ("Generations"): for each shown prompt, one row per system with its completions side by
  side as preformatted text. Prompts and completions are user text: the template escapes them
  (``<`` becomes ``&lt;``), and nothing of them is ever read as markup.
"""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup

from divcfg.report.html import render_fragment
from divcfg.report.section import Column, ReferenceLine, ReportSection, SampleOptions, judge_name

TABLE_NOTE = """Quality: mean score of the quality judge <code>{{ q }}</code>{% if q == "prompt_similarity" %}
(cosine between the MiniLM embeddings of prompt and completion: topical relatedness, not fluency){% endif %}.
Diversity: mean pairwise 1 − cos under the diversity judge <code>{{ d }}</code> within a prompt (0 for a pair with an
empty member). Distinct word bigrams: the distinct word bigrams of a prompt's completions over all of their bigrams,
averaged over prompts. Empty and not valid: only whitespace; EOS: ended by itself; length in tokens."""

PLANE_NOTE = """{% if between is not none and between == between %} The dotted line is the diversity between the
texts of different prompts ({{ fmt(between) }}), a scale for the diversity axis.{% endif %}"""

GENERATIONS = """<h2 id="samples">Generations</h2>
<p class="muted">The first {{ n_generations }} completion(s) of each system for the first {{ prompts | length }}
prompt(s), as decoded text; q = the quality judge's score.</p>
{% if not prompts %}<p class="muted">This run recorded no generations (<code>samples.jsonl</code> is missing or
empty).</p>{% endif %}
{% for p in prompts %}
<h3 class="prompt">“{{ p.text }}”</h3>
<table class="listen generations">
{% for row in p.rows %}<tr><td class="name">{{ row.label }}</td><td>
{% for s in row.samples %}<div class="cell text-cell">
{% if s.completion is string and s.completion.strip() %}<pre class="generation">{{ s.completion }}</pre>{% else %}<i>empty</i>{% endif %}
<span class="muted">q={{ fmt(s.quality, 2) }}, {{ s.tokens | length }} tokens{% if not s.finished %}, no EOS{% endif %}</span>
</div>{% endfor %}
</td></tr>
{% endfor %}</table>
{% endfor %}
"""

CSS = Markup("""  .text-cell { width: 320px; }
  .text-cell pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0 0 .2em; padding: .3em .4em;
                   font-size: .85em; background: #fafafa; border: 1px solid #ddd; max-height: 14em; overflow-y: auto; }""")   # style rules from this module, not user text


class TextSection(ReportSection):
    domain = "text"
    quality_axis = "quality: the quality judge's score (higher is better)"
    diversity_axis = "diversity: mean 1 − cos(E(y₁), E(y₂)) within a prompt"
    quality_words = "the quality judge's score of prompt and completion"
    diversity_words = "two completions of one prompt lie further apart under the diversity judge"
    css = CSS

    def figure_columns(self, results: dict) -> list[Column]:
        present = any("distinct_2" in r for r in results["systems"])
        return [Column("distinct_2", "distinct word bigrams")] if present else []

    def reference_lines(self, results: dict) -> list[ReferenceLine]:
        between = (results.get("corpus") or {}).get("diversity_between_prompts")
        return [] if between is None else [ReferenceLine("y", between, "diversity between different prompts' texts")]

    def plane_note(self, results: dict) -> Markup:
        return render_fragment(PLANE_NOTE, between=(results.get("corpus") or {}).get("diversity_between_prompts"))

    def table_note(self, results: dict) -> Markup:
        return render_fragment(TABLE_NOTE, q=judge_name(results, "quality", "unnamed"),
                               d=judge_name(results, "diversity", "unnamed"))

    def samples_html(self, results: dict, shown: list, assets: Path, options: SampleOptions) -> Markup:
        return render_fragment(GENERATIONS, prompts=shown, n_generations=options.n_generations)


def section() -> TextSection:
    return TextSection()
