"""``divcfg report RUN``: the HTML page of an evaluation run (``divcfg evaluate --out RUN``), for any
domain. Writes ``RUN/report.html`` and ``RUN/report_assets/``.

The core knows no domain:

- :mod:`~divcfg.report.inputs`: reading the run (``results.json``, ``samples.jsonl``, training logs);
- :mod:`~divcfg.report.plots`: the quality–diversity plane and the training curves;
- :mod:`~divcfg.report.table`: the per-system results table;
- :mod:`~divcfg.report.samples`: which generations are shown;
- :mod:`~divcfg.report.section`: the domain plug-in (``divcfg.domains.<domain>_report``: axis words,
  table columns, notes and the sample section — piano rolls and players for music, escaped text for
  text, WAV players for audio);
- :mod:`~divcfg.report.html`: the autoescaping templates and number formats;
- :mod:`~divcfg.report.page`: :func:`render_report`, the page; :mod:`~divcfg.report.cli`: the command.
"""

from divcfg.report.cli import add_arguments, run
from divcfg.report.page import render_report
from divcfg.report.plots import plot_quality_diversity

__all__ = ["add_arguments", "plot_quality_diversity", "render_report", "run"]
