"""The report page: ``RUN/report.html`` and ``RUN/report_assets/`` from an evaluation run.

The page, for any domain: the run's provenance line, cut-short warnings, the claims, the merge-front
vs CFG-front headline, the quality–diversity plane (embedded as a data URI, also as PNG and SVG
files), the results table and the fronts table, the training curves, the domain's sample section,
the "Human evaluation" section when ``divcfg listen RUN --analyse`` was run, and the configuration.
The domain's section (:mod:`divcfg.report.section`) supplies the axis words, its table columns and
notes, and its samples. The page links only files under ``report_assets/`` (relative links), so the
run folder can be copied or served as it is. Every value is HTML-escaped (generations are user text).
"""

from __future__ import annotations

import os
from pathlib import Path

from divcfg.report.html import data_uri, environment
from divcfg.report.inputs import ASSETS, cut_short_lines, load_run
from divcfg.report.plots import plot_quality_diversity, plot_training_curves
from divcfg.report.samples import select_samples
from divcfg.report.section import SampleOptions, section_for
from divcfg.report.table import table_rows


def render_report(run_dir: str | os.PathLike, *, n_prompts: int = 3, n_generations: int = 2,
                  training_logs: dict[str, str] | None = None, audio: bool = True,
                  systems: list[str] | None = None) -> Path:
    """Write ``RUN/report.html`` (+ ``RUN/report_assets/``) and return its path.

    ``n_prompts`` × ``n_generations`` generations of each system (or of ``systems``) are shown;
    ``audio`` False skips rendering audio where the domain would; ``training_logs`` (name ->
    metrics.jsonl) add to the logs ``evaluate`` recorded."""
    run_dir = Path(run_dir)
    results, samples = load_run(run_dir)
    section = section_for(results)
    options = SampleOptions(n_prompts, n_generations, audio, tuple(systems) if systems else None)
    shown = select_samples(results, samples, n_prompts, n_generations, options.systems)
    assets = run_dir / ASSETS
    assets.mkdir(exist_ok=True)
    for old in assets.glob("gen_*"):  # generations of an earlier rendering
        old.unlink()
    plot_png, plot_svg = assets / "quality_diversity.png", assets / "quality_diversity.svg"
    plot_quality_diversity(results, plot_png, plot_svg, section)
    logs = {**results.get("training_logs", {}), **(training_logs or {})}
    curves_png = assets / "training_curves.png"
    has_curves = bool(logs) and plot_training_curves(logs, curves_png)
    figure_columns, extra_columns = section.figure_columns(results), section.extra_columns(results)

    page = environment().get_template("report.html.j2").render(
        results=results, section=section, rows=table_rows(results, figure_columns, extra_columns),
        figure_columns=figure_columns, extra_columns=extra_columns,
        plot_uri=data_uri(plot_png), plot_svg=f"{ASSETS}/{plot_svg.name}", plot_png=f"{ASSETS}/{plot_png.name}",
        curves_uri=data_uri(curves_png) if has_curves else None, training_logs=logs,
        mv=results.get("merge_vs_cfg"), claims=results.get("claims"), cut_short=cut_short_lines(results),
        plane_note=section.plane_note(results), table_note=section.table_note(results),
        extra_tables=section.extra_tables(results),
        samples_html=section.samples_html(results, shown, assets, options))
    if (run_dir / "listening" / "analysis.json").is_file():  # `divcfg listen RUN --analyse` was run
        from divcfg.listening.analysis import add_section_to_page
        page = add_section_to_page(page, run_dir)
    out = run_dir / "report.html"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
