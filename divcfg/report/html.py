"""HTML helpers shared by the report page and the domains' sections: one autoescaping Jinja
environment (every value a template prints is HTML-escaped unless it is already ``Markup``), number
formatting, and data URIs for embedded pictures.

A domain section renders its fragment with :func:`render_fragment` and hands back the ``Markup`` it
returns; the page template prints it as it is (escaped once, by the fragment's own template)."""

from __future__ import annotations

import base64
import math
from functools import lru_cache
from pathlib import Path

from markupsafe import Markup

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=1)
def environment():
    """The Jinja environment of the report: templates from ``divcfg/templates``, autoescape on for
    every template, including those built from strings."""
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    env.globals.update(fmt=fmt, fmtg=fmtg)
    return env


def render_fragment(source: str, **context) -> Markup:
    """``source`` (a Jinja template string) rendered with ``context``, every value escaped."""
    return Markup(environment().from_string(source).render(**context))


def fmt(v, digits: int = 3) -> str:
    """A table value: ``–`` for missing or NaN, yes/no for booleans, ``digits`` decimals for floats.
    Plain text: the template escapes it."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def fmtg(v, digits: int = 4) -> str:
    """Significant digits (hypervolumes span orders of magnitude)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}g}"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()
