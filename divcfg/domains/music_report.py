"""The music testbed's part of ``divcfg report`` (a :class:`divcfg.report.section.ReportSection`).

- Plane: x = text–music alignment score, y = ``1 − cos`` under the diversity embedder E; a dotted
  line at the alignment of the real held-out pieces for the same prompts (a ceiling for quality).
- Table: the independent diversity figures (pitch-class distance, interval n-gram distance, distinct
  n-grams) after diversity; the musical distance to the held-out corpus and the attribute accuracy
  against the captions (``divcfg.music.attributes.ATTRIBUTE_COLUMNS``) after length; the MusPy-style
  metrics of every system beside the corpus's mean ± std in a table of their own.
- Samples ("Listen"): each shown generation as a piano roll, an ``<audio>`` player (a WAV of the
  first ``AUDIO_BEATS`` quarter notes, when a General MIDI soundfont is installed) and the whole
  generation as a MIDI download. Files are named by a hash of the tokens, so identical generations
  (e.g. the merge at λ=0 and the β=0 student) share them.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
from markupsafe import Markup

from divcfg.domains.music_media import tokenizer_for
from divcfg.report.html import render_fragment
from divcfg.report.inputs import ASSETS
from divcfg.report.section import Column, ReferenceLine, ReportSection, SampleOptions

AUDIO_BEATS = 40           # WAV players play the first 40 quarter notes (~20 s at 120 qpm); MIDI is whole
AUDIO_SAMPLE_RATE = 16000  # keeps a report with ~80 players under ~50 MB

TABLE_NOTE = """Quality: mean alignment score (−1 for an empty or undecodable generation). Diversity: mean pairwise
1 − cos under the diversity embedder within a prompt (0 for a pair with an empty member). Independent figures,
averaged over the same pairs: total-variation distance of pitch-class histograms, Jaccard distance of melodic-interval
3-grams, distinct token 4-grams. Empty: no notes; valid: decodes, has notes and keeps the prompt's meter;
EOS: ended by itself; length in tokens. Musical distance: mean over the MusPy-style metrics of
|mean − corpus mean| / corpus std (0 = like the held-out corpus).{% if attributes %} Attribute accuracy (domain
figures): the share of generations that have what their caption asks for, over the captions that name it — key
exact (tonic and mode of the Krumhansl–Schmuckler estimate) and relative (same diatonic collection, e.g. the relative
major/minor), meter (every bar keeps the requested time signature), bars exact and length word (short/medium/long).{%
if descriptors %} Register, range, motion and steps (rich captions): the generation's median pitch,
ambitus, onsets per quarter note or share of melodic steps lies in the band its caption names (divcfg.music.descriptors,
e.g. "in a high register": median pitch ≥ 73).{% endif %}{% endif %}"""

PLANE_NOTE = """{% if corpus and corpus.alignment_real is not none %} The dotted line is the
alignment score of the real held-out pieces for the same prompts ({{ fmt(corpus.alignment_real) }});
the diversity between real pieces of different prompts is {{ fmt(corpus.diversity_between_pieces) }}.{% endif %}"""

METRICS_TABLE = """{% if corpus and corpus.metrics %}
<h3>Musical metrics</h3>
<table id="music-table">
<thead><tr><th class="name">system</th>{% for m in corpus.metrics %}<th>{{ m | replace("_", " ") }}</th>{% endfor %}</tr></thead>
<tbody>
<tr><td class="name"><i>held-out corpus (mean ± std)</i></td>{% for m, v in corpus.metrics.items() %}<td>{{ fmt(v.mean) }} ± {{ fmt(v.std, 2) }}</td>{% endfor %}</tr>
{% for r in systems %}<tr><td class="name">{{ r.label }}</td>{% for m in corpus.metrics %}<td>{{ fmt(r.music[m]) }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% endif %}"""

LISTEN = """<h2 id="listen">Listen</h2>
{% if not audio_requested %}<p class="muted">Audio rendering was turned off (<code>--no-audio</code>); MIDI files and
piano rolls are below.</p>
{% elif wav_ok is sameas false %}<p class="muted">No audio: no General MIDI soundfont was found
(install <code>timgm6mb-soundfont</code>, or set <code>DIVCFG_SOUNDFONT</code>); MIDI files and piano rolls are below.</p>{% endif %}
{% for p in listening %}
<h3>“{{ p.text }}”</h3>
<table class="listen">
{% for row in p.rows %}<tr><td class="name">{{ row.label }}</td><td>
{% for c in row.cells %}<div class="cell">
{% if c.roll %}<img src="{{ c.roll }}" alt="piano roll">
{% if c.wav %}<audio controls preload="none" src="{{ c.wav }}"></audio>{% endif %}
<a href="{{ c.midi }}" download>MIDI</a>{% else %}<i>no notes</i>{% endif %}
<span class="muted">q={{ fmt(c.quality, 2) }}, {{ c.length }} tokens{% if not c.finished %}, no EOS{% endif %}</span>
</div>{% endfor %}
</td></tr>
{% endfor %}</table>
{% endfor %}
"""


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


class Renderer:
    """Writes MIDI / WAV / piano roll of a token sequence once (files named by its hash)."""

    def __init__(self, assets: Path, tokenizer, audio: bool, audio_beats: int = AUDIO_BEATS):
        self.assets, self.tok, self.audio, self.audio_beats = assets, tokenizer, audio, audio_beats
        self.wav_ok: bool | None = None if audio else False
        self.cache: dict[str, dict] = {}

    def files(self, tokens: list[int]) -> dict:
        from divcfg.music.pianoroll import score_notes
        from divcfg.music.render import write_midi, write_wav
        from divcfg.music.tokenizer import tokens_to_score

        key = hashlib.sha1(json.dumps(tokens).encode()).hexdigest()[:16]
        if key in self.cache:
            return self.cache[key]
        score = tokens_to_score(self.tok, tokens)
        notes = score_notes(score)
        entry: dict = {"n_notes": len(notes)}
        if len(notes):
            stem = self.assets / f"gen_{key}"
            write_midi(score, stem.with_suffix(".mid"))
            entry["midi"] = f"{ASSETS}/{stem.name}.mid"
            piano_roll_png(notes, stem.with_suffix(".png"))
            entry["roll"] = f"{ASSETS}/{stem.name}.png"
            if self.wav_ok is not False:
                clip = score.clip(0, self.audio_beats * score.ticks_per_quarter, clip_end=True)
                ok = bool(write_wav(clip, stem.with_suffix(".wav"), sample_rate=AUDIO_SAMPLE_RATE))
                self.wav_ok = ok if self.wav_ok is None else self.wav_ok
                if ok:
                    entry["wav"] = f"{ASSETS}/{stem.name}.wav"
        self.cache[key] = entry
        return entry


class MusicSection(ReportSection):
    domain = "music"
    quality_axis = "quality: text–music alignment score (higher is better)"
    diversity_axis = "diversity: mean 1 − cos(E(y₁), E(y₂)) within a prompt"
    quality_words = "text–music alignment"
    diversity_words = "two generations of one prompt sound less alike to the diversity embedder"

    def figure_columns(self, results: dict) -> list[Column]:
        return [Column("pitch_class_distance", "pitch-class dist."),
                Column("interval_ngram_distance", "interval n-gram dist."),
                Column("distinct_ngram_ratio", "distinct n-grams")]

    def attribute_columns(self, results: dict) -> list[str]:
        """The attribute accuracies present in the rows (against the captions)."""
        from divcfg.music.attributes import ATTRIBUTE_COLUMNS
        return [c for c in ATTRIBUTE_COLUMNS if any(c in r for r in results["systems"])]

    def extra_columns(self, results: dict) -> list[Column]:
        attributes = [Column(c, c.replace("attr_", "").replace("_", " "), 2) for c in self.attribute_columns(results)]
        return [Column("musical_distance", "musical dist.", 2), *attributes]

    def reference_lines(self, results: dict) -> list[ReferenceLine]:
        real = (results.get("corpus") or {}).get("alignment_real")
        return [] if real is None else [ReferenceLine("x", real, "quality of the real held-out pieces")]

    def plane_note(self, results: dict) -> Markup:
        return render_fragment(PLANE_NOTE, corpus=results.get("corpus"))

    def table_note(self, results: dict) -> Markup:
        from divcfg.music.attributes import DESCRIPTOR_COLUMNS
        attributes = self.attribute_columns(results)
        return render_fragment(TABLE_NOTE, attributes=attributes,
                               descriptors=any(c in DESCRIPTOR_COLUMNS for c in attributes))

    def extra_tables(self, results: dict) -> Markup:
        return render_fragment(METRICS_TABLE, corpus=results.get("corpus"), systems=results["systems"])

    def samples_html(self, results: dict, shown: list, assets: Path, options: SampleOptions) -> Markup:
        renderer = Renderer(assets, tokenizer_for(results), options.audio) if shown else None
        listening = [{"text": p.text, "rows": [
            {"label": row.label, "cells": [{**renderer.files(s["tokens"]), "quality": s.get("quality"),
                                             "length": len(s["tokens"]), "finished": s.get("finished")}
                                            for s in row.samples]} for row in p.rows]} for p in shown]
        return render_fragment(LISTEN, listening=listening, wav_ok=renderer.wav_ok if renderer else None,
                               audio_requested=options.audio)


def section() -> MusicSection:
    return MusicSection()
