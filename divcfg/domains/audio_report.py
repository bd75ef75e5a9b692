"""The audio domain's part of ``divcfg report`` (a :class:`divcfg.report.section.ReportSection`):
text prompts, waveform completions (MusicGen).

- Plane: x = the user's quality judge (the audio domain has no built-in one; without it quality is
  NaN and the points are not drawn), y = ``1 − cos`` under the diversity judge (by default the
  untrained log-mel statistics stand-in, ``divcfg.domains.audio.LogMelStatsDiversity``).
- Samples ("Listen"): for each shown prompt, one row per system with an ``<audio>`` player per clip.
  A ``samples.jsonl`` row that names a clip the evaluation wrote (``file``, or as ``divcfg sample``
  writes it a ``completion`` that is a ``.wav`` path; relative to the run folder or absolute) is
  played from a copy of that file; a row without one is decoded from its recorded codec tokens by
  the codec of the run's base checkpoint (``results["config"]["base"]``: fine-tuning and merging
  change the decoder LM, never the audio codec). Clips go to ``report_assets/`` named by a hash of
  their bytes (identical clips share a file), so the page stays self-contained. When neither is
  possible (the base checkpoint moved), the page says why.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from markupsafe import Markup

from divcfg.report.html import render_fragment
from divcfg.report.inputs import ASSETS
from divcfg.report.section import ReportSection, SampleOptions, judge_name

TABLE_NOTE = """Quality: mean score of the quality judge <code>{{ q }}</code> (– when the run had none: the audio domain
has no built-in quality judge). Diversity: mean pairwise 1 − cos under the diversity judge <code>{{ d }}</code> within a
prompt (0 for a pair with a silent or missing clip). Empty and not valid: a silent or missing clip; EOS: the stream
ended by itself; length in tokens (codec frames)."""

LISTEN = """<h2 id="listen">Listen</h2>
{% if not audio_requested %}<p class="muted">Audio players were turned off (<code>--no-audio</code>).</p>
{% elif problem %}<p class="muted">Some clips cannot be played: {{ problem }}.</p>{% endif %}
{% for p in prompts %}
<h3 class="prompt">“{{ p.text }}”</h3>
<table class="listen">
{% for row in p.rows %}<tr><td class="name">{{ row.label }}</td><td>
{% for c in row.cells %}<div class="cell">
{% if c.wav %}<audio controls preload="none" src="{{ c.wav }}"></audio>{% else %}<i>no clip</i>{% endif %}
<span class="muted">q={{ fmt(c.quality, 2) }}, {{ c.length }} tokens{% if not c.finished %}, no EOS{% endif %}</span>
</div>{% endfor %}
</td></tr>
{% endfor %}</table>
{% endfor %}
"""


def clip_path(sample: dict, run_dir: Path) -> Path | None:
    """The WAV file a ``samples.jsonl`` row names (``file``, or a ``.wav`` ``completion``), if it exists."""
    name = sample.get("file")
    if not isinstance(name, str):
        c = sample.get("completion")
        name = c if isinstance(c, str) and c.lower().endswith(".wav") else None
    if not name:
        return None
    for path in (Path(name), run_dir / name):
        if path.is_file():
            return path
    return None


def copy_clip(path: Path, assets: Path) -> str:
    """Copy ``path`` into ``assets`` as ``gen_<hash of its bytes>.wav``; its link from the page."""
    key = hashlib.sha1(path.read_bytes()).hexdigest()[:16]
    dest = assets / f"gen_{key}.wav"
    if not dest.exists():
        shutil.copyfile(path, dest)
    return f"{ASSETS}/{dest.name}"


class Decoder:
    """Codec tokens -> a WAV in ``assets``, through the base checkpoint's generator plug-in (loaded
    on first use); ``problem`` says why not when it cannot be loaded."""

    def __init__(self, spec: str, assets: Path):
        self.spec, self.assets = spec, assets
        self.generator = None
        self.problem = "" if spec else "the run records no base checkpoint to decode the clips with"

    def wav(self, tokens: list) -> str | None:
        if self.problem:
            return None
        if self.generator is None:
            from divcfg.errors import UserError
            from divcfg.models.base import load_generator_any
            try:
                self.generator = load_generator_any(self.spec, "cpu")
            except (UserError, OSError) as e:
                self.problem = f"the base checkpoint '{self.spec}' does not load ({e})"
                return None
        from divcfg.models.musicgen import write_wav
        clip = self.generator.decode([tokens])[0]
        if clip is None:
            return None
        tmp = write_wav(self.assets / "gen_decoding.wav.tmp", clip, self.generator.sampling_rate)
        link = copy_clip(tmp, self.assets)
        tmp.unlink()
        return link


class AudioSection(ReportSection):
    domain = "audio"
    quality_axis = "quality: the quality judge's score (higher is better)"
    diversity_axis = "diversity: mean 1 − cos(E(y₁), E(y₂)) within a prompt"
    quality_words = "the quality judge's score of prompt and clip"
    diversity_words = "two clips of one prompt sound less alike to the diversity judge"

    def table_note(self, results: dict) -> Markup:
        return render_fragment(TABLE_NOTE, q=judge_name(results, "quality", "none"),
                               d=judge_name(results, "diversity", "unnamed"))

    def samples_html(self, results: dict, shown: list, assets: Path, options: SampleOptions) -> Markup:
        run_dir = assets.parent
        decoder = Decoder((results.get("config") or {}).get("base") or "", assets)
        prompts = []
        for p in shown:
            rows = []
            for row in p.rows:
                cells = []
                for s in row.samples:
                    wav = None
                    if options.audio:
                        path = clip_path(s, run_dir)
                        wav = copy_clip(path, assets) if path else decoder.wav(s.get("tokens") or [])
                    cells.append({"wav": wav, "quality": s.get("quality"), "length": len(s.get("tokens") or []),
                                  "finished": s.get("finished")})
                rows.append({"label": row.label, "cells": cells})
            prompts.append({"text": p.text, "rows": rows})
        return render_fragment(LISTEN, prompts=prompts, problem=decoder.problem, audio_requested=options.audio)


def section() -> AudioSection:
    return AudioSection()
